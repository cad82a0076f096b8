"""
Speed side by side: the toy world's commands on this checkout and on an earlier commit, one
process after the other, one thread each, several repetitions, on this machine.

    python bench.py --against 7bfcfd6 --reps 3     # the README's and RESULTS.md's Speed figures

Absolute times on a shared machine move from run to run; a ratio of two commands timed in turns
does not (both see the same load). Each repetition runs every command on both trees, the order
of the two trees alternating from one repetition to the next. What is compared: a training
step (sampling + update, each step of metrics.jsonl; an SFT step's seconds), the whole command's
wall time (compilation, evaluation and start-up included), and the evaluation's wall time.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from errors import UserError, write_json

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# name: (arguments, what a step is in metrics.jsonl); every run writes into its own folder
COMMANDS = {
    "grpo.py --toy --rank 1": (["grpo.py", "--toy", "--rank", "1"], "grpo"),
    "grpo.py --toy --rank 0": (["grpo.py", "--toy", "--rank", "0"], "grpo"),
    "sft.py --toy --steps 40": (["sft.py", "--toy", "--steps", "40", "--eval-every", "0"], "sft"),
    "sft.py --toy --model toy_base --rank 1": (["sft.py", "--toy", "--model", "toy_base",
                                                 "--rank", "1"], "sft"),
    "eval_gsm8k.py --toy": (["eval_gsm8k.py", "--toy"], None),
}


def checkout(commit, where):
    """The tree of `commit` (git archive), toy_base/ included, in the folder `where`."""
    try:
        archive = subprocess.run(["git", "-C", HERE, "archive", commit], capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise UserError(f"--against {commit}: not a commit of this repository ({e})") from None
    os.makedirs(where)
    subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    return where


def run_once(tree, argv, kind, out):
    """(wall seconds, the median step seconds or None) of one command in `tree`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, *argv] + (["--out", out] if kind else [])
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise UserError(f"{' '.join(argv)} failed in {tree}: {res.stderr.strip()[-300:]}")
    if kind is None:
        return wall, None
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    steps = [r["t_sample"] + r["t_train"] for r in rows if "t_sample" in r] if kind == "grpo" \
        else [r["seconds"] for r in rows if "seconds" in r]
    return wall, statistics.median(steps)


def compare(commit, reps, out_json, figure):
    """Every command of COMMANDS, `reps` times on each tree, in turns -> the table, JSON and a
    figure of the ratios (old / new: above 1, this checkout is faster)."""
    work = tempfile.mkdtemp(prefix="rank1_compare_")
    head = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    try:
        old = checkout(commit, os.path.join(work, "old"))
        new = checkout(head, os.path.join(work, "new"))  # committed code: what a clone runs
        times = {name: {"old": [], "new": []} for name in COMMANDS}
        for rep in range(reps):
            for name, (argv, kind) in COMMANDS.items():
                for side in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                    tree = old if side == "old" else new
                    out = os.path.join(work, f"run_{side}_{rep}_{len(times[name][side])}")
                    wall, step = run_once(tree, argv, kind, out)
                    times[name][side].append(dict(wall=wall, step=step))
                    print(f"rep {rep + 1}/{reps} {side} {name}: {wall:.1f} s"
                          + (f", step {step:.3f} s" if step is not None else ""), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = summarize(times)
    result = dict(old=commit, new=head, reps=reps, threads=1, commands=list(COMMANDS), rows=table,
                  times=times)
    write_json(out_json, result)
    draw(table, commit, head, figure)
    print(f"wrote {out_json} and {figure}")
    return result


def summarize(times):
    """Per command and measure: min and median of each side, and the ratio of the medians."""
    rows = []
    for name, sides in times.items():
        for measure in ("step", "wall"):
            old = [t[measure] for t in sides["old"] if t[measure] is not None]
            new = [t[measure] for t in sides["new"] if t[measure] is not None]
            if not old or not new:
                continue
            row = dict(command=name, measure=measure, old_min=min(old),
                       old_median=statistics.median(old), new_min=min(new),
                       new_median=statistics.median(new))
            row["speedup"] = row["old_median"] / row["new_median"]
            rows.append(row)
    print(f"\n{'command':42} {'':5} {'old min':>8} {'old med':>8} {'new min':>8} {'new med':>8} "
          f"{'speed-up':>8}")
    for r in rows:
        print(f"{r['command']:42} {r['measure']:5} {r['old_min']:8.3f} {r['old_median']:8.3f} "
              f"{r['new_min']:8.3f} {r['new_median']:8.3f} {r['speedup']:7.2f}x")
    return rows


def draw(rows, old, new, figure):
    """A bar per command and measure: the ratio of the medians, the min-max ratios as whiskers."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    labels = [f"{r['command']} ({'a step' if r['measure'] == 'step' else 'whole run'})"
              for r in rows]
    y = range(len(rows))
    lo = [r["old_min"] / max(r["new_median"], 1e-9) for r in rows]
    hi = [r["old_median"] / max(r["new_min"], 1e-9) for r in rows]
    ax.barh(y, [r["speedup"] for r in rows], color="C0", alpha=0.7)
    ax.errorbar([r["speedup"] for r in rows], y, xerr=[[max(0, r["speedup"] - a) for r, a in
                                                         zip(rows, lo)],
                                                        [max(0, b - r["speedup"]) for r, b in
                                                         zip(rows, hi)]],
                fmt="none", color="k", capsize=3)
    ax.axvline(1, color="0.5", lw=0.8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"speed-up: {old} median / {new} median (one thread)",
           title=f"{new} against {old}, the same commands side by side")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
    fig.savefig(figure, dpi=120)
    plt.close(fig)
