"""
Reading the study's run summaries (results/runs/*.json, which study.py writes): a run's final
evaluation, a group's scores by LR and seed, the LR each group chose on the validation split and
the one that learns fastest. study_parts/claims.py builds its rows on these.

    summaries: {name: {"group", "lr", "seed", "script", "argv", "evals": [...], "train": [...]}}
"""
import numpy as np

from study_parts import optima as opt
from study_parts import stats as st


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


def fast_lrs(summaries):
    """{group: its LR with the best mean training reward over seeds} of the GRPO groups: where
    final accuracies tie at a ceiling, the speed of learning still tells the LRs apart (plan
    centres the knee's and the dial's RL grids on it)."""
    table = {}
    for s in summaries.values():
        rewards = [r["reward"] for r in s.get("train", []) if "reward" in r]
        if s["script"] == "grpo.py" and rewards and final(s):
            table.setdefault(s["group"], {}).setdefault(s["lr"], []).append(np.mean(rewards))
    return {g: opt.best_lr(v) for g, v in sorted(table.items())}


def lists(table):
    """{lr: {seed: x}} -> {lr: [x, ...]}, what stats' LR functions take."""
    return {lr: list(v.values()) for lr, v in table.items()}


def at_best(summaries, best, group, key="eval_accuracy"):
    """{seed: test accuracy} of a group at its validation-best LR ({} if unknown)."""
    return scores(summaries, group, key).get(best.get(group), {})


def base_stats(summaries, p=0.1):
    """The eval_gsm8k.py summary of the dial's base at p (greedy and sampled), or None."""
    s = summaries.get(f"eval_base_p{p:g}")
    return s.get("base") if s else None


def n_lrs(summaries, group):
    return len(scores(summaries, group))
