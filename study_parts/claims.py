"""
The study's claim rows, from run summaries alone (results/runs/*.json and results/geometry.json,
which study.py writes): every LR chosen on the validation split, every verdict read on the test
split with stats' tests, over the summaries study_parts/summaries.py reads. A row follows the
contract of stats.claim_row.

The margin for "A matches B" is stats.MARGIN (0.05 accuracy); a verdict needs three seeds.
"""
import math

import numpy as np

import flops
from study_parts import plan
from study_parts import optima as opt
from study_parts import stats as st
from study_parts.stats import row
from study_parts.geometry_rows import geometry_rows
from study_parts.summaries import at_best, base_stats, best_lrs, done, final, lists, n_lrs, scores
from model import TOY_CONFIG

TEST = 1111          # the toy test split; every study run is scored on all of it
LWR, TRAJ, TINY = "LoRA Without Regret", "the trajectory study", "Morris et al. 2026 (TinyLoRA)"
VAL_SELECTION = "validation split: the LR with the best mean over seeds"

def fmt(est):
    """An estimate in the measured text; its interval is the row's own, printed beside it."""
    return f"{est['estimate']:+.3f}"


def verdict_greater(interval, n_seeds):
    """"A exceeds B": holds when the interval of A − B lies above 0, does not hold below it."""
    return st.verdict_worse(None if interval is None else [-interval[1], -interval[0]], n_seeds)


def missing(rid, claim, source, what):
    """A row whose runs are not there (not in this plan, or unfinished): inconclusive, saying so."""
    return row(rid, claim, source, f"not measured: {what}", None, "none", 0, "", "inconclusive",
               why=what)

# -----------------------------------------------------------------------------
# RL: rank 1 against full fine-tuning, LR ratios, LR against rank, α


def matches_row(rid, summaries, best, a, b, claim, source=LWR):
    """a matches b within MARGIN on test, each at its validation-best LR, paired by seed."""
    ta, tb = at_best(summaries, best, a), at_best(summaries, best, b)
    if not ta or not tb or not set(ta) & set(tb):
        return missing(rid, claim, source, f"no finished {a} and {b} runs with a common seed")
    est = st.paired_by_seed(ta, tb, TEST)
    k = est["n_seeds"]
    mean = lambda t: float(np.mean([t[x] for x in est["seeds"]]))
    measured = (f"{a} {mean(ta):.3f} vs {b} {mean(tb):.3f} (LR {best[a]:g} vs {best[b]:g}); "
                f"difference {fmt(est)}")
    return row(rid, claim, source, measured, est["interval"], "paired by seed", k,
               f"{VAL_SELECTION} ({n_lrs(summaries, a)} vs {n_lrs(summaries, b)} LRs)",
               st.verdict_matches(est["interval"], st.MARGIN, k), margin=st.MARGIN)


def ratio_row(rid, summaries, a, b, claim, target=10.0, source=LWR):
    """best LR of a over b's, with the bootstrap over seeds; holds when the interval lies within a
    factor 2 of target, does not hold when it excludes target."""
    va, vb = lists(scores(summaries, a)), lists(scores(summaries, b))
    if not va or not vb:
        return missing(rid, claim, source, f"no finished {a} or {b} sweep")
    r, k = opt.lr_ratio_interval(va, vb), min(len(v) for v in [*va.values(), *vb.values()])
    (lo, hi), best = r["interval"], {m: opt.best_lr(v) for m, v in ((a, va), (b, vb))}
    edge = [m for m, v in ((a, va), (b, vb)) if best[m] in (min(v), max(v))]
    measured = (f"{r['ratio']:.3g}x (best {best[a]:g} vs {best[b]:g})"
                + (f"; at the grid's edge: {', '.join(edge)}" if edge else ""))
    verdict = st._verdict(target / 2 <= lo and hi <= target * 2, not lo <= target <= hi, k,
                          None, st.ALPHA)
    why = f"the ratio's interval neither lies within 2x of {target:g} nor excludes it"
    if edge:  # the grid does not bracket that optimum: the true one may lie beyond it
        verdict, why = "inconclusive", "an optimum at its grid's edge is a bound, not a measure"
    return row(rid, claim, source, measured, [lo, hi], "bootstrap over seeds", k,
               f"{VAL_SELECTION}; grids a factor 2 apart", verdict, why=why)


