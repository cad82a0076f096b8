"""
The study's rows about capacity: how many bits an adapter stores (the knee, memorised facts), how
few parameters steer in RL (the ladder below rank 1, TinyLoRA's 13) and the skill dial. claims.py
puts these rows beside the others.
"""
import numpy as np

import flops
from study_parts import plan
from study_parts import stats as st
from study_parts.rows import (LWR, TEST, TINY, VAL_SELECTION, fmt, missing, power,
                              verdict_greater)
from study_parts.stats import row
from study_parts.summaries import at_best, base_stats, done, final, knee_lrs, n_lrs
from model import TOY_CONFIG
from toy_task import FACT_BITS

# -----------------------------------------------------------------------------
# The capacity knee in stored bits: memorised facts


def knee_lrs_of(summaries):
    """{knee_<method>: the LR that stored the most bits on the tuning facts}."""
    return {f"knee_{m}": lr for m, lr in knee_lrs(summaries, plan.FACT_TUNE,
                                                   plan.KNEE_METHODS).items()}


def fact_runs(summaries, n):
    """{method: the summary of its knee run at n facts (fact seed 1), at the LR chosen on seed 0's
    facts (knee_lrs_of; any LR where no tuning run is there)}."""
    lrs = knee_lrs_of(summaries)
    return {m: s for m in plan.KNEE_METHODS for s in done(summaries, f"facts_{m}_n{n}_f1")
            if lrs.get(f"knee_{m}", s["lr"]) == s["lr"]}


def fact_bits(s):
    """Each fact's stored bits, max(0, FACT_BITS − the code's NLL in bits), as an array."""
    return np.maximum(0.0, FACT_BITS - np.asarray(final(s)["eval_answer_bits"]))


def knee_points(summaries):
    """[{facts, data_bits, stored: {method: [bits, lo, hi]}, gap_to_full: {method: [...]}}]:
    bootstrap intervals over facts (one training seed: the facts are the sample)."""
    pts = []
    for n in plan.FACTS:
        runs = fact_runs(summaries, n)
        if not runs:
            continue
        bits = {m: fact_bits(s) for m, s in runs.items()}
        stored = {m: [float(b.sum())] + [n * x for x in st.bootstrap_mean(b, 2000)[1]]
                  for m, b in bits.items()}
        gap = {m: [float((b - bits["full"]).sum())] +
                  [n * x for x in st.bootstrap_mean(b - bits["full"], 2000)[1]]
               for m, b in bits.items() if m != "full" and "full" in bits}
        pts.append(dict(facts=n, data_bits=n * FACT_BITS, stored=stored, gap_to_full=gap,
                        exact={m: final(s)["eval_accuracy"] for m, s in runs.items()}))
    return pts


def last_quarter_fall(s):
    """How much the loss on the facts still fell over the last quarter of training (the last two
    of a run's four evaluations), as a share of where it stood: ~0 at convergence."""
    losses = [r["eval_loss"] for r in s.get("evals", []) if "eval_loss" in r]
    return (losses[-2] - losses[-1]) / losses[-2] if len(losses) >= 2 and losses[-2] else None


def knee_params(method):
    return flops.count_params(TOY_CONFIG) if method == "full" else \
        flops.count_lora_params(TOY_CONFIG, plan.KNEE_METHODS[method])


