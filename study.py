"""
The claims of the seeds, measured the way they were measured: LoRA Without Regret's (each method at
its own best LR from a sweep, over seeds) and the trajectory study's (PCA over every checkpoint of
every run, the plane, rank-1 truncation), in one command that writes a report.

    python study.py --toy                       # every claim on the toy world, 2-core CPU (~20 min)
    python study.py --full                      # + seeds at the best LRs, batch size, tiny adapters (~75 min)
    python study.py --toy --dry-run             # every run it would launch, with its estimated time
    python study.py --model Qwen/Qwen2.5-3B --dry-run   # the same plan at GPU scale, GPU-hours from flops.py

It runs the scripts as subprocesses (grpo.py, sft.py, geometry.py: no script imports another), one
thread each, --jobs at a time, into runs/study/<run>/, and reads their run folders. A run that
finished is reused and an interrupted one resumes, so a killed study continues where it stopped.
It writes runs/study/report.md, claims.json and the figures; the README's results are its output.

Every claim is a row: the seed's statement, our measurement with a 95% interval, a verdict (holds /
does not hold / inconclusive at this noise) and the command behind it. Intervals: over seeds when
a method has ≥ 2 (Student t), else the binomial interval of one evaluation on the whole toy test
split (1,111 problems: ±0.03). "A matches B" holds when the interval of A − B lies above −MARGIN (0.05).
Simplified on purpose: the sweep is one grid per method chosen before seeing results (half-decade
steps), and the best LR is the grid point with the highest mean final accuracy.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

import flops
import runs
from errors import COUNT, exit_on_user_error, user_exit
from model import TOY_CONFIG

HERE = Path(__file__).resolve().parent
MARGIN = 0.05          # "matches": A − B ≥ −MARGIN in accuracy; two single-seed 1,111-problem evaluations differ by ±0.04
TOY_TEST = 1111        # problems in the toy test split; every study run is scored on all of them
P, Q = 3.0, 0.1        # Adam's invariance: (α, σ_A, η_A, η_B) -> (α/(pq), p·σ_A, p·η_A, q·η_B)

# The sweeps (half-decade grids spanning ≥ 30x, chosen before any result). LoRA's α/r keeps the best LR
# nearly rank-independent, so one grid serves every rank; full fine-tuning's sits a decade lower.
GRID = {"toy": dict(lora=[3e-4, 1e-3, 3e-3, 1e-2], full=[3e-5, 1e-4, 3e-4, 1e-3]),
        "full": dict(lora=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], full=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3])}
SFT_GRID = dict(lora=[3e-4, 1e-3, 3e-3, 1e-2], full=[3e-5, 1e-4, 3e-4, 1e-3])
RANKS = [1, 0, 4, 16]  # 0 = full fine-tuning; run in this order, so a study cut short has rank 1 vs full first

# -----------------------------------------------------------------------------
# The plan: runs as (script, arguments); the study knows nothing else about them


@dataclass
class Run:
    name: str               # its folder under the study's root
    script: str             # grpo.py, sft.py or geometry.py
    args: list              # everything but --out/--resume
    claim: str              # which claim it serves
    steps: int = 0          # training steps (0 for geometry)
    meta: dict = field(default_factory=dict)  # method, lr, seed, ... for the analysis

    def command(self, root):
        out = ["--out", str(root / self.name)] + (["--resume"] if self.script != "geometry.py" else [])
        return [sys.executable, str(HERE / self.script), *self.args, *out]


def lr_name(lr):
    return f"{lr:.0e}".replace("e-0", "e-")


def method_name(rank):
    return f"r{rank}" if rank else "full"


def grpo_run(claim, rank, lr, seed, steps, extra=(), tag="", **meta):
    name = f"grpo_{method_name(rank)}{tag}_lr{lr_name(lr)}_s{seed}"
    args = ["--toy", "--rank", str(rank), "--lr", f"{lr:g}", "--seed", str(seed), "--steps", str(steps),
            "--eval-every", "0", "--eval-limit", "0", *extra]  # evaluated at step 0 and at the end, whole split
    return Run(name, "grpo.py", args, claim, steps, dict(method=method_name(rank) + tag, rank=rank, lr=lr, seed=seed, **meta))


def sft_run(claim, rank, lr, seed, steps, batch=64, extra=(), tag="", **meta):
    name = f"sft_{method_name(rank)}{tag}_lr{lr_name(lr)}_s{seed}"
    args = ["--toy", "--model", str(HERE / "toy_base"), "--rank", str(rank), "--lr", f"{lr:g}", "--seed", str(seed),
            "--steps", str(steps), "--batch-size", str(batch), "--eval-limit", "0", *extra]
    return Run(name, "sft.py", args, claim, steps, dict(method=method_name(rank) + tag, rank=rank, lr=lr, seed=seed,
                                                       batch=batch, **meta))


# Adapters below rank 1 (lora.py; Morris et al. 2026): (tag, grpo/sft flags, trainable parameters on the toy)
SMALL = [("_tiny_u1_tie1", ["--adapter", "tinylora", "--u", "1", "--tie", "1"], dict(adapter="tinylora", svd_rank=2, u=1, tie=1.0)),
         ("_tiny_u13_tie1", ["--adapter", "tinylora", "--u", "13", "--tie", "1"], dict(adapter="tinylora", svd_rank=2, u=13, tie=1.0)),
         ("_tiny_u13_tie0", ["--adapter", "tinylora", "--u", "13", "--tie", "0"], dict(adapter="tinylora", svd_rank=2, u=13, tie=0.0)),
         ("_xs2", ["--adapter", "loraxs"], dict(adapter="loraxs", svd_rank=2)),
         ("_xs16", ["--adapter", "loraxs"], dict(adapter="loraxs", svd_rank=16))]
SMALL_GRID = [1e-4, 1e-3, 1e-2]  # v and R scale W's own top singular directions: Adam's ~LR per step is relative


def params_of(meta):
    """Trainable parameters of a run's adapter on the toy (flops.py's counts)."""
    if meta.get("adapter"):
        return flops.count_adapter_params(TOY_CONFIG, meta["adapter"], meta["svd_rank"], meta.get("u", 13), meta.get("tie", 0.0))
    return flops.count_lora_params(TOY_CONFIG, meta["rank"]) if meta["rank"] else flops.count_params(TOY_CONFIG)


def sweep_plan(mode):
    """Phase 1: the LR sweeps (GRPO for every method, SFT for rank 1 and full), seed 0."""
    grid = GRID[mode]
    plan = [grpo_run("rl_sweep", r, lr, 0, 60) for r in RANKS for lr in grid["lora" if r else "full"]]
    plan += [sft_run("sft_sweep", r, lr, 0, 60) for r in (1, 0) for lr in SFT_GRID["lora" if r else "full"]]
    return plan


def rank1_plan(lr1, seeds=(0,)):
    """Phase 2, at rank 1's best LR: targets and layers for each seed, Adam's invariance (seed 0: the
    comparison is step by step within one seed)."""
    plan = [grpo_run("targets", 1, lr1, s, 60, ["--targets", t], tag=f"_{t}") for s in seeds for t in ("attn", "mlp")]
    plan += [grpo_run("layers", 1, lr1, s, 60, ["--layers", third], tag=f"_{third}") for s in seeds
             for third in ("first", "middle", "last")]
    if 0 not in seeds:
        return plan
    # Adam with ε ≈ 0 and no clipping (the clip factor depends on the gradient's norm, which the
    # reparametrization changes): the two runs should match step for step; α alone should not
    adam = ["--adam-eps", "1e-30", "--grad-clip", "0"]
    a = 32.0 / (P * Q)
    plan += [grpo_run("adam", 1, lr1, 0, 30, adam, tag="_adam"),
             grpo_run("adam", 1, P * lr1, 0, 30, adam + ["--alpha", f"{a:g}", "--init-scale", f"{P:g}",
                                                          "--lr-ratio", f"{Q / P:g}"], tag="_adampq"),
             grpo_run("adam", 1, lr1, 0, 30, adam + ["--alpha", f"{a:g}"], tag="_adamalpha")]
    return plan


def extras_plan(best):
    """Phase 3 (--full), at every method's best LR: seeds, adapters below rank 1, SFT ranks 4/16, batch size."""
    plan = []
    plan += [grpo_run("rl_sweep", r, best[method_name(r)], s, 60) for r in RANKS for s in (1, 2)]
    plan += rank1_plan(best["r1"], seeds=(1, 2))  # targets and layers: 3 seeds each side, as the sweep's best
    # how few parameters teach the skill, in RL and in SFT: each size at its best of a small sweep
    for tag, flags, meta in SMALL:
        for lr in SMALL_GRID:
            plan += [grpo_run("params_rl", meta["svd_rank"], lr, 0, 60, flags, tag=tag, **meta),
                     sft_run("params_sft", meta["svd_rank"], lr, 0, 60, extra=flags, tag=tag, **meta)]
    plan += [sft_run("sft_sweep", r, lr, 0, 60) for r in (4, 16) for lr in SFT_GRID["lora"]]
    # LoRA's penalty at large batch (SFT, as in LoRA Without Regret): the same 3,840 examples in
    # batches of 32 and of 256, each method at its batch-64 best LR
    for r in (1, 0):
        lr = best[f"sft_{method_name(r)}"]
        plan += [sft_run("batch", r, lr, 0, 120, batch=32, tag="_b32"), sft_run("batch", r, lr, 0, 15, batch=256, tag="_b256")]
    return plan


