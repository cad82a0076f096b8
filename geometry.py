"""
The geometry of LoRA training trajectories: PCA of effective updates, cosines, distances, plane
exploration and rank truncation, from the run folders that grpo.py and sft.py write.

    python geometry.py runs/                                # runs/geometry/geometry.json + figures
    python geometry.py runs/ --plane --grid 15 --eval-limit 256    # accuracy over the PC1-PC2 plane
    python geometry.py runs/ --plane --truncate 1           # + rank-1 finals and plane samples
    python geometry.py --bench-scale 100                    # Gram of 100 rank-1 Qwen2.5-3B adapters
    python geometry.py --decode-bytes                       # what batching the plane saves at 3B

A checkpoint's effective update u = concat over adapted matrices of vec((α/r)·B·A) has the same
length for every rank, so runs of different ranks live in one space. Nothing here forms a dense
(out, in) update: inner products come from the factors (factored.gram), PCA from the Gram matrix
K[i, j] = <u_i, u_j> (kernel PCA: the eigenvectors of the centered Gram are the PC scores up to
√λ), and a point of the PC plane is a linear combination of checkpoints, so it is itself a
factored adapter, evaluated as is, unmerged, many points to a generate() call (factored.py).
The steps, in order: trajectory_report (PCA, cosines, norms, distances, how many PCs reach 90%,
how direct each path is), update_to_weight, explore_plane, truncation_report.
Step 0: B = 0 at init (R = 0 for LoRA-XS, v = 0 for TinyLoRA), so every run starts at the origin
ΔW = 0. A run with no step_000000 folder gets that origin as its first point, and it joins the
PCA like any checkpoint. Full fine-tuning runs (no adapter) are skipped with a note: their update
is dense. LoRA-XS and TinyLoRA runs join as rank-r factored updates beside LoRA runs of any rank.
"""
import argparse
import atexit
import json
import math
import os
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import model as qwen
import runs as run_folders  # "runs" below is the list of run names
from adapters import SavedFactors
from errors import (COUNT, COUNT0, NONNEGATIVE, SEED, HelpFormatter, check_writable,
                    exit_on_user_error, fsync_tree, number, open_safetensors, read_json,
                    stop_on_signals, user_exit)
from factored import factored_svd, gram
from geometry_figures import method_styles, save_figures
from geometry_plane import explore_plane, truncation_report
from geometry_scale import bench_scale, print_decode_bytes
from hub import resolve_path
from versions import same_model

# -----------------------------------------------------------------------------
# The math: kernel PCA of the Gram matrix, and what a plane point is


def pca(K):
    """Centered PCA of the points whose Gram matrix is K (N, N) -> scores (N, k), explained
    variance ratio (k,), coef (N, k). Kc = HKH with H = I - 11ᵀ/N; Kc = VΛVᵀ; point i's score on
    PC k is √λ_k·V[i, k], and PC k itself is Σ_i coef[i, k]·u_i with coef = V/√λ (V ⊥ 1 when
    λ > 0, so the mean drops out). k counts the components with λ > 0; each is signed so its
    largest score is > 0."""
    N = len(K)
    H = np.eye(N) - 1.0 / N
    lam, V = np.linalg.eigh(H @ K @ H)
    lam, V = lam[::-1], V[:, ::-1]                                           # descending
    keep = lam > max(lam[0], 0.0) * 1e-10                                    # drop round-off
    lam, V = lam[keep], V[:, keep]
    V = V * np.sign(V[np.abs(V).argmax(0), np.arange(V.shape[1])])         # a fixed sign per PC
    total = lam.sum()
    return V * np.sqrt(lam), lam / total if total > 0 else lam, V / np.sqrt(lam)


def method(update):
    """What trained a run, from its last adapter (SavedFactors): "LoRA rank 4", "LoRA-XS rank 2",
    "TinyLoRA, 13 parameters" (u per group times the groups): the figures' colour for it."""
    c = update.config
    if c.get("peft_type") == "TINYLORA":
        n = c["u"] * max(1, round(len(update) * (1 - c["weight_tying"])))
        return f"TinyLoRA, {n} parameter{'s' * (n != 1)}"
    xs = os.path.exists(os.path.join(update.folder, "loraxs.safetensors"))
    return f"{'LoRA-XS' if xs else 'LoRA'} rank {c['r']}"


