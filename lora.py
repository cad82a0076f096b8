"""
LoRA by hand: a frozen nn.Linear plus a trainable low-rank update, saved in PEFT's file format.

    python lora.py                           # toy self-check (LoRA, LoRA-XS, TinyLoRA) + LoRA parameter counts for Qwen2.5-3B
    python lora.py --config path/to/config.json --ranks 1,8,64   # counts for another model

y = W x + b + (α/r)·B(A x): W and b frozen, A (r, in) Kaiming-uniform, B (out, r) zero, so a fresh
adapter is the identity (Hu et al. 2021, "LoRA", §4.1). The module's layout follows torchtune's
LoRALinear; the files follow PEFT's (adapter_config.json + adapter_model.safetensors), so an
adapter trained here loads in PEFT and vLLM, and one trained with PEFT loads here.
Simplified on purpose: no dropout, no bias adapters, no DoRA, one rank and one α for all matrices.

Smaller than rank 1, inside the top-r singular subspace of each frozen W = U Σ Vᵀ:
LoRA-XS (Bałazy et al. 2024) trains only R (r, r) in ΔW = U_r Σ_r R V_rᵀ; TinyLoRA (Morris et al.
2026, "Learning to Reason in 13 Parameters") sets R = Σᵢ vᵢ·Pᵢ with P (u, r, r) fixed and random
and v (u) trained, one v shared by modules contiguous in depth. TinyLoRA's files are PEFT's
TINYLORA tuner's (peft >= 0.19, src/peft/tuners/tinylora/), LoRA-XS's are a plain PEFT LoRA
adapter (lora_A = R·A, lora_B = B) plus loraxs.safetensors for exact resumes.

The effective update of every kind is handled in factored form (scale, B, A), rank r:
(α/r)·B·A for LoRA, 1·B·(R·A) for the others. Inner products, weighted sums and best rank-k
truncations never build a dense (out, in) matrix, which is what geometry.py needs at 3B scale.
"""
import argparse
import json
import math
import os
import tempfile
from contextlib import contextmanager

import torch
import torch.nn as nn
from safetensors.torch import save_file

from model import (Qwen2Config, TOY_CONFIG, UserError, exit_on_user_error, load_model, load_safetensors,
                   make_toy_checkpoint, read_json)

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = ATTN + MLP
PEFT_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the HF model)

# -----------------------------------------------------------------------------
# The module