def knee_row(summaries, best):
    """LoRA's capacity as the source argues it: rank 1 keeps up with full fine-tuning while the
    data's bits stay below its parameters x 2 bits, and falls behind above. Holds when rank 1's
    gap to full lies below 0 at every size above that line and within 10% of the data's bits
    below it; does not hold when rank 1 is not behind at a size above it."""
    claim = ("the capacity knee in stored bits: rank 1 stores what full fine-tuning stores "
             "while the facts' bits stay below its capacity (2 bits a parameter), less above")
    source = LWR + " (capacity argument)"
    pts = knee_points(summaries)
    if not pts or not all("r1" in p["gap_to_full"] for p in pts):
        return missing("capacity_knee_bits", claim, source, "no knee runs of rank 1 and full")
    cap = knee_params("r1") * flops.BITS_PER_PARAM
    above = [p for p in pts if p["data_bits"] > cap]
    below = [p for p in pts if p["data_bits"] <= cap]
    shown = bool(above) and all(p["gap_to_full"]["r1"][2] < 0 for p in above) and \
        all(p["gap_to_full"]["r1"][1] > -0.1 * p["data_bits"] for p in below)
    refuted = any(p["gap_to_full"]["r1"][1] >= 0 for p in above)
    short = ", ".join(f"{p['facts']} facts {p['gap_to_full']['r1'][0]:+,.0f} bits" for p in below
                      if p["gap_to_full"]["r1"][1] <= -0.1 * p["data_bits"])
    why = (f"rank 1 is behind full fine-tuning below its capacity line too ({short}): in these "
           f"epochs it stores less than the line assumes, so the line does not place its knee"
           if short else None if above else "no size above rank 1's capacity line")
    last = pts[-1]
    per_param = {m: last["stored"][m][0] / knee_params(m) for m in last["stored"]}
    falls = {m: last_quarter_fall(s) for m, s in fact_runs(summaries, last["facts"]).items()}
    falls = {m: f for m, f in falls.items() if f is not None}
    points = [dict(facts=p["facts"], data_bits=p["data_bits"],
                   stored_bits={m: dict(bits=v[0], interval=v[1:]) for m, v in p["stored"].items()},
                   gap_to_full={m: dict(bits=v[0], interval=v[1:])
                                for m, v in p["gap_to_full"].items()},
                   exact_recall=p["exact"]) for p in pts]
    measured = "; ".join(f"{p['facts']} facts ({p['data_bits']:,.0f} bits): " + ", ".join(
        f"{m} {v[0]:,.0f}" for m, v in p["stored"].items()) for p in pts) + \
        f" stored bits; at {last['facts']} facts, bits per parameter " + ", ".join(
            f"{m} {v:.3f}" for m, v in per_param.items()) + \
        f" (rank 1's capacity line: {cap:,.0f} bits)"
    fell = ", ".join(f"{m} {100 * f:.1f}%" for m, f in falls.items())
    measured += f"; the loss on the facts still fell over the last quarter: {fell}" if fell else ""
    lr = ", ".join(f"{m} {best[f'knee_{m}']:g}" for m in plan.KNEE_METHODS
                   if f"knee_{m}" in best)
    return row("capacity_knee_bits", claim, source, measured, None,
               "bootstrap over facts, one training seed", 1,
               f"the LR that stored the most bits on {plan.FACT_TUNE} other facts ({lr}); "
               f"{plan.FACT_EPOCHS} epochs", "holds" if shown else "does not hold" if refuted
               else "inconclusive", points=points, bits_per_param=per_param,
               capacity_bits=cap, last_quarter_fall=falls, margin=0.0,
               **({"why": why} if why and not shown and not refuted else {}))


def sft_loss_row(summaries, best):
    """The source's loss-by-rank figure, on the facts at the largest size: each fact's code in
    bits, rank 1 minus full, a bootstrap over facts."""
    claim = ("SFT loss by rank: once the data exceeds rank 1's capacity its loss stays above "
             "full fine-tuning's (the facts' codes, largest size)")
    runs = fact_runs(summaries, plan.FACTS[-1])
    if "r1" not in runs or "full" not in runs:
        return missing("sft_loss_by_rank", claim, LWR, "no knee runs at the largest size")
    b = {m: np.asarray(final(s)["eval_answer_bits"]) for m, s in runs.items()}
    est, (lo, hi) = st.bootstrap_mean(b["r1"] - b["full"], 2000)
    measured = ", ".join(f"{m} {v.mean():.2f}" for m, v in b.items()) + \
        f" bits a code (of {FACT_BITS:.2f}); rank 1 minus full {est:+.2f}"
    return row("sft_loss_by_rank", claim, LWR, measured, [lo, hi],
               "bootstrap over facts, one training seed", 1,
               f"{plan.FACTS[-1]} facts, each method at its knee LR",
               "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive", margin=0.0)

