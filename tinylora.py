"""
Adapters smaller than rank 1, inside the top-r singular subspace of each frozen W = U Σ Vᵀ.

    python tinylora.py                 # toy self-check: identity at init, exact round trips

LoRA-XS (Bałazy et al. 2024) trains only R (r, r) in ΔW = U_r Σ_r R V_rᵀ: r² numbers a matrix.
TinyLoRA (Morris et al. 2026, "Learning to Reason in 13 Parameters") sets R = Σᵢ vᵢ·Pᵢ with P
(u, r, r) fixed and random and v (u) trained, one v shared by modules contiguous in depth: u
numbers a group, 13 for the whole model. Both are Adapters as lora.py's LoRALinear is, ΔW = B·R·A
with B and A frozen, so the rest of rank1 treats them alike (adapters.py dispatches by kind).
Files: TinyLoRA's are PEFT's TINYLORA tuner's (peft >= 0.19, src/peft/tuners/tinylora/); LoRA-XS's
are a plain PEFT LoRA adapter (lora_A = R·A, lora_B = B, α = r: scale 1), which PEFT and vLLM
serve as is, plus loraxs.safetensors (A and R apart) for exact resumes.
"""
import math
import os
import tempfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

from errors import UserError, exit_on_user_error, load_safetensors, no_flags, write_atomic
from lora import (ALL_LINEAR, Adapter, adapter_modules, check_same_adapter, depth_order,
                  freeze_base, lora_config, peft_common, read_peft, replace_module, target_modules,
                  trainable_summary)
from peft_format import PEFT_PREFIX, copy_tensors, write_adapter

LORAXS_FILE = "loraxs.safetensors"

# -----------------------------------------------------------------------------
# The modules


class LoRAXSLinear(Adapter):
    """A frozen nn.Linear plus ΔW = B·R·A with B = U_r Σ_r (out, r) and A = V_rᵀ (r, in) the
    frozen top-r SVD of W (Bałazy et al. 2024, "LoRA-XS", eq. 2): only R (r, r) trains, r²
    parameters. R = 0 makes the fresh adapter the identity (the paper draws R ~ N(0, σ²) with σ
    small); there is no α: R starts at 0 and Adam is blind to a gradient's scale, so a constant
    factor would only rename the learning rate."""
    kind = "loraxs"

    def __init__(self, base: nn.Linear, A, B):
        super().__init__()
        self.base = base.requires_grad_(False)
        r = A.shape[0]
        assert A.shape == (r, base.in_features) and B.shape == (base.out_features, r), \
            f"A {tuple(A.shape)} and B {tuple(B.shape)} do not fit a {tuple(base.weight.shape)} W"
        device = base.weight.device
        self.register_buffer("loraxs_A", A.float().to(device).contiguous())     # (r, in), frozen
        self.register_buffer("loraxs_B", B.float().to(device).contiguous())     # (out, r), frozen
        self.loraxs_R = nn.Parameter(torch.zeros(r, r, device=device))          # (r, r), trained
        self.rank, self.enabled = r, True

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        A, R, B = self.loraxs_A, self.loraxs_R, self.loraxs_B
        z = x.to(A.dtype) @ A.T @ R.T @ B.T                    # (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def factors(self):
        """(scale, B (out, r), A (r, in)) with ΔW = scale·B·A: here 1, B, R·A."""
        return 1.0, self.loraxs_B.detach().clone(), (self.loraxs_R @ self.loraxs_A).detach()

    def delta_weight(self):
        return self.loraxs_B @ self.loraxs_R @ self.loraxs_A              # (out, in)

    def extra_repr(self):
        return f"rank={self.rank}, enabled={self.enabled}"