class LoRALinear(nn.Module):
    """A frozen nn.Linear (`.base`) plus the trainable update (α/r)·B·A; `.enabled` switches it off."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, rslora: bool = False):
        super().__init__()
        if int(rank) != rank or rank < 1:
            raise UserError(f"LoRA rank must be an integer >= 1, got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.rslora = int(rank), alpha, rslora
        # α/r: Adam moves each of the r rank-1 terms of B·A by a step of fixed size, so the part of
        # the update that lowers the loss grows ∝ r; 1/r cancels it and the best learning rate barely
        # moves with rank (Hu et al. §4.1; "LoRA Without Regret" 2025; tests/test_lora.py measures
        # it). rsLoRA's α/√r (Kalajdzievski 2023) keeps ||B·A||_F instead; it is the option.
        self.scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        out_f, in_f = base.weight.shape
        # A: PEFT's default init, Kaiming-uniform with a = √5 (nn.Linear's own), drawn on the CPU so
        # one seed gives one adapter on every device. B = 0 makes the fresh adapter the identity.
        # Both stay float32 under a bf16 base: Adam's tiny steps would vanish in bf16's 8 bits.
        A = torch.empty(rank, in_f)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        device = base.weight.device
        self.lora_A = nn.Parameter(A.to(device))                                 # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, device=device))      # (out, r)
        self.enabled = True
        # many adapters in one batch (set_stacked, row_weights): which update each rank belongs to,
        # and the batch rows' weights on those updates; None = one adapter for every row
        self.owner, self.rows = None, None

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        # The adapter path runs in float32, as PEFT does (it casts x to lora_A's dtype): exact small
        # updates and gradients, at the price of a float32 copy of x kept for backward.
        x = x.to(self.lora_A.dtype)
        if self.rows is None:
            z = x @ self.lora_A.T @ self.lora_B.T * self.scale                 # (B, T, r) -> (B, T, out)
        else:  # row b is the point Σ_i w[b, i]·ΔW_i: z = ((x Aᵀ) ⊙ w_b) Bᵀ, w_b spread over each update's ranks
            w = self.rows.w[:, self.owner]                                     # (B, N) -> (B, r)
            assert w.shape[0] == x.shape[0], f"{w.shape[0]} rows of adapter weights for a batch of {x.shape[0]}"
            z = ((x @ self.lora_A.T) * w[:, None, :]) @ self.lora_B.T * self.scale  # (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def delta_weight(self):
        return self.scale * self.lora_B @ self.lora_A                     # (out, r) @ (r, in) -> (out, in)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:.4g}, enabled={self.enabled}"


class LoRAXSLinear(nn.Module):
    """A frozen nn.Linear plus ΔW = B·R·A with B = U_r Σ_r (out, r) and A = V_rᵀ (r, in) the frozen
    top-r SVD of W (Bałazy et al. 2024, "LoRA-XS", eq. 2): only R (r, r) trains, r² parameters.
    R = 0 makes the fresh adapter the identity (the paper draws R ~ N(0, σ²) with σ small); there is
    no α: R starts at 0 and Adam is blind to a gradient's scale, so a constant factor would only
    rename the learning rate."""

    def __init__(self, base: nn.Linear, A, B):
        super().__init__()
        self.base = base.requires_grad_(False)
        r = A.shape[0]
        assert A.shape == (r, base.in_features) and B.shape == (base.out_features, r), \
            f"A {tuple(A.shape)} and B {tuple(B.shape)} do not fit a ({base.out_features}, {base.in_features}) weight"
        device = base.weight.device
        self.register_buffer("loraxs_A", A.float().to(device).contiguous())          # (r, in), frozen
        self.register_buffer("loraxs_B", B.float().to(device).contiguous())          # (out, r), frozen
        self.loraxs_R = nn.Parameter(torch.zeros(r, r, device=device))               # (r, r), trained
        self.rank, self.enabled = r, True

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        A, R, B = self.loraxs_A, self.loraxs_R, self.loraxs_B
        z = x.to(A.dtype) @ A.T @ R.T @ B.T                                # (B, T, r) -> (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def factors(self):
        """(scale, B (out, r), A (r, in)) with ΔW = scale·B·A: here 1, B, R·A."""
        return 1.0, self.loraxs_B.detach().clone(), (self.loraxs_R @ self.loraxs_A).detach()

    def delta_weight(self):
        return self.loraxs_B @ self.loraxs_R @ self.loraxs_A              # (out, r)(r, r)(r, in) -> (out, in)

    def extra_repr(self):
        return f"rank={self.rank}, enabled={self.enabled}"


class TinyLoRALinear(nn.Module):
    """A frozen nn.Linear plus ΔW = B·R·A with R = Σᵢ vᵢ·Pᵢ (Morris et al. 2026, §3): A and B the
    frozen top-r SVD factors of W, P (u, r, r) a fixed random tensor, v (u) the only trained
    parameter, and one v object shared by every module of its group (`.group`). As PEFT's
    TinyLoraLayer (src/peft/tuners/tinylora/layer.py), A = √Σ_r V_rᵀ and B = U_r √Σ_r: PEFT splits
    Σ evenly where the paper (a LoRA-XS variant) keeps U Σ on one side; this changes the meaning of
    v and P, not what ΔW can be. No α, no dropout; v = 0 makes the fresh adapter the identity."""

    def __init__(self, base: nn.Linear, A, B, P, v: nn.Parameter, group: int, index: int, tie: float, seed: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        u, r, _ = P.shape
        assert A.shape == (r, base.in_features) and B.shape == (base.out_features, r) and P.shape == (u, r, r), \
            f"A {tuple(A.shape)}, B {tuple(B.shape)}, P {tuple(P.shape)} do not fit a ({base.out_features}, {base.in_features}) weight"
        assert v.shape == (u,), f"v has shape {tuple(v.shape)}, P wants ({u},)"
        device = base.weight.device
        self.register_buffer("tinylora_A", A.float().to(device).contiguous())        # (r, in), frozen
        self.register_buffer("tinylora_B", B.float().to(device).contiguous())        # (out, r), frozen
        self.register_buffer("tinylora_P", P.float().to(device).contiguous())        # (u, r, r), frozen
        self.tinylora_v = v                                                          # (u,), trained, shared
        self.rank, self.u, self.group, self.index, self.enabled = r, u, group, index, True
        self.tie, self.seed = tie, seed  # how group and P were chosen, for PEFT's adapter_config.json

    def R(self):
        return (self.tinylora_v[:, None, None] * self.tinylora_P).sum(0)  # Σᵢ vᵢ·Pᵢ: (u, r, r) -> (r, r)

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        A, B = self.tinylora_A, self.tinylora_B
        z = x.to(A.dtype) @ A.T @ self.R().T @ B.T                         # (B, T, r) -> (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def factors(self):
        """(scale, B (out, r), A (r, in)) with ΔW = scale·B·A: here 1, B, R·A."""
        return 1.0, self.tinylora_B.detach().clone(), (self.R() @ self.tinylora_A).detach()

    def delta_weight(self):
        return self.tinylora_B @ self.R() @ self.tinylora_A               # (out, r)(r, r)(r, in) -> (out, in)

    def extra_repr(self):
        return f"rank={self.rank}, u={self.u}, group={self.group}, index={self.index}, enabled={self.enabled}"


ADAPTERS = (LoRALinear, LoRAXSLinear, TinyLoRALinear)
KINDS = {LoRALinear: "lora", LoRAXSLinear: "loraxs", TinyLoRALinear: "tinylora"}


def lora_modules(model) -> dict:
    """{name: LoRALinear}, names as in named_modules(): 'model.layers.3.mlp.up_proj'."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_modules(model) -> dict:
    """{name: module} of every kind (LoRALinear, LoRAXSLinear, TinyLoRALinear)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTERS)}


def adapter_kind(model):
    """'lora', 'loraxs' or 'tinylora'; None without adapters. One model carries one kind."""
    kinds = {KINDS[type(m)] for m in adapter_modules(model).values()}
    assert len(kinds) <= 1, f"the model mixes adapter kinds {sorted(kinds)}"
    return kinds.pop() if kinds else None


def _replace(model, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)


def _freeze_base(model):
    for name, p in model.named_parameters():  # only the adapters train
        p.requires_grad_(name.endswith((".lora_A", ".lora_B", ".loraxs_R", ".tinylora_v")))


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
            raise UserError(f"unknown LoRA target {t!r}; use all, attn, mlp or some of {ALL_LINEAR}")
        chosen.update(expanded)
    if not chosen:
        raise UserError(f"no LoRA targets in {targets!r}")
    return [t for t in ALL_LINEAR if t in chosen]


def parse_layers(layers, n_layers) -> list:
    """None = all; indices; or 'first' | 'middle' | 'last' thirds (as a list or comma-separated).
    Thirds: first and last get n//3 layers each, the middle gets the rest (28 layers -> 9/10/9)."""
    if layers is None:
        return list(range(n_layers))
    items = layers.split(",") if isinstance(layers, str) else [layers] if isinstance(layers, int) else list(layers)
    q = n_layers // 3
    thirds = {"first": range(0, q), "middle": range(q, n_layers - q), "last": range(n_layers - q, n_layers)}
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
            raise UserError(f"bad layer {item!r}: use first, middle, last or an index in [0, {n_layers})")
    return sorted(chosen)


