"""
LoRA by hand: a frozen nn.Linear plus a trainable low-rank update, saved in PEFT's file format.

    python lora.py                           # toy self-check + LoRA parameter counts for Qwen2.5-3B
    python lora.py --config path/to/config.json --ranks 1,8,64   # counts for another model

y = W x + b + (α/r)·B(A x): W and b frozen, A (r, in) Kaiming-uniform, B (out, r) zero, so a fresh
adapter is the identity (Hu et al. 2021, "LoRA", §4.1). The module's layout follows torchtune's
LoRALinear; the files follow PEFT's (adapter_config.json + adapter_model.safetensors), so an
adapter trained here loads in PEFT and vLLM, and one trained with PEFT loads here.
Simplified on purpose: no dropout, no bias adapters, no DoRA, one rank and one α for all matrices.

The effective update ΔW = (α/r)·B·A of every adapted matrix is also handled in factored form
(scale, B, A): inner products, weighted sums and best rank-k truncations never build a dense
(out, in) matrix, which is what geometry.py needs at 3B scale.
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

    def forward(self, x):                                                  # x (B, T, in)
        y = self.base(x)                                                   # (B, T, out)
        if not self.enabled:
            return y
        # The adapter path runs in float32, as PEFT does (it casts x to lora_A's dtype): exact small
        # updates and gradients, at the price of a float32 copy of x kept for backward.
        z = x.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T * self.scale   # (B, T, r) -> (B, T, out)
        return y + z.to(y.dtype)

    def delta_weight(self):
        return self.scale * self.lora_B @ self.lora_A                     # (out, r) @ (r, in) -> (out, in)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:.4g}, enabled={self.enabled}"


def lora_modules(model) -> dict:
    """{name: LoRALinear}, names as in named_modules(): 'model.layers.3.mlp.up_proj'."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)


def _freeze_base(model):
    for name, p in model.named_parameters():  # only the adapters train
        p.requires_grad_(name.endswith((".lora_A", ".lora_B")))


@contextmanager
def adapters_disabled(model):
    """The base model, for a KL reference, without a second copy of its weights."""
    mods = list(lora_modules(model).values())
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
    if lora_modules(model):
        raise ValueError("model already has LoRA adapters (merge_lora it, or load_adapter into it)")
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


@torch.no_grad()
def merge_lora(model):
    """Fold W + (α/r)·B·A into the base weights and put the plain nn.Linear back (HF's names again)."""
    for name, m in lora_modules(model).items():
        W = m.base.weight                                                 # (out, in)
        W.copy_((W.float() + m.delta_weight().float()).to(W.dtype))      # add in float32, round once
        _replace(model, name, m.base)
    return model

# -----------------------------------------------------------------------------
# PEFT's file format: adapter_config.json + adapter_model.safetensors


def adapter_config(model, base_model_name_or_path=None) -> dict:
    mods = lora_modules(model)
    assert mods, "the model has no LoRA adapters; call apply_lora first"
    kinds = {(m.rank, m.alpha, m.rslora) for m in mods.values()}
    assert len(kinds) == 1, f"PEFT's config holds one (rank, alpha, rslora); this model has {sorted(kinds)}"
    (r, alpha, rslora), = kinds
    parts = [name.split(".") for name in mods]                            # model.layers.{i}.{block}.{t}
    targets = [t for t in ALL_LINEAR if t in {p[-1] for p in parts}]
    layers = sorted({int(p[2]) for p in parts})
    expected = {module_name(i, t) for i in layers for t in targets}
    assert set(mods) == expected, f"PEFT describes targets x layers; adapted {sorted(mods)} is not such a product"
    all_layers = layers == list(range(len(model.model.layers)))
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r,
            "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "use_rslora": rslora,
            "fan_in_fan_out": False, "layers_to_transform": None if all_layers else layers,
            "layers_pattern": None if all_layers else "layers", "init_lora_weights": True,
            "base_model_name_or_path": base_model_name_or_path, "modules_to_save": None,
            "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True}


def save_adapter(model, out_dir, base_model_name_or_path=None):
    """Write out_dir/adapter_config.json + adapter_model.safetensors (keys 'base_model.model.<name>.lora_A.weight').
    vLLM serves only ranks in {1, 8, 16, 32, 64, 128, 256, 320, 512}; PEFT takes any."""
    config = adapter_config(model, base_model_name_or_path)
    tensors = {}
    for name, m in lora_modules(model).items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()  # (r, in)
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()  # (out, r)
    os.makedirs(out_dir, exist_ok=True)
    # each file under a temporary name, then renamed: a reader never sees half a file
    path = os.path.join(out_dir, "adapter_model.safetensors")
    save_file(tensors, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)
    path = os.path.join(out_dir, "adapter_config.json")
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)


