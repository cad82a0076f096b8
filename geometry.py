"""
The geometry of LoRA training trajectories: PCA of effective updates, cosines, distances, plane
exploration and rank truncation, from the run folders that grpo.py and sft.py write.

    python geometry.py runs/                                # runs/geometry/geometry.json + figures
    python geometry.py runs/ --plane --grid 15 --eval-limit 256    # accuracy over the PC1-PC2 plane, batched
    python geometry.py runs/ --plane --truncate 1           # + rank-1 versions of the finals and plane samples
    python geometry.py --bench-scale 100                    # Gram of 100 rank-1 Qwen2.5-3B adapters: time, memory
    python geometry.py --decode-bytes                       # what batching the plane saves at Qwen2.5-3B

A checkpoint's effective update u = concat over adapted matrices of vec((α/r)·B·A) has the same
length for every rank, so runs of different ranks live in one space. Nothing here forms a dense
(out, in) update: inner products come from the factors, <B1A1, B2A2>_F = sum((B1ᵀB2) ⊙ (A1A2ᵀ)),
PCA from the Gram matrix K[i, j] = <u_i, u_j> (kernel PCA: the eigenvectors of the centered Gram
are the PC scores up to √λ), and a point of the PC plane is a linear combination of checkpoints,
so it is itself a factored adapter (stacked factors, lora.combine) evaluated as is, unmerged. Many
points share one generate() call: with every checkpoint stacked once (lora.set_stacked), each batch
row carries its own weights over them (lora.row_weights), and the base weights are read once per
decode step for all the points of the pass (--points-per-pass; 1 = one point at a time, the same
arithmetic, so the same greedy tokens).

Step 0: B = 0 at init (R = 0 for LoRA-XS, v = 0 for TinyLoRA), so every run starts at the origin
ΔW = 0. A run with no step_000000 folder gets that origin as its first point, and it joins the PCA
like any checkpoint (the trajectories all start from the same base model, and the plane then
reaches back to it).
Full fine-tuning runs (no adapter) are skipped with a note: their update is dense. LoRA-XS and
TinyLoRA runs join as rank-r factored updates (lora.py), beside LoRA runs of any rank.
"""
import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

import eval_gsm8k
import lora
import model as qwen
import runs as run_folders  # "runs" below is the list of run names

# -----------------------------------------------------------------------------
# Reading adapters lazily (finding the runs and their checkpoints is runs.py's)


class Adapter(Mapping):
    """A saved adapter as a read-only {module: (scale, B, A)} mapping (lora_factors' form) that
    reads a matrix from the safetensors file only when asked: the Gram over hundreds of checkpoints
    then holds one matrix's factors at a time, not every checkpoint (rank-16 3B adapters are 120 MB).
    PEFT LORA folders (LoRA-XS's included: lora_A = R·A) give (α/r, B, A); TINYLORA folders give
    (1, B, R·A) with R = Σ v_i P_i of the module's group, so every kind lands in one space."""

    def __init__(self, folder):
        path = os.path.join(folder, "adapter_config.json")
        c = qwen.read_json(path)
        c = c if isinstance(c, dict) else {}
        bad = {k: c[k] for k in ("rank_pattern", "alpha_pattern", "use_dora", "fan_in_fan_out") if c.get(k)}
        kind = c.get("peft_type")
        need = {"r", "lora_alpha"} if kind == "LORA" else {"r", "u", "weight_tying", "projection_seed"}
        if kind not in ("LORA", "TINYLORA") or bad or not need <= c.keys():
            raise qwen.UserError(f"{path}: not a plain LoRA or TinyLoRA adapter config (peft_type {kind!r}, "
                                 f"missing {sorted(need - c.keys()) or 'nothing'}, {bad or 'no unsupported options'})")
        self.config = c
        # the header is checked against the file's size now: a truncated file fails here, by name
        self.file = qwen.open_safetensors(os.path.join(folder, "adapter_model.safetensors"))
        n, suffix = len(lora.PEFT_PREFIX), ".lora_A.weight" if kind == "LORA" else ".tinylora_A"
        self.names = {k[n:-len(suffix)]: None for k in self.file.keys() if k.endswith(suffix)}
        if kind == "TINYLORA":  # {name: (index among the targets, group of v)}
            self.scale, self.layout, self.keys = 1.0, lora.tinylora_layout(c, list(self.names)), set(self.file.keys())
        else:
            self.scale = c["lora_alpha"] / (math.sqrt(c["r"]) if c.get("use_rslora") else c["r"])  # α/r or α/√r

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        if self.config["peft_type"] == "TINYLORA":
            get = lambda key: self.file.get_tensor(key) if key in self.keys else None
            return lora.tinylora_file_factors(self.config, get, name, *self.layout[name])  # (1, B (out, r), R·A (r, in))
        read = lambda part: self.file.get_tensor(f"{lora.PEFT_PREFIX}{name}.{part}.weight")
        return self.scale, read("lora_B"), read("lora_A")                 # (out, r), (r, in)

    def __contains__(self, name):  # Mapping's default would read the tensors to find out
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