def module_name(layer, target):
    return f"model.layers.{layer}.{'self_attn' if target in ATTN else 'mlp'}.{target}"


def projection_shapes(config) -> dict:
    """(out, in) of the seven projections of one layer."""
    C, I, D = config.hidden_size, config.intermediate_size, config.head_dim
    H, KV = config.num_attention_heads, config.num_key_value_heads
    return {"q_proj": (H * D, C), "k_proj": (KV * D, C), "v_proj": (KV * D, C), "o_proj": (C, H * D),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}


def lora_param_count(config, rank, targets=ALL_LINEAR, layers=None) -> int:
    """Trainable parameters, from the config alone: r·(in + out) per adapted matrix."""
    shapes = projection_shapes(config)
    per_layer = sum(rank * sum(shapes[t]) for t in parse_targets(targets))
    return len(parse_layers(layers, config.num_hidden_layers)) * per_layer


def apply_lora(model, rank, alpha, targets=ALL_LINEAR, layers=None, rslora=False, verbose=True):
    """Wrap the chosen projections in LoRALinear, in place; freeze everything else. Returns model."""
    if adapter_modules(model):
        raise ValueError(f"model already has {adapter_kind(model)} adapters (merge_lora it, or load_adapter into it)")
    targets, layers = parse_targets(targets), parse_layers(layers, len(model.model.layers))
    for i in layers:
        for t in targets:
            base = model.get_submodule(module_name(i, t))
            assert isinstance(base, nn.Linear), f"{module_name(i, t)} is a {type(base).__name__}, not nn.Linear"
            _replace(model, module_name(i, t), LoRALinear(base, rank, alpha, rslora))
    _freeze_base(model)
    if verbose:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_base = sum(p.numel() for p in model.parameters()) - n_train  # parameters() counts tied weights once
        print(f"lora: rank {rank}, alpha {alpha}, scale {alpha / (math.sqrt(rank) if rslora else rank):.4g}, "
              f"{len(targets)} targets x {len(layers)} layers: {n_train:,} trainable parameters "
              f"({100 * n_train / n_base:.3f}% of {n_base:,})")
    return model


# -----------------------------------------------------------------------------
# Smaller than rank 1: LoRA-XS and TinyLoRA, inside the top-r singular subspace of W


def top_svd(W, r):
    """U_r (out, r), S_r (r,), Vh_r (r, in) of W, computed in float32 on W's device (as PEFT does);
    r is cut to min(out, in) like PEFT's actual_r."""
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
    """P (u, r, r) of the index-th target module: N(0, 1/r) from a CPU generator seeded seed + index
    (PEFT's TinyLoraLayer._init_projection; the paper leaves P's distribution open)."""
    return torch.normal(0.0, 1.0 / math.sqrt(r), (u, r, r), generator=torch.Generator().manual_seed(seed + index))


def _targets_layers(model, targets, layers):
    targets, layers = parse_targets(targets), parse_layers(layers, len(model.model.layers))
    names = [module_name(i, t) for i in layers for t in targets]  # model order: by depth, then q k v o gate up down
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear), f"{name} is a {type(base).__name__}, not nn.Linear"
    return targets, layers, names


def _report(model, what, targets, layers):
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a shared v counts once
    n_base = sum(p.numel() for p in model.parameters()) - n_train
    print(f"{what}, {len(targets)} targets x {len(layers)} layers: {n_train:,} trainable parameters "
          f"({100 * n_train / n_base:.2g}% of {n_base:,})")


@torch.no_grad()
def apply_loraxs(model, r, targets=ALL_LINEAR, layers=None, verbose=True):
    """Wrap the chosen projections in LoRAXSLinear (R = 0): r² trainable parameters each. One SVD
    per matrix, the whole setup cost (seconds for Qwen2.5-3B on a GPU). Returns model."""
    if int(r) != r or r < 1:
        raise UserError(f"LoRA-XS rank must be an integer >= 1, got {r!r}")
    if adapter_modules(model):
        raise ValueError(f"model already has {adapter_kind(model)} adapters (merge_lora it, or load_adapter into it)")
    targets, layers, names = _targets_layers(model, targets, layers)
    for name in names:
        base = model.get_submodule(name)
        U, S, Vh = top_svd(base.weight, int(r))
        _replace(model, name, LoRAXSLinear(base, A=Vh, B=U * S))          # A = V_rᵀ, B = U_r Σ_r
    _freeze_base(model)
    if verbose:
        _report(model, f"lora-xs: rank {r}", targets, layers)
    return model


@torch.no_grad()
def apply_tinylora(model, u, r=2, tie=0.0, targets=ALL_LINEAR, layers=None, seed=42, verbose=True):
    """Wrap the chosen projections in TinyLoRALinear as PEFT's TinyLoraConfig(r, u, weight_tying=tie,
    projection_seed=seed) would: module k of the n targets (model order) gets P from seed + k and
    the v of group tinylora_groups(n, tie)[k]; every v starts at 0. u × groups trainable parameters
    (u = 13, tie = 1: 13). Returns model."""
    if int(r) != r or r < 1 or int(u) != u or u < 1:
        raise UserError(f"TinyLoRA needs integers r >= 1 and u >= 1, got r {r!r}, u {u!r}")
    if adapter_modules(model):
        raise ValueError(f"model already has {adapter_kind(model)} adapters (merge_lora it, or load_adapter into it)")
    targets, layers, names = _targets_layers(model, targets, layers)
    groups = tinylora_groups(len(names), tie)
    device = model.get_submodule(names[0]).weight.device
    vs = [nn.Parameter(torch.zeros(int(u), device=device)) for _ in range(groups[-1] + 1)]  # float32, as PEFT casts v
    for k, (name, g) in enumerate(zip(names, groups)):
        base = model.get_submodule(name)
        U, S, Vh = top_svd(base.weight, int(r))
        root = S.sqrt()                                                   # √Σ_r on both sides, as PEFT
        P = tinylora_projection(int(u), len(S), seed, k)
        _replace(model, name, TinyLoRALinear(base, A=root[:, None] * Vh, B=U * root, P=P, v=vs[g], group=g, index=k,
                                             tie=float(tie), seed=int(seed)))
    _freeze_base(model)
    if verbose:
        _report(model, f"tinylora: r {r}, u {u}, tie {tie} ({len(vs)} groups of v)", targets, layers)
    return model