class TinyLoRALinear(Adapter):
    """A frozen nn.Linear plus ΔW = B·R·A with R = Σᵢ vᵢ·Pᵢ (Morris et al. 2026, §3): A and B the
    frozen top-r SVD factors of W, P (u, r, r) a fixed random tensor, v (u) the only trained
    parameter, and one v object shared by every module of its group (`.group`). As PEFT's
    TinyLoraLayer (src/peft/tuners/tinylora/layer.py), A = √Σ_r V_rᵀ and B = U_r √Σ_r: PEFT splits
    Σ evenly where the paper (a LoRA-XS variant) keeps U Σ on one side; this changes the meaning
    of v and P, not what ΔW can be. No α, no dropout; v = 0 makes the fresh adapter the identity."""
    kind = "tinylora"

    def __init__(self, base: nn.Linear, A, B, P, v: nn.Parameter, group: int, index: int,
                 tie: float, seed: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        u, r, _ = P.shape
        fits = A.shape == (r, base.in_features) and B.shape == (base.out_features, r)
        assert fits, f"A {tuple(A.shape)}, B {tuple(B.shape)}, P {tuple(P.shape)} do not fit a " \
                     f"{tuple(base.weight.shape)} weight"
        assert v.shape == (u,), f"v has shape {tuple(v.shape)}, P wants ({u},)"
        device = base.weight.device
        self.register_buffer("tinylora_A", A.float().to(device).contiguous())   # (r, in), frozen
        self.register_buffer("tinylora_B", B.float().to(device).contiguous())   # (out, r), frozen
        self.register_buffer("tinylora_P", P.float().to(device).contiguous())   # (u, r, r), frozen
        self.tinylora_v = v                                                     # (u,), shared
        self.rank, self.u, self.group, self.index, self.enabled = r, u, group, index, True
        self.tie, self.seed = tie, seed  # how group and P were chosen, for adapter_config.json

    def R(self):
        return (self.tinylora_v[:, None, None] * self.tinylora_P).sum(0)  # Σᵢ vᵢ·Pᵢ: (r, r)

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        A, B = self.tinylora_A, self.tinylora_B
        z = x.to(A.dtype) @ A.T @ self.R().T @ B.T             # (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def factors(self):
        """(scale, B (out, r), A (r, in)) with ΔW = scale·B·A: here 1, B, R·A."""
        return 1.0, self.tinylora_B.detach().clone(), (self.R() @ self.tinylora_A).detach()

    def delta_weight(self):
        return self.tinylora_B @ self.R() @ self.tinylora_A               # (out, in)

    def extra_repr(self):
        return (f"rank={self.rank}, u={self.u}, group={self.group}, index={self.index}, "
                f"enabled={self.enabled}")

# -----------------------------------------------------------------------------
# Applying them


def top_svd(W, r):
    """U_r (out, r), S_r (r,), Vh_r (r, in) of W, computed in float32 on W's device (as PEFT
    does); r is cut to min(out, in) like PEFT's actual_r."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    r = min(r, *W.shape)
    return U[:, :r], S[:r], Vh[:r]


def tinylora_groups(n, tie) -> list:
    """Group of each of n target modules, in model order, for weight tying `tie` ∈ [0, 1]: PEFT's
    rule (TinyLoraModel._create_and_replace) to the bit, Python's round included (half to even):
    round(n·(1 - tie)) groups of n // groups modules, the last group taking the remainder."""
    if not 0.0 <= tie <= 1.0:
        raise UserError(f"weight tying must lie in [0, 1], got {tie!r}")
    n_groups = max(1, round(n * (1.0 - tie)))
    size = max(1, n // n_groups)
    return [min(i // size, n_groups - 1) for i in range(n)]


def tinylora_projection(u, r, seed, index):
    """P (u, r, r) of the index-th target module: N(0, 1/r) from a CPU generator seeded
    seed + index (PEFT's TinyLoraLayer._init_projection; the paper leaves P's distribution open)."""
    g = torch.Generator().manual_seed(seed + index)
    return torch.normal(0.0, 1.0 / math.sqrt(r), (u, r, r), generator=g)


def report(model, what, targets, layers):
    n_train, n_base = trainable_summary(model)  # a shared v counts once
    print(f"{what}, {len(targets)} targets x {len(layers)} layers: {n_train:,} trainable "
          f"parameters ({100 * n_train / n_base:.2g}% of {n_base:,})")


@torch.no_grad()
def apply_loraxs(model, r, targets=ALL_LINEAR, layers=None, verbose=True):
    """Wrap the chosen projections in LoRAXSLinear (R = 0): r² trainable parameters each. One SVD
    per matrix, the whole setup cost (seconds for Qwen2.5-3B on a GPU). Returns model."""
    if int(r) != r or r < 1:
        raise UserError(f"LoRA-XS rank must be an integer >= 1, got {r!r}")
    targets, layers, names = target_modules(model, targets, layers)
    for name in names:
        base = model.get_submodule(name)
        U, S, Vh = top_svd(base.weight, int(r))
        replace_module(model, name, LoRAXSLinear(base, A=Vh, B=U * S))  # A = V_rᵀ, B = U_r Σ_r
    freeze_base(model)
    if verbose:
        report(model, f"lora-xs: rank {r}", targets, layers)
    return model


@torch.no_grad()
def apply_tinylora(model, u, r=2, tie=0.0, targets=ALL_LINEAR, layers=None, seed=42, verbose=True):
    """Wrap the chosen projections in TinyLoRALinear as PEFT's TinyLoraConfig(r, u,
    weight_tying=tie, projection_seed=seed) would: module k of the n targets (model order) gets P
    from seed + k and the v of group tinylora_groups(n, tie)[k]; every v starts at 0. u × groups
    trainable parameters (u = 13, tie = 1: 13). Returns model."""
    if int(r) != r or r < 1 or int(u) != u or u < 1:
        raise UserError(f"TinyLoRA needs integers r >= 1 and u >= 1, got r {r!r}, u {u!r}")
    targets, layers, names = target_modules(model, targets, layers)
    groups = tinylora_groups(len(names), tie)
    device = model.get_submodule(names[0]).weight.device
    # float32, as PEFT casts v
    vs = [nn.Parameter(torch.zeros(int(u), device=device)) for _ in range(groups[-1] + 1)]
    for k, (name, g) in enumerate(zip(names, groups)):
        base = model.get_submodule(name)
        U, S, Vh = top_svd(base.weight, int(r))
        root = S.sqrt()                                                   # √Σ_r on both sides
        P = tinylora_projection(int(u), len(S), seed, k)
        module = TinyLoRALinear(base, A=root[:, None] * Vh, B=U * root, P=P, v=vs[g], group=g,
                                index=k, tie=float(tie), seed=int(seed))
        replace_module(model, name, module)
    freeze_base(model)
    if verbose:
        report(model, f"tinylora: r {r}, u {u}, tie {tie} ({len(vs)} groups of v)", targets, layers)
    return model

# -----------------------------------------------------------------------------
# Files: LoRA-XS as PEFT LoRA + loraxs.safetensors; TinyLoRA as PEFT TINYLORA
#   tinylora: '<name>.tinylora_{A,B,P}' and one 'base_model.tinylora_v.<group>' per group


def loraxs_config(model, base_model_name_or_path=None) -> dict:
    """Served as plain LoRA with α = r: scale 1, ΔW = lora_B·lora_A = B·(R·A)."""
    ranks = {m.rank for m in adapter_modules(model).values()}
    assert len(ranks) == 1, f"PEFT's config holds one rank; this model has {sorted(ranks)}"
    (r,) = ranks
    return lora_config(r, r, False, peft_common(model, base_model_name_or_path))


def tinylora_config(model, base_model_name_or_path=None) -> dict:
    mods = adapter_modules(model)
    kinds = {(m.rank, m.u, m.tie, m.seed) for m in mods.values()}
    assert len(kinds) == 1, f"PEFT's config holds one (r, u, weight_tying, seed); got {kinds}"
    (r, u, tie, seed), = kinds
    ordered = sorted(mods, key=depth_order)
    groups = tinylora_groups(len(ordered), tie)
    assert [(mods[n].index, mods[n].group) for n in ordered] == list(enumerate(groups)), \
        "TinyLoRA modules are not numbered and grouped as PEFT would number and group them"
    common = peft_common(model, base_model_name_or_path)
    return {"peft_type": "TINYLORA", **common, "r": r, "u": u, "weight_tying": tie,
            "projection_seed": seed, "save_projection": True, "init_weights": True,
            "init_v_bound": 0.02, "tinylora_dropout": 0.0}


def cpu(x):
    return x.detach().cpu().contiguous()


def save_loraxs(model, out_dir, base_model_name_or_path=None):
    config = loraxs_config(model, base_model_name_or_path)
    tensors, extra = {}, {}
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        tensors[f"{key}.lora_A.weight"] = cpu(m.loraxs_R @ m.loraxs_A)                 # (r, in)
        tensors[f"{key}.lora_B.weight"] = cpu(m.loraxs_B)                              # (out, r)
        extra[f"{key}.loraxs_A"], extra[f"{key}.loraxs_R"] = cpu(m.loraxs_A), cpu(m.loraxs_R)
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, LORAXS_FILE),
                 lambda p: save_file(extra, p, metadata={"format": "pt"}))
    write_adapter(out_dir, tensors, config)


def save_tinylora(model, out_dir, base_model_name_or_path=None):
    config = tinylora_config(model, base_model_name_or_path)
    tensors = {}
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        for part in ("tinylora_A", "tinylora_B", "tinylora_P"):  # (r, in), (out, r), (u, r, r)
            tensors[f"{key}.{part}"] = cpu(getattr(m, part))
        tensors[f"base_model.tinylora_v.{m.group}"] = cpu(m.tinylora_v)  # (u,), once per group
    write_adapter(out_dir, tensors, config)


def load_loraxs(model, in_dir, verbose=True):
    """rank1's LoRA-XS folder: the served LoRA file checked against the sidecar's A and R."""
    cfg, targets, layers, tensors = read_peft(in_dir, "LORA", ("r", "lora_alpha"))
    tensors.update(load_safetensors(os.path.join(in_dir, LORAXS_FILE)))
    if not adapter_modules(model):
        apply_loraxs(model, cfg["r"], targets, layers, verbose=verbose)
    have = loraxs_config(model) if adapter_modules(model) else {}
    check_same_adapter(model, in_dir, "loraxs", have, dict(
        r=cfg["r"], target_modules=targets, layers_to_transform=layers,
        lora_alpha=cfg["lora_alpha"], use_rslora=bool(cfg.get("use_rslora"))))
    params = {}
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        params.update({f"{key}.loraxs_A": m.loraxs_A, f"{key}.loraxs_R": m.loraxs_R,
                       f"{key}.lora_B.weight": m.loraxs_B})
    served = [k for k in tensors if k.endswith(".lora_A.weight")]  # R·A: checked, not loaded
    for key in served:  # the served LoRA file and the sidecar must be one adapter
        name = key[:-len(".lora_A.weight")]
        RA = tensors[f"{name}.loraxs_R"] @ tensors[f"{name}.loraxs_A"]
        if not torch.allclose(RA, tensors[key], rtol=1e-4, atol=1e-6 * RA.abs().max().item()):
            raise UserError(f"{in_dir}: {key} is not loraxs_R @ loraxs_A of {LORAXS_FILE}; "
                            f"the two files disagree")
    copy_tensors(params, tensors, in_dir, checked=served)
    return model


def load_tinylora(model, in_dir, verbose=True):
    """A PEFT TINYLORA folder (P may be absent: save_projection=False, drawn from the seed)."""
    need = ("r", "u", "weight_tying", "projection_seed")
    cfg, targets, layers, tensors = read_peft(in_dir, "TINYLORA", need)
    if not adapter_modules(model):
        apply_tinylora(model, cfg["u"], cfg["r"], cfg["weight_tying"], targets, layers,
                       cfg["projection_seed"], verbose=verbose)
    have = tinylora_config(model) if adapter_modules(model) else {}
    check_same_adapter(model, in_dir, "tinylora", have, dict(
        r=cfg["r"], target_modules=targets, layers_to_transform=layers, u=cfg["u"],
        weight_tying=cfg["weight_tying"], projection_seed=cfg["projection_seed"]))
    params = {}
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        params.update({f"{key}.{p}": getattr(m, p) for p in ("tinylora_A", "tinylora_B",
                                                            "tinylora_P")})
        params[f"base_model.tinylora_v.{m.group}"] = m.tinylora_v
    optional = [k for k in params if k.endswith(".tinylora_P")]
    copy_tensors(params, tensors, in_dir, optional=optional)
    return model


def tinylora_layout(cfg, names) -> dict:
    """{name: (index, group)} of a TINYLORA file's modules: their index among the targets in
    model order (P's seed offset) and their group of v."""
    names = sorted(names, key=depth_order)
    groups = tinylora_groups(len(names), cfg["weight_tying"])
    return {n: (k, g) for k, (n, g) in enumerate(zip(names, groups))}


def tinylora_file_factors(cfg, get, name, index, group):
    """(1, B, R·A) of one module of a TINYLORA file; get(key) returns a tensor, or None if the
    file lacks it (P, with save_projection=False: drawn again from the seed, as PEFT does)."""
    key = f"{PEFT_PREFIX}{name}"
    A, B, P = get(f"{key}.tinylora_A"), get(f"{key}.tinylora_B"), get(f"{key}.tinylora_P")
    v = get(f"base_model.tinylora_v.{group}")                              # (u,)
    if P is None:
        P = tinylora_projection(cfg["u"], A.shape[0], cfg["projection_seed"], index)
    R = (v.float()[:, None, None] * P.float()).sum(0)                      # (r, r)
    return 1.0, B, R @ A.float()

# -----------------------------------------------------------------------------
# Self-check: python tinylora.py


if __name__ == "__main__":
    from model import TOY_CONFIG, load_model, make_toy_checkpoint
    no_flags(__doc__)
    exit_on_user_error()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_toy_checkpoint(os.path.join(tmp, "base"), seed=0)
        load = lambda: load_model(base, device="cpu", dtype=torch.float32, verbose=False)
        ids = torch.randint(0, TOY_CONFIG.vocab_size, (2, 16))            # (B, T)
        with torch.no_grad():
            base_logits = load()(ids)
        cases = (("tinylora", lambda m: apply_tinylora(m, 13, 2, tie=1.0, verbose=False),
                  save_tinylora, load_tinylora),
                 ("loraxs", lambda m: apply_loraxs(m, 2, verbose=False), save_loraxs, load_loraxs))
        for kind, apply, save, load_kind in cases:
            model = apply(load())
            n_train, _ = trainable_summary(model)
            with torch.no_grad():
                assert torch.equal(model(ids), base_logits), f"fresh {kind} is not the identity"
                for p in model.parameters():
                    if p.requires_grad:
                        p.normal_(0, 0.3)
                logits = model(ids)
                save(model, os.path.join(tmp, kind))
                other = load_kind(load(), os.path.join(tmp, kind), verbose=False)
                assert torch.equal(other(ids), logits), f"{kind} save/load changed the logits"
                err = max((m.factors()[1] @ m.factors()[2] - m.delta_weight()).abs().max().item()
                          for m in adapter_modules(model).values())
            print(f"{kind}: {n_train} trainable parameters, fresh = identity, round trip exact, "
                  f"factored (B, R·A) vs dense ΔW max error {err:.1e}")
            assert err < 1e-6, err
    print("tinylora.py: all checks passed")