def reference_pca(U):
    """pca() the textbook way, to test it against: the updates as the rows of one dense matrix
    U (N, D), centered, and its SVD U_c = P·S·Qᵀ: the scores are P·S and the variance ratios
    S²/ΣS² (signed as pca()'s). Only for small models: D counts every adapted weight."""
    U = torch.as_tensor(np.asarray(U), dtype=torch.float64)
    P, S, _ = (t.numpy() for t in torch.linalg.svd(U - U.mean(0), full_matrices=False))
    keep = S ** 2 > S[0] ** 2 * 1e-10                                          # drop round-off
    P, S = P[:, keep], S[keep]
    P = P * np.sign(P[np.abs(P).argmax(0), np.arange(P.shape[1])])
    return P * S, S ** 2 / (S ** 2).sum()


def cosine(K, i, j):
    d = math.sqrt(K[i, i] * K[j, j])
    return float(K[i, j] / d) if d > 0 else float("nan")


def pcs_to(evr, share=0.9):
    """How many leading components hold `share` of the variance."""
    return int(min(np.searchsorted(np.cumsum(evr), share - 1e-12) + 1, len(evr)))


def reward_reach(rows, share=0.9, window=5):
    """(step, final) where a run's training reward, averaged over `window` steps, first gets
    `share` of the way from its first to its final value; (None, None) without rewards."""
    pts = [(r["step"], r["reward"]) for r in rows if isinstance(r.get("reward"), (int, float))]
    if len(pts) < window:
        return None, None
    steps, rewards = np.array(pts).T
    smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")  # steps j..j+window-1
    centre = steps[window // 2: window // 2 + len(smooth)]
    target = smooth[0] + share * (smooth[-1] - smooth[0])
    hit = smooth >= target if smooth[-1] >= smooth[0] else smooth <= target
    return int(centre[np.argmax(hit)]), float(smooth[-1])

# -----------------------------------------------------------------------------
# The base model's weights' norms


def base_sq_norms(base, names):
    """{module: ||W||_F²} of the base weights, streamed one tensor at a time from the safetensors
    file(s): no model is built and at most one matrix is in memory."""
    path = resolve_path(base)
    index = os.path.join(path, "model.safetensors.index.json")
    where = read_json(index)["weight_map"] if os.path.exists(index) else {}
    by_file = {}
    for n in names:
        by_file.setdefault(where.get(f"{n}.weight", "model.safetensors"), []).append(n)
    out = {}
    for file, ns in by_file.items():
        f = open_safetensors(os.path.join(path, file))
        for n in ns:
            out[n] = f.get_tensor(f"{n}.weight").double().pow(2).sum().item()
    return out


# -----------------------------------------------------------------------------
# The steps


def load_runs(root, only=None):
    """Every checkpoint of every adapter run under root (or of the one run `only`), read lazily,
    the origin first where step 0 was not saved -> (runs, ckpts [(run, step)], updates
    [SavedFactors or {}], origins, notes). Runs whose matrices differ in shape cannot share one
    space: refused, naming them."""
    runs_steps, notes = run_folders.find_runs(root, adapters_only=True)
    if only is not None:
        runs_steps = {only: runs_steps[only]} if only in runs_steps else {}
        notes = [n for n in notes if n.startswith(f"{only}:")]
    print("".join(f"note: {n}\n" for n in notes), end="")
    if not runs_steps:
        where = os.path.join(root, only) if only else f"{root}/"
        raise user_exit(f"no LoRA runs in {where} (a run is a folder with "
                        f"step_*/adapter_model.safetensors)")
    runs = sorted(runs_steps)
    ckpts, updates, origins = [], [], []
    for run in runs:
        if runs_steps[run][0][0] != 0:
            ckpts.append((run, 0))
            updates.append({})
            origins.append(run)
        for step, folder in tqdm(runs_steps[run], desc=f"load {run}"):
            ckpts.append((run, step))
            updates.append(SavedFactors(folder))
    shapes = {}
    for (run, _), u in zip(ckpts, updates):
        for name, shape in (u.shapes().items() if u else ()):
            seen = shapes.setdefault(name, (run, shape))
            if seen[1] != shape:
                raise user_exit(f"runs {seen[0]} and {run} adapt {name} of shapes {seen[1]} and "
                                f"{shape}: runs of different models share no space")
    return runs, ckpts, updates, origins, notes


def trajectory_report(K, runs, ckpts, updates, runs_dir, components):
    """PCA over every checkpoint of every run, per run and per rank; norms, distances from the
    start, cosines (finals, same steps, to the final); PCs to 90% and each path's directness
    beside its reward's rise. -> (report, scores, coef, index)."""
    index = {run: [i for i, (r, _) in enumerate(ckpts) if r == run] for run in runs}
    last = {run: ix[-1] for run, ix in index.items()}
    step = lambda i: ckpts[i][1]
    d = lambda i, j: math.sqrt(max(K[i, i] - 2 * K[i, j] + K[j, j], 0.0))
    scores, evr, coef = pca(K)
    per_run = {run: pca(K[np.ix_(ix, ix)])[1] for run, ix in index.items()}
    norm = {run: [[step(i), math.sqrt(max(K[i, i], 0.0))] for i in ix] for run, ix in index.items()}
    dist = {run: [[step(i), d(i, ix[0])] for i in ix] for run, ix in index.items()}
    cos_final = [[cosine(K, last[r1], last[r2]) for r2 in runs] for r1 in runs]
    cos_time = {}
    for r1, r2 in combinations(runs, 2):
        at = {step(j): j for j in index[r2]}  # step -> r2's point
        pairs = [(i, at[step(i)]) for i in index[r1] if step(i) in at]
        cos_time[f"{r1} vs {r2}"] = [[step(i), cosine(K, i, j)] for i, j in pairs
                                     if K[i, i] > 0 and K[j, j] > 0]
    cos_to_final = {run: [[step(i), cosine(K, i, last[run])] for i in ix if K[i, i] > 0]
                    for run, ix in index.items()}
    # the seed's open questions: how many PCs hold 90% of the variance (over all runs, per run,
    # per rank), and how direct each path is (length over displacement) beside its reward
    rank_of = {run: updates[last[run]].config["r"] for run in runs}
    by_rank = {r: [i for run in runs if rank_of[run] == r for i in index[run]]
               for r in sorted(set(rank_of.values()))}
    pcs_90 = dict(all=pcs_to(evr), per_run={run: pcs_to(v) for run, v in per_run.items()},
                  per_rank={str(r): pcs_to(pca(K[np.ix_(ix, ix)])[1]) for r, ix in by_rank.items()})
    directness = {}
    for run, ix in index.items():
        length, disp = sum(d(i, j) for i, j in zip(ix, ix[1:])), d(ix[0], ix[-1])
        has_metrics = os.path.exists(os.path.join(runs_dir, run, "metrics.jsonl"))
        rows = run_folders.read_metrics(os.path.join(runs_dir, run)) if has_metrics else []
        (half, _), (reach, final) = reward_reach(rows, 0.5), reward_reach(rows, 0.9)
        directness[run] = dict(path_length=length, displacement=disp,
                               path_over_displacement=length / max(disp, 1e-300),
                               step_to_50pct_reward=half, step_to_90pct_reward=reach,
                               final_reward=final, last_step=step(ix[-1]))
    print(f"PCs to 90% of the variance: {pcs_90['all']} over all runs; per rank "
          + ", ".join(f"{r}: {k}" for r, k in pcs_90["per_rank"].items()) + "; per run "
          + ", ".join(f"{r}: {k}" for r, k in pcs_90["per_run"].items()))
    for run, v in directness.items():
        reward = "no training rewards logged" if v["final_reward"] is None else \
            f"reward half / 90% of the way to {v['final_reward']:.3f} at steps " \
            f"{v['step_to_50pct_reward']} / {v['step_to_90pct_reward']} (of {v['last_step']})"
        print(f"{run}: path length / displacement {v['path_over_displacement']:.3f}; {reward}")
    print("explained variance ratio: " + " ".join(f"{v:.3f}" for v in evr[:6])
          + f"  (PC1+PC2 = {sum(evr[:2]):.3f})")
    for r1, row in zip(runs, cos_final):
        print(f"cosine of final updates  {r1:>12}: " + " ".join(f"{c:+.3f}" for c in row))
    report = {"runs": runs,
              "checkpoints": [{"run": r, "step": s, "pc": scores[i, :components].tolist()}
                              for i, (r, s) in enumerate(ckpts)],
              "explained_variance_ratio": evr.tolist(),
              "cosine_final": cos_final,
              "norm": norm,
              # beyond the contract's keys
              "explained_variance_ratio_per_run": {run: v.tolist() for run, v in per_run.items()},
              "distance_from_start": dist, "cosine_over_time": cos_time,
              "cosine_to_final": cos_to_final, "gram": K.tolist(), "pcs_to_90": pcs_90,
              "directness": directness}
    return report, scores, coef, index


def update_to_weight(K, runs, ckpts, updates, last, bases, notes):
    """||ΔW||_F / ||W||_F over the adapted matrices at each run's last checkpoint ({run: ratio})."""
    ratio = {}
    for run in runs:
        try:
            w2 = sum(base_sq_norms(bases[run], list(updates[last[run]])).values())
            ratio[run] = math.sqrt(K[last[run], last[run]] / w2)
            print(f"{run}: ||ΔW||/||W|| = {ratio[run]:.3e} at step {ckpts[last[run]][1]} "
                  f"(base {bases[run]})")
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:  # UserError too
            notes.append(f"{run}: no ||ΔW||/||W|| (base model {bases[run]!r} unreadable: "
                         f"{type(e).__name__}: {e})")
            print(f"note: {notes[-1]}")
    return ratio


def rank1_energy(runs, updates, last):
    """Per adapted matrix, the share of ||ΔW||² in its top singular direction, σ₁²/Σσ², at each
    run's last checkpoint (the statistic recent work reports beside PCA; 1 for a rank-1 run)
    -> {"per_matrix": {run: {module: share}}, "mean_over_matrices": {run: mean share}}."""
    per = {}
    for run in runs:
        shares = {}
        for name, (s, B, A) in dict(updates[last[run]]).items():
            S2 = factored_svd(s, B, A)[1].pow(2)
            shares[name] = float(S2[0] / S2.sum()) if S2.sum() > 0 else math.nan
        per[run] = shares
    mean = {run: float(np.nanmean(list(v.values()))) for run, v in per.items()}
    print("rank-1 SVD energy of the final ΔW, mean over matrices: "
          + ", ".join(f"{run} {m:.3f}" for run, m in mean.items()))
    return dict(per_matrix=per, mean_over_matrices=mean)

# -----------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    add("runs_dir", nargs="?", default=None, help="folder of run folders "
        "(runs/<name>/step_XXXXXX/); default runs/")
    add("--out", default=None, help="output folder; default RUNS_DIR/geometry/")
    add("--components", type=COUNT, default=10, help="PC coordinates stored per checkpoint")
    add("--model", default=None, help="base model (folder or hub id); default: the adapters' "
        "base_model_name_or_path")
    # plane exploration and truncation (these load the base model and evaluate)
    add("--plane", action="store_true", help="evaluate a grid over the PC1-PC2 plane")
    add("--grid", type=number(int, low=2), default=5, help="grid points per axis (grid x grid "
        "evaluations; 15 or more finds the good region's edge)")
    add("--margin", type=NONNEGATIVE, default=1.5, help="grid beyond the trajectories on each "
        "side, as a fraction of their span (far enough that accuracy falls below the base; a "
        "note says when it does not)")
    add("--points-per-pass", type=COUNT0, default=0, help="plane points (or adapters) scored side "
        "by side in one generate() call, batch-size prompts each; 0 = as many as memory allows, "
        "1 = one point per pass")
    add("--truncate", type=COUNT0, default=0, help="evaluate best rank-K versions of the final "
        "checkpoints (and of the plane samples with --plane); 0 = no truncation")
    add("--plane-samples", type=COUNT0, default=5, help="plane points to truncate: the N best "
        "and N drawn at random from the rest of the good region")
    add("--seed", type=SEED, default=0, help="seed of the random plane samples")
    add("--eval-limit", type=COUNT, default=50, help="test problems per evaluation (toy or gsm8k, "
        "per the runs' args.json)")
    add("--data", default=None, help="GSM8K test data: a folder holding test.jsonl, or a JSONL "
        "file; default the runs' args.json --data, else the cached download")
    add("--max-new-tokens", type=COUNT0, default=0, help="completion budget; 0 = the runs' "
        "args.json, else 48 (toy) / 512")
    add("--batch-size", type=COUNT, default=64, help="prompts per generate() call")
    add("--device", default=None, help="cuda, mps or cpu; default the best available")
    add("--bench-scale", type=COUNT0, default=0, help="benchmark only: Gram of N synthetic rank-1 "
        "Qwen2.5-3B adapters (time, peak memory); 0 = off")
    add("--decode-bytes", action="store_true", help="print only: the bytes a decode step reads "
        "at Qwen2.5-3B, one plane point per pass vs K, and the projected gain")
    return p.parse_args(argv)