def apply_adapter(model, kind, rank, alpha=32.0, u=13, tie=0.0, targets=ALL_LINEAR, layers=None, verbose=True):
    """The scripts' --adapter: 'lora' (rank, alpha), 'loraxs' (rank) or 'tinylora' (r = rank, u, tie)."""
    if kind == "lora":
        return apply_lora(model, rank, alpha, targets, layers, verbose=verbose)
    if kind == "loraxs":
        return apply_loraxs(model, rank, targets, layers, verbose=verbose)
    if kind == "tinylora":
        return apply_tinylora(model, u, rank, tie, targets, layers, verbose=verbose)
    raise UserError(f"unknown adapter kind {kind!r}: lora, loraxs or tinylora")


@torch.no_grad()
def merge_lora(model):
    """Fold W + ΔW into the base weights and put the plain nn.Linear back (HF's names again); any kind."""
    for name, m in adapter_modules(model).items():
        W = m.base.weight                                                 # (out, in)
        W.copy_((W.float() + m.delta_weight().float()).to(W.dtype))      # add in float32, round once
        _replace(model, name, m.base)
    return model

# -----------------------------------------------------------------------------
# PEFT's file format: adapter_config.json + adapter_model.safetensors
#   lora:     peft_type LORA, '<name>.lora_A.weight' (r, in), '<name>.lora_B.weight' (out, r)
#   loraxs:   the same LORA file with lora_A = R·A, lora_B = B and α = r (scale 1), which PEFT and
#             vLLM serve as is, plus loraxs.safetensors ('<name>.loraxs_A', '<name>.loraxs_R'): PEFT
#             has no LoRA-XS, and the split of R·A back into R and A is what resuming needs exactly
#   tinylora: peft_type TINYLORA (PEFT's tuner), '<name>.tinylora_{A,B,P}' and one
#             'base_model.tinylora_v.<group>' per group


LORAXS_FILE = "loraxs.safetensors"


def _depth_order(name):
    """Sort key of 'model.layers.{i}.{block}.{t}': by layer, then q k v o gate up down (HF's module order)."""
    parts = name.split(".")
    return int(parts[2]), ALL_LINEAR.index(parts[-1])


def _layout(model, mods):
    """(targets, layers or None for all) of adapted modules, which PEFT's config can only describe as
    a product targets x layers."""
    parts = [name.split(".") for name in mods]                            # model.layers.{i}.{block}.{t}
    targets = [t for t in ALL_LINEAR if t in {p[-1] for p in parts}]
    layers = sorted({int(p[2]) for p in parts})
    expected = {module_name(i, t) for i in layers for t in targets}
    assert set(mods) == expected, f"PEFT describes targets x layers; adapted {sorted(mods)} is not such a product"
    return targets, None if layers == list(range(len(model.model.layers))) else layers


def adapter_config(model, base_model_name_or_path=None) -> dict:
    mods, kind = adapter_modules(model), adapter_kind(model)
    assert mods, "the model has no adapters; call apply_lora, apply_loraxs or apply_tinylora first"
    targets, layers = _layout(model, mods)
    common = {"task_type": "CAUSAL_LM", "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
              "layers_to_transform": layers, "layers_pattern": None if layers is None else "layers",
              "base_model_name_or_path": base_model_name_or_path, "modules_to_save": None, "inference_mode": True}
    if kind == "tinylora":
        kinds = {(m.rank, m.u, m.tie, m.seed) for m in mods.values()}
        assert len(kinds) == 1, f"PEFT's config holds one (r, u, weight_tying, seed); this model has {sorted(kinds)}"
        (r, u, tie, seed), = kinds
        ordered = sorted(mods, key=_depth_order)
        groups = tinylora_groups(len(ordered), tie)
        assert [(mods[n].index, mods[n].group) for n in ordered] == list(enumerate(groups)), \
            "TinyLoRA modules are not numbered and grouped as PEFT would number and group them"
        return {"peft_type": "TINYLORA", **common, "r": r, "u": u, "weight_tying": tie, "projection_seed": seed,
                "save_projection": True, "init_weights": True, "init_v_bound": 0.02, "tinylora_dropout": 0.0}
    if kind == "loraxs":  # served as plain LoRA with α = r: scale 1, ΔW = lora_B·lora_A = B·(R·A)
        ranks = {m.rank for m in mods.values()}
        assert len(ranks) == 1, f"PEFT's config holds one rank; this model has {sorted(ranks)}"
        (r,) = ranks
        alpha, rslora = r, False
    else:
        kinds = {(m.rank, m.alpha, m.rslora) for m in mods.values()}
        assert len(kinds) == 1, f"PEFT's config holds one (rank, alpha, rslora); this model has {sorted(kinds)}"
        (r, alpha, rslora), = kinds
    return {"peft_type": "LORA", **common, "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "lora_dropout": 0.0, "use_rslora": rslora, "init_lora_weights": True, "use_dora": False,
            "rank_pattern": {}, "alpha_pattern": {}}