# -----------------------------------------------------------------------------
# Adapters below rank 1, the ladder and the skill dial


LADDER_ORDER = ("tiny1", "tiny13", "xs1", "xs2", "tiny546", "xs4", "xs8", "r1", "full")


def params_of(group):
    kind = group.split("_")[-1]
    if kind.startswith("tiny"):
        u, tie = (13, 0.0) if kind == "tiny546" else (int(kind[4:]), 1.0)
        return flops.count_adapter_params(TOY_CONFIG, "tinylora", 2, u, tie)
    if kind.startswith("xs"):
        return flops.count_adapter_params(TOY_CONFIG, "loraxs", int(kind[2:]))
    return flops.count_params(TOY_CONFIG) if kind == "full" else \
        flops.count_lora_params(TOY_CONFIG, int(kind[1:]))


def ladder_row(summaries, best):
    """Test accuracy against trainable parameters in RL, each adapter at its validation-best
    LR, three seeds: where "matches full fine-tuning" (equivalence, paired by seed) begins."""
    claim = ("RL: an adapter far below rank 1 (at most 2,688 parameters) matches full "
             "fine-tuning")
    full = at_best(summaries, best, "full")
    points = []
    for g in LADDER_ORDER:
        t = at_best(summaries, best, g)
        if not t:
            continue
        iv = st.mean_interval(list(t.values()), TEST)
        pt = dict(method=g, params=params_of(g), accuracy=iv["estimate"],
                  interval=iv["interval"], n_seeds=iv["n_seeds"], lr=best[g])
        if g != "full" and full and set(t) & set(full):
            est = st.paired_by_seed(t, full, TEST)
            pt |= dict(gap_to_full=est["estimate"], gap_interval=est["interval"],
                       matches_full=st.verdict_equivalent(est))
        points.append(pt)
    small = [p for p in points if p["params"] <= 2688 and "matches_full" in p
             and p["n_seeds"] >= st.MIN_SEEDS]  # TinyLoRA's 1 parameter: one seed, a point
    if not small:
        return missing("ladder_rl", claim, TINY, "no ladder runs beside full fine-tuning")
    k = min(p["n_seeds"] for p in small)
    first = next((p for p in points if p.get("matches_full") == "holds"), None)
    measured = "; ".join(f"{p['method']} ({p['params']:,}) {p['accuracy']:.3f}" +
                         (f" [{p['gap_to_full']:+.3f} vs full: {p['matches_full']}]"
                          if "matches_full" in p else "") +
                         (f" ({p['n_seeds']} seed)" if p["n_seeds"] < st.MIN_SEEDS else "")
                         for p in points) + \
        f"; the smallest that matches: {first['method'] if first else 'none'}"
    worse = {p["method"] for p in small} >= set(plan.LADDER) and all(  # every rung tried
        p["gap_interval"] and p["gap_interval"][1] < -st.EQUIVALENCE for p in small)
    verdict = st._verdict(any(p["matches_full"] == "holds" for p in small), worse, k, None,
                          st.ALPHA)
    return row("ladder_rl", claim, TINY, measured, None, "paired by seed", k,
               VAL_SELECTION + " (3 LRs each)", verdict, points=points,
               margin=st.EQUIVALENCE)