def link_runs(root, geo, best_runs):
    """geometry.py reads every run under a folder: fill geo's with links to the chosen runs. A link to
    another run (the best LRs changed since) is refused rather than silently mixed in."""
    src = Path(geo.meta["src"])
    src.mkdir(parents=True, exist_ok=True)
    for link in src.iterdir():
        if link.name not in best_runs:
            raise user_exit(f"{link} is not one of the best-LR runs {best_runs}: remove {src} (and {root / geo.name}) "
                            f"to redo the geometry with the runs chosen now")
    for name in best_runs:
        if not (src / name).exists():
            (src / name).symlink_to((root / name).resolve())


def geometry_plan(root, best_runs, mode):
    """Phase 3: the trajectory geometry of the best-LR LoRA runs (geometry.py over links to them)."""
    name = "geometry" if mode == "toy" else "geometry_full"  # --full's best runs and grid differ: its own folder
    src = root / f"{name}_runs"
    grid = 9 if mode == "toy" else 15  # 3.5 CPU-s a point on the toy (256 problems)
    return Run(name, "geometry.py", [str(src), "--plane", "--grid", str(grid), "--truncate", "1", "--eval-limit", "256"],
               "geometry", meta=dict(runs=best_runs, src=str(src)))


# -----------------------------------------------------------------------------
# Running: subprocesses, one thread each; a finished run is reused, an interrupted one resumes

# seconds per step (SFT: at batch 64), per evaluation of the whole toy split, and per plane point
# (256 problems, nine runs stacked, both cores): measured on the 2-core development machine with
# two jobs at a time (2026-12-01, a CPU with a 0.07 TFLOP/s float32 matmul on 2 threads)
SECONDS = {"grpo.py": 3.1, "sft.py": 1.35, "eval": 10.0, "geometry point": 5.0}


def finished(run, root):
    folder = root / run.name
    if run.script == "geometry.py":
        return (folder / "geometry.json").exists()
    if not (folder / "metrics.jsonl").exists():
        return False
    evals = [r for r in runs.read_metrics(folder) if "eval_accuracy" in r]
    return bool(evals) and evals[-1]["step"] >= run.steps