def _write(path, write):
    """Write a file under a temporary name, then rename: a reader never sees half a file."""
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def save_adapter(model, out_dir, base_model_name_or_path=None):
    """Write out_dir/adapter_config.json + adapter_model.safetensors for whichever kind the model
    carries (+ loraxs.safetensors for LoRA-XS). vLLM serves LoRA ranks in {1, 8, 16, 32, 64, 128,
    256, 320, 512} only and has no TinyLoRA; PEFT takes all of them."""
    config, kind = adapter_config(model, base_model_name_or_path), adapter_kind(model)
    tensors, extra = {}, {}
    t = lambda x: x.detach().cpu().contiguous()
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        if kind == "lora":
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = t(m.lora_A), t(m.lora_B)  # (r, in), (out, r)
        elif kind == "loraxs":
            tensors[f"{key}.lora_A.weight"] = t(m.loraxs_R @ m.loraxs_A)                            # (r, in)
            tensors[f"{key}.lora_B.weight"] = t(m.loraxs_B)                                         # (out, r)
            extra[f"{key}.loraxs_A"], extra[f"{key}.loraxs_R"] = t(m.loraxs_A), t(m.loraxs_R)       # (r, in), (r, r)
        else:
            for part in ("tinylora_A", "tinylora_B", "tinylora_P"):                                # (r, in), (out, r), (u, r, r)
                tensors[f"{key}.{part}"] = t(getattr(m, part))
            tensors[f"base_model.tinylora_v.{m.group}"] = t(m.tinylora_v)                          # (u,), once per group
    os.makedirs(out_dir, exist_ok=True)
    sidecar = os.path.join(out_dir, LORAXS_FILE)
    if extra:
        _write(sidecar, lambda p: save_file(extra, p, metadata={"format": "pt"}))
    elif os.path.exists(sidecar):  # a stale one would make this folder read as LoRA-XS
        os.remove(sidecar)
    _write(os.path.join(out_dir, "adapter_model.safetensors"), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    def write_json(p):
        with open(p, "w") as f:
            json.dump(config, f, indent=2)
    _write(os.path.join(out_dir, "adapter_config.json"), write_json)


def read_adapter(in_dir):
    """(config, kind, targets, layers or None, scale, tensors) of a PEFT LORA or TINYLORA folder,
    kind 'lora' | 'loraxs' | 'tinylora', loraxs.safetensors' tensors included; refuses what rank1 can't
    run. A missing, truncated or corrupt file is a UserError that names it."""
    paths = [os.path.join(in_dir, f) for f in ("adapter_config.json", "adapter_model.safetensors")]
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"no {p} (a PEFT adapter folder holds adapter_config.json + adapter_model.safetensors)")
    cfg = read_json(paths[0])
    if not isinstance(cfg, dict) or cfg.get("peft_type") not in ("LORA", "TINYLORA"):
        raise UserError(f"{paths[0]}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}, "
                        f"only LORA and TINYLORA are supported")
    unsupported = {k: cfg[k] for k in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern",
                                       "modules_to_save", "lora_bias") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise UserError(f"{paths[0]}: unsupported PEFT options {unsupported}")
    need = ("r", "lora_alpha") if cfg["peft_type"] == "LORA" else ("r", "u", "weight_tying", "projection_seed")
    missing = [k for k in (*need, "target_modules") if k not in cfg]
    if missing:
        raise UserError(f"{paths[0]}: no {', '.join(missing)}")
    tm = cfg["target_modules"]
    targets = list(ALL_LINEAR) if tm == "all-linear" else parse_targets([tm] if isinstance(tm, str) else tm)
    layers = cfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else (layers or None)  # PEFT: [] or null = all layers
    tensors = load_safetensors(paths[1])
    sidecar = os.path.join(in_dir, LORAXS_FILE)
    if cfg["peft_type"] == "TINYLORA":
        kind, scale = "tinylora", 1.0
    else:
        kind = "loraxs" if os.path.isfile(sidecar) else "lora"
        r, alpha = cfg["r"], cfg["lora_alpha"]
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        if kind == "loraxs":
            tensors.update(load_safetensors(sidecar))
    return cfg, kind, targets, layers, scale, tensors


def _adapter_tensors(model, kind):
    """{file key: the model's tensor it loads into}; LoRA-XS's lora_B.weight is B, its lora_A.weight
    (R·A) is checked, not loaded."""
    out = {}
    for name, m in adapter_modules(model).items():
        key = f"{PEFT_PREFIX}{name}"
        if kind == "lora":
            out.update({f"{key}.lora_A.weight": m.lora_A, f"{key}.lora_B.weight": m.lora_B})
        elif kind == "loraxs":
            out.update({f"{key}.loraxs_A": m.loraxs_A, f"{key}.loraxs_R": m.loraxs_R, f"{key}.lora_B.weight": m.loraxs_B})
        else:
            out.update({f"{key}.{p}": getattr(m, p) for p in ("tinylora_A", "tinylora_B", "tinylora_P")})
            out[f"base_model.tinylora_v.{m.group}"] = m.tinylora_v
    return out