if __name__ == "__main__":
    exit_on_user_error(too_big="--batch-size or --grid")
    args = parse_args()
    # float64 Gram on a CUDA GPU when there is one (MPS has no float64), else the CPU
    on_cuda = qwen.pick_device(args.device).type == "cuda"
    gram_device = torch.device("cuda") if on_cuda else torch.device("cpu")
    if args.bench_scale:
        bench_scale(args.bench_scale, gram_device)
        raise SystemExit
    if args.decode_bytes:
        print_decode_bytes(args.batch_size, args.max_new_tokens or 512)
        raise SystemExit
    args.runs_dir = args.runs_dir or "runs"
    if not os.path.isdir(args.runs_dir):
        raise user_exit(f"no folder {args.runs_dir}/: train some runs first (`python grpo.py "
                        f"--toy --rank 1`), or try --bench-scale 100")
    out = Path(args.out or Path(args.runs_dir) / "geometry")
    # a run folder itself (runs/grpo_toy_r1, as grpo.py prints it) is one run of its parent
    one = run_folders.is_run(args.runs_dir)
    root = os.path.dirname(os.path.abspath(args.runs_dir)) if one else args.runs_dir
    only = os.path.basename(os.path.abspath(args.runs_dir)) if one else None

    runs, ckpts, updates, origins, notes = load_runs(root, only)
    last = {run: max(i for i, (r, _) in enumerate(ckpts) if r == run) for run in runs}
    bases = {run: args.model or updates[last[run]].config.get("base_model_name_or_path")
             for run in runs}
    if not same_model(list(bases.values())):
        names = sorted(set(map(str, bases.values())))
        raise user_exit(f"the runs name different base models {names}: their updates live in "
                        f"different spaces (pass --model if they share one)")
    stop_on_signals(f": {out} is as it was")  # the SystemExit passes the cleanups below
    made = not out.exists()
    check_writable(out, folder=True)  # before the work, not after it
    if made:  # a run of this script that ends early leaves no empty output folder behind
        atexit.register(lambda: out.exists() and not any(out.iterdir()) and out.rmdir())
    print(f"{len(runs)} runs, {len(ckpts)} points ({len(origins)} origins added): "
          + ", ".join(f"{run} rank {updates[last[run]].config['r']}" for run in runs))
    K = gram(updates, gram_device)
    report, scores, coef, index = trajectory_report(K, runs, ckpts, updates, root,
                                                    args.components)
    ratio = update_to_weight(K, runs, ckpts, updates, last, bases, notes)
    report.update(update_to_weight=ratio, rank1_energy=rank1_energy(runs, updates, last),
                  origin_added=origins, notes=notes)
    scores2 = np.pad(scores, ((0, 0), (0, max(0, 2 - scores.shape[1]))))[:, :2]  # PC1, PC2
    coef2 = np.pad(coef, ((0, 0), (0, max(0, 2 - coef.shape[1]))))[:, :2]
    origin = -(K.mean(0) @ coef2)  # where ΔW = 0 falls: <0 - mean, pc1>, <0 - mean, pc2>
    report["origin_pc"] = origin.tolist()
    colors, styles, names = method_styles({run: method(updates[last[run]]) for run in runs})
    traj = {run: ([ckpts[i][1] for i in ix], scores2[ix]) for run, ix in index.items()}
    # every output is written into a staging folder and moved in at the end: a failure (a full
    # disk) leaves the previous geometry.json and figures whole
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        per_run = report["explained_variance_ratio_per_run"]
        save_figures(staging, traj, colors, origin, report["explained_variance_ratio"],
                     {run: np.array(v) for run, v in per_run.items()},
                     report["distance_from_start"], runs, report["cosine_final"],
                     report["cosine_over_time"], styles, names, report["cosine_to_final"])

        # --- plane exploration and truncation: the base model plus factored adapters, evaluated
        if args.plane or args.truncate:
            run_args = {}
            for run in runs:
                folder = os.path.join(root, run)
                has_args = os.path.exists(os.path.join(folder, "args.json"))
                run_args[run] = run_folders.read_args(folder) if has_args else {}
            context, acc_final, base_acc, samples = explore_plane(
                args, report, bases, run_args, runs, ckpts, updates, last, coef, scores2, traj,
                colors, origin, staging)
            if args.truncate:
                report["truncation"] = truncation_report(args.truncate, runs, ckpts, last, coef,
                                                         acc_final, base_acc, samples, context)
        (staging / "geometry.json").write_text(json.dumps(report, indent=1))
        fsync_tree(str(staging))
    except BaseException as e:  # a full disk, Ctrl-C, a bug: no half-written outputs
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        raise user_exit(f"{out}: cannot write the outputs ({e.strerror or e}); the previous ones "
                        f"are as they were") from None
    for f in sorted(staging.iterdir()):  # renames need no space: all of them, or none above
        os.replace(f, out / f.name)
    staging.rmdir()
    print(f"wrote {out / 'geometry.json'} and figures: "
          + ", ".join(sorted(p.name for p in out.glob("*.png"))))
