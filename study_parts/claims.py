"""
The study's claim rows, from run summaries alone (results/runs/*.json and results/geometry.json,
which study.py writes): every LR chosen on the validation split (the knee's on another draw of
facts), every verdict read on the test split with stats' tests, over the summaries
study_parts/summaries.py reads. A row follows the contract of stats.claim_row; a comparative row
also states its `margin` and its minimum detectable effect `mde` (80% power).

"A matches B" is an equivalence test: the 95% interval of A − B inside ±stats.EQUIVALENCE (0.02)
and mde ≤ 0.02; "A does worse" is one-sided. Every verdict needs three seeds.
"""
import numpy as np

import flops
from model import TOY_CONFIG
from study_parts import plan
from study_parts import optima as opt
from study_parts import stats as st
from study_parts.capacity import (dial_row, knee_lrs_of, knee_row, ladder_row, sft_loss_row,
                                  tinylora_row)
from study_parts.geometry_rows import geometry_rows
from study_parts.rows import (LWR, TEST, TRAJ, VAL_SELECTION, STEER, fmt, mean_of, missing,
                              power, verdict_greater)
from study_parts.stats import row
from study_parts.summaries import (at_best, best_lrs, done, grid_seeds, lists, loss_lrs,
                                   metric_table, n_lrs, scores)

# -----------------------------------------------------------------------------
# RL: rank 1 against full fine-tuning, and how fast


def matches_row(rid, summaries, best, a, b, claim, source=LWR):
    """a matches b within ±EQUIVALENCE on test, each at its validation-best LR, paired by seed."""
    ta, tb = at_best(summaries, best, a), at_best(summaries, best, b)
    if not ta or not tb or not set(ta) & set(tb):
        return missing(rid, claim, source, f"no finished {a} and {b} runs with a common seed")
    est = st.paired_by_seed(ta, tb, TEST)
    k, extra = est["n_seeds"], power(est, st.EQUIVALENCE)
    measured = (f"{a} {mean_of(ta, est['seeds']):.3f} vs {b} {mean_of(tb, est['seeds']):.3f} "
                f"(LR {best[a]:g} vs {best[b]:g}); difference {fmt(est)}")
    verdict = st.verdict_equivalent(est)
    why = None if verdict != "inconclusive" else (
        f"the design sees {extra['mde']}, not {st.EQUIVALENCE}" if extra["mde"] is None or
        extra["mde"] > st.EQUIVALENCE else f"the interval leaves ±{st.EQUIVALENCE}")
    return row(rid, claim, source, measured, est["interval"], "paired by seed", k,
               f"{VAL_SELECTION} ({n_lrs(summaries, a)} vs {n_lrs(summaries, b)} LRs)",
               verdict, why=why, **extra)


def slower_row(summaries):
    """Rank 1 against full fine-tuning over the steps: the mean training reward of a run (the area
    under its reward curve), no seed scored at an LR it chose itself: each grid seed at the LR the
    other grid seeds' mean picks (cross_fit), each later seed at the LR the grid seeds pick."""
    claim = "RL: rank 1 learns more slowly than full fine-tuning (mean training reward)"
    per = {}
    for g in ("r1", "full"):
        table = metric_table(summaries, g, "mean_reward")
        fast = opt.best_lr(lists(table)) if lists(table) else None
        per[g] = table.get(fast, {}) | opt.cross_fit(grid_seeds(table))
    if not per["r1"] or not per["full"] or not set(per["r1"]) & set(per["full"]):
        return missing("rank1_slower_rl", claim, LWR, "no rank-1 and full sweeps over seeds")
    est = st.paired_by_seed(per["r1"], per["full"], None)
    return row("rank1_slower_rl", claim, LWR, f"mean reward over the steps: rank 1 "
               f"{mean_of(per['r1']):.3f}, full {mean_of(per['full']):.3f}; rank 1 minus full "
               f"{fmt(est)}", est["interval"], "paired by seed", est["n_seeds"],
               "best mean reward: a grid seed at the LR the other grid seeds pick, a later seed at "
               "the LR the grid seeds pick",
               st.verdict_worse(est["interval"], est["n_seeds"]), **power(est, 0.0))