def load_adapter(model, in_dir, verbose=True):
    """Load a PEFT LORA or TINYLORA adapter, or rank1's LoRA-XS, into model, applying the modules its
    config describes if absent (a LoRA-XS folder without loraxs.safetensors loads as the plain LoRA it is)."""
    cfg, kind, targets, layers, _, tensors = read_adapter(in_dir)
    r = cfg["r"]
    if not adapter_modules(model):
        if kind == "lora":
            apply_lora(model, r, cfg["lora_alpha"], targets, layers, bool(cfg.get("use_rslora")), verbose=verbose)
        elif kind == "loraxs":
            apply_loraxs(model, r, targets, layers, verbose=verbose)
        else:
            apply_tinylora(model, cfg["u"], r, cfg["weight_tying"], targets, layers, cfg["projection_seed"], verbose=verbose)
    # the model's adapters must be what the folder describes
    have = adapter_config(model)
    want = {"r": r, "target_modules": targets, "layers_to_transform": None if layers is None or
            parse_layers(layers, len(model.model.layers)) == list(range(len(model.model.layers))) else sorted(layers)}
    if kind == "tinylora":
        want.update(u=cfg["u"], weight_tying=cfg["weight_tying"], projection_seed=cfg["projection_seed"])
    else:
        want.update(lora_alpha=cfg["lora_alpha"], use_rslora=bool(cfg.get("use_rslora")))
    differ = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
    if adapter_kind(model) != kind or differ:
        raise UserError(f"{in_dir} holds a {kind} adapter of rank {r} on {targets} x layers {layers}; the model's "
                         f"{adapter_kind(model)} adapters differ (folder, model): {differ}")
    params = _adapter_tensors(model, kind)
    optional = {k for k in params if k.endswith(".tinylora_P")}  # PEFT's save_projection=False: P from the seed
    checked = {k for k in tensors if kind == "loraxs" and k.endswith(".lora_A.weight")}
    missing = sorted(params.keys() - tensors.keys() - optional)
    unexpected = sorted(tensors.keys() - params.keys() - checked)
    if missing or unexpected:
        raise UserError(f"{in_dir}: missing tensors {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    params = {k: p for k, p in params.items() if k in tensors}
    for key, p in params.items():  # check every shape before changing anything
        if tensors[key].shape != p.shape:
            raise UserError(f"{key}: shape {tuple(tensors[key].shape)} in {in_dir} does not fit the model's {tuple(p.shape)}")
    for key in checked:  # LoRA-XS: the served LoRA file and the sidecar must be one adapter
        name = key[:-len(".lora_A.weight")]
        RA = tensors[f"{name}.loraxs_R"] @ tensors[f"{name}.loraxs_A"]
        if not torch.allclose(RA, tensors[key], rtol=1e-4, atol=1e-6 * RA.abs().max().item()):
            raise UserError(f"{in_dir}: {key} is not loraxs_R @ loraxs_A of {LORAXS_FILE}; the two files disagree")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key])
    return model

# -----------------------------------------------------------------------------
# The effective update in factored form: {name: (scale, B, A)}, ΔW = scale·B·A


def lora_factors(model) -> dict:
    """{name: (scale, B (out, r), A (r, in))}, copies of the live adapters of any kind:
    (α/r, B, A) for LoRA, (1, B, R·A) for LoRA-XS and TinyLoRA."""
    return {name: (m.scale, m.lora_B.detach().clone(), m.lora_A.detach().clone()) if isinstance(m, LoRALinear)
            else m.factors() for name, m in adapter_modules(model).items()}


def tinylora_layout(cfg, names) -> dict:
    """{name: (index, group)} of a TINYLORA file's modules: their index among the targets in model
    order (P's seed offset) and their group of v."""
    names = sorted(names, key=_depth_order)
    return {n: (k, g) for k, (n, g) in enumerate(zip(names, tinylora_groups(len(names), cfg["weight_tying"])))}


def tinylora_file_factors(cfg, get, name, index, group):
    """(1, B, R·A) of one module of a TINYLORA file; get(key) returns a tensor, or None if the file
    lacks it (P, with save_projection=False: drawn again from the seed, as PEFT does)."""
    key = f"{PEFT_PREFIX}{name}"
    A, B, P = get(f"{key}.tinylora_A"), get(f"{key}.tinylora_B"), get(f"{key}.tinylora_P")
    v = get(f"base_model.tinylora_v.{group}")                              # (u,)
    if P is None:
        P = tinylora_projection(cfg["u"], A.shape[0], cfg["projection_seed"], index)
    R = (v.float()[:, None, None] * P.float()).sum(0)                      # (r, r)
    return 1.0, B, R @ A.float()