def lr_vs_rank_row(summaries):
    claim = "the optimal LR varies little with rank (within about 2x from rank 1 to 16)"
    groups = [g for g in ("r1", "r4", "r16") if scores(summaries, g)]
    if len(groups) < 2:
        return missing("lr_vs_rank", claim, LWR, "fewer than two ranks swept")
    tables = {g: lists(scores(summaries, g)) for g in groups}
    rng = np.random.default_rng(0)
    draws = np.stack([opt._bootstrap_best(t, 2000, rng) for t in tables.values()])  # (ranks, boot)
    spread = draws.max(0) / draws.min(0)
    lo = float(np.quantile(spread, 0.025, method="lower"))
    hi = float(np.quantile(spread, 0.975, method="higher"))
    best = {g: opt.best_lr(t) for g, t in tables.items()}
    k = min(len(v) for t in tables.values() for v in t.values())
    edge = [g for g, t in tables.items() if best[g] in (min(t), max(t))]
    measured = ", ".join(f"{g} {lr:g}" for g, lr in best.items()) + \
        f"; largest/smallest {max(best.values()) / min(best.values()):.3g}x" + \
        (f"; at the grid's edge: {', '.join(edge)}" if edge else "")
    verdict = "inconclusive" if edge else st._verdict(hi <= 2.0, lo > 2.0, k, None, st.ALPHA)
    return row("lr_vs_rank", claim, LWR, measured, [lo, hi], "bootstrap over seeds", k,
               VAL_SELECTION + "; ranks 4 and 16 on a grid 2x around rank 1's best", verdict,
               why="an optimum at its grid's edge is a bound, not a measure" if edge else None)


def sample_efficiency_row(summaries):
    """Rank 1 against full fine-tuning over the steps: the mean training reward of a run (the area
    under its reward curve). Not at the validation-best LR: where final accuracy saturates, that
    argmax is a coin toss among ties and picks the slowest LR as readily as the fastest. Each
    seed is read at the LR that the other seeds' mean reward picks (stats.cross_fit)."""
    claim = "RL: rank 1 learns as fast as full fine-tuning (mean training reward over the steps)"
    mean_reward = lambda s: float(np.mean([r["reward"] for r in s["train"] if "reward" in r]))
    per = {}
    for g in ("r1", "full"):
        table = {}
        for s in done(summaries, g):
            table.setdefault(s["lr"], {})[s["seed"]] = mean_reward(s)
        per[g] = opt.cross_fit(table)
    if not per["r1"] or not per["full"] or not set(per["r1"]) & set(per["full"]):
        return missing("sample_efficiency_rl", claim, LWR, "no rank-1 and full sweeps over seeds")
    est = st.paired_by_seed(per["r1"], per["full"], None)
    mean = lambda d: float(np.mean(list(d.values())))
    return row("sample_efficiency_rl", claim, LWR, f"mean reward over the steps: rank 1 "
               f"{mean(per['r1']):.3f}, full {mean(per['full']):.3f}; rank 1 minus full "
               f"{fmt(est)}", est["interval"], "paired by seed", est["n_seeds"],
               "leave one seed out: each seed at the LR with the best mean reward over the others",
               st.verdict_matches(est["interval"], st.MARGIN, est["n_seeds"]))

# -----------------------------------------------------------------------------
# Which matrices: targets and layers, a family with Holm


FAMILY = [("attn_only", "r1_attn", "worse", "attention-only LoRA does worse than all layers"),
          ("mlp_only", "r1_mlp", "matches", "MLP-only LoRA matches all layers"),
          ("middle_third", "r1_middle", "matches", "LoRA on the middle third of the layers "
           "matches all layers"),
          ("first_third", "r1_first", "worse", "LoRA on the first third does worse than all"),
          ("last_third", "r1_last", "worse", "LoRA on the last third does worse than all")]


def family_rows(summaries, best):
    ref = at_best(summaries, best, "r1")
    contrasts, measured = {}, {}
    for rid, group, kind, claim in FAMILY:
        t = at_best(summaries, best, group)
        if t and ref and set(t) & set(ref):
            contrasts[rid] = (st.paired_by_seed(t, ref, TEST), kind)
            measured[rid] = (f"{np.mean(list(t.values())):.3f} (LR {best[group]:g}) vs all "
                             f"layers {np.mean(list(ref.values())):.3f}; difference "
                             f"{fmt(contrasts[rid][0])}")
    verdicts = st.family_verdicts(contrasts) if contrasts else {}
    rows = []
    for rid, group, kind, claim in FAMILY:
        source = LWR if rid.endswith("only") else TRAJ + " (footnote)"
        if rid not in verdicts:
            rows.append(missing(rid, f"{claim} (rank 1)", source, f"no finished {group} runs"))
            continue
        est, v = contrasts[rid][0], verdicts[rid]
        rows.append(row(rid, f"{claim} (rank 1)", source, measured[rid], est["interval"],
                        "paired by seed", est["n_seeds"],
                        f"{VAL_SELECTION} (each variant its own 2 LRs)", v["verdict"],
                        p_adjusted=v["p_holds_adjusted"], family_size=v["family_size"],
                        family="targets and layers, Holm"))
    return rows

