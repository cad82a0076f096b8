"""
The effective update in factored form, and many adapters in one batch.

    python factored.py                 # toy self-check: factored maths = dense maths, rows = points

Every adapter kind's update is a sum of rank-r products, ΔW = scale·B·A (lora.py: (α/r, B, A);
tinylora.py: (1, B, R·A)), kept here as {module: (scale, B (out, r), A (r, in))}. Inner
products, Gram matrices, weighted sums and best rank-k truncations never build a dense (out, in)
matrix, which is what geometry.py needs at 3B scale: <s1·B1A1, s2·B2A2>_F =
s1·s2·sum((B1ᵀB2) ⊙ (A1A2ᵀ)).
Many points at once: with the stacked factors B = [s1·B1 | s2·B2 | ...] (out, R) and A = [A1; A2;
...] (R, in), the point with weights w is ΔW(w) = B·diag(w ⊗ 1_r)·A, so a batch row that carries
its own w gets its own update, z = ((x Aᵀ) ⊙ w) Bᵀ, and the base weights are read once per
forward for every point in the batch (geometry.py's plane, a run's checkpoints in eval_gsm8k.py).
"""
import os
from contextlib import contextmanager

import torch
from tqdm import tqdm

from errors import UserError
from lora import LoRALinear, adapter_modules, freeze_base, lora_modules, replace_module

# -----------------------------------------------------------------------------
# The maths


def lora_factors(model) -> dict:
    """{name: (scale, B (out, r), A (r, in))}, copies of the live adapters of any kind."""
    return {name: m.factors() for name, m in adapter_modules(model).items()}


def factored_inner(f1, f2) -> float:
    """<ΔW1, ΔW2>_F summed over matrices, in float64, never forming ΔW. A matrix only one side
    adapts adds 0."""
    total = 0.0
    for name in sorted(f1.keys() & f2.keys()):
        (s1, B1, A1), (s2, B2, A2) = f1[name], f2[name]
        assert B1.shape[0] == B2.shape[0] and A1.shape[1] == A2.shape[1], \
            f"{name}: updates of shapes {(B1.shape[0], A1.shape[1])} and " \
            f"{(B2.shape[0], A2.shape[1])}"
        BtB = B1.double().T @ B2.double().to(B1.device)                    # (r1, r2)
        AAt = A1.double() @ A2.double().to(A1.device).T                    # (r1, r2)
        total += s1 * s2 * (BtB * AAt).sum().item()
    return total


def gram(updates, device="cpu", progress=True):
    """K[i, j] = <u_i, u_j>_F over all adapted matrices, in float64, from the factors alone.

    Per matrix, every update's factors are stacked, Bs = [s1·B1 | s2·B2 | ...] (out, R) and
    As = [A1; A2; ...] (R, in), so (BsᵀBs) ⊙ (AsAsᵀ) (R, R) holds every pair's rank-by-rank
    terms and summing its blocks gives K. Memory: one matrix's stacked factors, (out + in)·R
    floats with R the total rank over checkpoints, never out·in; time R²·(out + in) per matrix,
    which a GPU (`device`) absorbs when R reaches the thousands. An update that lacks a matrix
    adds 0 there. Returns a numpy array (N, N)."""
    N = len(updates)
    K = torch.zeros(N, N, dtype=torch.float64, device=device)
    names = list(dict.fromkeys(n for u in updates for n in u))
    for name in tqdm(names, desc="gram", unit="matrix", disable=not progress):
        parts = [(i, *u[name]) for i, u in enumerate(updates) if name in u]  # (i, scale, B, A)
        B = torch.cat([s * B.to(device, torch.float64) for _, s, B, _ in parts], 1)   # (out, R)
        A = torch.cat([A.to(device, torch.float64) for _, _, _, A in parts], 0)       # (R, in)
        owner = [i for i, _, _, A in parts for _ in range(A.shape[0])]
        owner = torch.tensor(owner, device=device)                                   # (R,)
        M = (B.T @ B) * (A @ A.T)                                                    # (R, R)
        M = torch.zeros(len(owner), N, dtype=M.dtype, device=device).index_add_(1, owner, M)
        K.index_add_(0, owner, M)                                                    # (N, N)
    return K.cpu().numpy()


