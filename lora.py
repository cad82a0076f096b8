"""
LoRA by hand: a frozen nn.Linear plus a trainable low-rank update, saved in PEFT's file format.

    python lora.py                     # toy self-check + LoRA parameter counts for Qwen2.5-3B
    python lora.py --config path/to/config.json --ranks 1,8,64   # counts for another model

y = W x + b + (α/r)·B(A x): W and b frozen, A (r, in) Kaiming-uniform, B (out, r) zero, so a
fresh adapter is the identity (Hu et al. 2021, "LoRA", §4.1). The module's layout follows
torchtune's LoRALinear; the files follow PEFT's (adapter_config.json + adapter_model.safetensors),
so an adapter trained here loads in PEFT and vLLM, and one trained with PEFT loads here.
Simplified on purpose: no dropout, no bias adapters, no DoRA, one rank and one α for all matrices.
Beside it: tinylora.py (below rank 1), adapters.py (every kind), factored.py (ΔW as factors).
"""
import argparse
import copy
import math
import os
import tempfile
from contextlib import contextmanager

import torch
import torch.nn as nn

from errors import COUNT, COUNT0, POSITIVE, HelpFormatter, UserError, exit_on_user_error
from peft_format import PEFT_PREFIX, copy_tensors, read_folder, write_adapter
from model import TOY_CONFIG, Qwen2, Qwen2Config

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = ATTN + MLP

# -----------------------------------------------------------------------------
# The module


class Adapter(nn.Module):
    """What every adapter kind is: a frozen nn.Linear (`.base`) whose output gets an update ΔW,
    which `.enabled` switches off. LoRALinear below; LoRA-XS and TinyLoRA in tinylora.py."""
    kind = None  # "lora", "loraxs", "tinylora": its name on the command line and in run folders


class LoRALinear(Adapter):
    """A frozen nn.Linear (`.base`) plus the trainable update (α/r)·B·A."""
    kind = "lora"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, rslora: bool = False):
        super().__init__()
        if int(rank) != rank or rank < 1:
            raise UserError(f"LoRA rank must be an integer >= 1, got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.rslora = int(rank), alpha, rslora
        # α/r: Adam moves each of the r rank-1 terms of B·A by a step of fixed size, so the part
        # of the update that lowers the loss grows ∝ r; 1/r cancels it and the best learning rate
        # barely moves with rank (Hu et al. §4.1; "LoRA Without Regret" 2025). rsLoRA's α/√r
        # (Kalajdzievski 2023) keeps ||B·A||_F instead; it is the option.
        self.scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        out_f, in_f = base.weight.shape
        # A: PEFT's default init, Kaiming-uniform with a = √5 (nn.Linear's own), drawn on the CPU
        # so one seed gives one adapter on every device. B = 0 makes the fresh adapter the
        # identity. Both stay float32 under a bf16 base: Adam's tiny steps would vanish in bf16.
        A = torch.empty(rank, in_f)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        device = base.weight.device
        self.lora_A = nn.Parameter(A.to(device))                                 # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, device=device))      # (out, r)
        self.enabled = True

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        # The adapter path runs in float32, as PEFT does (it casts x to lora_A's dtype): exact
        # small updates and gradients, at the price of a float32 copy of x kept for backward.
        # α/r scales the r numbers a token has between A and B, not the out numbers after B:
        # one pass over the (B, T, out) output fewer, forward and backward.
        z = (x.to(self.lora_A.dtype) @ self.lora_A.T) * self.scale      # (B, T, r)
        return y + (z @ self.lora_B.T).to(y.dtype)                      # (B, T, out)

    def delta_weight(self):
        return self.scale * self.lora_B @ self.lora_A          # (out, r)(r, in) -> (out, in)

    def factors(self):
        """(scale, B (out, r), A (r, in)) with ΔW = scale·B·A, copies (factored.py's form)."""
        return self.scale, self.lora_B.detach().clone(), self.lora_A.detach().clone()

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:.4g}, "
                f"enabled={self.enabled}")


def adapter_modules(model) -> dict:
    """{name: module} of every adapter, names as named_modules() gives them:
    'model.layers.3.mlp.up_proj'."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def lora_modules(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_kind(model):
    """'lora', 'loraxs' or 'tinylora'; None without adapters. One model carries one kind."""
    kinds = {m.kind for m in adapter_modules(model).values()}
    assert len(kinds) <= 1, f"the model mixes adapter kinds {sorted(kinds)}"
    return kinds.pop() if kinds else None


def replace_module(model, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)


def freeze_base(model):
    """Only the adapters' own parameters train (A and B; LoRA-XS's R; TinyLoRA's v)."""
    model.requires_grad_(False)
    for m in adapter_modules(model).values():
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)