def estimate(run):
    if run.script == "geometry.py":  # the grid, the base, the finals, the truncations
        return (int(run.args[run.args.index("--grid") + 1]) ** 2 + 20) * SECONDS["geometry point"]
    per_step = SECONDS.get(run.script, 1.0) * (run.meta.get("batch", 64) / 64 if run.script == "sft.py" else 1)
    return run.steps * per_step + 2 * SECONDS["eval"]


def launch(plan, root, jobs, dry_run=False, skip=False):
    """Run what is not finished yet, `jobs` at a time. Returns {name: error} for the runs that failed
    (or, with skip, that were not run)."""
    todo = [r for r in plan if not finished(r, root)]
    total = sum(map(estimate, todo))
    print(f"{len(plan)} runs, {len(plan) - len(todo)} already finished; {len(todo)} to run, about "
          f"{total / 60:.1f} min of one thread ({total / 60 / max(jobs, 1):.1f} min on {jobs} jobs)")
    if skip:
        return {r.name: "not run (--no-train)" for r in todo}
    if dry_run:
        for r in todo:
            print(f"  {estimate(r):6.0f} s  {r.name:38} {' '.join(r.command(root)[1:])}")
        return {}
    (root / "logs").mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))  # one each when the jobs fill the cores; geometry gets them all
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    def one(run):
        with open(root / "logs" / f"{run.name}.log", "w") as log:
            proc = subprocess.run(run.command(root), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE)
        return run, proc.returncode

    failed = {}
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=round(total), desc="study", unit="s") as bar:
        for fut in as_completed([pool.submit(one, r) for r in todo]):
            run, code = fut.result()
            bar.update(round(estimate(run)))
            if code:
                failed[run.name] = f"exit {code}, see {root / 'logs' / (run.name + '.log')}"
                bar.write(f"FAILED {run.name}: {failed[run.name]}")
    return failed

# -----------------------------------------------------------------------------
# Reading results, and the statistics of a verdict


def t975(df):
    """Student t's 97.5% quantile (two-sided 95%), table for small df, the normal beyond."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    return table[df - 1] if 1 <= df <= 10 else 1.96 + 2.4 / df


def result(run, root):
    """Final accuracy, its evaluation size, and the per-step training rows of a finished run."""
    rows = runs.read_metrics(root / run.name)
    evals = [r for r in rows if "eval_accuracy" in r]
    return dict(acc=evals[-1]["eval_accuracy"], n=evals[-1].get("eval_n", TOY_TEST), base=evals[0]["eval_accuracy"],
                train=[r for r in rows if "eval_accuracy" not in r and "kept_accuracy" not in r])


def estimate_mean(accs, n):
    """(mean, standard error, degrees of freedom): over seeds when there are ≥ 2, else binomial."""
    m = float(np.mean(accs))
    if len(accs) >= 2:
        return m, float(np.std(accs, ddof=1)) / math.sqrt(len(accs)), len(accs) - 1
    return m, math.sqrt(max(m * (1 - m), 1e-4) / n), 0  # df 0: normal quantile


def interval(m, se, df):
    q = t975(df) if df else 1.96
    return [m - q * se, m + q * se]


def diff(a, b):
    """a − b for two (mean, se, df): Welch's interval (its df rounded down, at least 1 when either has seeds)."""
    m, se = a[0] - b[0], math.hypot(a[1], b[1])
    if a[2] and b[2]:
        df = max(1, int((a[1] ** 2 + b[1] ** 2) ** 2 / (a[1] ** 4 / a[2] + b[1] ** 4 / b[2] + 1e-30)))
    else:
        df = a[2] or b[2]
    return m, se, df


def verdict_match(d):
    """A matches B: A − B ≥ −MARGIN with 95% confidence; clearly worse: the whole interval below −MARGIN."""
    lo, hi = interval(*d)
    return "holds" if lo >= -MARGIN else "does not hold" if hi < -MARGIN else "inconclusive"


def verdict_worse(d):
    """A is worse than B: the whole interval of A − B below 0; not worse: A matches B."""
    lo, hi = interval(*d)
    return "holds" if hi < 0 else "does not hold" if lo >= -MARGIN else "inconclusive"


def fmt_ci(m, se, df):
    lo, hi = interval(m, se, df)
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"

# -----------------------------------------------------------------------------
# The claims


def by_method(plan, root, claim):
    """{method: {lr: [final accuracies over seeds]}} for the finished runs of one claim."""
    table = {}
    for r in plan:
        if r.claim == claim and finished(r, root):
            table.setdefault(r.meta["method"], {}).setdefault(r.meta["lr"], []).append(result(r, root)["acc"])
    return table


def best_lrs(table):
    return {m: max(lrs, key=lambda lr: np.mean(lrs[lr])) for m, lrs in table.items()}


def lr_ratio_claim(table, lora, full, source, what):
    """The best-LR ratio with its grid resolution: LRs within noise of the best count as tied, and the
    true optimum lies within half a grid step (√3.16x) of a grid point."""
    def tied(lrs):
        best = max(lrs, key=lambda lr: np.mean(lrs[lr]))
        b = estimate_mean(lrs[best], TOY_TEST)
        return [lr for lr in lrs if interval(*diff(b, estimate_mean(lrs[lr], TOY_TEST)))[0] <= 0], best
    (tl, bl), (tf, bf) = tied(table[lora]), tied(table[full])
    half = math.sqrt(math.sqrt(10))
    lo, hi = min(tl) / max(tf) / half, max(tl) / min(tf) * half
    # holds: the grid's best ratio is within half a step of 10; consistent but off the grid point: inconclusive
    v = "does not hold" if not lo <= 10 <= hi else "holds" if 10 / half <= bl / bf <= 10 * half else "inconclusive"
    return dict(claim=f"{what}: LoRA's best LR is ~10x full fine-tuning's", source=source,
                measured=f"{bl / bf:.3g}x (best {bl:g} vs {bf:g}; tied within noise: {sorted(tl)} vs {sorted(tf)})",
                interval=[lo, hi], verdict=v)