def ten_steps_row(summaries):
    """The short runs (10 steps of 8 prompts) at each method's fastest LR, ten seeds each: the
    share of seeds that steer (test accuracy > STEER), Fisher's exact test and Newcombe's interval
    on the difference of the shares."""
    claim = ("RL in 10 steps of 8 prompts: rank 1 steers the skill in fewer seeds than full "
             "fine-tuning")
    fast = {g: opt.best_lr(lists(metric_table(summaries, f"{g}_short", "mean_reward")))
            for g in ("r1", "full")}
    acc = {g: scores(summaries, f"{g}_short", "eval_accuracy").get(fast[g], {})
           if fast[g] else {} for g in fast}
    if len(acc["r1"]) < 2 or len(acc["full"]) < 2:
        return missing("ten_steps_rl", claim, LWR, "no short runs over several seeds")
    n = {g: len(v) for g, v in acc.items()}
    k = {g: sum(x > STEER for x in v.values()) for g, v in acc.items()}
    diff, interval = st.share_difference(k["r1"], n["r1"], k["full"], n["full"])
    p = st.fisher_exact(k["r1"], n["r1"], k["full"], n["full"])
    measured = (f"seeds that steer: rank 1 {k['r1']} of {n['r1']} (LR {fast['r1']:g}), full "
                f"{k['full']} of {n['full']} (LR {fast['full']:g}); Fisher's exact p {p:.3g}; "
                f"share difference {diff:+.2f}")
    return row("ten_steps_rl", claim, LWR, measured, interval,
               "Fisher's exact test over seeds, Newcombe's interval", min(n.values()),
               "the LR with the best mean reward over 3 seeds; seeds 3-9 there",
               st.verdict_worse(interval, min(n.values())),
               p_value=p, margin=0.0)

# -----------------------------------------------------------------------------
# LRs: the ratio of optima, and the optimum against rank, each a parabola's vertex


def ratio_row(rid, summaries, a, b, metric, claim, target=10.0, source=LWR):
    """a's optimal LR over b's, each the vertex of a parabola in log-LR through its grid's mean
    `metric` (opt.vertex_ratio, a joint bootstrap over seeds). Holds when both optima are interior
    and the interval lies within a factor 2 of target; does not hold when it excludes target."""
    higher = metric != "val_loss"
    va, vb = (lists(metric_table(summaries, g, metric)) for g in (a, b))
    if len(va) < 3 or len(vb) < 3:
        return missing(rid, claim, source, f"no finished {a} or {b} sweep")
    r = opt.vertex_ratio(va, vb, higher)
    k = min(len(v) for v in [*va.values(), *vb.values()])
    unread = {g: "its best grid point is on the grid's edge" if opt.parabola(v, higher) is None
              else "the parabola through its best point and two neighbours each side has no "
                   "peak inside them"
              for g, v in ((a, va), (b, vb)) if opt.vertex(v, higher) is None}
    grids = f"{len(va)} and {len(vb)} LRs √2 apart; {metric.replace('_', ' ')} over seeds"
    if unread:
        best = (opt.best_lr(va), opt.best_lr(vb)) if higher else (low(va), low(vb))
        measured = "not bracketed: " + "; ".join(f"{g}: {why}" for g, why in unread.items()) + \
            f" (best grid points {best[0]:g} and {best[1]:g})"
        near = opt.vertex_ratio(va, vb, higher, width=1)  # a sensitivity reading, not the verdict
        if near["bracketed"]:
            measured += (f"; the parabola through the best point and one neighbour each side "
                         f"reads {near['ratio']:.3g}x (optima {near['lr_a']:.3g} vs "
                         f"{near['lr_b']:.3g})")
            measured += " [{:.3g}, {:.3g}]".format(*near["interval"]) if near["interval"] else ""
        return row(rid, claim, source, measured, None, "bootstrap over seeds", k, grids,
                   "inconclusive", bracketed=False,
                   why="an optimum that is not bracketed is a bound, not a measure")
    lo, hi = r["interval"] or (None, None)
    measured = (f"{r['ratio']:.3g}x (optima {r['lr_a']:.3g} vs {r['lr_b']:.3g}; bracketed in "
                f"{r['share_bracketed']:.0%} of the resamples)")
    verdict = "inconclusive" if lo is None else st._verdict(
        target / 2 <= lo and hi <= target * 2, not lo <= target <= hi, k, None, st.ALPHA)
    return row(rid, claim, source, measured, r["interval"], "bootstrap over seeds", k, grids,
               verdict, bracketed=True, ratio=r["ratio"], lr=[r["lr_a"], r["lr_b"]],
               why=f"the ratio's interval neither lies within 2x of {target:g} nor excludes it")