# -----------------------------------------------------------------------------
# SFT: batch size, loss by rank


def batch_row(summaries, best):
    claim = "LoRA pays more than full fine-tuning for a large batch (SFT, the same examples)"
    g = {(m, b): at_best(summaries, best, f"sft_{m}_b{b}") for m in ("r1", "full")
         for b in (32, 256)}
    seeds = set.intersection(*(set(v) for v in g.values()))
    if not seeds:
        return missing("batch_size", claim, LWR, "no finished batch-32 and batch-256 runs")
    gap = {b: {s: g[("full", b)][s] - g[("r1", b)][s] for s in seeds} for b in (32, 256)}
    # growth of full's lead: a difference of four accuracies; n/2 doubles the binomial floor's
    # variance, so the floor is that of four independent evaluations
    est = st.paired_by_seed(gap[256], gap[32], TEST // 2)
    mean = lambda b: float(np.mean(list(gap[b].values())))
    measured = (f"full minus rank 1: {mean(32):+.3f} at batch 32, {mean(256):+.3f} at batch 256 "
                f"(3,840 examples each); growth {fmt(est)}")
    return row("batch_size", claim, LWR, measured, est["interval"], "paired by seed",
               est["n_seeds"], f"{VAL_SELECTION}, each batch size and method its own 3 LRs",
               verdict_greater(est["interval"], est["n_seeds"]))


def loss_curves(summaries, group):
    """{lr: mean over seeds of the per-step training loss}, and the seeds."""
    out, seeds = {}, set()
    for s in done(summaries, group):
        out.setdefault(s["lr"], []).append([r["loss"] for r in s["train"] if "loss" in r])
        seeds.add(s["seed"])
    return {lr: np.mean([c[:min(map(len, cs))] for c in cs], 0) for lr, cs in out.items()}, seeds


def sft_loss_row(summaries):
    claim = ("SFT loss by rank: full fine-tuning and high ranks decay alike, rank 1 flattens once "
             "the data exceeds its capacity (final loss of rank 1 above full's)")
    groups = {g: loss_curves(summaries, f"direct_{g}")[0] for g in ("r1", "r4", "r16", "full")}
    if not groups["r1"] or not groups["full"]:
        return missing("sft_loss_by_rank", claim, LWR, "no direct-answer SFT runs")
    last = lambda c: float(np.mean(c[-10:]))
    pick = {g: min(c, key=lambda lr: last(c[lr])) for g, c in groups.items() if c}  # lowest loss
    per = {g: {s["seed"]: last([r["loss"] for r in s["train"] if "loss" in r])
               for s in done(summaries, f"direct_{g}") if s["lr"] == pick[g]} for g in pick}
    est = st.paired_by_seed(per["r1"], per["full"], None)
    first = [s for s in done(summaries, "direct_r1")][0]["train"]
    tokens = sum(r["tokens"] for r in first if "tokens" in r)
    bits = first[0]["loss"] * tokens / math.log(2)  # the base's cross-entropy: what data can teach
    fill = bits / (flops.count_lora_params(TOY_CONFIG, 1) * flops.BITS_PER_PARAM)
    measured = (", ".join(f"{g} {np.mean(list(v.values())):.3f}" for g, v in per.items())
                + f" nats/token (last 10 steps, each at its lowest-loss LR); rank 1 minus full "
                f"{fmt(est)}; the data's {bits:,.0f} bits at the base fill rank 1 {fill:.2f}x")
    return row("sft_loss_by_rank", claim, LWR, measured, est["interval"], "paired by seed",
               est["n_seeds"], "training loss of one epoch (each example once): the lowest of "
               "3 LRs", verdict_greater(est["interval"], est["n_seeds"]), fill=fill)

# -----------------------------------------------------------------------------
# Adapters below rank 1, the capacity knee and the skill dial


def params_of(group):
    kind = group.split("_")[-1]
    if kind.startswith("tiny"):
        return flops.count_adapter_params(TOY_CONFIG, "tinylora", 2, int(kind[4:]), 1.0)
    return flops.count_params(TOY_CONFIG) if kind == "full" else \
        flops.count_lora_params(TOY_CONFIG, int(kind[1:]))


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
               verdict_greater(est["interval"], est["n_seeds"]))