def claims(plan, root, mode, geometry, best):
    """The claims table; `best`: the sweep's best LRs (phase 1, seed 0), where the seeds were added."""
    rows = []
    rl = by_method(plan, root, "rl_sweep")
    est = {m: estimate_mean(rl[m][best[m]], TOY_TEST) for m in rl}
    cmd = "python study.py --toy" if mode == "toy" else "python study.py --full"
    for r in ("r1", "r4", "r16"):
        if r in est and "full" in est:
            d = diff(est[r], est["full"])
            rows.append(dict(claim=f"RL: rank {r[1:]} matches full fine-tuning, each at its best LR", source="LoRA Without Regret",
                             measured=f"{est[r][0]:.3f} vs {est['full'][0]:.3f} (best of {len(rl[r])} vs {len(rl['full'])} LRs: "
                             f"{best[r]:g} vs {best['full']:g}; {len(rl[r][best[r]])} vs {len(rl['full'][best['full']])} "
                             f"seeds); difference {fmt_ci(*d)}",
                             interval=interval(*d), verdict=verdict_match(d)))
    if "r1" in rl and "full" in rl:
        rows.append(lr_ratio_claim(rl, "r1", "full", "LoRA Without Regret", "RL"))
    sft = by_method(plan, root, "sft_sweep")
    if "r1" in sft and "full" in sft:
        rows.append(lr_ratio_claim(sft, "r1", "full", "LoRA Without Regret (SFT sweeps)", "SFT"))
    for claim, tag, check, statement in [
            ("targets", "r1_attn", verdict_worse, "attention-only LoRA underperforms all layers"),
            ("targets", "r1_mlp", verdict_match, "MLP-only LoRA matches all layers"),
            ("layers", "r1_middle", verdict_match, "adapters on the middle third match all layers"),
            ("layers", "r1_first", verdict_worse, "adapters on the first third do worse than all layers"),
            ("layers", "r1_last", verdict_worse, "adapters on the last third do worse than all layers")]:
        t = by_method(plan, root, claim).get(tag)
        if t and "r1" in est:
            e = estimate_mean(next(iter(t.values())), TOY_TEST)
            d = diff(e, est["r1"])
            note = " (the toy has 3 layers: a third is one layer)" if claim == "layers" else ""
            rows.append(dict(claim=f"{statement} (rank 1){note}", source="LoRA Without Regret" if claim == "targets"
                             else "the trajectory study's footnote", measured=f"{e[0]:.3f} vs {est['r1'][0]:.3f}; "
                             f"difference {fmt_ci(*d)}", interval=interval(*d), verdict=check(d)))
    rows += batch_claim(plan, root, best)
    rows += params_claims(plan, root, best)
    rows += adam_claim(plan, root)
    rows += flops_claim(plan, root, best)
    rows += capacity_claim(plan, root, est)
    if geometry:
        rows += geometry_claims(geometry)
    for r in rows:
        r.setdefault("command", cmd)
    return rows


def size_curve(plan, root, best, regime):
    """{method: (trainable parameters, best final accuracy, its LR)} in RL or SFT: LoRA ranks and full
    fine-tuning from the sweeps, the adapters below rank 1 at their best of SMALL_GRID."""
    sweep, small = ("rl_sweep", "params_rl") if regime == "rl" else ("sft_sweep", "params_sft")
    out = {}
    for claim in (sweep, small):
        for m, lrs in by_method(plan, root, claim).items():
            meta = next(r.meta for r in plan if r.claim == claim and r.meta["method"] == m)
            lr = max(lrs, key=lambda x: np.mean(lrs[x]))
            out[m] = (params_of(meta), float(np.mean(lrs[lr])), lr)
    return out


def params_claims(plan, root, best):
    rl, sft = size_curve(plan, root, best, "rl"), size_curve(plan, root, best, "sft")
    tiny = "r2_tiny_u13_tie1"
    base = next((result(r, root)["base"] for r in plan if r.claim == "rl_sweep" and finished(r, root)), None)
    if tiny not in rl or base is None or "full" not in rl or "full" not in sft:
        return []
    se = math.sqrt(2 * base * (1 - base) / TOY_TEST)  # two evaluations of the same 1,111 problems
    gain = rl[tiny][1] - base
    rows = [dict(claim="13 parameters (TinyLoRA u=13, fully tied) teach the skill in RL", source="Morris et al. 2026",
                 measured=f"{base:.3f} -> {rl[tiny][1]:.3f} ({gain:+.3f}) after 60 GRPO steps, best of LRs {SMALL_GRID}",
                 interval=[gain - 1.96 * se, gain + 1.96 * se],
                 verdict="holds" if gain - 1.96 * se > 0 else "does not hold" if gain + 1.96 * se < 0.02 else "inconclusive")]

    def smallest(curve):  # the fewest parameters that reach half of full fine-tuning's gain
        target = base + 0.5 * (curve["full"][1] - base)
        ok = [p for p, acc, _ in curve.values() if acc >= target]
        return min(ok) if ok else None
    a, b = smallest(rl), smallest(sft)
    if a and b:
        ratio = b / a
        rows.append(dict(claim="RL needs far fewer trainable parameters than SFT for the same gain (100-1000x)",
                         source="Morris et al. 2026", measured=f"half of full fine-tuning's gain: {a:,} parameters in RL, "
                         f"{b:,} in SFT ({ratio:.3g}x)", interval=None,
                         verdict="holds" if ratio >= 100 else "does not hold" if ratio < 10 else "inconclusive"))
    return rows