# -----------------------------------------------------------------------------
# The math: Gram matrix from factors, kernel PCA


def gram(updates, device="cpu", progress=True):
    """K[i, j] = <u_i, u_j>_F over all adapted matrices, in float64, from the factors alone.

    Per matrix, every update's factors are stacked, Bs = [s1·B1 | s2·B2 | ...] (out, R) and
    As = [A1; A2; ...] (R, in), so (BsᵀBs) ⊙ (AsAsᵀ) (R, R) holds every pair's rank-by-rank terms
    and summing its blocks gives K. Memory: one matrix's stacked factors, (out + in)·R floats with R
    the total rank over checkpoints, never out·in; time R²·(out + in) per matrix, which a GPU
    (`device`) absorbs when R reaches the thousands. An update that lacks a matrix adds 0 there."""
    N = len(updates)
    K = torch.zeros(N, N, dtype=torch.float64, device=device)
    names = list(dict.fromkeys(n for u in updates for n in u))
    for name in tqdm(names, desc="gram", unit="matrix", disable=not progress):
        parts = [(i, *u[name]) for i, u in enumerate(updates) if name in u]  # (i, scale, B, A)
        B = torch.cat([s * B.to(device, torch.float64) for _, s, B, _ in parts], 1)         # (out, R)
        A = torch.cat([A.to(device, torch.float64) for _, _, _, A in parts], 0)             # (R, in)
        owner = torch.tensor([i for i, _, _, A in parts for _ in range(A.shape[0])], device=device)  # (R,)
        M = (B.T @ B) * (A @ A.T)                                                   # (R, R)
        M = torch.zeros(len(owner), N, dtype=M.dtype, device=device).index_add_(1, owner, M)  # (R, N)
        K.index_add_(0, owner, M)                                                   # blocks summed
    return K.cpu().numpy()


def pca(K):
    """Centered PCA of the points whose Gram matrix is K (N, N) -> scores (N, k), explained variance
    ratio (k,), coef (N, k). Kc = HKH with H = I - 11ᵀ/N; Kc = VΛVᵀ; point i's score on PC k is
    √λ_k·V[i, k], and PC k itself is Σ_i coef[i, k]·u_i with coef = V/√λ (V ⊥ 1 when λ > 0, so the
    mean drops out). k counts the components with λ > 0; each is signed so its largest score is > 0."""
    N = len(K)
    H = np.eye(N) - 1.0 / N
    lam, V = np.linalg.eigh(H @ K @ H)
    lam, V = lam[::-1], V[:, ::-1]                                           # descending
    keep = lam > max(lam[0], 0.0) * 1e-10                                    # drop round-off "variance"
    lam, V = lam[keep], V[:, keep]
    V = V * np.sign(V[np.abs(V).argmax(0), np.arange(V.shape[1])])         # a fixed sign per component
    total = lam.sum()
    return V * np.sqrt(lam), lam / total if total > 0 else lam, V / np.sqrt(lam)


def plane_weights(coef, a, b):
    """Weights w (N,) with Σ_i w_i·u_i = mean + a·pc1 + b·pc2."""
    N = len(coef)
    return np.full(N, 1.0 / N) + a * coef[:, 0] + (b * coef[:, 1] if coef.shape[1] > 1 else 0.0)


def cosine(K, i, j):
    d = math.sqrt(K[i, i] * K[j, j])
    return float(K[i, j] / d) if d > 0 else float("nan")


def truncation(factors, k):
    """lora.truncate(factors, k) and what survives: ||ΔW_k||²/||ΔW||² and cos(ΔW, ΔW_k)."""
    trunc = lora.truncate(factors, k)
    K = gram([factors, trunc], progress=False)
    return trunc, float(K[1, 1] / K[0, 0]), cosine(K, 0, 1)


def base_sq_norms(base, names):
    """{module: ||W||_F²} of the base weights, streamed one tensor at a time from the safetensors
    file(s): no model is built and at most one matrix is in memory."""
    path = qwen.resolve_path(base)
    index = os.path.join(path, "model.safetensors.index.json")
    where = qwen.read_json(index)["weight_map"] if os.path.exists(index) else {}
    by_file = {}
    for n in names:
        by_file.setdefault(where.get(f"{n}.weight", "model.safetensors"), []).append(n)
    out = {}
    for file, ns in by_file.items():
        f = qwen.open_safetensors(os.path.join(path, file))
        for n in ns:
            out[n] = f.get_tensor(f"{n}.weight").double().pow(2).sum().item()
    return out


# -----------------------------------------------------------------------------
# Many points in one pass, and the seed's open questions