def low(table):
    """The grid point of the lowest mean (a loss's best)."""
    return min(sorted(table), key=lambda lr: np.mean(table[lr]))


RANK_CLAIMS = dict(alpha_r=(0.0, "with α/r the optimal SFT LR is flat in rank (slope 0)", LWR),
                   rslora=(-0.5, "with rsLoRA's α/√r the optimal SFT LR falls like r^-1/2",
                           "LoRA Without Regret's theory, rsLoRA"),
                   constant=(-1.0, "with a constant scale the optimal SFT LR falls like 1/r",
                             "LoRA Without Regret's theory"))


def rank_slope_row(summaries, scaling):
    """The slope of log(optimal LR) against log(rank), held-out loss (opt.rank_slope): holds when
    its interval lies within ±0.25 of the predicted slope, does not hold when it excludes it."""
    want, claim, source = RANK_CLAIMS[scaling]
    rid = f"lr_vs_rank_{scaling}"
    tables = {1: lists(metric_table(summaries, "sft_r1", "val_loss"))}
    tables |= {r: lists(metric_table(summaries, f"sft_{scaling}_r{r}", "val_loss"))
               for r in plan.RANKS[1:]}
    tables = {r: t for r, t in tables.items() if len(t) >= 3}
    if len(tables) < 3:
        return missing(rid, claim, source, "fewer than three ranks swept")
    s = opt.rank_slope(tables, higher=False)
    k = min(len(v) for t in tables.values() for v in t.values())
    optima = ", ".join(f"r{r} {'edge' if v is None else f'{v:.3g}'}" for r, v in
                       s["optima"].items())
    if s["slope"] is None:
        return row(rid, claim, source, f"not bracketed: optima {optima}", None,
                   "bootstrap over seeds", k, "validation loss, 7 LRs √2 apart a rank",
                   "inconclusive", bracketed=False, slope=None,
                   why="an optimum at its grid's edge is a bound, not a measure")
    iv = s["interval"]
    verdict = "inconclusive" if iv is None else st._verdict(
        want - 0.25 <= iv[0] and iv[1] <= want + 0.25, not iv[0] <= want <= iv[1], k, None,
        st.ALPHA)
    return row(rid, claim, source, f"slope {s['slope']:+.2f} (predicted {want:+.1f}); optima "
               f"{optima}", iv, "bootstrap over seeds", k,
               "validation loss, 7 LRs √2 apart a rank (rank 1: the sft_r1 sweep)", verdict,
               bracketed=True, slope=s["slope"],
               why=f"the interval neither lies within ±0.25 of {want:+.1f} nor excludes it")

# -----------------------------------------------------------------------------
# Which matrices: targets and layers, a family with Holm


FAMILY = [("attn_only", "r1_attn", "worse", "attention-only LoRA does worse than all layers"),
          ("mlp_only", "r1_mlp", "equivalent", "MLP-only LoRA matches LoRA on all layers"),
          ("middle_third", "r1_middle", "equivalent", "LoRA on the middle third of the layers "
           "matches LoRA on all layers"),
          ("first_third", "r1_first", "worse", "LoRA on the first third does worse than on all"),
          ("last_third", "r1_last", "worse", "LoRA on the last third does worse than on all")]


def family_rows(summaries, best):
    """Each variant against rank-1 LoRA on all layers (the row's claim and verdict, one Holm
    family) and, stated beside it, against full fine-tuning (its own equivalence test)."""
    ref, full = at_best(summaries, best, "r1"), at_best(summaries, best, "full")
    contrasts, measured, vs_full = {}, {}, {}
    for rid, group, kind, claim in FAMILY:
        t = at_best(summaries, best, group)
        if t and ref and set(t) & set(ref):
            est = st.paired_by_seed(t, ref, TEST)
            contrasts[rid] = (est, kind)
            measured[rid] = f"{mean_of(t):.3f} at LR {best[group]:g}"
            if full and set(t) & set(full):
                f = st.paired_by_seed(t, full, TEST)
                vs_full[rid] = dict(estimate=f["estimate"], interval=f["interval"],
                                    n_seeds=f["n_seeds"], verdict=st.verdict_equivalent(f))
                measured[rid] += (f"; vs full fine-tuning ({mean_of(full):.3f}) {fmt(f)} "
                                  f"[{f['interval'][0]:+.3f}, {f['interval'][1]:+.3f}], "
                                  f"matching full: {vs_full[rid]['verdict']}")
            measured[rid] += f"; vs all layers ({mean_of(ref):.3f}) {fmt(est)}"
    verdicts = st.family_verdicts(contrasts, st.EQUIVALENCE) if contrasts else {}
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
                        family="targets and layers against all layers, Holm",
                        vs_full=vs_full.get(rid),
                        **power(est, st.EQUIVALENCE if kind == "equivalent" else 0.0)))
    return rows