def batch_claim(plan, root, best):
    """LoRA's penalty at large batch (LoRA Without Regret, SFT): full fine-tuning's lead over rank 1 at
    batch 256 against batch 32, the same 3,840 examples each, every run at its method's batch-64 best LR."""
    acc = {}
    for r in plan:
        b = r.meta.get("batch")
        if r.script == "sft.py" and r.meta["rank"] in (0, 1) and r.meta["seed"] == 0 and finished(r, root) and (
                r.claim == "batch" or (r.claim == "sft_sweep" and r.meta["lr"] == best.get(f"sft_{method_name(r.meta['rank'])}"))):
            acc[(r.meta["rank"], b)] = result(r, root)["acc"]
    if not all((k, b) in acc for k in (0, 1) for b in (32, 256)):
        return []
    gap = {b: acc[(0, b)] - acc[(1, b)] for b in (32, 64, 256) if (0, b) in acc and (1, b) in acc}
    d = gap[256] - gap[32]
    se = math.sqrt(sum(acc[(k, b)] * (1 - acc[(k, b)]) for k in (0, 1) for b in (32, 256)) / TOY_TEST)
    lo, hi = d - 1.96 * se, d + 1.96 * se
    return [dict(claim="LoRA pays more than full fine-tuning for a large batch (SFT, same examples)", source="LoRA Without Regret",
                 measured="full minus rank 1: " + ", ".join(f"{g:+.3f} at batch {b}" for b, g in sorted(gap.items()))
                 + f" (rank 1 {acc[(1, 32)]:.3f} -> {acc[(1, 256)]:.3f}, full {acc[(0, 32)]:.3f} -> {acc[(0, 256)]:.3f}); "
                 f"growth of the gap {fmt_ci(d, se, 0)}", interval=[lo, hi],
                 verdict="holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive")]


def curve(run, root, key="reward"):
    return [r[key] for r in result(run, root)["train"] if key in r]


def adam_claim(plan, root):
    trio = {r.meta["method"]: r for r in plan if r.claim == "adam" and finished(r, root)}
    if len(trio) < 3:
        return []
    base, pq, alpha = (np.array(curve(trio[k], root)) for k in ("r1_adam", "r1_adampq", "r1_adamalpha"))
    same = int(np.argmax(base != pq)) if (base != pq).any() else len(base)
    dev_pq, dev_alpha = float(np.abs(base - pq).mean()), float(np.abs(base - alpha).mean())
    ok = same >= 5 and dev_pq < dev_alpha / 2
    return [dict(claim="Adam makes LoRA's four knobs two: (α, σ_A, η_A, η_B) and (α/(pq), p·σ_A, p·η_A, q·η_B) train "
                 f"alike (p={P:g}, q={Q:g}, ε=1e-30), α alone does not", source="LoRA Without Regret (appendix)",
                 measured=f"reward curves identical for {same} of {len(base)} steps; mean |Δreward| {dev_pq:.4f} vs "
                 f"{dev_alpha:.4f} for α alone", interval=None, verdict="holds" if ok else "does not hold")]


def flops_claim(plan, root, best):
    """flops.py's LoRA/full ratio beside the measured toy training time per step."""
    toy, big = TOY_CONFIG, flops.get_config("Qwen2.5-3B")  # the toy base is model.TOY_CONFIG
    ratio = {name: flops.total(flops.step_flops(c, 256, T, 1)) / flops.total(flops.step_flops(c, 256, T, 0))
             for name, c, T in (("toy", toy, 80), ("3B", big, 662))}
    t = {}
    for m in ("r1", "full"):  # every seed's run at the best LR
        steps = [row["t_train"] for r in plan if r.claim == "rl_sweep" and r.meta["method"] == m and r.meta["lr"] == best.get(m)
                 and finished(r, root) for row in result(r, root)["train"] if "t_train" in row]
        if steps:
            t[m] = float(np.mean(steps))
    measured = f"flops.py: {ratio['3B']:.3f} at Qwen2.5-3B, {ratio['toy']:.3f} at the toy"
    if len(t) == 2:
        measured += (f"; measured toy training time per step {t['r1']:.2f} s vs {t['full']:.2f} s ({t['r1'] / t['full']:.2f}; "
                     f"mean over the seeds' runs; wall times, at whatever load the machine had: the toy is bound by overhead, not FLOPs)")
    return [dict(claim="LoRA costs ~2/3 of full fine-tuning's training FLOPs", source="LoRA Without Regret",
                 measured=measured, interval=None, verdict="holds" if 0.6 <= ratio["3B"] <= 0.72 else "does not hold")]


def capacity_claim(plan, root, est):
    """Bits an RL run can carry (≤ 1 per episode) against 2 bits per trainable parameter, and the gap."""
    if "full" not in est:
        return []
    toy = TOY_CONFIG
    bits = 60 * 32 * flops.rl_bits_per_episode(8) * 8
    pts = []
    for m in ("r1", "r4", "r16"):
        if m in est:
            fill = bits / (flops.count_lora_params(toy, int(m[1:])) * flops.BITS_PER_PARAM)
            pts.append((m, fill, est["full"][0] - est[m][0]))
    if len(pts) < 2:
        return []
    fills, gaps = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
    corr = float(np.corrcoef(fills, gaps)[0, 1]) if gaps.std() > 0 else float("nan")
    half = 1.96 * math.hypot(est["full"][1], est[pts[0][0]][1])  # the 95% half-width of one gap
    resolved = gaps.max() - gaps.min() > 2 * half                  # else the gaps are equal at this noise
    return [dict(claim="a run carries ≤ 1 bit per episode; if rank 1 trails, the gap tracks the fill (bits/capacity)",
                 source="LoRA Without Regret (capacity argument)",
                 measured=f"{bits:,.0f} bits per 60-step run; " + ", ".join(f"{m} fill {f:.2f} gap {g:+.3f}" for m, f, g in pts)
                 + f" (one gap ±{half:.3f}); correlation {corr:+.2f}", interval=None,
                 verdict="inconclusive" if len(pts) < 3 or not math.isfinite(corr) or not resolved
                 else "holds" if corr > 0.8 else "does not hold")]


