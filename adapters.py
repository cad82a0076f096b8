"""
Every adapter kind behind one door: apply, save and load by kind, and a saved adapter's update in
factored form. The scripts' --adapter {lora, loraxs, tinylora} comes through here.

    lora      lora.py       (α/r)·B·A, A and B trained
    loraxs    tinylora.py   B·R·A in W's top-r SVD, R (r, r) trained
    tinylora  tinylora.py   B·(Σᵢ vᵢPᵢ)·A in W's top-r SVD, v (u) trained, shared across modules

A saved adapter's kind is read from its folder: peft_type TINYLORA is TinyLoRA; peft_type LORA is
LoRA, or LoRA-XS when loraxs.safetensors lies beside it (without it, the LoRA it is served as).
"""
import math
import os
from collections.abc import Mapping

import lora
import tinylora
from errors import (COUNT, COUNT0, FRACTION, POSITIVE, UserError, describe, open_safetensors,
                    read_json)
from peft_format import PEFT_PREFIX, check_types

KINDS = ("lora", "loraxs", "tinylora")


def add_args(parser, full):
    """The trainers' adapter flags, one meaning in every script. full: what --rank 0 means."""
    add = parser.add_argument
    add("--adapter", default="lora", choices=KINDS, help="lora: B·A; loraxs: only R (rank x "
        "rank) in U Σ R Vᵀ; tinylora: R = Σ v_i P_i, only v trains (tinylora.py)")
    add("--rank", type=COUNT0, default=None, help="LoRA rank (LoRA-XS, TinyLoRA: the SVD rank "
        f"r); 0 = {full}; default 1, 2 for tinylora")
    add("--alpha", type=POSITIVE, default=32.0, help="LoRA alpha; the update is scaled by "
        "alpha/rank (LoRA only)")
    add("--rslora", action="store_true", help="LoRA: scale the update by alpha/√rank "
        "(rsLoRA, PEFT's use_rslora) instead of alpha/rank")
    add("--u", type=COUNT, default=13, help="TinyLoRA: trainable parameters per group of modules")
    add("--tie", type=FRACTION, default=0.0, help="TinyLoRA weight tying (PEFT's): 0 = one v per "
        "module, 1 = one v for all")
    add("--targets", default="all", help="adapted projections: all, attn, mlp, or names like "
        "q_proj,v_proj")
    add("--layers", default=None, help="adapted layers: indices like 0,1,2 or first/middle/last "
        "thirds; default all")


def check(config, rank, targets, layers, kind="lora", rslora=False):
    """The adapter flags against the model's shapes, before anything is built or written:
    targets and layers that exist, and a rank no adapted matrix is too small for (the rank of
    an (out, in) update is at most min(out, in); LoRA-XS and TinyLoRA take W's top-r SVD)."""
    if rslora and (kind != "lora" or not rank):
        raise UserError("--rslora scales LoRA's update: it needs --adapter lora and --rank >= 1")
    targets = lora.parse_targets(targets)
    lora.parse_layers(layers, config.num_hidden_layers)
    shapes = lora.projection_shapes(config)
    t = min(targets, key=lambda t: min(shapes[t]))
    if rank > min(shapes[t]):
        raise UserError(f"--rank {rank}: {t} is {shapes[t][0]} x {shapes[t][1]}, so an update "
                        f"of it has rank at most {min(shapes[t])}: pass a smaller --rank")


def apply(model, kind, rank, alpha=32.0, u=13, tie=0.0, targets=lora.ALL_LINEAR, layers=None,
          verbose=True, rslora=False):
    """The scripts' --adapter: 'lora' (rank, alpha, rslora), 'loraxs' (rank) or 'tinylora' (r =
    rank, u, tie). Returns model."""
    if kind == "lora":
        return lora.apply_lora(model, rank, alpha, targets, layers, rslora, verbose=verbose)
    if kind == "loraxs":
        return tinylora.apply_loraxs(model, rank, targets, layers, verbose=verbose)
    if kind == "tinylora":
        return tinylora.apply_tinylora(model, u, rank, tie, targets, layers, verbose=verbose)
    raise UserError(f"unknown adapter kind {kind!r}: lora, loraxs or tinylora")


def save(model, out_dir, base_model_name_or_path=None):
    """Write the model's adapter, whichever kind it is, in its PEFT form."""
    kind = lora.adapter_kind(model)
    sidecar = os.path.join(out_dir, tinylora.LORAXS_FILE)
    if kind != "loraxs" and os.path.exists(sidecar):  # a stale one would make it read as LoRA-XS
        os.remove(sidecar)
    write = {"lora": lora.save_adapter, "loraxs": tinylora.save_loraxs,
             "tinylora": tinylora.save_tinylora}
    write[kind](model, out_dir, base_model_name_or_path)