# -----------------------------------------------------------------------------
# SFT: batch size, loss by rank


def batch_row(summaries):
    """LoRA's extra held-out loss over full fine-tuning's, at batch 256 against batch 32 (the same
    3,840 examples): each method and batch at the LR of its three with the lowest validation loss
    (the grid's seeds), read on the test split's loss, in millinats a token. Accuracy ties at the
    ceiling; the loss, as the source measured it, does not."""
    claim = ("LoRA pays more than full fine-tuning for a large batch (SFT, the same examples: test "
             "loss)")
    loss, lrs = {}, loss_lrs(summaries)
    for m in ("r1", "full"):
        for b in (32, 256):
            test = metric_table(summaries, f"sft_{m}_b{b}", "test_loss").get(lrs.get(
                f"sft_{m}_b{b}"), {})
            loss[m, b] = {s: 1e3 * x for s, x in test.items()}
    seeds = set.intersection(*(set(v) for v in loss.values()))
    if not seeds:
        return missing("batch_size", claim, LWR,
                       "no batch-32 and batch-256 runs with a held-out loss")
    gap = {b: {s: loss["r1", b][s] - loss["full", b][s] for s in seeds} for b in (32, 256)}
    est = st.paired_by_seed(gap[256], gap[32], None)
    measured = (f"rank 1 minus full, test loss in millinats a token: {mean_of(gap[32]):+.3f} at "
                f"batch 32, {mean_of(gap[256]):+.3f} at batch 256 (3,840 examples each); growth "
                f"{fmt(est)}")
    return row("batch_size", claim, LWR, measured, est["interval"], "paired by seed",
               est["n_seeds"], "validation split: each batch size and method the lowest mean "
               "loss of its 3 LRs", verdict_greater(est["interval"], est["n_seeds"]),
               **power(est, 0.0))


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
    return row("flops_two_thirds", claim, LWR, measured, None, "analytic", 0, "", "analytic",
               why="a count, not a measurement: " + ("within" if 0.6 <= ratio["3B"] <= 0.72
                                                     else "outside") + " 0.60-0.72 at 3B")

# -----------------------------------------------------------------------------


def claims(summaries, geometry=None):
    """Every row of the contract (and a few more), in the report's order."""
    best = best_lrs(summaries) | knee_lrs_of(summaries)
    rows = [matches_row("rank1_matches_full_rl", summaries, best, "r1", "full",
                        "RL: rank-1 LoRA matches full fine-tuning, each at its best LR"),
            matches_row("rank4_matches_full_rl", summaries, best, "r4", "full",
                        "RL: rank-4 LoRA matches full fine-tuning"),
            matches_row("rank16_matches_full_rl", summaries, best, "r16", "full",
                        "RL: rank-16 LoRA matches full fine-tuning"),
            slower_row(summaries),
            ten_steps_row(summaries),
            ratio_row("lr_ratio_rl", summaries, "r1", "full", "mean_reward",
                      "RL: LoRA's best LR is ~10x full fine-tuning's (α = 32, rank 1)"),
            ratio_row("lr_ratio_alpha", summaries, "r1_alpha1", "full", "mean_reward",
                      "RL at α = r = 1 (α/r = 1): LoRA's best LR is ~10x full fine-tuning's",
                      source="a from-scratch reproduction of " + LWR),
            ratio_row("lr_ratio_short", summaries, "r1_short", "full_short", "mean_reward",
                      "short runs (10 steps of 8 prompts) prefer a ratio of ~15x", target=15.0),
            ratio_row("lr_ratio_sft", summaries, "sft_r1", "sft_full", "val_loss",
                      "SFT: LoRA's best LR is ~10x full fine-tuning's"),
            *(rank_slope_row(summaries, scaling) for scaling in RANK_CLAIMS),
            *family_rows(summaries, best),
            batch_row(summaries),
            knee_row(summaries, best),
            sft_loss_row(summaries, best),
            ladder_row(summaries, best),
            tinylora_row(summaries, best),
            adam_row(summaries),
            flops_row(summaries, best),
            dial_row(summaries, best),
            *geometry_rows(geometry, missing)]
    return rows, best
