"""
geometry.py's evaluations: accuracy over the PC1-PC2 plane of the trajectories, and of the best
rank-k truncations of the runs' finals and of plane samples.

    python geometry.py runs/ --plane --grid 15 --eval-limit 256
    python geometry.py runs/ --plane --truncate 1

A plane point is mean + a·pc1 + b·pc2 = Σ_i w_i·u_i, a linear combination of checkpoints, so it
is itself a factored adapter. Every checkpoint is stacked once (factored.set_stacked) and each
batch row carries its own weights over them: one generate() call scores many points while the
base weights are read once per decode step for all of them (--points-per-pass).
"""
import math
import time

import numpy as np
from tqdm import tqdm

import eval_gsm8k
import factored
import gsm8k
import model as qwen
from errors import describe, user_exit
from factored import gram
from geometry_figures import plane_levels, save_plane_figure
from toy_task import TOY_NEW_TOKENS


def plane_weights(coef, a, b):
    """Weights w (N,) with Σ_i w_i·u_i = mean + a·pc1 + b·pc2."""
    N = len(coef)
    return np.full(N, 1.0 / N) + a * coef[:, 0] + (b * coef[:, 1] if coef.shape[1] > 1 else 0.0)


def truncation(factors, k):
    """factored.truncate(factors, k) and what survives: ||ΔW_k||²/||ΔW||² and cos(ΔW, ΔW_k)."""
    trunc = factored.truncate(factors, k)
    K = gram([factors, trunc], progress=False)
    d = math.sqrt(K[0, 0] * K[1, 1])
    return trunc, float(K[1, 1] / K[0, 0]), float(K[0, 1] / d) if d > 0 else float("nan")