def kind_of(in_dir):
    """'lora', 'loraxs' or 'tinylora': what a saved adapter folder holds (see the docstring)."""
    path = os.path.join(in_dir, "adapter_config.json")
    if not os.path.isfile(path):
        raise UserError(f"no {path} (a PEFT adapter folder holds adapter_config.json + "
                        f"adapter_model.safetensors)")
    cfg = read_json(path)
    peft_type = cfg.get("peft_type") if isinstance(cfg, dict) else cfg
    if peft_type == "TINYLORA":
        return "tinylora"
    if peft_type == "LORA":
        return "loraxs" if os.path.isfile(os.path.join(in_dir, tinylora.LORAXS_FILE)) else "lora"
    raise UserError(f"{path}: peft_type {peft_type!r}, only LORA and TINYLORA are supported")


def load(model, in_dir, verbose=True):
    """Load a saved adapter of any kind into model, applying the modules it describes if the
    model has none; the model's adapters must otherwise be exactly what the folder describes."""
    read = {"lora": lora.load_adapter, "loraxs": tinylora.load_loraxs,
            "tinylora": tinylora.load_tinylora}
    return read[kind_of(in_dir)](model, in_dir, verbose=verbose)


# -----------------------------------------------------------------------------
# A saved adapter's update, factored: {module: (scale, B, A)} with ΔW = scale·B·A


class SavedFactors(Mapping):
    """A saved adapter as a read-only {module: (scale, B, A)} mapping that reads a matrix from the
    safetensors file only when asked: a Gram matrix over hundreds of checkpoints then holds one
    matrix's factors at a time (rank-16 3B adapters are 120 MB each). PEFT LORA folders (LoRA-XS's
    included: lora_A = R·A) give (α/r, B, A); TINYLORA folders give (1, B, R·A) with R = Σ vᵢPᵢ
    of the module's group, so every kind lands in one space. `.config`: adapter_config.json."""

    def __init__(self, folder):
        path = os.path.join(folder, "adapter_config.json")
        c = read_json(path)
        c = c if isinstance(c, dict) else {}
        bad = {k: c[k] for k in ("rank_pattern", "alpha_pattern", "use_dora", "fan_in_fan_out")
               if c.get(k)}
        kind = c.get("peft_type")
        need = {"r", "lora_alpha"} if kind == "LORA" else {"r", "u", "weight_tying",
                                                           "projection_seed"}
        if kind not in ("LORA", "TINYLORA") or bad or not need <= c.keys():
            raise UserError(f"{path}: not a plain LoRA or TinyLoRA adapter config (peft_type "
                            f"{kind!r}, missing {sorted(need - c.keys()) or 'nothing'}, "
                            f"{bad or 'no unsupported options'})")
        check_types(c, path)
        self.config, self.folder = c, folder
        # the header is checked against the file's size now: a truncated file fails here, by name
        self.file = open_safetensors(os.path.join(folder, "adapter_model.safetensors"))
        suffix = ".lora_A.weight" if kind == "LORA" else ".tinylora_A"
        n = len(PEFT_PREFIX)
        self.names = {k[n:-len(suffix)]: None for k in self.file.keys() if k.endswith(suffix)}
        if kind == "TINYLORA":  # {name: (index among the targets, group of v)}
            self.scale, self.layout = 1.0, tinylora.tinylora_layout(c, list(self.names))
            self.stored = set(self.file.keys())
        else:
            root = math.sqrt(c["r"]) if c.get("use_rslora") else c["r"]
            self.scale = c["lora_alpha"] / root                               # α/r or α/√r

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        if self.config["peft_type"] == "TINYLORA":
            get = lambda key: self.file.get_tensor(key) if key in self.stored else None
            return tinylora.tinylora_file_factors(self.config, get, name, *self.layout[name])
        read = lambda part: self.file.get_tensor(f"{PEFT_PREFIX}{name}.{part}.weight")
        return self.scale, read("lora_B"), read("lora_A")                 # (out, r), (r, in)

    def shapes(self):
        """{module: (out, in)} from the file's header, no tensor read."""
        a, b = (".lora_A.weight", ".lora_B.weight") if self.config["peft_type"] == "LORA" else \
            (".tinylora_A", ".tinylora_B")
        key = lambda n, part: f"{PEFT_PREFIX}{n}{part}"
        return {n: (self.file.get_slice(key(n, b)).get_shape()[0],
                    self.file.get_slice(key(n, a)).get_shape()[1]) for n in self.names}

    def __contains__(self, name):  # Mapping's default would read the tensors to find out
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def load_factors(in_dir, fits=None) -> dict:
    """A saved adapter's update, every matrix read now: {module: (scale, B, A)}; with `fits` (a
    model), every matrix must be one of the model's, of its shape."""
    factors = dict(SavedFactors(in_dir))
    for name, (_, B, A) in factors.items() if fits is not None else ():
        base = dict(fits.named_modules()).get(name)
        base = getattr(base, "base", base)  # an adapted matrix: its frozen nn.Linear
        want = tuple(base.weight.shape) if base is not None else None
        if (B.shape[0], A.shape[1]) != want:
            raise UserError(f"{in_dir}: {name} is {B.shape[0]} x {A.shape[1]}; the model's is "
                            f"{want or 'missing'}: an adapter of another model")
    return factors


if __name__ == "__main__":
    describe(__doc__)