def combine(factor_sets, weights) -> dict:
    """Σ_i w_i·ΔW_i in factored form: B = [w1·s1·B1 | w2·s2·B2 | ...], A = [A1; A2; ...],
    scale 1."""
    assert len(factor_sets) == len(weights), \
        f"{len(factor_sets)} factor sets, {len(weights)} weights"
    names = list(dict.fromkeys(n for f in factor_sets for n in f))  # union, first-seen order
    out = {}
    for name in names:
        parts = [(w, f[name]) for f, w in zip(factor_sets, weights) if name in f]
        B = torch.cat([w * s * Bi.double() for w, (s, Bi, _) in parts], dim=1)  # (out, Σr)
        A = torch.cat([Ai.double() for _, (_, _, Ai) in parts], dim=0)           # (Σr, in)
        out[name] = (1.0, B, A)
    return out


def factored_svd(scale, B, A):
    """SVD of scale·B·A from thin QRs of B and Aᵀ and the SVD of the small core.
    Returns U (out, k), S (k,), Vh (k, in)."""
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

# -----------------------------------------------------------------------------
# Installing factors in a model


@torch.no_grad()
def set_factors(model, factors, module=LoRALinear):
    """Make `factors` the model's adapter: `module`s (LoRALinear) of rank r with α = scale·r (so
    α/r = scale); adapted matrices that `factors` does not name lose their adapter, and adapters
    of another kind become `module`s."""
    for name, m in adapter_modules(model).items():
        if name not in factors or type(m) is not module:
            replace_module(model, name, m.base)
    for name, (s, B, A) in factors.items():
        m, r = model.get_submodule(name), A.shape[0]
        if not (type(m) is module and m.rank == r):
            with torch.random.fork_rng(devices=[]):  # A's init is overwritten: leave the RNG alone
                m = module(m.base if isinstance(m, LoRALinear) else m, r, s * r)
            replace_module(model, name, m)
        m.alpha, m.scale, m.rslora = s * r, s, False
        m.lora_A.copy_(A)
        m.lora_B.copy_(B)
    freeze_base(model)
    return model


class StackedLoRALinear(LoRALinear):
    """LoRALinear over stacked factors whose batch rows can each weigh the stacked updates:
    `owner` (R,) names the update each stacked rank belongs to, and inside row_weights() row b
    computes ((x Aᵀ) ⊙ w_b[owner]) Bᵀ, the point Σ_i w[b, i]·ΔW_i."""

    def __init__(self, base, rank, alpha, rslora=False):
        super().__init__(base, rank, alpha, rslora)
        self.owner, self.rows = None, None

    def forward(self, x):                                                  # x (B, T, in)
        if self.rows is None or not self.enabled:
            return super().forward(x)
        y = self.base(x)                                                   # (B, T, out)
        x = x.to(self.lora_A.dtype)
        w = self.rows.w[:, self.owner]                                     # (B, N) -> (B, R)
        assert w.shape[0] == x.shape[0], f"{w.shape[0]} rows of weights for a batch of {x.shape[0]}"
        z = ((x @ self.lora_A.T) * w[:, None, :]) @ self.lora_B.T * self.scale  # (B, T, out)
        return y + z.to(y.dtype)


class RowWeights:
    """w (rows, N): each batch row's weights on the N stacked updates. sampler.generate() selects
    its rows as it selects the KV cache's (a prompt's n samples, finished rows leaving)."""

    def __init__(self, w):
        self.w = w

    def select(self, rows):
        self.w = self.w[rows]


def set_stacked(model, factor_sets):
    """Install the N factor sets side by side (combine with weights 1) and record which update
    each stacked rank belongs to; row_weights() then weighs them per batch row. Returns N."""
    set_factors(model, combine(factor_sets, [1.0] * len(factor_sets)), module=StackedLoRALinear)
    for name, m in lora_modules(model).items():
        owner = [i for i, f in enumerate(factor_sets) if name in f
                 for _ in range(f[name][2].shape[0])]
        m.owner = torch.tensor(owner, dtype=torch.long, device=m.lora_A.device)  # (R,)
    return len(factor_sets)