@contextmanager
def adapters_disabled(model):
    """The base model, for a KL reference, without a second copy of its weights."""
    mods = list(adapter_modules(model).values())
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(mods, before):
            m.enabled = was

# -----------------------------------------------------------------------------
# Which matrices: targets x layers


def parse_targets(targets) -> list:
    """'all' | 'attn' | 'mlp' | projection names, as a list or a comma-separated string."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    chosen = set()
    for t in (t.strip() for t in items):
        expanded = {"all": ALL_LINEAR, "attn": ATTN, "mlp": MLP}.get(t, (t,))
        if not set(expanded) <= set(ALL_LINEAR):
            raise UserError(f"unknown LoRA target {t!r}; use all, attn, mlp or some of "
                            f"{ALL_LINEAR}")
        chosen.update(expanded)
    if not chosen:
        raise UserError(f"no LoRA targets in {targets!r}")
    return [t for t in ALL_LINEAR if t in chosen]


def parse_layers(layers, n_layers) -> list:
    """None = all; indices; or 'first' | 'middle' | 'last' thirds (as a list or comma-separated).
    Thirds: first and last get n//3 layers each, the middle gets the rest (28 layers -> 9/10/9)."""
    if layers is None:
        return list(range(n_layers))
    items = layers.split(",") if isinstance(layers, str) else \
        [layers] if isinstance(layers, int) else list(layers)
    q, n = n_layers // 3, n_layers
    thirds = dict(first=range(0, q), middle=range(q, n - q), last=range(n - q, n))
    chosen = set()
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if item in thirds:
            if not thirds[item]:
                raise UserError(f"{n_layers} layers have no {item} third")
            chosen.update(thirds[item])
        elif str(item).isdigit() and int(item) < n_layers:
            chosen.add(int(item))
        else:
            raise UserError(f"bad layer {item!r}: use first, middle, last or an index in "
                            f"[0, {n_layers})")
    return sorted(chosen)


def module_name(layer, target):
    return f"model.layers.{layer}.{'self_attn' if target in ATTN else 'mlp'}.{target}"


def projection_shapes(config) -> dict:
    """(out, in) of the seven projections of one layer."""
    C, I, D = config.hidden_size, config.intermediate_size, config.head_dim
    H, KV = config.num_attention_heads, config.num_key_value_heads
    return {"q_proj": (H * D, C), "k_proj": (KV * D, C), "v_proj": (KV * D, C),
            "o_proj": (C, H * D), "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}


def lora_param_count(config, rank, targets=ALL_LINEAR, layers=None) -> int:
    """Trainable parameters, from the config alone: r·(in + out) per adapted matrix."""
    shapes = projection_shapes(config)
    per_layer = sum(rank * sum(shapes[t]) for t in parse_targets(targets))
    return len(parse_layers(layers, config.num_hidden_layers)) * per_layer


def target_modules(model, targets, layers):
    """(targets, layers, names) of the chosen projections, names in model order (by depth, then
    q k v o gate up down); refuses a model that carries adapters already."""
    if adapter_modules(model):
        raise ValueError(f"model already has {adapter_kind(model)} adapters (merge_lora it, or "
                         f"load an adapter into it)")
    targets, layers = parse_targets(targets), parse_layers(layers, len(model.model.layers))
    names = [module_name(i, t) for i in layers for t in targets]
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear), f"{name} is a {type(base).__name__}, not nn.Linear"
    return targets, layers, names