def geometry_claims(g):
    rows = []
    evr = g["explained_variance_ratio"]
    rows.append(dict(claim="PC1 + PC2 hold > 90% of the variance of all checkpoints of all runs", source="the trajectory study",
                     measured=f"{sum(evr[:2]):.3f} ({len(g['checkpoints'])} points, {len(g['runs'])} runs)",
                     interval=None, verdict="holds" if sum(evr[:2]) > 0.9 else "does not hold"))
    cos = np.array(g["cosine_final"])
    off = np.abs(cos[~np.eye(len(cos), dtype=bool)]) if len(cos) > 1 else np.array([])
    if off.size:
        rows.append(dict(claim="the final updates of different runs are nearly orthogonal", source="the trajectory study",
                         measured=f"|cosine| {off.min():.2f}-{off.max():.2f}", interval=None,
                         verdict="holds" if off.max() < 0.3 else "does not hold"))
    u = g.get("update_to_weight", {})
    if u:
        rows.append(dict(claim="||ΔW|| / ||W|| is extremely small", source="the trajectory study",
                         measured=", ".join(f"{k} {v:.3f}" for k, v in u.items()), interval=None,
                         verdict="holds" if max(u.values()) < 0.05 else "does not hold"))
    plane = g.get("plane")
    if plane:
        acc = np.array(plane["accuracy"])
        finals = [t["accuracy"] for t in g.get("truncation", {}).get("rows", []) if "final" in t["name"]]
        rows.append(dict(claim="a large region of the PC1-PC2 plane is good, and holds points better than the trained runs",
                         source="the trajectory study", measured=f"{100 * plane['good_fraction']:.0f}% of the {acc.shape[0]}x"
                         f"{acc.shape[1]} grid within 90% of the best ({acc.max():.3f}); {100 * plane['above_base_fraction']:.0f}% "
                         f"above the base ({plane['base_accuracy']:.3f})" + (f"; best run endpoint {max(finals):.3f}" if finals else "")
                         + f" ({plane['eval_limit']} problems)", interval=None,
                         verdict="holds" if plane["good_fraction"] > 0.25 and (not finals or acc.max() >= max(finals)) else "does not hold"))
    trunc = g.get("truncation")
    if trunc:
        n = trunc["eval_limit"]
        losses = [(t["name"], t["accuracy"] - t["accuracy_truncated"]) for t in trunc["rows"] if not t["name"].startswith("grpo_r1_")]
        if losses:
            worst = max(l for _, l in losses)
            se = math.sqrt(2 * 0.25 / n)  # two evaluations of n problems at p ≈ 0.5
            rows.append(dict(claim="rank-1 truncation of the higher-rank finals and of plane points loses nothing",
                             source="the trajectory study", measured=", ".join(f"{k}: {-l:+.3f}" for k, l in losses) + f" ({n} problems)",
                             interval=None, verdict="holds" if worst <= MARGIN else "does not hold" if worst > 1.96 * se else "inconclusive"))
    return rows

# -----------------------------------------------------------------------------
# The open questions, figures and the report


def open_questions(g):
    """geometry.py's answers: how many PCs reach 90% of the variance (over all runs, per rank, per run),
    and how direct each path is (path length over displacement) beside how fast its reward rose."""
    return dict(pcs_to_90={"all runs": g["pcs_to_90"]["all"], **{f"rank {r}": k for r, k in g["pcs_to_90"]["per_rank"].items()},
                           **g["pcs_to_90"]["per_run"]}, directness=g["directness"])


def save_figure(fig, ax, path, base=None):
    """The base model's accuracy as a dotted line (when given), the legend, and the file."""
    if base is not None:
        ax.axhline(base, color="gray", ls=":", label="base")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(plan, root, best, out):
    rl = by_method(plan, root, "rl_sweep")
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (m, lrs) in enumerate(sorted(rl.items(), key=lambda kv: (kv[0] == "full", len(kv[0]), kv[0]))):
        xs = sorted(lrs)
        ms = [np.mean(lrs[x]) for x in xs]
        es = [1.96 * estimate_mean(lrs[x], TOY_TEST)[1] for x in xs]
        ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label="full fine-tuning" if m == "full" else f"LoRA rank {m[1:]}")
    base = next((result(r, root)["base"] for r in plan if r.claim == "rl_sweep" and finished(r, root)), None)
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"final accuracy ({TOY_TEST} toy test problems)",
           title="GRPO on the toy: accuracy vs LR")
    save_figure(fig, ax, out / "lr_sweep.png", base)
    fig, ax = plt.subplots(figsize=(6, 4))
    w = 5
    for m, lr in sorted(best.items()):
        ys = [np.array(curve(r, root)) for r in plan if r.claim == "rl_sweep" and r.meta["method"] == m
              and r.meta["lr"] == lr and finished(r, root)]
        if not ys:
            continue
        n = min(map(len, ys))
        ys = np.stack([np.convolve(y[:n], np.ones(w) / w, mode="valid") for y in ys])   # (seeds, n - w + 1)
        x = np.arange(1, n - w + 2) + w // 2                                            # each window's middle step
        line, = ax.plot(x, ys.mean(0), label=f"{'full' if m == 'full' else 'rank ' + m[1:]} (LR {lr:g}, {len(ys)} "
                        f"seed{'s' if len(ys) > 1 else ''})")
        if len(ys) > 1:
            ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="step", ylabel=f"training reward ({w}-step mean; band: the seeds' range)",
           title="GRPO reward at each method's best LR")
    save_figure(fig, ax, out / "reward_best_lr.png")
    rl, sft = size_curve(plan, root, best, "rl"), size_curve(plan, root, best, "sft")
    if len(rl) > 4:  # the adapters below rank 1 ran (--full)
        fig, ax = plt.subplots(figsize=(6, 4))
        for curve_, label, style in ((rl, "GRPO (RL)", "o-"), (sft, "SFT", "s--")):
            pts = sorted(v[:2] for v in curve_.values())
            ax.plot([p for p, _ in pts], [a for _, a in pts], style, label=label)
        ax.set(xscale="log", xlabel="trainable parameters", ylabel=f"final accuracy ({TOY_TEST} toy test problems)",
               title="How few parameters teach the skill (best LR each)")
        save_figure(fig, ax, out / "params.png", base)