def knee_points(summaries, best):
    """[(steps, prompts, fill, est of rank 1 − full)] over the knee's (steps, prompts)."""
    cap = flops.count_lora_params(TOY_CONFIG, 1) * flops.BITS_PER_PARAM
    pts = []
    for steps, prompts in plan.KNEE:
        e = steps * prompts * plan.GROUP
        tag = "" if (steps, prompts) == (plan.STEPS, plan.PROMPTS) else f"_e{e}"
        a, b = at_best(summaries, best, f"r1{tag}"), at_best(summaries, best, f"full{tag}")
        if a and b and set(a) & set(b):
            pts.append((steps, prompts, e * flops.rl_bits_per_episode(plan.GROUP) / cap,
                        st.paired_by_seed(a, b, TEST)))
    return pts


def knee_row(summaries, best):
    claim = ("the capacity knee: rank 1 matches full fine-tuning while the run's bits (1 per "
             "episode) stay below its capacity (2 per parameter), fill < 1")
    pts = knee_points(summaries, best)
    if not pts:
        return missing("capacity_knee", claim, LWR + " (capacity argument)", "no knee runs")
    low = [est for *_, fill, est in pts if fill < 1]
    k = min(est["n_seeds"] for *_, est in pts)
    ivs = [est["interval"] for est in low]
    shown = bool(ivs) and all(iv and iv[0] >= -st.MARGIN for iv in ivs)
    refuted = any(iv and iv[1] < -st.MARGIN for iv in ivs)
    clip = lambda iv: [max(iv[0], -1.0), min(iv[1], 1.0)]  # a difference of two accuracies
    points = [dict(fill=fill, steps=steps, prompts=prompts, gap=est["estimate"],
                   interval=clip(est["interval"] or [est["estimate"]] * 2),
                   n_seeds=est["n_seeds"]) for steps, prompts, fill, est in pts]
    measured = "; ".join(f"fill {p['fill']:.3f} ({p['steps']}x{p['prompts']}): {p['gap']:+.3f}"
                         for p in points) + " (rank 1 minus full)"
    return row("capacity_knee", claim, LWR + " (capacity argument)", measured, None,
               "paired by seed", k, VAL_SELECTION + " (40x32: the main sweep; elsewhere 3 LRs, "
               "2 at the longest, around each method's fastest)",
               st._verdict(shown, refuted, k, None, st.ALPHA), points=points)


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
            if "full" in acc:
                half = base["accuracy"] + 0.5 * (acc["full"] - base["accuracy"])
                ok = [k for k in DIAL_KINDS if k in acc and acc[k] >= half
                      and acc["full"] > base["accuracy"]]
                pt[f"smallest_{name}"] = ok[0] if ok else None
                pt[f"smallest_{name}_params"] = params_of(ok[0]) if ok else None
        out.append(pt)
    return out


def dial_row(summaries, best):
    claim = ("the skill dial: in RL a tiny adapter (13 parameters) reaches half of full "
             "fine-tuning's gain where SFT needs 100-1000x more parameters")
    pts = [p for p in dial_points(summaries, best) if "smallest_rl" in p or "smallest_sft" in p]
    if not pts:
        return missing("skill_dial", claim, TINY, "no dial runs")
    text = lambda p, r: (f"{p.get(f'smallest_{r}') or 'none'}"
                         + (f" ({p[f'smallest_{r}_params']:,})" if p.get(f"smallest_{r}") else ""))
    measured = "; ".join(f"p={p['p']:g}: RL {text(p, 'rl')}, SFT {text(p, 'sft')}" for p in pts)
    return row("skill_dial", claim, TINY, measured, None, "one seed per point", 1,
               "validation split, best of 2-3 LRs, seed 0", "inconclusive", points=pts,
               why="one seed per point: the budget; read the table, not a verdict")

# -----------------------------------------------------------------------------
# Adam's two degrees of freedom, FLOPs