@contextmanager
def row_weights(model, w):
    """Row b of the batches run inside is the point Σ_i w[b, i]·ΔW_i of the set_stacked updates;
    yields the RowWeights to hand to generate(row_state=...). w (rows, N)."""
    mods = list(lora_modules(model).values())
    assert mods and all(getattr(m, "owner", None) is not None for m in mods), \
        "row_weights needs set_stacked(model, ...) first"
    A = mods[0].lora_A
    rows = RowWeights(torch.as_tensor(w, dtype=A.dtype, device=A.device))
    n = max(int(m.owner.max()) for m in mods) + 1
    assert rows.w.ndim == 2 and rows.w.shape[1] >= n, \
        f"weights {tuple(rows.w.shape)} for {n} updates"
    for m in mods:
        m.rows = rows
    try:
        yield rows
    finally:
        for m in mods:
            m.rows = None

# -----------------------------------------------------------------------------
# Self-check: python factored.py


if __name__ == "__main__":
    from errors import exit_on_user_error, no_flags
    no_flags(__doc__)
    from lora import apply_lora
    from model import TOY_CONFIG, Qwen2
    exit_on_user_error()
    torch.manual_seed(0)
    model = apply_lora(Qwen2(TOY_CONFIG), 4, 32.0, verbose=False)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.02)
    factors = lora_factors(model)
    half = {n: (s, 0.5 * B + 0.01, A.flip(0)) for n, (s, B, A) in factors.items()}
    dense = lambda f: torch.cat([(s * B.double() @ A.double()).flatten() for s, B, A in f.values()])
    want = dense(factors) @ dense(half)
    err = abs(factored_inner(factors, half) - want) / abs(want)
    print(f"factored inner product vs dense: relative error {err:.1e}")
    K = gram([factors, half], progress=False)
    print(f"gram vs factored_inner: relative error {abs(K[0, 1] - want) / abs(want):.1e}")
    summed, k = combine([factors, half], [1.0, -0.5]), 2
    cut = truncate(summed, k)
    dense_W = [s * B @ A for s, B, A in summed.values()]                 # (out, in) each, toy only
    trunc_err = sum(((W - Bk @ Ak) ** 2).sum().item()
                    for W, (_, Bk, Ak) in zip(dense_W, cut.values()))
    best_err = sum((torch.linalg.svdvals(W)[k:] ** 2).sum().item() for W in dense_W)  # Eckart-Young
    print(f"rank-{k} truncation error {trunc_err:.6e} vs dense SVD optimum {best_err:.6e}")
    assert err < 1e-9 and abs(trunc_err - best_err) <= 1e-9 * best_err, (err, trunc_err, best_err)
    # many adapters in one batch: row b carries the point W[b] of the stacked updates
    ids = torch.randint(0, TOY_CONFIG.vocab_size, (2, 16))                # (B, T)
    W = torch.tensor([[1.0, -0.5], [0.3, 0.7]])
    with torch.no_grad():
        set_stacked(model, [factors, half])
        with row_weights(model, W):
            rows = model(ids)                                             # (B, T, V), row b at W[b]
        alone = [set_factors(model, combine([factors, half], W[b].tolist()))(ids[b:b + 1])[0]
                 for b in range(len(W))]
    err = max(((rows[b] - alone[b]).abs().max() / rows[b].abs().max()).item() for b in range(2))
    print(f"per-row adapter weights vs each point installed alone: max relative error {err:.1e}")
    assert err < 1e-5, err
    print("factored.py: all checks passed")


def points_per_pass(model, n_prompts, prompt_len, max_new_tokens, fraction=0.5, cpu_cap=4 * 2**30):
    """How many points fit one pass of n_prompts rows each: per row, the KV cache of the whole
    sequence and the prefill's activations (the larger of the MLP's and the attention scores'),
    against `fraction` of the free memory (the GPU's, or MemAvailable up to cpu_cap on a CPU)."""
    c, device = model.config, model.lm_head.weight.device
    el, S = model.lm_head.weight.element_size(), prompt_len + max_new_tokens
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * S * el
    act = prompt_len * max(4 * c.intermediate_size * el, c.num_attention_heads * prompt_len * 4)
    act += 2 * c.vocab_size * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        meminfo = {}
        if os.path.exists("/proc/meminfo"):
            meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        free = int(meminfo.get("MemAvailable", "0 kB").split()[0]) * 1024
        free = min(free or cpu_cap, cpu_cap)
    return max(1, int(fraction * free // ((kv + act) * n_prompts)))