def read_adapter(in_dir):
    """(config, targets, layers or None, scale, tensors) of a PEFT LoRA folder; refuses what rank1 can't
    run. A missing, truncated or corrupt file is a UserError that names it."""
    paths = [os.path.join(in_dir, f) for f in ("adapter_config.json", "adapter_model.safetensors")]
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"no {p} (a PEFT adapter folder holds adapter_config.json + adapter_model.safetensors)")
    cfg = read_json(paths[0])
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise UserError(f"{paths[0]}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}, only LORA is supported")
    unsupported = {k: cfg[k] for k in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern",
                                       "modules_to_save", "lora_bias") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise UserError(f"{paths[0]}: unsupported PEFT options {unsupported}")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in cfg]
    if missing:
        raise UserError(f"{paths[0]}: no {', '.join(missing)}")
    tm = cfg["target_modules"]
    targets = list(ALL_LINEAR) if tm == "all-linear" else parse_targets([tm] if isinstance(tm, str) else tm)
    layers = cfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else (layers or None)  # PEFT: [] or null = all layers
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return cfg, targets, layers, scale, load_safetensors(paths[1])


def load_adapter(model, in_dir, verbose=True):
    """Load a PEFT LoRA adapter into model, applying the modules its config describes if absent."""
    cfg, targets, layers, _, tensors = read_adapter(in_dir)
    r, alpha, rslora = cfg["r"], cfg["lora_alpha"], bool(cfg.get("use_rslora"))
    if not lora_modules(model):
        apply_lora(model, r, alpha, targets, layers, rslora, verbose=verbose)
    mods = lora_modules(model)
    layers = parse_layers(layers, len(model.model.layers))
    want = {module_name(i, t) for i in layers for t in targets}
    have = {(m.rank, m.alpha, m.rslora) for m in mods.values()}
    if set(mods) != want or have != {(r, alpha, rslora)}:
        raise UserError(f"{in_dir} holds rank {r}, alpha {alpha} on {targets} x layers {layers}; "
                         f"the model's adapters differ ({len(mods)} modules, (rank, alpha, rslora) {have})")
    params = {f"{PEFT_PREFIX}{name}.{part}.weight": getattr(m, part)
              for name, m in mods.items() for part in ("lora_A", "lora_B")}
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise UserError(f"{in_dir}: missing tensors {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    for key, p in params.items():  # check every shape before changing anything
        if tensors[key].shape != p.shape:
            raise UserError(f"{key}: shape {tuple(tensors[key].shape)} in {in_dir} does not fit the model's {tuple(p.shape)}")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key])
    return model

# -----------------------------------------------------------------------------
# The effective update in factored form: {name: (scale, B, A)}, ΔW = scale·B·A


def lora_factors(model) -> dict:
    """{name: (scale, B (out, r), A (r, in))}, copies of the live adapters."""
    return {name: (m.scale, m.lora_B.detach().clone(), m.lora_A.detach().clone())
            for name, m in lora_modules(model).items()}


def load_factors(in_dir) -> dict:
    """lora_factors of a saved adapter, without a model."""
    _, _, _, scale, tensors = read_adapter(in_dir)
    names = [k[len(PEFT_PREFIX):-len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")]
    return {n: (scale, tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"], tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"])
            for n in names}


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
    adapted matrices that `factors` does not name lose their adapter."""
    for name, m in lora_modules(model).items():
        if name not in factors:
            _replace(model, name, m.base)
    for name, (s, B, A) in factors.items():
        m, r = model.get_submodule(name), A.shape[0]
        if not (isinstance(m, LoRALinear) and m.rank == r):
            with torch.random.fork_rng(devices=[]):  # A's init is overwritten; leave the RNG stream alone
                m = LoRALinear(m.base if isinstance(m, LoRALinear) else m, r, s * r)
            _replace(model, name, m)
        m.alpha, m.scale, m.rslora = s * r, s, False
        m.lora_A.copy_(A)
        m.lora_B.copy_(B)
    _freeze_base(model)
    return model

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
    print("lora.py: all checks passed")