def accuracies(net, tok, problems, factor_sets, W, per_pass, max_new_tokens, batch_size, stop,
               desc="eval"):
    """Strict accuracy of each point Σ_j W[k, j]·ΔW_j (W (K, N)) of the base model plus the
    stacked, unmerged factor sets, per_pass points per generate() call -> (accuracies (K,), each
    point's per-problem results as a "0"/"1" string, for tests paired by problem)."""
    factored.set_stacked(net, factor_sets)
    per_pass = -(-len(W) // -(-len(W) // per_pass))  # as many passes, evenly filled
    out, correct = [], []
    for k in tqdm(range(0, len(W), per_pass), desc=desc, unit="pass"):
        results = eval_gsm8k.evaluate_points(net, tok, problems, W[k:k + per_pass],
                                             batch_size=batch_size, max_new_tokens=max_new_tokens,
                                             stop=stop, progress=False)
        out += [s["accuracy"] for s, _ in results]
        correct += ["".join("1" if r["correct"] else "0" for r in rows) for _, rows in results]
    return np.array(out), correct


def plane_points(scores2, coef, grid, margin):
    """The plane's axes and its grid of weights (grid², N): PC1 x PC2 over the trajectories'
    span, `margin` of it beyond on every side."""
    lo, hi = scores2.min(0), scores2.max(0)
    pad = margin * np.maximum(hi - lo, 1e-12)
    a_ax, b_ax = (np.linspace(lo[k] - pad[k], hi[k] + pad[k], grid) for k in range(2))
    W = [plane_weights(coef, a_ax[p % grid], b_ax[p // grid]) for p in range(grid ** 2)]
    return a_ax, b_ax, np.array(W)


def plane_report(acc, a_ax, b_ax, base_acc, n, args, rng_seed):
    """The plane's best point (ties: nearest the mean a = b = 0), its good region (within 90% of
    the best; none if the best is 0) and the region above the base, as shares of the grid and
    as areas in PC units; the samples to truncate: the best few and a few at random from the
    rest of the good region."""
    top, grid = acc.max(), len(a_ax)
    order = sorted(zip(*np.nonzero(acc >= 0)),
                   key=lambda p: (-acc[p], math.hypot(a_ax[p[1]], b_ax[p[0]])))
    point = lambda p, kind: dict(a=float(a_ax[p[1]]), b=float(b_ax[p[0]]),
                                 accuracy=float(acc[p]), kind=kind,
                                 grid_index=int(p[0] * grid + p[1]))
    best = [point(order[0], "best")]
    good = acc >= 0.9 * top if top > 0 else np.zeros_like(acc, dtype=bool)
    above = acc > base_acc
    samples = [point(p, "best") for p in order[:args.plane_samples]]
    rest = [p for p in order[args.plane_samples:] if good[p]]
    pick = np.random.default_rng(rng_seed).permutation(len(rest))[:args.plane_samples]
    samples += [point(rest[k], "good") for k in sorted(pick)]
    cell = (a_ax[1] - a_ax[0]) * (b_ax[1] - b_ax[0]) if grid > 1 else float("nan")
    border = np.ones_like(above)
    border[1:-1, 1:-1] = False
    return dict(a=a_ax.tolist(), b=b_ax.tolist(), accuracy=acc.tolist(), best=best,
                eval_limit=n, base_accuracy=base_acc,
                good_fraction=float(good.mean()), above_base_fraction=float(above.mean()),
                # areas in PC units (a cell per grid point), beside the shares of the grid
                good_area=float(good.sum() * cell), above_base_area=float(above.sum() * cell),
                grid_area=float(acc.size * cell), cell_area=float(cell),
                # the region above the base reaches the grid's edge: the grid does not enclose it
                above_base_at_edge=bool((above & border).any()), samples=samples)


def explore_plane(args, report, bases, run_args, runs, ckpts, updates, last, coef, scores2,
                  traj, colors, origin, out):
    """Evaluate the base model (the origin), each run's final and the plane's grid in batched
    passes (the truncation step after it reuses the model) -> (evaluation context, final
    accuracies, base accuracy, plane samples)."""
    tasks = {a.get("task") or ("toy" if a.get("toy") else "gsm8k") for a in run_args.values()}
    if len(tasks) != 1:
        raise user_exit(f"--plane/--truncate need runs of one task, got {sorted(tasks)}")
    task = tasks.pop()
    first_args = run_args[runs[0]]
    data = args.data or first_args.get("data")  # what every script's --data means
    path = gsm8k.data_path(data, "test") if task == "gsm8k" else None
    problems = gsm8k.load_task(task, "test", path)[:args.eval_limit]
    max_new = args.max_new_tokens or first_args.get("max_new_tokens") or \
        (TOY_NEW_TOKENS if task == "toy" else 512)
    base = bases[runs[0]]
    net, tok = qwen.load_model(base, device=args.device), qwen.load_tokenizer(base)
    stop = gsm8k.stop_ids(tok)
    prompt_len = max(len(tok.encode(gsm8k.format_prompt(p["question"]))) for p in problems)
    per_pass = args.points_per_pass or factored.points_per_pass(
        net, min(args.batch_size, len(problems)), prompt_len, max_new)
    print(f"evaluating on {len(problems)} {task} test problems, {max_new} new tokens, greedy, "
          f"{per_pass} point(s) per pass of {args.batch_size} prompts each"
          + (" (as many as memory allows)" if not args.points_per_pass else ""))
    factor_sets = [dict(u) for u in updates]  # in memory now: every plane point reads them all
    N = len(factor_sets)
    # Exact, no truncation: a point's stacked rank R is the total rank of all checkpoints, and
    # its LoRA path costs R·(in + out) multiply-adds per token per matrix beside the base's
    # in·out (rank-1 3B runs, 150 checkpoints: ~10% more). Merging instead would round a small
    # ΔW into bf16 weights (8 bits of mantissa), and the stacked factors stay float32.
    shape = {n: (f[n][1].shape[0], f[n][2].shape[1]) for f in factor_sets for n in f}  # (out, in)
    rank = {n: sum(f[n][2].shape[0] for f in factor_sets if n in f) for n in shape}     # R
    R = max(rank.values())
    extra = sum(rank[n] * sum(shape[n]) for n in shape) / sum(o * i for o, i in shape.values())
    # the points, as weights on the N checkpoints: the base (w = 0), each run's final, the grid
    finals = np.eye(N)[[last[run] for run in runs]]
    grid = np.zeros((0, N))
    if args.plane:
        a_ax, b_ax, grid = plane_points(scores2, coef, args.grid, args.margin)
        print(f"plane: {args.grid}x{args.grid} points, each a stacked adapter of rank up to {R} "
              f"(exact, unmerged): its LoRA path adds {100 * extra:.0f}% to the adapted "
              f"matrices' multiply-adds")
    W = np.concatenate([np.zeros((1, N)), finals, grid])
    t0 = time.perf_counter()
    acc_all, correct = accuracies(net, tok, problems, factor_sets, W, per_pass, max_new,
                                  args.batch_size, stop, desc="points")
    seconds = time.perf_counter() - t0
    base_acc, acc_final = float(acc_all[0]), dict(zip(runs, acc_all[1:1 + len(runs)].tolist()))
    print(f"base model (the origin): accuracy {base_acc:.3f}; {len(W)} points in {seconds:.1f} s "
          f"({seconds / len(W):.2f} s a point, {-(-len(W) // per_pass)} passes)")
    context = dict(net=net, tok=tok, problems=problems, factor_sets=factor_sets,
                   per_pass=per_pass, max_new=max_new, stop=stop, batch_size=args.batch_size,
                   correct=dict(zip(runs, correct[1:1 + len(runs)])), grid_correct=correct[
                       1 + len(runs):])
    samples = []
    if args.plane:
        acc = acc_all[1 + len(runs):].reshape(args.grid, args.grid)  # [b, a]
        plane = plane_report(acc, a_ax, b_ax, base_acc, len(problems), args, args.seed)
        plane.update(task=task, stacked_rank=R, final_accuracy=acc_final,
                     points_per_pass=per_pass, seconds=seconds, seconds_per_point=seconds / len(W),
                     points=len(W))
        report["plane"] = plane
        best, samples, n = plane["best"], plane["samples"], len(problems)
        print(f"plane: best accuracy {acc.max():.3f} at (a, b) = ({best[0]['a']:.3g}, "
              f"{best[0]['b']:.3g}); good (>= 90% of it): {100 * plane['good_fraction']:.0f}% "
              f"of the grid, area {plane['good_area']:.4g}; above the base ({base_acc:.3f}): "
              f"{100 * plane['above_base_fraction']:.0f}%, area {plane['above_base_area']:.4g} "
              f"(PC units; grid {plane['grid_area']:.4g})")
        if plane["above_base_at_edge"]:
            print("note: the region above the base reaches the grid's edge; widen --margin to "
                  "find where it ends")
        save_plane_figure(out, traj, colors, origin, a_ax, b_ax, acc, best,
                          plane_levels(base_acc, acc.max(), n), samples)
    return context, acc_final, base_acc, samples


def truncation_report(k, runs, ckpts, last, coef, acc_final, base_acc, samples, c):
    """Best rank-k versions of each run's final and of the plane samples, stacked in their turn
    and scored in one batched pass."""
    targets = [(f"{run} final (step {ckpts[last[run]][1]})", c["factor_sets"][last[run]],
                acc_final[run], c["correct"][run]) for run in runs]
    targets += [(f"plane {p['kind']} ({p['a']:.3g}, {p['b']:.3g})",
                 factored.combine(c["factor_sets"], plane_weights(coef, p["a"], p["b"])),
                 p["accuracy"], c["grid_correct"][p["grid_index"]]) for p in samples]
    cut = [truncation(f, k) for _, f, _, _ in tqdm(targets, desc=f"rank-{k} SVDs")]
    acc_cut, correct_cut = accuracies(c["net"], c["tok"], c["problems"], [t for t, _, _ in cut],
                                      np.eye(len(cut)), c["per_pass"], c["max_new"],
                                      c["batch_size"], c["stop"], desc=f"rank-{k}")
    rows = [dict(name=name, rank=k, accuracy=acc_full, accuracy_truncated=float(a_cut),
                 energy_kept=kept, cosine=cos, correct=right, correct_truncated=right_cut)
            for (name, _, acc_full, right), (_, kept, cos), a_cut, right_cut
            in zip(targets, cut, acc_cut, correct_cut)]
    print(f"{'':40} | {'accuracy':>8} | {f'rank-{k}':>8} | {'||ΔW_k||²/||ΔW||²':>17} | cos")
    for r in rows:
        print(f"{r['name']:40} | {r['accuracy']:8.3f} | {r['accuracy_truncated']:8.3f} | "
              f"{r['energy_kept']:17.4f} | {r['cosine']:.4f}")
    return dict(rank=k, base_accuracy=base_acc, eval_limit=len(c["problems"]), rows=rows)


if __name__ == "__main__":
    describe(__doc__)