def adam_row(summaries):
    claim = ("Adam makes LoRA's four knobs two: (α, σ_A, η_A, η_B) and (α/(pq), p·σ_A, p·η_A, "
             f"q·η_B) train alike (p={plan.P:g}, q={plan.Q:g}, ε=1e-30), α alone does not")
    runs = {g: done(summaries, g) for g in ("adam", "adam_pq", "adam_alpha")}
    if not all(runs.values()):
        return missing("adam_2dof", claim, LWR + " (appendix)", "no Adam runs")
    curve = lambda g: np.array([r["reward"] for r in runs[g][0]["train"] if "reward" in r])
    base, pq, alpha = curve("adam"), curve("adam_pq"), curve("adam_alpha")
    same = int(np.argmax(base != pq)) if (base != pq).any() else len(base)
    dev_pq, dev_alpha = float(np.abs(base - pq).mean()), float(np.abs(base - alpha).mean())
    return row("adam_2dof", claim, LWR + " (appendix)",
               f"reward curves identical for {same} of {len(base)} steps; mean |Δreward| "
               f"{dev_pq:.4f} vs {dev_alpha:.4f} for α alone", None,
               "step-by-step comparison, one seed", 1, "rank 1's validation-best LR",
               "holds" if same >= 5 and dev_pq < dev_alpha / 2 else "does not hold")


def flops_row(summaries, best):
    claim = "LoRA costs ~2/3 of full fine-tuning's training FLOPs"
    ratio = {name: flops.total(flops.step_flops(c, 256, T, 1)) /
             flops.total(flops.step_flops(c, 256, T, 0))
             for name, c, T in (("toy", TOY_CONFIG, 80),
                                ("3B", flops.get_config("Qwen2.5-3B"), 662))}
    t = {g: [r["t_train"] for s in done(summaries, g)  # every run of the sweep: a median over
             for r in s["train"] if "t_train" in r] for g in ("r1", "full")}  # the machine's load
    measured = f"flops.py: {ratio['3B']:.3f} at Qwen2.5-3B, {ratio['toy']:.3f} at the toy"
    if all(t.values()):
        r1, fu = np.median(t["r1"]), np.median(t["full"])
        measured += (f"; toy training time per step, median over the sweeps' steps, {r1:.2f} s vs "
                     f"{fu:.2f} s ({r1 / fu:.2f}; one thread beside another job: overhead-bound, "
                     f"not FLOPs)")
    return row("flops_two_thirds", claim, LWR, measured, None, "analytic", 0, "",
               "holds" if 0.6 <= ratio["3B"] <= 0.72 else "does not hold")

# -----------------------------------------------------------------------------


def claims(summaries, geometry=None):
    """Every row of the contract (and a few more), in the report's order."""
    best = best_lrs(summaries)
    rows = [matches_row("rank1_matches_full_rl", summaries, best, "r1", "full",
                        "RL: rank-1 LoRA matches full fine-tuning, each at its best LR"),
            matches_row("rank4_matches_full_rl", summaries, best, "r4", "full",
                        "RL: rank-4 LoRA matches full fine-tuning"),
            matches_row("rank16_matches_full_rl", summaries, best, "r16", "full",
                        "RL: rank-16 LoRA matches full fine-tuning"),
            sample_efficiency_row(summaries),
            ratio_row("lr_ratio_rl", summaries, "r1", "full",
                      "RL: LoRA's best LR is ~10x full fine-tuning's (α = 32, rank 1)"),
            ratio_row("lr_ratio_alpha", summaries, "r1_alpha1", "full",
                      "RL at α = r = 1 (α/r = 1): LoRA's best LR is ~10x full fine-tuning's",
                      source="a from-scratch reproduction of " + LWR),
            ratio_row("lr_ratio_short", summaries, f"r1_e{10 * 8 * plan.GROUP}",
                      f"full_e{10 * 8 * plan.GROUP}", "short runs (10 steps of 8 prompts) "
                      "prefer a ratio of ~15x", target=15.0),
            ratio_row("lr_ratio_sft", summaries, "sft_r1", "sft_full",
                      "SFT: LoRA's best LR is ~10x full fine-tuning's"),
            lr_vs_rank_row(summaries),
            *family_rows(summaries, best),
            batch_row(summaries, best),
            sft_loss_row(summaries),
            adam_row(summaries),
            flops_row(summaries, best),
            knee_row(summaries, best),
            tinylora_row(summaries, best),
            dial_row(summaries, best),
            *geometry_rows(geometry, missing)]
    return rows, best