def tinylora_row(summaries, best):
    claim = "13 parameters (TinyLoRA u=13, fully tied) improve accuracy in RL"
    t, base = at_best(summaries, best, "tiny13"), base_stats(summaries)
    if not t or not base:
        return missing("tinylora_13", claim, TINY, "no finished TinyLoRA runs or base evaluation")
    est = st.paired_by_seed(t, {s: base["accuracy"] for s in t}, TEST)
    mode = [final(s).get("eval_mode_share") for s in done(summaries, "tiny13")
            if s["lr"] == best["tiny13"]]
    measured = (f"base {base['accuracy']:.3f} -> {np.mean(list(t.values())):.3f} (LR "
                f"{best['tiny13']:g})" + (
                    f"; the worked mode's share {base['mode_share']:.3f} -> "
                    f"{np.mean(mode):.3f}" if mode and None not in mode else "") +
                f"; gain {fmt(est)}")  # the interval printed after it is the gain's
    return row("tinylora_13", claim, TINY, measured, est["interval"], "paired by seed",
               est["n_seeds"], VAL_SELECTION + f" ({n_lrs(summaries, 'tiny13')} LRs)",
               verdict_greater(est["interval"], est["n_seeds"]), **power(est, 0.0))


DIAL_KINDS = ("tiny1", "tiny13", "r1", "full")


def dial_points(summaries, best):
    """[{p, gain of each kind in RL and SFT, the smallest that reaches half of full's gain}]."""
    out = []
    for p in plan.DIAL:
        base = base_stats(summaries, p)
        if not base:
            continue
        pt = dict(p=p, base=base["accuracy"], mode_share=base.get("mode_share"))
        for regime in ("", "sft_"):
            acc = {}
            for kind in DIAL_KINDS:
                group = (f"p{p:g}_" if p != 0.1 else "") + regime + kind
                runs = [s for s in done(summaries, group) if s["seed"] == 0]
                val = {s["lr"]: final(s).get("val_accuracy") for s in runs}
                if runs and None not in val.values():
                    lr = max(sorted(val), key=lambda x: val[x])
                    acc[kind] = next(final(s)["eval_accuracy"] for s in runs if s["lr"] == lr)
            name = "sft" if regime else "rl"
            pt[f"accuracy_{name}"] = acc
            if "full" in acc:  # no gain for full fine-tuning, no half of it to reach
                gain = pt[f"full_gain_{name}"] = acc["full"] - base["accuracy"]
                half = base["accuracy"] + gain / 2
                ok = [k for k in DIAL_KINDS if gain > 0 and k in acc and acc[k] >= half]
                pt[f"smallest_{name}"] = ok[0] if ok else None
                pt[f"smallest_{name}_params"] = params_of(ok[0]) if ok else None
        out.append(pt)
    return out


def smallest_text(point, regime):
    """The smallest kind at half of full fine-tuning's gain, or why there is none."""
    if point.get(f"smallest_{regime}"):
        return point[f"smallest_{regime}"]
    gain = point.get(f"full_gain_{regime}")
    return "none" if gain is None or gain > 0 else "none: full fine-tuning does not beat the base"


def dial_row(summaries, best):
    claim = ("the skill dial: in RL a tiny adapter (13 parameters) reaches half of full "
             "fine-tuning's gain where SFT needs 100-1000x more parameters")
    pts = [p for p in dial_points(summaries, best) if "smallest_rl" in p or "smallest_sft" in p]
    if not pts:
        return missing("skill_dial", claim, TINY, "no dial runs")
    text = lambda p, r: (f"{p[f'smallest_{r}']} ({p[f'smallest_{r}_params']:,})"
                         if p.get(f"smallest_{r}") else smallest_text(p, r))
    measured = "; ".join(f"p={p['p']:g}: RL {text(p, 'rl')}, SFT {text(p, 'sft')}" for p in pts)
    return row("skill_dial", claim, TINY, measured, None, "one seed per point", 1,
               "validation split, seed 0: the better of 2 LRs on a built base, the best of the "
               "whole grid at p = 0.1", "inconclusive", points=pts,
               why="one seed per point: the budget; read the table, not a verdict")