def accuracies(net, tok, problems, factor_sets, W, per_pass, max_new_tokens, batch_size, stop, desc="eval"):
    """Strict accuracy of each point Σ_j W[k, j]·ΔW_j (W (K, N)) of the base model plus the stacked,
    unmerged factor sets, per_pass points per generate() call (lora.set_stacked, eval_gsm8k.evaluate_points)."""
    lora.set_stacked(net, factor_sets)
    per_pass = -(-len(W) // -(-len(W) // per_pass))  # as many passes, evenly filled (52 at 51 a pass: 26 + 26)
    out = []
    for k in tqdm(range(0, len(W), per_pass), desc=desc, unit="pass"):
        out += [s["accuracy"] for s, _ in eval_gsm8k.evaluate_points(
            net, tok, problems, W[k:k + per_pass], batch_size=batch_size, max_new_tokens=max_new_tokens,
            stop=stop, progress=False)]
    return np.array(out)


def pcs_to(evr, share=0.9):
    """How many leading components hold `share` of the variance."""
    return int(min(np.searchsorted(np.cumsum(evr), share - 1e-12) + 1, len(evr)))


def one_base(paths):
    """Do these base models (hub ids or folders) name one model? The same id or folder; or folders whose
    config and weights are byte-identical (a run folder copied from another checkout names its base there)."""
    def ident(p):
        return os.path.realpath(p) if os.path.isdir(p) else p
    names = {ident(p) for p in paths}
    if len(names) <= 1:
        return True
    if not all(os.path.isdir(p) for p in names):
        return False

    def fingerprint(folder):
        h = hashlib.sha256()
        for f in sorted(Path(folder).glob("*.safetensors")) + [Path(folder) / "config.json"]:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()
    return len({fingerprint(p) for p in names}) == 1


def reward_reach(rows, share=0.9, window=5):
    """(step, final) where a run's training reward, averaged over `window` steps, first gets `share`
    of the way from its first to its final value (study.py's definition); (None, None) without rewards."""
    pts = [(r["step"], r["reward"]) for r in rows if isinstance(r.get("reward"), (int, float))]
    if len(pts) < window:
        return None, None
    steps, rewards = np.array(pts).T
    smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")       # smooth[j]: steps j..j+window-1
    centre = steps[window // 2: window // 2 + len(smooth)]
    target = smooth[0] + share * (smooth[-1] - smooth[0])
    hit = smooth >= target if smooth[-1] >= smooth[0] else smooth <= target
    return int(centre[np.argmax(hit)]), float(smooth[-1])


def decode_bytes(config, rows, context, stacked_rank, weight_bytes=2, kv_bytes=2):
    """Bytes one decode step reads: the base weights once (embeddings as lm_head, tied or not), the
    stacked adapter factors (float32) once, and every row's KV cache over `context` tokens."""
    C, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    shapes = lora.projection_shapes(config).values()
    weights = (L * sum(o * i for o, i in shapes) + V * C) * weight_bytes
    factors = L * stacked_rank * sum(o + i for o, i in shapes) * 4
    kv = rows * context * 2 * L * config.num_key_value_heads * config.head_dim * kv_bytes
    return weights, factors, kv

# -----------------------------------------------------------------------------
# Figures (matplotlib, Agg: files only)


def draw_trajectories(ax, traj, colors, origin):
    """traj: {run: (steps, xy (n, 2))}; a line per run, a dot per checkpoint, first and last step
    labelled; origin: where the base model (ΔW = 0) falls in the plane."""
    ax.plot(*origin, "kx", ms=9, mew=2, label="base model (ΔW = 0)")
    for run, (steps, xy) in traj.items():
        ax.plot(xy[:, 0], xy[:, 1], "-o", color=colors[run], ms=3, lw=1.2, label=run)
        for k in {0, len(steps) - 1}:
            ax.annotate(str(steps[k]), xy[k], fontsize=7, color=colors[run], xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="PC1", ylabel="PC2")


def save_figures(out, traj, colors, origin, evr, per_run_evr, dist, runs, cos_final, cos_time):
    fig, ax = plt.subplots(figsize=(6, 5))
    draw_trajectories(ax, traj, colors, origin)
    ax.legend(fontsize=8)
    ax.set_title(f"trajectories in the PC1-PC2 plane ({100 * sum(evr[:2]):.0f}% of the variance)")
    fig.savefig(out / "trajectories.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in dist.items():
        ax.plot(*zip(*rows), "-o", ms=3, color=colors[run], label=run)
    ax.set(xlabel="step", ylabel="||u_t - u_0||_F", title="distance from the start")
    ax.legend(fontsize=8)
    fig.savefig(out / "distance.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(6, 4))
    n = min(len(evr), 20)
    ax.bar(np.arange(1, n + 1), evr[:n], color="0.7", label="all runs")
    for run, r in per_run_evr.items():
        ax.plot(np.arange(1, min(len(r), n) + 1), r[:n], "-o", ms=3, color=colors[run], label=run)
    ax.set(xlabel="component", ylabel="explained variance ratio", title="explained variance per component")
    ax.legend(fontsize=8)
    fig.savefig(out / "explained_variance.png", dpi=120, bbox_inches="tight")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    im = ax.imshow(cos_final, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set(xticks=range(len(runs)), yticks=range(len(runs)), xticklabels=runs, yticklabels=runs,
           title="cosine of the final updates")
    for (i, j), c in np.ndenumerate(np.array(cos_final)):
        ax.text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    for pair, rows in cos_time.items():
        ax2.plot(*(zip(*rows) if rows else ([], [])), "-o", ms=3, label=pair)
    ax2.axhline(0, color="0.5", lw=0.8, label="orthogonal")
    ax2.set(xlabel="step", ylabel="cosine", title="cosine between runs at the same step")
    ax2.legend(fontsize=8)
    fig.savefig(out / "cosine.png", dpi=120, bbox_inches="tight")
    plt.close("all")


def save_plane_figure(out, traj, colors, origin, a, b, acc, best, levels=(), samples=()):
    """levels: (value, label, style) contours, drawn between the grid points' centres."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    da, db = (a[1] - a[0]) / 2 if len(a) > 1 else 1, (b[1] - b[0]) / 2 if len(b) > 1 else 1
    im = ax.imshow(acc, origin="lower", extent=(a[0] - da, a[-1] + da, b[0] - db, b[-1] + db),
                   aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="accuracy")
    for value, label, style in levels:
        if len(a) > 1 and len(b) > 1 and acc.min() < value < acc.max():
            ax.contour(a, b, acc, levels=[value], colors=style[0], linestyles=style[1], linewidths=1.5)
            ax.plot([], [], color=style[0], ls=style[1], label=label)  # contour sets have no legend entry
    draw_trajectories(ax, traj, colors, origin)
    if samples:
        ax.plot([p["a"] for p in samples], [p["b"] for p in samples], "wo", ms=5, mfc="none", label="truncated samples")
    ax.plot([p["a"] for p in best], [p["b"] for p in best], "r*", ms=12, label="best")
    ax.legend(fontsize=7)
    ax.set_title(f"accuracy over the PC1-PC2 plane ({len(a)}x{len(b)} grid)")
    fig.savefig(out / "plane.png", dpi=120, bbox_inches="tight")
    plt.close("all")

# -----------------------------------------------------------------------------
# The scale benchmark: synthetic rank-1 adapters of Qwen2.5-3B's shapes


def bench_scale(n, device, rank=1, seed=0):
    """Write n synthetic PEFT adapters of Qwen2.5-3B's shapes (Qwen2Config's defaults) to a temp dir,
    then time their Gram matrix; a thread samples the anonymous memory every 5 ms for its peak."""
    import resource, tempfile, threading
    from safetensors.torch import save_file
    config, g = qwen.Qwen2Config(), torch.Generator().manual_seed(seed)
    shapes = {lora.module_name(i, t): shape for i in range(config.num_hidden_layers)
              for t, shape in lora.projection_shapes(config).items()}
    per, dense = sum(rank * (o + i) for o, i in shapes.values()), sum(o * i for o, i in shapes.values())
    # anonymous resident memory, MiB (Linux): what the process allocated, without the page cache that
    # the mmapped safetensors files add to RSS (reclaimable, and shared with the OS)
    rss_anon_mib = lambda: next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    print(f"{n} synthetic rank-{rank} adapters of Qwen2.5-3B's shapes: {len(shapes)} matrices, {per:,} parameters "
          f"each; Gram in float64 on {device}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        for k in tqdm(range(n), desc="write"):  # one adapter in memory at a time
            folder = Path(tmp) / f"step_{k:06d}"
            folder.mkdir()
            save_file({f"{lora.PEFT_PREFIX}{name}.lora_{p}.weight": torch.randn(shape, generator=g) * 0.01
                       for name, (o, i) in shapes.items() for p, shape in (("A", (rank, i)), ("B", (o, rank)))},
                      str(folder / "adapter_model.safetensors"))
            (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 32}))
        before, peak, stop = rss_anon_mib(), [0.0], threading.Event()
        def watch():
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss_anon_mib())
        watcher = threading.Thread(target=watch)
        watcher.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        updates = [Adapter(Path(tmp) / f"step_{k:06d}") for k in range(n)]
        K = gram(updates, device)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        watcher.join()
        check = lora.factored_inner(dict(updates[0]), dict(updates[-1]))
    assert abs(check - K[0, -1]) <= 1e-9 * math.sqrt(K[0, 0] * K[-1, -1]), (check, K[0, -1])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"Gram {n}x{n}: {seconds:.1f} s wall, {cpu:.1f} s CPU (all threads). Anonymous memory: {before:.0f} MiB before, peak {peak[0]:.0f} MiB "
          f"(+{peak[0] - before:.0f}); peak RSS with the mmapped files' pages {maxrss:.0f} MiB. The dense updates "
          f"would take {n * dense * 4 / 2**30:,.0f} GiB in float32. K[0, -1] equals lora.factored_inner.")



def print_decode_bytes(batch, max_new_tokens, prompt=150, stacked_rank=150, ks=(1, 4, 16, 64, 226)):
    """The plane at Qwen2.5-3B (Qwen2Config's defaults, bf16): what one decode step reads with K points
    per pass of `batch` prompts each, against one point per pass. Decoding reads every weight once
    per step whatever the batch, so bytes per generated token fall as K·batch rows share them, until
    the rows' own KV caches dominate. The context is the prompt plus half the budget (a mean)."""
    config, ctx = qwen.Qwen2Config(), prompt + max_new_tokens // 2
    per = lambda k: (lambda w, f, kv: (w + f + kv) / (k * batch))(*decode_bytes(config, k * batch, ctx, stacked_rank))
    w, f, kv1 = decode_bytes(config, batch, ctx, stacked_rank)
    print(f"Qwen2.5-3B decode step, bf16 weights {w / 1e9:.2f} GB, stacked rank-{stacked_rank} factors (fp32) {f / 1e9:.2f} GB, "
          f"KV cache {kv1 / batch / 1e6:.1f} MB a row at {ctx} tokens; {batch} prompts per point per pass")
    print(f"{'points per pass':>15} | {'rows':>6} | {'GB read a step':>14} | {'MB per generated token':>22} | {'gain':>5}")
    for k in ks:
        total = sum(decode_bytes(config, k * batch, ctx, stacked_rank))
        print(f"{k:>15} | {k * batch:>6} | {total / 1e9:>14.1f} | {per(k) / 1e6:>22.1f} | {per(1) / per(k):>5.2f}x")

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", nargs="?", default=None, help="folder of run folders (runs/<name>/step_XXXXXX/); default runs/")
    parser.add_argument("--out", default=None, help="output folder; default RUNS_DIR/geometry/")
    parser.add_argument("--components", type=int, default=10, help="PC coordinates stored per checkpoint")
    parser.add_argument("--model", default=None, help="base model (folder or hub id); default: the adapters' base_model_name_or_path")
    # plane exploration and truncation (these load the base model and evaluate)
    parser.add_argument("--plane", action="store_true", help="evaluate a grid over the PC1-PC2 plane")
    parser.add_argument("--grid", type=int, default=5, help="grid points per axis (grid x grid evaluations; 15 or more finds the good region's edge)")
    parser.add_argument("--margin", type=float, default=1.5, help="grid beyond the trajectories on each side, as a fraction of "
                        "their span (far enough that accuracy falls below the base; a note says when it does not)")
    parser.add_argument("--points-per-pass", type=int, default=0, help="plane points (or adapters) scored side by side in "
                        "one generate() call, batch-size prompts each; 0 = as many as memory allows, 1 = one point per pass")
    parser.add_argument("--truncate", type=int, default=0, help="evaluate best rank-K versions of the final checkpoints "
                        "(and of the plane samples with --plane); 0 = no truncation")
    parser.add_argument("--samples", type=int, default=5, help="plane samples to truncate: the N best points and N drawn at "
                        "random from the rest of the good region")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random plane samples")
    parser.add_argument("--eval-limit", type=int, default=50, help="test problems per evaluation (toy or gsm8k, per the runs' args.json)")
    parser.add_argument("--data", default=None, help="GSM8K test data: a folder holding test.jsonl, or a JSONL file; default the runs' args.json --data, else the cached download")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="completion budget; 0 = the runs' args.json, else 64 (toy) / 512")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu; none = the best available")
    parser.add_argument("--bench-scale", type=int, default=0, help="benchmark only: Gram of N synthetic rank-1 "
                        "Qwen2.5-3B adapters (time, peak memory); 0 = off")
    parser.add_argument("--decode-bytes", action="store_true", help="print only: the bytes a decode step reads at "
                        "Qwen2.5-3B, one plane point per pass vs K, and the projected gain")
    args = parser.parse_args()
    qwen.exit_on_user_error()
    # float64 Gram on a CUDA GPU when there is one (MPS has no float64), else the CPU
    gram_device = torch.device("cuda") if qwen.pick_device(args.device).type == "cuda" else torch.device("cpu")
    if args.bench_scale:
        bench_scale(args.bench_scale, gram_device)
        raise SystemExit
    if args.decode_bytes:
        print_decode_bytes(args.batch_size, args.max_new_tokens or 512)
        raise SystemExit
    args.runs_dir = args.runs_dir or "runs"
    if not os.path.isdir(args.runs_dir):
        parser.print_help()
        raise qwen.user_exit(f"no folder {args.runs_dir}/: train some runs first (`python grpo.py --toy --rank 1`), or try --bench-scale 100")
    out = Path(args.out or Path(args.runs_dir) / "geometry")

    # --- every checkpoint of every run, read lazily; the origin first where step 0 was not saved
    runs_steps, notes = run_folders.find_runs(args.runs_dir, adapters_only=True)
    print("".join(f"note: {n}\n" for n in notes), end="")
    if not runs_steps:
        raise qwen.user_exit(f"no LoRA runs under {args.runs_dir}/ (a run is a folder with step_*/adapter_model.safetensors)")
    runs = sorted(runs_steps)
    ckpts, updates, origins = [], [], []  # (run, step), and {} for an origin or an Adapter
    for run in runs:
        if runs_steps[run][0][0] != 0:
            ckpts.append((run, 0))
            updates.append({})
            origins.append(run)
        for step, folder in tqdm(runs_steps[run], desc=f"load {run}"):
            ckpts.append((run, step))
            updates.append(Adapter(folder))
    index = {run: [i for i, (r, _) in enumerate(ckpts) if r == run] for run in runs}
    last = {run: ix[-1] for run, ix in index.items()}
    print(f"{len(runs)} runs, {len(ckpts)} points ({len(origins)} origins added): "
          + ", ".join(f"{run} rank {updates[last[run]].config['r']}" for run in runs))

    # --- Gram, PCA, cosines, norms
    K = gram(updates, gram_device)
    scores, evr, coef = pca(K)
    scores2 = np.pad(scores, ((0, 0), (0, max(0, 2 - scores.shape[1]))))[:, :2]  # PC1, PC2 (0 if missing)
    per_run = {run: pca(K[np.ix_(ix, ix)])[1] for run, ix in index.items()}
    steps = {run: [ckpts[i][1] for i in ix] for run, ix in index.items()}
    norm = {run: [[ckpts[i][1], math.sqrt(max(K[i, i], 0.0))] for i in ix] for run, ix in index.items()}
    dist = {run: [[ckpts[i][1], math.sqrt(max(K[i, i] - 2 * K[i, ix[0]] + K[ix[0], ix[0]], 0.0))] for i in ix]
            for run, ix in index.items()}
    cos_final = [[cosine(K, last[r1], last[r2]) for r2 in runs] for r1 in runs]
    cos_time = {}
    for r1, r2 in combinations(runs, 2):
        at = {ckpts[j][1]: j for j in index[r2]}  # step -> r2's point
        pairs = [(i, at[ckpts[i][1]]) for i in index[r1] if ckpts[i][1] in at]
        cos_time[f"{r1} vs {r2}"] = [[ckpts[i][1], cosine(K, i, j)] for i, j in pairs if K[i, i] > 0 and K[j, j] > 0]
    cos_to_final = {run: [[ckpts[i][1], cosine(K, i, last[run])] for i in ix if K[i, i] > 0] for run, ix in index.items()}
    # --- the seed's open questions: how many PCs hold 90% of the variance (over all runs, per run, per
    # rank), and how direct each path is (length over displacement) beside when its reward got there
    rank_of = {run: updates[last[run]].config["r"] for run in runs}
    by_rank = {r: [i for run in runs if rank_of[run] == r for i in index[run]] for r in sorted(set(rank_of.values()))}
    run_args = {run: run_folders.read_args(d) if os.path.exists(os.path.join(d := os.path.join(args.runs_dir, run), "args.json"))
                else {} for run in runs}
    pcs_90 = dict(all=pcs_to(evr), per_run={run: pcs_to(v) for run, v in per_run.items()},
                  per_rank={str(r): pcs_to(pca(K[np.ix_(ix, ix)])[1]) for r, ix in by_rank.items()})
    d = lambda i, j: math.sqrt(max(K[i, i] - 2 * K[i, j] + K[j, j], 0.0))
    directness = {}
    for run, ix in index.items():
        length, disp = sum(d(i, j) for i, j in zip(ix, ix[1:])), d(ix[0], ix[-1])
        metrics = os.path.join(args.runs_dir, run, "metrics.jsonl")
        rows = run_folders.read_metrics(os.path.join(args.runs_dir, run)) if os.path.exists(metrics) else []
        (half, _), (reach, final) = reward_reach(rows, 0.5), reward_reach(rows, 0.9)
        directness[run] = dict(path_length=length, displacement=disp, path_over_displacement=length / max(disp, 1e-300),
                               step_to_50pct_reward=half, step_to_90pct_reward=reach, final_reward=final, last_step=ckpts[ix[-1]][1])
    print(f"PCs to 90% of the variance: {pcs_90['all']} over all runs; per rank "
          + ", ".join(f"{r}: {k}" for r, k in pcs_90["per_rank"].items()) + "; per run "
          + ", ".join(f"{r}: {k}" for r, k in pcs_90["per_run"].items()))
    for run, v in directness.items():
        print(f"{run}: path length / displacement {v['path_over_displacement']:.3f}; reward half / 90% of the way to "
              f"{v['final_reward'] if v['final_reward'] is None else round(v['final_reward'], 3)} at steps "
              f"{v['step_to_50pct_reward']} / {v['step_to_90pct_reward']} "
              f"(of {v['last_step']})")
    print("explained variance ratio: " + " ".join(f"{v:.3f}" for v in evr[:6])
          + f"  (PC1+PC2 = {sum(evr[:2]):.3f})")
    for r1, row in zip(runs, cos_final):
        print(f"cosine of final updates  {r1:>12}: " + " ".join(f"{c:+.3f}" for c in row))

    # --- ||ΔW||_F / ||W||_F over the adapted matrices at the last checkpoint
    update_to_weight, bases = {}, {}
    for run in runs:
        bases[run] = args.model or updates[last[run]].config.get("base_model_name_or_path")
        try:
            w2 = sum(base_sq_norms(bases[run], list(updates[last[run]])).values())
            update_to_weight[run] = math.sqrt(K[last[run], last[run]] / w2)
            print(f"{run}: ||ΔW||/||W|| = {update_to_weight[run]:.3e} at step {ckpts[last[run]][1]} (base {bases[run]})")
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:  # UserError is a ValueError
            notes.append(f"{run}: no ||ΔW||/||W|| (base model {bases[run]!r} unreadable: {type(e).__name__}: {e})")
            print(f"note: {notes[-1]}")

    colors = {run: f"C{k % 10}" for k, run in enumerate(runs)}
    traj = {run: (steps[run], scores2[ix]) for run, ix in index.items()}
    report = {"runs": runs,
              "checkpoints": [{"run": r, "step": s, "pc": scores[i, :args.components].tolist()} for i, (r, s) in enumerate(ckpts)],
              "explained_variance_ratio": evr.tolist(),
              "cosine_final": cos_final,
              "norm": norm,
              "update_to_weight": update_to_weight,
              # beyond DESIGN.md's keys
              "explained_variance_ratio_per_run": {run: v.tolist() for run, v in per_run.items()},
              "distance_from_start": dist, "cosine_over_time": cos_time, "cosine_to_final": cos_to_final,
              "gram": K.tolist(), "origin_added": origins, "pcs_to_90": pcs_90, "directness": directness,
              "notes": notes}
    out.mkdir(parents=True, exist_ok=True)
    origin = -(K.mean(0) @ np.pad(coef, ((0, 0), (0, max(0, 2 - coef.shape[1]))))[:, :2])  # <0 - mean, pc1, pc2>
    report["origin_pc"] = origin.tolist()
    save_figures(out, traj, colors, origin, evr, per_run, dist, runs, cos_final, cos_time)

    # --- plane exploration and truncation: the base model plus factored adapters, evaluated
    if args.plane or args.truncate:
        if not one_base(bases.values()):
            raise qwen.user_exit(f"--plane/--truncate need runs of one base model, got {bases} (pass --model or fewer runs)")
        tasks = {a.get("task") or ("toy" if a.get("toy") else "gsm8k") for a in run_args.values()}
        if len(tasks) != 1:
            raise qwen.user_exit(f"--plane/--truncate need runs of one task, got {sorted(tasks)}")
        task = tasks.pop()
        first_args = run_args[runs[0]]
        data = args.data or first_args.get("data")  # what every script's --data means: a folder or a file
        problems = eval_gsm8k.load_task(task, "test", eval_gsm8k.data_path(data, "test") if task == "gsm8k" else None)
        problems = problems[:args.eval_limit]
        max_new = args.max_new_tokens or first_args.get("max_new_tokens") or (64 if task == "toy" else 512)
        net, tok = qwen.load_model(bases[runs[0]], device=args.device), qwen.load_tokenizer(bases[runs[0]])
        stop = eval_gsm8k.stop_ids(tok)
        prompt_len = max(len(tok.encode(eval_gsm8k.format_prompt(p["question"]))) for p in problems)
        per_pass = args.points_per_pass or eval_gsm8k.points_per_pass(net, min(args.batch_size, len(problems)), prompt_len, max_new)
        print(f"evaluating on {len(problems)} {task} test problems, {max_new} new tokens, greedy, "
              f"{per_pass} point(s) per pass of {args.batch_size} prompts each"
              + (" (as many as memory allows)" if not args.points_per_pass else ""))
        factor_sets = [dict(u) for u in updates]  # in memory now: every plane point reads them all
        N = len(factor_sets)
        # Exact, no truncation: a point's stacked rank R is the total rank of all checkpoints, and
        # its LoRA path costs R·(in + out) multiply-adds per token per matrix beside the base's
        # in·out (rank-1 3B runs, 150 checkpoints: ~10% more). Merging instead would round a
        # small ΔW into bf16 weights (8 bits of mantissa), and the stacked factors stay float32.
        shape = {n: (f[n][1].shape[0], f[n][2].shape[1]) for f in factor_sets for n in f}   # (out, in)
        rank = {n: sum(f[n][2].shape[0] for f in factor_sets if n in f) for n in shape}       # stacked R
        R, extra = max(rank.values()), sum(rank[n] * sum(shape[n]) for n in shape) / sum(o * i for o, i in shape.values())
        # the points, as weights on the N checkpoints: the base (w = 0), each run's final, the grid
        finals = np.eye(N)[[last[run] for run in runs]]
        if args.plane:
            lo, hi = scores2.min(0), scores2.max(0)
            pad = args.margin * np.maximum(hi - lo, 1e-12)
            a_ax, b_ax = (np.linspace(lo[k] - pad[k], hi[k] + pad[k], args.grid) for k in range(2))
            grid = np.array([plane_weights(coef, a_ax[p % args.grid], b_ax[p // args.grid]) for p in range(args.grid ** 2)])
            print(f"plane: {args.grid}x{args.grid} points, each a stacked adapter of rank up to {R} (exact, unmerged): "
                  f"its LoRA path adds {100 * extra:.0f}% to the adapted matrices' multiply-adds")
        else:
            grid = np.zeros((0, N))
        W = np.concatenate([np.zeros((1, N)), finals, grid])
        t0 = time.perf_counter()
        acc_all = accuracies(net, tok, problems, factor_sets, W, per_pass, max_new, args.batch_size, stop, desc="points")
        seconds = time.perf_counter() - t0
        base_acc, acc_final = float(acc_all[0]), dict(zip(runs, acc_all[1:1 + len(runs)].tolist()))
        print(f"base model (the origin): accuracy {base_acc:.3f}; {len(W)} points in {seconds:.1f} s "
              f"({seconds / len(W):.2f} s a point, {-(-len(W) // per_pass)} passes)")
        samples, best = [], []
        if args.plane:
            acc = acc_all[1 + len(runs):].reshape(args.grid, args.grid)  # [b, a]
            # the best point (ties: the one nearest the mean, a = b = 0); "good" = within 90% of it (none if it is 0)
            top, n = acc.max(), len(problems)
            order = sorted(zip(*np.nonzero(acc >= 0)), key=lambda p: (-acc[p], math.hypot(a_ax[p[1]], b_ax[p[0]])))
            point = lambda p, kind: dict(a=float(a_ax[p[1]]), b=float(b_ax[p[0]]), accuracy=float(acc[p]), kind=kind)
            best = [point(order[0], "best")]
            good = acc >= 0.9 * top if top > 0 else np.zeros_like(acc, dtype=bool)
            above = acc > base_acc
            # truncation samples: the best few, and a few drawn at random from the rest of the good region
            samples = [point(p, "best") for p in order[:args.samples]]
            rest = [p for p in order[args.samples:] if good[p]]
            pick = np.random.default_rng(args.seed).permutation(len(rest))[:args.samples]
            samples += [point(rest[k], "good") for k in sorted(pick)]
            cell = (a_ax[1] - a_ax[0]) * (b_ax[1] - b_ax[0]) if args.grid > 1 else float("nan")
            border = np.ones_like(above)
            border[1:-1, 1:-1] = False
            report["plane"] = dict(a=a_ax.tolist(), b=b_ax.tolist(), accuracy=acc.tolist(), best=best, task=task,
                                   eval_limit=n, base_accuracy=base_acc, stacked_rank=R,
                                   good_fraction=float(good.mean()), above_base_fraction=float(above.mean()),
                                   # areas in PC units (a cell per grid point), beside the shares of the grid above
                                   good_area=float(good.sum() * cell), above_base_area=float(above.sum() * cell),
                                   grid_area=float(acc.size * cell), cell_area=float(cell),
                                   # the region above the base reaches the grid's edge: the grid does not enclose it
                                   above_base_at_edge=bool((above & border).any()),
                                   final_accuracy=acc_final, samples=samples, points_per_pass=per_pass,
                                   seconds=seconds, seconds_per_point=seconds / len(W), points=len(W))
            print(f"plane: best accuracy {top:.3f} at (a, b) = ({best[0]['a']:.3g}, {best[0]['b']:.3g}); "
                  f"good (>= 90% of it): {100 * good.mean():.0f}% of the grid, area {good.sum() * cell:.4g}; above the base "
                  f"({base_acc:.3f}): {100 * above.mean():.0f}%, area {above.sum() * cell:.4g} (PC units; grid {acc.size * cell:.4g})")
            if report["plane"]["above_base_at_edge"]:
                print("note: the region above the base reaches the grid's edge; widen --margin to find where it ends")
            levels = [(base_acc + 0.5 / n, f"above the base ({base_acc:.3f})", ("w", "--"))]
            if top > 0:
                levels.append((0.9 * top - 0.5 / n, f"good: >= 90% of the best ({0.9 * top:.3f})", ("r", "-")))
            save_plane_figure(out, traj, colors, origin, a_ax, b_ax, acc, best, levels, samples)
        if args.truncate:
            # rank-k versions of the finals and the plane samples, stacked in their turn: one batched pass
            targets = [(f"{run} final (step {ckpts[last[run]][1]})", factor_sets[last[run]], acc_final[run]) for run in runs]
            targets += [(f"plane {p['kind']} ({p['a']:.3g}, {p['b']:.3g})",
                         lora.combine(factor_sets, plane_weights(coef, p["a"], p["b"])), p["accuracy"]) for p in samples]
            cut = [truncation(f, args.truncate) for _, f, _ in tqdm(targets, desc=f"rank-{args.truncate} SVDs")]
            acc_cut = accuracies(net, tok, problems, [t for t, _, _ in cut], np.eye(len(cut)), per_pass, max_new,
                                 args.batch_size, stop, desc=f"rank-{args.truncate}")
            rows = [dict(name=name, rank=args.truncate, accuracy=acc_full, accuracy_truncated=float(a_cut),
                         energy_kept=kept, cosine=cos) for (name, _, acc_full), (_, kept, cos), a_cut in zip(targets, cut, acc_cut)]
            print(f"{'':40} | {'accuracy':>8} | {f'rank-{args.truncate}':>8} | {'||ΔW_k||²/||ΔW||²':>17} | cos")
            for r in rows:
                print(f"{r['name']:40} | {r['accuracy']:8.3f} | {r['accuracy_truncated']:8.3f} | {r['energy_kept']:17.4f} | {r['cosine']:.4f}")
            report["truncation"] = dict(rank=args.truncate, base_accuracy=base_acc, eval_limit=len(problems), rows=rows)
    (out / "geometry.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'geometry.json'} and figures: " + ", ".join(sorted(p.name for p in out.glob("*.png"))))