def trainable_summary(model):
    """(trainable, frozen) parameter counts; parameters() counts a shared or tied tensor once."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n_train, sum(p.numel() for p in model.parameters()) - n_train


def apply_lora(model, rank, alpha, targets=ALL_LINEAR, layers=None, rslora=False, verbose=True):
    """Wrap the chosen projections in LoRALinear, in place; freeze everything else.
    Returns model."""
    targets, layers, names = target_modules(model, targets, layers)
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, rslora))
    freeze_base(model)
    if verbose:
        n_train, n_base = trainable_summary(model)
        scale = alpha / (math.sqrt(rank) if rslora else rank)
        print(f"lora: rank {rank}, alpha {alpha}, scale {scale:.4g}, {len(targets)} targets x "
              f"{len(layers)} layers: {n_train:,} trainable parameters "
              f"({100 * n_train / n_base:.3f}% of {n_base:,})")
    return model


@torch.no_grad()
def merge_lora(model):
    """Fold W + ΔW into the base weights and put the plain nn.Linear back (HF's names again); any
    kind of adapter."""
    for name, m in adapter_modules(model).items():
        W = m.base.weight                                                 # (out, in)
        W.copy_((W.float() + m.delta_weight().float()).to(W.dtype))  # add in fp32, round once
        replace_module(model, name, m.base)
    return model


@contextmanager
def merged(model):
    """Inference through W + ΔW as one matrix, the adapters back on exit: each adapted projection
    becomes a plain nn.Linear holding a merged copy of its weight, one matmul instead of three
    per projection (sampling and evaluation; training still goes through the adapters). The same
    function to float rounding. Float32 bases only: rounded to bf16 (8 bits of mantissa), W + ΔW
    would lose most of a small ΔW, so a bf16 base samples through its adapters as it trains."""
    mods = {name: m for name, m in adapter_modules(model).items() if m.enabled}
    if any(m.base.weight.dtype != torch.float32 for m in mods.values()):
        mods = {}
    with torch.no_grad():
        for name, m in mods.items():
            plain = nn.Linear(m.base.in_features, m.base.out_features, bias=False, device="meta")
            plain.weight = nn.Parameter(m.base.weight + m.delta_weight(), requires_grad=False)
            plain.bias = m.base.bias
            replace_module(model, name, plain)
    try:
        yield model
    finally:
        for name, m in mods.items():
            replace_module(model, name, m)

# -----------------------------------------------------------------------------
# PEFT's file format: adapter_config.json + adapter_model.safetensors with
# '<name>.lora_A.weight' (r, in) and '<name>.lora_B.weight' (out, r), peft_type LORA


def depth_order(name):
    """Sort key of 'model.layers.{i}.{block}.{t}': by layer, then q k v o gate up down."""
    parts = name.split(".")
    return int(parts[2]), ALL_LINEAR.index(parts[-1])


def peft_common(model, base_model_name_or_path=None) -> dict:
    """The fields of adapter_config.json that every PEFT tuner shares. PEFT's config can only
    describe adapted modules as a product targets x layers; layers None means all of them."""
    mods = adapter_modules(model)
    assert mods, "the model has no adapters; apply some first"
    parts = [name.split(".") for name in mods]                # model.layers.{i}.{block}.{t}
    targets = [t for t in ALL_LINEAR if t in {p[-1] for p in parts}]
    layers = sorted({int(p[2]) for p in parts})
    expected = {module_name(i, t) for i in layers for t in targets}
    assert set(mods) == expected, f"PEFT describes targets x layers; {sorted(mods)} is not one"
    if layers == list(range(len(model.model.layers))):
        layers = None
    return {"task_type": "CAUSAL_LM", "target_modules": targets, "bias": "none",
            "fan_in_fan_out": False, "layers_to_transform": layers,
            "layers_pattern": None if layers is None else "layers",
            "base_model_name_or_path": base_model_name_or_path, "modules_to_save": None,
            "inference_mode": True}


def lora_config(r, alpha, rslora, common) -> dict:
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    return {"peft_type": "LORA", **common, "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "use_rslora": rslora, "init_lora_weights": True, "use_dora": False,
            "rank_pattern": {}, "alpha_pattern": {}}


def adapter_config(model, base_model_name_or_path=None) -> dict:
    """adapter_config.json of the model's LoRA adapters."""
    mods = lora_modules(model)
    kinds = {(m.rank, m.alpha, m.rslora) for m in mods.values()}
    assert len(kinds) == 1, f"PEFT's config holds one (rank, alpha, rslora); the model has {kinds}"
    (r, alpha, rslora), = kinds
    return lora_config(r, alpha, rslora, peft_common(model, base_model_name_or_path))


def save_adapter(model, out_dir, base_model_name_or_path=None):
    """Write out_dir/adapter_config.json + adapter_model.safetensors of the model's LoRA adapter.
    vLLM serves ranks in {1, 8, 16, 32, 64, 128, 256, 320, 512} only; PEFT takes any."""
    config = adapter_config(model, base_model_name_or_path)
    tensors = {}
    for name, m in lora_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        tensors[f"{key}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()   # (r, in)
        tensors[f"{key}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()   # (out, r)
    write_adapter(out_dir, tensors, config)


def read_peft(in_dir, peft_type, need):
    """(config, targets, layers or None for all, tensors) of a checked PEFT folder."""
    cfg, tensors = read_folder(in_dir, peft_type, need)
    tm = cfg["target_modules"]
    targets = list(ALL_LINEAR) if tm == "all-linear" else \
        parse_targets([tm] if isinstance(tm, str) else tm)
    layers = cfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else (layers or None)  # [] or null: all layers
    return cfg, targets, layers, tensors


def check_same_adapter(model, in_dir, kind, have, want):
    """The model's adapters (`have`, its adapter_config) must be what the folder describes."""
    n = len(model.model.layers)
    layers = want["layers_to_transform"]
    if layers is not None and parse_layers(layers, n) == list(range(n)):
        layers = None
    want = {**want, "layers_to_transform": None if layers is None else sorted(layers)}
    differ = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
    if adapter_kind(model) != kind or differ:
        raise UserError(f"{in_dir} holds a {kind} adapter of rank {want['r']} on "
                        f"{want['target_modules']} x layers {layers}; the model's "
                        f"{adapter_kind(model)} adapters differ (folder, model): {differ}")


def load_adapter(model, in_dir, verbose=True):
    """Load a PEFT LORA adapter into model, applying the modules its config describes if absent.
    (adapters.load reads every kind: LoRA-XS and TinyLoRA too.)"""
    cfg, targets, layers, tensors = read_peft(in_dir, "LORA", ("r", "lora_alpha"))
    rslora = bool(cfg.get("use_rslora"))
    if not adapter_modules(model):
        apply_lora(model, cfg["r"], cfg["lora_alpha"], targets, layers, rslora, verbose=verbose)
    have = adapter_config(model) if lora_modules(model) else {}
    check_same_adapter(model, in_dir, "lora", have, dict(
        r=cfg["r"], target_modules=targets, layers_to_transform=layers,
        lora_alpha=cfg["lora_alpha"], use_rslora=rslora))
    params = {}
    for name, m in lora_modules(model).items():
        params[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A
        params[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B
    copy_tensors(params, tensors, in_dir)
    return model

# -----------------------------------------------------------------------------
# Self-check: python lora.py


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None, help="config.json (or a folder holding one) to "
                        "count LoRA parameters for; default: Qwen2.5-3B's shapes, built in")
    parser.add_argument("--ranks", default=[1, 8, 64], help="comma-separated ranks for the table",
                        type=lambda text: [COUNT(r) for r in text.split(",")])
    parser.add_argument("--alpha", type=POSITIVE, default=32.0,
                        help="LoRA alpha of the toy check (scale alpha/r)")
    parser.add_argument("--seed", type=COUNT0, default=0, help="seed of the toy model and adapters")
    args = parser.parse_args()
    exit_on_user_error()
    torch.manual_seed(args.seed)

    # --- parameter counts, from shapes alone
    if args.config:
        path = os.path.join(args.config, "config.json") if os.path.isdir(args.config) else \
            args.config
        config, label = Qwen2Config.from_json(path), path
    else:
        config, label = Qwen2Config(), "Qwen2.5-3B"  # the config's defaults are Qwen2.5-3B's shape
        assert lora_param_count(config, 1) == 1_870_848, lora_param_count(config, 1)
    print(f"LoRA parameters for {label} ({config.num_hidden_layers} layers):")
    print(f"{'rank':>6} | {'all':>12} | {'attn':>12} | {'mlp':>12} | {'all, middle third':>18}")
    for r in args.ranks:
        counts = [lora_param_count(config, r, t) for t in ("all", "attn", "mlp")]
        middle = lora_param_count(config, r, "all", "middle")
        print(f"{r:>6} | {counts[0]:>12,} | {counts[1]:>12,} | {counts[2]:>12,} | {middle:>18,}")

    # --- the toy model: identity at init, the switch, the file round trip, the merge
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        model = Qwen2(TOY_CONFIG)
        other = copy.deepcopy(model)                                      # the same base
        ids = torch.randint(0, TOY_CONFIG.vocab_size, (2, 16))            # (B, T)
        base_logits = model(ids)                                          # (B, T, V)
        apply_lora(model, 4, args.alpha, "all")
        assert trainable_summary(model)[0] == lora_param_count(TOY_CONFIG, 4)
        err = (model(ids) - base_logits).abs().max().item()
        print(f"fresh adapter is the identity: max |logits - base| = {err:.1e}")
        assert err == 0.0, err
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.02)
        lora_logits = model(ids)
        with adapters_disabled(model):
            assert torch.equal(model(ids), base_logits), "adapters_disabled is not the base"
        save_adapter(model, tmp, "toy")
        assert torch.equal(load_adapter(other, tmp, verbose=False)(ids), lora_logits)
        print("save_adapter -> load_adapter: identical logits")
        folded = merge_lora(model)(ids)
        err = ((folded - lora_logits).abs().max() / lora_logits.abs().max()).item()
        print(f"merged equals unmerged: max |merged - unmerged| / max |logits| = {err:.1e}")
        assert err < 1e-5, err
    print("lora.py: all checks passed (python tinylora.py and python factored.py check the rest)")