def load_factors(in_dir) -> dict:
    """lora_factors of a saved adapter, without a model."""
    cfg, kind, _, _, scale, tensors = read_adapter(in_dir)
    if kind == "tinylora":
        layout = tinylora_layout(cfg, [k[len(PEFT_PREFIX):-len(".tinylora_A")] for k in tensors if k.endswith(".tinylora_A")])
        return {n: tinylora_file_factors(cfg, tensors.get, n, k, g) for n, (k, g) in layout.items()}
    names = [k[len(PEFT_PREFIX):-len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")]
    return {n: (scale, tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"], tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"])
            for n in names}  # LoRA-XS included: lora_B·lora_A = B·(R·A), scale 1


def factored_inner(f1, f2) -> float:
    """<ΔW1, ΔW2>_F summed over matrices, in float64, never forming ΔW:
    <s1·B1A1, s2·B2A2>_F = s1·s2·sum((B1ᵀB2) ⊙ (A1A2ᵀ)). A matrix only one side adapts adds 0."""
    total = 0.0
    for name in sorted(f1.keys() & f2.keys()):
        (s1, B1, A1), (s2, B2, A2) = f1[name], f2[name]
        assert B1.shape[0] == B2.shape[0] and A1.shape[1] == A2.shape[1], \
            f"{name}: updates of shapes {(B1.shape[0], A1.shape[1])} and {(B2.shape[0], A2.shape[1])}"
        BtB = B1.double().T @ B2.double().to(B1.device)                    # (r1, r2)
        AAt = A1.double() @ A2.double().to(A1.device).T                    # (r1, r2)
        total += s1 * s2 * (BtB * AAt).sum().item()
    return total


def combine(factor_sets, weights) -> dict:
    """Σ_i w_i·ΔW_i in factored form: B = [w1·s1·B1 | w2·s2·B2 | ...], A = [A1; A2; ...], scale 1."""
    assert len(factor_sets) == len(weights), f"{len(factor_sets)} factor sets, {len(weights)} weights"
    names = list(dict.fromkeys(n for f in factor_sets for n in f))  # union, first-seen order
    out = {}
    for name in names:
        parts = [(w, f[name]) for f, w in zip(factor_sets, weights) if name in f]
        B = torch.cat([w * s * Bi.double() for w, (s, Bi, _) in parts], dim=1)  # (out, Σr)
        A = torch.cat([Ai.double() for _, (_, _, Ai) in parts], dim=0)           # (Σr, in)
        out[name] = (1.0, B, A)
    return out


def factored_svd(scale, B, A):
    """SVD of scale·B·A from thin QRs of B and Aᵀ and the SVD of the small core. Returns U (out, k), S (k,), Vh (k, in)."""
    Qb, Rb = torch.linalg.qr(B.double())                                  # (out, R'), (R', R)
    Qa, Ra = torch.linalg.qr(A.double().T)                                # (in, R''), (R'', R)
    U, S, Vh = torch.linalg.svd(scale * Rb @ Ra.T, full_matrices=False)   # core (R', R'')
    return Qb @ U, S, Vh @ Qa.T


def truncate(factors, k) -> dict:
    """Best rank-k approximation (Eckart-Young) of every matrix, as rank-k factors with scale 1;
    √S goes to both sides. A matrix of rank < k is padded with zero rows/columns."""
    if int(k) != k or k < 1:
        raise UserError(f"truncation rank must be an integer >= 1, got {k!r}")
    out = {}
    for name, (s, B, A) in factors.items():
        U, S, Vh = factored_svd(s, B, A)
        j, root = min(k, S.numel()), S[:k].sqrt()
        Bk = torch.zeros(B.shape[0], k, dtype=torch.float64, device=B.device)   # (out, k)
        Ak = torch.zeros(k, A.shape[1], dtype=torch.float64, device=A.device)   # (k, in)
        Bk[:, :j], Ak[:j] = U[:, :j] * root, root[:, None] * Vh[:j]
        out[name] = (1.0, Bk, Ak)
    return out


@torch.no_grad()
def set_factors(model, factors):
    """Make `factors` the model's adapter: LoRALinear of rank r with α = scale·r (so α/r = scale);
    adapted matrices that `factors` does not name lose their adapter, and LoRA-XS or TinyLoRA
    modules become LoRALinear."""
    for name, m in adapter_modules(model).items():
        if name not in factors or not isinstance(m, LoRALinear):
            _replace(model, name, m.base)
    for name, (s, B, A) in factors.items():
        m, r = model.get_submodule(name), A.shape[0]
        if not (isinstance(m, LoRALinear) and m.rank == r):
            with torch.random.fork_rng(devices=[]):  # A's init is overwritten; leave the RNG stream alone
                m = LoRALinear(m.base if isinstance(m, LoRALinear) else m, r, s * r)
            _replace(model, name, m)
        m.alpha, m.scale, m.rslora, m.owner = s * r, s, False, None
        m.lora_A.copy_(A)
        m.lora_B.copy_(B)
    _freeze_base(model)
    return model

# -----------------------------------------------------------------------------
# Many adapters in one batch: every row of a batch its own point Σ_i w_i·ΔW_i
#
# With the stacked factors B = [s1·B1 | s2·B2 | ...] (out, R) and A = [A1; A2; ...] (R, in), the
# point with weights w has ΔW(w) = B·diag(w ⊗ 1_r)·A, so a row that carries w gets its own update:
# z = ((x Aᵀ) ⊙ w) Bᵀ. The base weights, and the stacked factors, are then read once per forward
# for every point in the batch (geometry.py's plane, every checkpoint of a run in eval_gsm8k.py).


class RowWeights:
    """w (rows, N): each batch row's weights on the N stacked updates. generate() selects its rows
    as it selects the KV cache's (the n samples of a prompt, finished rows leaving the batch)."""

    def __init__(self, w):
        self.w = w

    def select(self, rows):
        self.w = self.w[rows]


def set_stacked(model, factor_sets):
    """Install the N factor sets side by side (lora.combine with weights 1, scale 1) and record which
    update each stacked rank belongs to; row_weights() then weighs them per batch row. Returns N."""
    set_factors(model, combine(factor_sets, [1.0] * len(factor_sets)))
    for name, m in lora_modules(model).items():
        owner = [i for i, f in enumerate(factor_sets) if name in f for _ in range(f[name][2].shape[0])]
        m.owner = torch.tensor(owner, dtype=torch.long, device=m.lora_A.device)  # (R,), combine's order
    return len(factor_sets)


@contextmanager
def row_weights(model, w):
    """Row b of the batches run inside is the point Σ_i w[b, i]·ΔW_i of the set_stacked updates;
    yields the RowWeights to hand to generate(row_state=...). w (rows, N)."""
    mods = list(lora_modules(model).values())
    assert mods and all(m.owner is not None for m in mods), "row_weights needs set_stacked(model, ...) first"
    rows = RowWeights(torch.as_tensor(w, dtype=mods[0].lora_A.dtype, device=mods[0].lora_A.device))
    n = max(int(m.owner.max()) for m in mods) + 1
    assert rows.w.ndim == 2 and rows.w.shape[1] >= n, f"weights {tuple(rows.w.shape)} for {n} stacked updates"
    for m in mods:
        m.rows = rows
    try:
        yield rows
    finally:
        for m in mods:
            m.rows = None

# -----------------------------------------------------------------------------
# Self-check: python lora.py


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="LoRA self-check on the toy model, and parameter counts")
    parser.add_argument("--config", default=None, help="config.json (or a folder holding one) to count LoRA "
                        "parameters for; default: Qwen2.5-3B's shapes, built in")
    parser.add_argument("--ranks", default="1,8,64", help="comma-separated ranks for the count table")
    parser.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha of the toy check (scale alpha/r)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the toy model and adapters")
    args = parser.parse_args()
    exit_on_user_error()
    torch.manual_seed(args.seed)

    # --- parameter counts, from shapes alone
    if args.config:
        path = os.path.join(args.config, "config.json") if os.path.isdir(args.config) else args.config
        config, label = Qwen2Config.from_json(path), path
    else:
        config = Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                             num_attention_heads=16, num_key_value_heads=2, vocab_size=151936)
        label = "Qwen2.5-3B"
        assert lora_param_count(config, 1) == 1_870_848, lora_param_count(config, 1)  # DESIGN.md's figure
    print(f"LoRA parameters for {label} ({config.num_hidden_layers} layers):")
    print(f"{'rank':>6} | {'all':>12} | {'attn':>12} | {'mlp':>12} | {'all, middle third':>18}")
    for r in (int(x) for x in args.ranks.split(",")):
        counts = [lora_param_count(config, r, t) for t in ("all", "attn", "mlp")]
        middle = lora_param_count(config, r, "all", "middle")
        print(f"{r:>6} | {counts[0]:>12,} | {counts[1]:>12,} | {counts[2]:>12,} | {middle:>18,}")

    # --- the toy model, through the real loader
    with tempfile.TemporaryDirectory() as tmp:
        make_toy_checkpoint(os.path.join(tmp, "base"), seed=args.seed)
        model = load_model(os.path.join(tmp, "base"), device="cpu", dtype=torch.float32)
        ids = torch.randint(0, TOY_CONFIG.vocab_size, (2, 16))            # (B, T)
        with torch.no_grad():
            base_logits = model(ids)                                      # (B, T, V)
            apply_lora(model, 4, args.alpha, "all")
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert n_train == lora_param_count(TOY_CONFIG, 4), (n_train, lora_param_count(TOY_CONFIG, 4))
            err = (model(ids) - base_logits).abs().max().item()
            print(f"fresh adapter is the identity: max |logits - base| = {err:.1e}")
            assert err == 0.0, err
            for m in lora_modules(model).values():
                m.lora_B.normal_(0, 0.02)
            lora_logits = model(ids)
            with adapters_disabled(model):
                assert torch.equal(model(ids), base_logits), "adapters_disabled is not the base model"
            save_adapter(model, os.path.join(tmp, "adapter"), "toy")
            factors = lora_factors(model)
            other = load_model(os.path.join(tmp, "base"), device="cpu", dtype=torch.float32)
            load_adapter(other, os.path.join(tmp, "adapter"), verbose=False)
            assert torch.equal(other(ids), lora_logits), "save/load round trip changed the logits"
            print("save_adapter -> load_adapter: identical logits")
            merged = merge_lora(model)(ids)
            err = ((merged - lora_logits).abs().max() / lora_logits.abs().max()).item()
            print(f"merged equals unmerged: max |merged - unmerged| / max |logits| = {err:.1e}")
            assert err < 1e-5, err
        # --- factored geometry equals the dense computation
        half = {n: (s, 0.5 * B + 0.01, A.flip(0)) for n, (s, B, A) in factors.items()}
        dense = lambda f: torch.cat([(s * B.double() @ A.double()).flatten() for s, B, A in f.values()])
        err = abs(factored_inner(factors, half) - dense(factors) @ dense(half)) / abs(dense(factors) @ dense(half))
        print(f"factored inner product vs dense: relative error {err:.1e}")
        summed, k = combine([factors, half], [1.0, -0.5]), 2
        cut = truncate(summed, k)
        dense_W = [s * B @ A for s, B, A in summed.values()]                 # (out, in) each, toy only
        trunc_err = sum(((W - Bk @ Ak) ** 2).sum().item() for W, (_, Bk, Ak) in zip(dense_W, cut.values()))
        best_err = sum((torch.linalg.svdvals(W)[k:] ** 2).sum().item() for W in dense_W)  # Eckart-Young
        print(f"rank-{k} truncation error {trunc_err:.6e} vs dense SVD optimum {best_err:.6e}")
        assert abs(trunc_err - best_err) <= 1e-9 * best_err, (trunc_err, best_err)
        # --- many adapters in one batch: row b carries the point w_b of the stacked updates
        W = torch.tensor([[1.0, -0.5], [0.3, 0.7]])
        with torch.no_grad():
            set_stacked(model, [factors, half])
            with row_weights(model, W):
                rows = model(ids)                                         # (B, T, V), row b at W[b]
            err = max(((rows[b] - set_factors(model, combine([factors, half], W[b].tolist()))(ids[b:b + 1])[0]).abs().max()
                       / rows[b].abs().max()).item() for b in range(len(W)))
        print(f"per-row adapter weights vs each point installed alone: max relative error {err:.1e}")
        assert err < 1e-5, err
        # --- below rank 1: TinyLoRA (u = 13, fully tied: 13 parameters) and LoRA-XS (rank 2)
        for kind, apply in (("tinylora", lambda m: apply_tinylora(m, 13, 2, tie=1.0, verbose=False)),
                            ("loraxs", lambda m: apply_loraxs(m, 2, verbose=False))):
            model = apply(load_model(os.path.join(tmp, "base"), device="cpu", dtype=torch.float32, verbose=False))
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                assert torch.equal(model(ids), base_logits), f"fresh {kind} is not the identity"
                for p in model.parameters():
                    if p.requires_grad:
                        p.normal_(0, 0.3)
                logits = model(ids)
                save_adapter(model, os.path.join(tmp, kind))
                other = load_adapter(load_model(os.path.join(tmp, "base"), device="cpu", dtype=torch.float32,
                                                verbose=False), os.path.join(tmp, kind), verbose=False)
                assert torch.equal(other(ids), logits), f"{kind} save/load round trip changed the logits"
                f = load_factors(os.path.join(tmp, kind))
                err = max(((f[n][0] * f[n][1] @ f[n][2]) - m.delta_weight()).abs().max().item()
                          for n, m in adapter_modules(model).items())
            print(f"{kind}: {n_train} trainable parameters, fresh = identity, round trip exact, "
                  f"factored (B, R·A) vs dense ΔW max error {err:.1e}")
            assert err < 1e-6, err
    print("lora.py: all checks passed")
