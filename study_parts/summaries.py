"""
Reading the study's run summaries (results/runs/*.json, which study.py writes): a run's final
evaluation, a group's scores by LR and seed, the LR each group chose on the validation split and
the one that learns fastest. study_parts/claims.py builds its rows on these.

    summaries: {name: {"group", "lr", "seed", "script", "argv", "evals": [...], "train": [...]}}
"""
import math

import numpy as np

from study_parts import optima as opt
from study_parts.plan import SEEDS


def final(s):
    """The last evaluation row of a run (its final one), or None."""
    evals = [r for r in s.get("evals", []) if "eval_accuracy" in r]
    return evals[-1] if evals else None


def done(summaries, group):
    return [s for s in summaries.values() if s["group"] == group and final(s)]


def scores(summaries, group, key="val_accuracy"):
    """{lr: {seed: final[key]}} of one group's finished runs."""
    out = {}
    for s in done(summaries, group):
        if key in final(s):
            out.setdefault(s["lr"], {})[s["seed"]] = final(s)[key]
    return out


def best_lrs(summaries):
    """{group: its LR with the best mean validation accuracy over seeds}; groups without a
    validation evaluation (SFT of the direct answers) pick nothing here."""
    groups = {s["group"] for s in summaries.values()}
    out = {}
    for g in sorted(groups):
        val = scores(summaries, g)
        if val:
            out[g] = opt.best_lr(lists(val))
    return out


def mean_reward(s):
    """A GRPO run's mean training reward over its steps: the area under its reward curve, a
    metric that keeps telling LRs apart where final accuracies tie at a ceiling."""
    rewards = [r["reward"] for r in s.get("train", []) if "reward" in r]
    return float(np.mean(rewards)) if rewards else None


def stored_bits(s):
    """What an SFT run on the facts stored, in bits: Σ over the facts of max(0, FACT_BITS − the
    code's NLL in bits) at its final evaluation (each fact floored at 0: a code the model finds
    less likely than chance stores nothing, and takes nothing from the others)."""
    from toy_task import FACT_BITS
    bits = (final(s) or {}).get("eval_answer_bits")
    return None if bits is None else math.fsum(max(0.0, FACT_BITS - b) for b in bits)


METRICS = dict(mean_reward=mean_reward, stored_bits=stored_bits,
               val_loss=lambda s: (final(s) or {}).get("val_loss"),
               test_loss=lambda s: (final(s) or {}).get("eval_loss"))


def metric_table(summaries, group, metric):
    """{lr: {seed: value}} of one group's finished runs in one of METRICS."""
    out = {}
    for s in done(summaries, group):
        v = METRICS[metric](s)
        if v is not None:
            out.setdefault(s["lr"], {})[s["seed"]] = v
    return out


def fast_lrs(summaries):
    """{group: its LR with the best mean training reward over seeds} of the GRPO groups: where
    final accuracies tie at a ceiling, the speed of learning still tells the LRs apart (plan
    centres the dial's RL grids and the short runs' extra seeds on it)."""
    groups = sorted({s["group"] for s in summaries.values() if s["script"] == "grpo.py"})
    tables = {g: lists(metric_table(summaries, g, "mean_reward")) for g in groups}
    return {g: opt.best_lr(t) for g, t in tables.items() if t}


def loss_lrs(summaries):
    """{group: its LR with the lowest mean validation loss over seeds} of the SFT groups that read
    one: where accuracies tie at the ceiling, the held-out loss still tells the LRs apart."""
    groups = sorted({s["group"] for s in summaries.values() if s["script"] == "sft.py"})
    tables = {g: lists(metric_table(summaries, g, "val_loss")) for g in groups}
    return {g: min(sorted(t), key=lambda lr: np.mean(t[lr])) for g, t in tables.items() if t}


def knee_lrs(summaries, size, methods):
    """{method: the LR of its tuning grid that stored the most bits} (facts of seed 0)."""
    out = {}
    for m in methods:
        t = lists(metric_table(summaries, f"facts_{m}_n{size}_f0", "stored_bits"))
        if t:
            out[m] = opt.best_lr(t)
    return out


def grid_seeds(table):
    """{lr: {seed: x}} of the grids' seeds alone (plan.SEEDS, which every LR of a grid has).
    LRs are chosen and fitted on these: the later seeds at one chosen LR (for a verdict's power)
    would otherwise move its mean, and so the choice, after the fact."""
    out = {lr: {s: x for s, x in v.items() if s in SEEDS} for lr, v in table.items()}
    return {lr: v for lr, v in out.items() if v}


def lists(table):
    """{lr: {seed: x}} -> {lr: [x, ...]} over the grids' seeds, what stats' LR functions take."""
    return {lr: list(v.values()) for lr, v in grid_seeds(table).items()}


def at_best(summaries, best, group, key="eval_accuracy"):
    """{seed: test accuracy} of a group at its validation-best LR ({} if unknown)."""
    return scores(summaries, group, key).get(best.get(group), {})


def base_stats(summaries, p=0.1):
    """The eval_gsm8k.py summary of the dial's base at p (greedy and sampled), or None."""
    s = summaries.get(f"eval_base_p{p:g}")
    return s.get("base") if s else None


def n_lrs(summaries, group):
    return len(scores(summaries, group))