def run_seconds(plan, root):
    """(runs finished, seconds of one thread they took): sampling + training + evaluation from their metrics."""
    done = [r for r in plan if r.script != "geometry.py" and finished(r, root)]
    keys = ("t_sample", "t_train", "seconds", "eval_seconds")
    return len(done), sum(row.get(k, 0) for r in done for row in runs.read_metrics(root / r.name) for k in keys)


def size_label(method):
    """'r2_tiny_u13_tie1' -> 'TinyLoRA u=13, tie 1'; 'r16_xs16' -> 'LoRA-XS r=16'; 'r4' -> 'LoRA r=4'."""
    if method == "full":
        return "full fine-tuning"
    if "_tiny_" in method:
        u, tie = method.split("_u")[1].split("_tie")
        return f"TinyLoRA u={u}, tie {tie}"
    if "_xs" in method:
        return f"LoRA-XS r={method.split('_xs')[1]}"
    return f"LoRA r={method[1:]}"


def write_report(out, rows, best, extra, wall, mode, failed, spent, sizes=None):
    lines = [f"# rank1 study ({mode})", "",
             f"`python study.py --{mode}`: {spent[0]} runs took {spent[1] / 60:.0f} min of one thread (their own "
             f"sampling, training and evaluation time); this invocation {wall / 60:.1f} min wall. "
             f"Margin for 'matches': {MARGIN}. Best LRs: " + ", ".join(f"{k} {v:g}" for k, v in sorted(best.items())), "",
             "| claim | source | measured | 95% interval | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        iv = f"[{r['interval'][0]:+.3g}, {r['interval'][1]:+.3g}]" if r["interval"] else ""
        lines.append(f"| {r['claim']} | {r['source']} | {r['measured']} | {iv} | **{r['verdict']}** |")
    if extra:
        lines += ["", "**Open questions.** PCs to reach 90% of the variance: "
                  + ", ".join(f"{k} {v}" for k, v in extra["pcs_to_90"].items()), "",
                  "| run | path length / displacement | step at half the reward gain | step at 90% of it | final reward |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['path_over_displacement']:.2f} | {v['step_to_50pct_reward']} | {v['step_to_90pct_reward']} | "
                  f"{'' if v['final_reward'] is None else round(v['final_reward'], 3)} |" for k, v in extra["directness"].items()]
    if sizes and len(sizes[0]) > 4:  # --full: the adapters below rank 1 ran
        rl, sft = sizes
        lines += ["", "**Accuracy against trainable parameters** (each at its best LR; LoRA ranks and full fine-tuning "
                  "from the sweeps, the adapters below rank 1 from LRs " + ", ".join(f"{x:g}" for x in SMALL_GRID) + "):", "",
                  "| adapter | trainable parameters | GRPO: accuracy (LR) | SFT: accuracy (LR) |", "|---|---:|---|---|"]
        for m in sorted(set(rl) | set(sft), key=lambda m: (rl.get(m) or sft.get(m))[0]):
            cell = lambda c: f"{c[m][1]:.3f} ({c[m][2]:g})" if m in c else ""
            lines.append(f"| {size_label(m)} | {(rl.get(m) or sft.get(m))[0]:,} | {cell(rl)} | {cell(sft)} |")
    if failed:
        lines += ["", "**Runs that failed or did not run:**", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    lines += ["", f"Figures: lr_sweep.png, reward_best_lr.png{', params.png' if mode == 'full' else ''}, "
              f"and {'geometry' if mode == 'toy' else 'geometry_full'}/*.png."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def gpu_plan(model):
    """The plan at GPU scale, printed only: each run's steps and its GPU-hours from flops.py, at an assumed
    40% of an H100's 989 bf16 TFLOP/s for training and 60% of its 3.35 TB/s for decoding."""
    cfg = flops.get_config(model)
    n_params = flops.count_params(cfg)
    flop_s, bw = 0.4 * 989e12, 0.6 * 3.35e12
    B, G, Pl, N = 32, 8, 150, 512

    def hours(rank, steps):
        train = flops.grpo_step_flops(cfg, B, G, Pl, N, rank, "all")["training"] / flop_s
        decode = N * (2 * n_params) / bw  # every decode step reads the bf16 weights once for the whole batch
        return steps * (train + decode) / 3600
    plan = [("sweep", r, lr, 200) for r in (1, 4, 0) for lr in ([1e-5, 3e-5, 1e-4, 3e-4] if r else [1e-6, 3e-6, 1e-5, 3e-5])]
    plan += [("trajectory", r, 5e-5, 500) for r in (1, 2, 4, 8)]
    total = 0.0
    print(f"{model}: {B} prompts x {G} samples, {N} new tokens; assumed {flop_s / 1e12:.0f} TFLOP/s, {bw / 1e12:.1f} TB/s")
    for claim, r, lr, steps in plan:
        h = hours(r, steps)
        total += h
        print(f"  {h:5.1f} GPU-h  {claim:10} python grpo.py --model {model} --rank {r} --lr {lr:g} --steps {steps}")
    print(f"  + 3 seeds at each best LR, targets and layers at rank 1 (as --toy), then "
          f"`python geometry.py runs/ --plane --truncate 1` on the trajectory runs\n{total:.1f} GPU-hours for the runs listed")

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="the toy study on a CPU (default when neither --full nor --model)")
    parser.add_argument("--full", action="store_true", help="the complete toy study: + 2 seeds at every best LR, batch size, more LRs")
    parser.add_argument("--model", default=None, help="print the plan at GPU scale for this model (e.g. Qwen/Qwen2.5-3B); needs --dry-run here")
    parser.add_argument("--jobs", type=COUNT, default=os.cpu_count(), help="runs at a time, CPU count // jobs threads each (geometry, run alone, gets every core); default the CPU count")
    parser.add_argument("--out", default="runs/study", help="the study's root: run folders, logs, report.md, claims.json, figures")
    parser.add_argument("--dry-run", action="store_true", help="print every run it would launch and its estimated time; run nothing")
    parser.add_argument("--no-train", action="store_true", help="launch no training run: analyze the finished ones "
                        "(geometry included) and write the report, listing what did not run")
    parser.add_argument("--figures", default=None, help="also copy every figure here (the README's: figures/)")
    parser.add_argument("--readme", default=None, help="also write the report into this file, between its "
                        "<!-- study --> and <!-- /study --> lines (the README's results)")
    args = parser.parse_args()
    exit_on_user_error()
    if args.model:
        if not args.dry_run:
            raise user_exit("--model is the plan at GPU scale, which study.py prints but does not run here: add --dry-run")
        gpu_plan(args.model)
        raise SystemExit
    mode = "full" if args.full else "toy"
    root = Path(args.out)
    t0 = time.time()
    failed = {}

    # phase 1: rank 1 and full fine-tuning at every LR; phase 2: what needs rank 1's best LR, then the
    # SFT sweep and ranks 4 and 16 (a study cut short has the central claims first); phase 3: --full's extras
    sweep = sweep_plan(mode)
    first = [r for r in sweep if r.claim == "rl_sweep" and r.meta["method"] in ("r1", "full")]
    failed |= launch(first, root, args.jobs, args.dry_run, skip=args.no_train)
    if args.dry_run:  # the later phases depend on the sweep's best LRs: planned at the grid's middle
        guess = {m: GRID[mode]["lora" if m != "full" else "full"][1] for m in ("r1", "r4", "r16", "full")}
        guess |= {"sft_r1": SFT_GRID["lora"][1], "sft_full": SFT_GRID["full"][1]}
        launch(rank1_plan(guess["r1"]) + [r for r in sweep if r not in first], root, args.jobs, dry_run=True)
        if mode == "full":
            launch(extras_plan(guess), root, args.jobs, dry_run=True)
        print(f"  {estimate(geometry_plan(root, [], mode)):6.0f} s  geometry")
        raise SystemExit
    found = best_lrs(by_method(first, root, "rl_sweep"))
    if "r1" not in found:
        raise user_exit(f"no finished rank-1 run under {root}: the rest of the study needs rank 1's best LR")
    lr1 = found["r1"]
    plan = sweep + rank1_plan(lr1)
    failed |= launch(plan[len(sweep):] + [r for r in sweep if r not in first], root, args.jobs, skip=args.no_train)
    best = best_lrs(by_method(plan, root, "rl_sweep"))
    best |= {f"sft_{m}": lr for m, lr in best_lrs(by_method(plan, root, "sft_sweep")).items()}
    print("best LRs: " + ", ".join(f"{k} {v:g}" for k, v in sorted(best.items())))
    if mode == "full":
        more = extras_plan(best)
        failed |= launch(more, root, args.jobs, skip=args.no_train)
        plan += more

    best_runs = [r.name for r in plan if r.claim == "rl_sweep" and r.meta["rank"] and r.meta["lr"] == best.get(r.meta["method"])
                 and finished(r, root)]
    geo = geometry_plan(root, best_runs, mode)
    link_runs(root, geo, best_runs)
    failed |= launch([geo], root, 1)
    geometry = json.loads((root / geo.name / "geometry.json").read_text()) if finished(geo, root) else None

    rows = claims(plan, root, mode, geometry, best)
    extra = open_questions(geometry) if geometry else None
    figures(plan, root, {k: v for k, v in best.items() if not k.startswith("sft_")}, root)
    wall = time.time() - t0
    spent = run_seconds(plan, root)
    sizes = (size_curve(plan, root, best, "rl"), size_curve(plan, root, best, "sft"))
    write_report(root, rows, best, extra, wall, mode, failed, spent, sizes)
    (root / "claims.json").write_text(json.dumps(dict(mode=mode, wall_seconds=wall, run_seconds=spent[1], best_lr=best, claims=rows,
                                                      open_questions=extra, failed=failed,
                                                      params={"rl": sizes[0], "sft": sizes[1]}), indent=1))
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        for png in [*root.glob("*.png"), *(root / geo.name).glob("*.png")]:
            shutil.copy(png, Path(args.figures) / png.name)
    if args.readme:  # the README's results are the report, verbatim
        text = Path(args.readme).read_text()
        a, b = text.index("<!-- study -->\n") + len("<!-- study -->\n"), text.index("<!-- /study -->")
        body = (root / "report.md").read_text().split("\n", 2)[2]  # without its title line
        Path(args.readme).write_text(text[:a] + body + text[b:])
    print((root / "report.md").read_text())
