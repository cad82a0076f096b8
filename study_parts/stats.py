"""
The statistics behind study.py's claim rows, after a statistician's review: each group of functions
answers one flaw of the old code, numbered as in the review (tests/test_study_stats.py checks them).

    python -m study_parts.stats       # self-check: t quantiles, McNemar and Holm on known values

1 winner's curse         best_lr, argmax_bootstrap, lr_ratio_interval (choose on validation seeds)
2 paired data            paired_by_seed (exact Student t: t_quantile), mcnemar, paired_bootstrap
3 one seed, a verdict    verdict_equivalent, verdict_worse: "inconclusive" below MIN_SEEDS seeds
4 zero-width intervals   binomial_se floors every standard error (mean_interval, paired_by_seed)
5 1.96 for three seeds   error_bar: t quantile and floor, for figures
6 multiplicity           holm, contrast_p_values, family_verdicts (Holm within a family)
7 prose beyond verdicts  sentence: a row's summary from its verdict and numbers only
8 the claims contract    claim_row, check_claims, REQUIRED_IDS

References: Holm 1979, "A Simple Sequentially Rejective Multiple Test Procedure"; McNemar 1947
(the exact test on discordant pairs); Numerical Recipes §6.4 (betacf). Python and numpy only.
pass@k and the bootstrap over problems live in eval_gsm8k.py, which computes them.
"""
import math
import numbers
from functools import lru_cache

import numpy as np

EQUIVALENCE = 0.02  # "A matches B": A − B within ±0.02 by TOST, with mde ≤ 0.02 (observed seed SD
                    # 0.002-0.005 on the toy's ceiling: ten seeds see 0.02)
MIN_SEEDS = 3   # below this, seed-to-seed noise is barely measured: no definite verdict
ALPHA = 0.05    # two-sided 95% intervals, so each one-sided test runs at ALPHA / 2
VERDICTS = ("holds", "does not hold", "inconclusive", "analytic")
SEED_TESTS = ("paired by seed", "over seeds", "bootstrap over seeds")  # MIN_SEEDS applies to these
RULES = dict(id="a snake_case string", claim="a non-empty string", source="a non-empty string",
             measured="text or a finite number", interval="None or [lo, hi] with lo <= hi",
             test="a non-empty string", n_seeds="an int >= 0",
             selection="a string ('' for none)", verdict=f"one of {VERDICTS}")
FIELDS = tuple(RULES)  # every row has at least these
REQUIRED_IDS = (
    "rank1_matches_full_rl", "rank1_slower_rl", "lr_ratio_rl", "lr_ratio_sft", "lr_ratio_short",
    "lr_ratio_alpha", "lr_vs_rank_alpha_r", "lr_vs_rank_rslora", "lr_vs_rank_constant",
    "attn_only", "mlp_only", "middle_third", "first_third", "last_third", "batch_size", "adam_2dof",
    "flops_two_thirds", "capacity_knee_bits", "ladder_rl", "skill_dial", "sft_loss_by_rank",
    "tinylora_13", "pc12_variance", "pc12_variance_blog_design", "orthogonal_finals",
    "update_small", "plane_region", "rank1_truncation")

# -----------------------------------------------------------------------------
# Student t, exactly: the incomplete beta function, its CDF, and the quantile by bisection


def betacf(a, b, x):
    """The continued fraction of the incomplete beta function by the modified Lentz method, as
    Numerical Recipes' betacf: each step m adds an even and an odd term."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    h = d = 1.0 / (d if abs(d) > tiny else tiny)
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + term / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:  # the odd step barely changed h
            return h
    raise RuntimeError(f"betacf did not converge for a={a}, b={b}, x={x}")


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b). The fraction converges fast for
    x < (a+1)/(a+b+2); beyond, the symmetry I_x(a, b) = 1 − I_(1−x)(b, a) is used."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T ≤ t) for Student's t with df degrees of freedom: the tail beyond |t| is
    ½·I_x(df/2, ½) with x = df/(df + t²). Computed from the tail, so small p-values stay exact."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=None)
def t_quantile(p, df):
    """The t with P(T ≤ t) = p, by bisection on t_cdf (monotone, so bisection cannot fail):
    t_quantile(0.975, 2) = 4.303, where the old code's 1.96 made three seeds look certain."""
    assert 0.0 < p < 1.0 and df > 0, f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}"
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):  # 2^-100 of the bracket: past double precision
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)

# -----------------------------------------------------------------------------
# Means and paired differences over seeds, with the binomial floor on the standard error


def binomial_se(p, n_problems):
    """The standard error of one accuracy measured on n_problems problems: √(p(1−p)/n). p is kept
    one problem away from 0 and 1, so that a perfect score still has a floor above zero."""
    p = min(max(p, 1.0 / n_problems), 1.0 - 1.0 / n_problems)
    return math.sqrt(p * (1.0 - p) / n_problems)


def _over_seeds(x, floor_one, level):
    """The mean of x over its k seeds, with Student t (df = k − 1) on the SE max(s/√k, floor/√k)
    where floor is one evaluation's binomial SE. One seed gives no interval: its spread over seeds
    is unknown, not zero."""
    x = np.asarray(x, dtype=float)
    k, mean = len(x), float(np.mean(x))
    se_seeds = float(np.std(x, ddof=1)) / math.sqrt(k) if k >= 2 else 0.0
    se = max(se_seeds, floor_one / math.sqrt(k))
    half = t_quantile(0.5 + level / 2, k - 1) * se if k >= 2 else None
    return dict(estimate=mean, se=se, df=k - 1, n_seeds=k, level=level, floored=se > se_seeds,
                interval=None if half is None else [mean - half, mean + half])


def mean_interval(values, n_problems, level=0.95):
    """One method's mean accuracy over k seeds and its t interval. The SE is floored (flaw 4):
    max(s/√k, √(p(1−p)/n)/√k), the larger of the spread over seeds and the binomial error that k
    evaluations of n problems imply, so three identical seeds no longer give a zero-width
    interval. The floor divides by √k as if each seed's evaluation error were independent; on
    one shared test split part of it is common to all seeds: the floor is a minimum, not truth."""
    assert len(values) >= 1, "mean_interval needs at least one value"
    return _over_seeds(values, binomial_se(float(np.mean(values)), n_problems), level)


def error_bar(values, n_problems, level=0.95):
    """The half-width of mean_interval for a figure: t_(k−1) (4.30 for three seeds, not 1.96)
    times the floored SE; nan for one seed, which has no error bar to draw."""
    est = mean_interval(values, n_problems, level)
    return math.nan if est["interval"] is None else est["interval"][1] - est["estimate"]


def paired_by_seed(a, b, n_problems, level=0.95):
    """A − B over the seeds both have, {seed: value} each: runs with one seed see the same prompts
    and sampling keys, so per-seed differences cancel the shared noise (flaw 2). A t interval on
    the k differences, df = k − 1, SE floored at √(2p(1−p)/n)/√k, p the pooled accuracy: two
    independent evaluations' binomial error, conservative since evaluations of the same problems
    correlate positively. n_problems=None turns the floor off, for values other than accuracies."""
    seeds = sorted(set(a) & set(b))
    assert seeds, f"no common seeds: {sorted(a)} vs {sorted(b)}"
    pooled = float(np.mean([a[s] for s in seeds] + [b[s] for s in seeds]))
    floor = 0.0 if n_problems is None else math.sqrt(2.0) * binomial_se(pooled, n_problems)
    return dict(_over_seeds([a[s] - b[s] for s in seeds], floor, level), seeds=seeds)

# -----------------------------------------------------------------------------
# Verdicts, and Holm within a family of contrasts


def _verdict(claim_shown, claim_refuted, n_seeds, p_adjusted, alpha):
    """The shared rule. p_adjusted, when given, is (p_holds, p_fails) after Holm: a definite
    verdict then needs both the interval and its family-adjusted test to agree."""
    if n_seeds < MIN_SEEDS:
        return "inconclusive"
    if p_adjusted is not None:
        p_holds, p_fails = p_adjusted
        claim_shown &= p_holds <= alpha / 2
        claim_refuted &= p_fails <= alpha / 2
    return "holds" if claim_shown else "does not hold" if claim_refuted else "inconclusive"


def verdict_worse(interval, n_seeds, p_adjusted=None, alpha=ALPHA):
    """"A is worse than B": holds when the interval of A − B lies below 0, does not hold when it
    lies above 0 (A is better); inconclusive below MIN_SEEDS seeds (flaw 3)."""
    lo, hi = interval or (math.nan, math.nan)  # no interval: nan compares False, inconclusive
    return _verdict(hi < 0, lo > 0, n_seeds, p_adjusted, alpha)


def mde(est, alpha=ALPHA, power=0.8):
    """The minimum detectable effect of a paired contrast's design: the true difference that its
    two-sided test at level α finds with probability `power`, (t_(1−α/2) + t_power)·SE with df =
    k − 1 and est's floored SE (from the observed seed SD). What "A matches B within margin"
    can promise: a design whose mde exceeds the margin could not have seen a loss of its size."""
    t = lambda q: t_quantile(q, est["df"])
    return math.inf if est["df"] < 1 else (t(1 - alpha / 2) + t(power)) * est["se"]


def verdict_equivalent(est, margin=EQUIVALENCE, alpha=ALPHA, p_adjusted=None):
    """"A matches B": two one-sided tests, each at α/2, i.e. the 95% interval of A − B inside
    [−margin, +margin], and a design able to see a difference of that size (mde ≤ margin):
    holds. The interval wholly outside the band (A clearly worse, or clearly better): does not
    hold. Else, or below MIN_SEEDS seeds: inconclusive."""
    lo, hi = est["interval"] or (math.nan, math.nan)
    shown = -margin <= lo and hi <= margin and mde(est, alpha) <= margin
    return _verdict(shown, hi < -margin or lo > margin, est["n_seeds"], p_adjusted, alpha)


def fisher_exact(a, n_a, b, n_b):
    """Fisher's exact test of "A and B succeed equally often", a of n_a against b of n_b (e.g.
    seeds that steer): the two-sided p-value sums the hypergeometric probabilities of every table
    with the same margins no more likely than the one seen (exact integers)."""
    total, k = n_a + n_b, a + b
    prob = lambda x: math.comb(n_a, x) * math.comb(n_b, k - x)
    seen = prob(a)
    tables = [prob(x) for x in range(max(0, k - n_b), min(k, n_a) + 1)]
    return min(1.0, sum(t for t in tables if t <= seen * (1 + 1e-12)) / math.comb(total, k))


def share_difference(a, n_a, b, n_b, z=1.96):
    """a/n_a − b/n_b and Newcombe's hybrid score interval (Wilson on each share): sound at
    shares of 0 and 1, where the Wald interval collapses."""
    def wilson(k, n):
        p, d = k / n, 1 + z * z / n
        c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
        return c - h, c + h
    (la, ua), (lb, ub) = wilson(a, n_a), wilson(b, n_b)
    pa, pb = a / n_a, b / n_b
    d = pa - pb
    return d, [d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2),
               d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)]


def holm(p_values):
    """Holm's step-down adjusted p-values: sorted ascending, the j-th smallest (from 0) becomes
    max over i ≤ j of min(1, (m − i)·p_(i)); rejecting where adjusted ≤ α keeps the chance of any
    false rejection in the family ≤ α, whatever the dependence between the tests (Holm 1979)."""
    p = np.asarray(p_values, dtype=float)
    order, m = np.argsort(p, kind="stable"), len(p)
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def contrast_p_values(est, kind, margin=EQUIVALENCE):
    """(p_holds, p_fails): one-sided t-test p-values for a contrast's two nulls.
    kind "worse":      p_holds tests H0 Δ ≥ 0,       p_fails tests H0 Δ ≤ 0.
    kind "equivalent": p_holds is TOST's, the larger of the tests of H0 Δ ≤ −margin and of
                       H0 Δ ≥ +margin; p_fails the smaller of those for Δ outside the band.
    With the same SE and df as est's interval, p ≤ α/2 exactly when the 95% interval clears the
    threshold, so with one contrast the tests and the interval give the same verdict."""
    assert kind in ("worse", "equivalent"), f"unknown kind {kind!r}"
    if est["df"] < 1:
        return 1.0, 1.0
    assert est["se"] > 0, "zero standard error: pass n_problems so the binomial floor applies"
    tail = lambda threshold: ((est["estimate"] - threshold) / est["se"], est["df"])
    if kind == "equivalent":
        (t_lo, df), (t_hi, _) = tail(-margin), tail(margin)
        return (max(t_cdf(-t_lo, df), t_cdf(t_hi, df)), min(t_cdf(t_lo, df), t_cdf(-t_hi, df)))
    t, df = tail(0.0)
    return t_cdf(t, df), t_cdf(-t, df)  # p of H0 Δ ≥ 0, p of H0 Δ ≤ 0


def family_verdicts(contrasts, margin=EQUIVALENCE, alpha=ALPHA):
    """Verdicts for a family of follow-ups (flaw 6), {id: (est, kind)} with est from
    paired_by_seed. Each contrast gets p_holds and p_fails (contrast_p_values); Holm adjusts the m
    p_holds together and the m p_fails together, each at α/2, so the chance of any wrong definite
    verdict in the family is ≤ α/2 + α/2 = α. "holds" needs the adjusted p_holds ≤ α/2 and the
    interval above the threshold ("does not hold" likewise). Contrasts with too few seeds stay in
    the family (it is the planned family) and stay inconclusive."""
    ids = list(contrasts)
    p = [contrast_p_values(est, kind, margin) for est, kind in contrasts.values()]
    holds_adj, fails_adj = holm([x[0] for x in p]), holm([x[1] for x in p])
    out = {}
    for i, cid in enumerate(ids):
        (est, kind), adj = contrasts[cid], (holds_adj[i], fails_adj[i])
        v = (verdict_equivalent(est, margin, alpha, adj) if kind == "equivalent"
             else verdict_worse(est["interval"], est["n_seeds"], adj, alpha))
        out[cid] = dict(verdict=v, p_holds=p[i][0], p_fails=p[i][1], p_holds_adjusted=adj[0],
                        p_fails_adjusted=adj[1], family_size=len(ids))
    return out

# -----------------------------------------------------------------------------
# One evaluation against another on the same problems: McNemar and the paired bootstrap


def _binary(correct_a, correct_b):
    a, b = np.asarray(correct_a, dtype=int), np.asarray(correct_b, dtype=int)
    assert a.shape == b.shape and a.ndim == 1, f"need equal-length 1-D inputs: {a.shape} {b.shape}"
    assert np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all(), "inputs must be 0/1 per problem"
    return a, b


def mcnemar(correct_a, correct_b):
    """McNemar's exact test of "A and B are equally accurate" on the same problems. Only the
    discordant problems carry information: under the null each is A's with probability ½, so
    p = min(1, 2·P(X ≤ min(n_a, n_b))) for X ~ Binomial(n_a + n_b, ½), in exact integers."""
    a, b = _binary(correct_a, correct_b)
    a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    n = a_only + b_only
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return dict(p_value=min(1.0, 2 * tail / 2 ** n), a_only=a_only, b_only=b_only,
                estimate=(a_only - b_only) / len(a), n_problems=len(a))


def bootstrap_mean(x, n_boot=10000, seed=0, level=0.95):
    """(mean, [lo, hi]): the percentile bootstrap of a mean over items (problems), resampling
    item indices with replacement; 500 resamples at a time keep memory at a few MB."""
    x, rng = np.asarray(x, dtype=float), np.random.default_rng(seed)
    n = len(x)
    means = np.concatenate([x[rng.integers(0, n, size=(min(500, n_boot - i), n))].mean(axis=1)
                            for i in range(0, n_boot, 500)])  # (n_boot,)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(x.mean()), [float(lo), float(hi)]


def paired_bootstrap(correct_a, correct_b, n_boot=10000, seed=0, level=0.95):
    """Accuracy of A minus B on the same problems, with a bootstrap interval over problems: a
    problem is resampled with both its results, which keeps the pairing."""
    a, b = _binary(correct_a, correct_b)
    estimate, interval = bootstrap_mean(a - b, n_boot, seed, level)
    return dict(estimate=estimate, interval=interval, n_problems=len(a))

# -----------------------------------------------------------------------------
# Claim rows: the contract of claims.json, and the sentence a row may say


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _interval(iv, where):
    """None, or [lo, hi] with finite lo ≤ hi, as floats; anything else names where it was."""
    if iv is None:
        return None
    ok = isinstance(iv, (list, tuple)) and len(iv) == 2 and all(_is_number(v) for v in iv)
    if not ok or iv[0] > iv[1]:
        raise ValueError(f"{where}: must be None or [lo, hi] with lo <= hi, got {iv!r}")
    return [float(iv[0]), float(iv[1])]


POINTS = dict(capacity_knee_bits=("data_bits", "stored_bits", "gap_to_full"),
              ladder_rl=("params", "accuracy", "interval"), skill_dial=("p",))


def _check_points(row):
    """The rows with a `points` list: capacity_knee_bits (data_bits, each method's stored_bits
    and gap_to_full as {bits, interval}), ladder_rl (params, accuracy, its interval), skill_dial
    (p and at least one smallest* entry: the smallest adapters that learn the skill)."""
    rid, points = row["id"], row.get("points")
    if not isinstance(points, list) or not points:
        raise ValueError(f"claim row {rid!r}: field 'points' must be a non-empty list")
    for i, pt in enumerate(points):
        where, pt = f"claim row {rid!r}: field 'points'[{i}]", pt if isinstance(pt, dict) else {}
        for key in POINTS[rid]:
            if key not in pt:
                raise ValueError(f"{where} needs '{key}', got keys {sorted(pt)}")
        for key in ("data_bits", "params", "accuracy", "p"):
            if key in POINTS[rid] and not _is_number(pt[key]):
                raise ValueError(f"{where} needs a number '{key}', got {pt[key]!r}")
        for key in ("stored_bits", "gap_to_full"):
            for method, v in (pt.get(key) or {}).items() if key in POINTS[rid] else ():
                if not (_is_number(v.get("bits")) and _interval(v.get("interval"), where)):
                    raise ValueError(f"{where}['{key}']['{method}'] needs bits and an interval")
        if rid == "ladder_rl" and pt["interval"] is not None:
            _interval(pt["interval"], f"{where}['interval']")
        if rid == "skill_dial" and not any(key.startswith("smallest") for key in pt):
            raise ValueError(f"{where} needs a 'smallest...' entry, got keys {sorted(pt)}")


def claim_row(**fields):
    """A claims.json row, checked: every field of FIELDS present and well typed (extra fields such
    as command, why or points are kept), and no definite verdict from a seed-based test with
    fewer than MIN_SEEDS seeds. A bad field raises ValueError naming it."""
    rid = fields.get("id")
    for key in FIELDS:
        if key not in fields:
            raise ValueError(f"claim row {rid!r}: field '{key}' is missing")
    row, text = dict(fields), lambda v: isinstance(v, str) and v != ""
    n = row["n_seeds"]
    ok = dict(id=text(rid) and rid.replace("_", "").isalnum(), claim=text(row["claim"]),
              source=text(row["source"]), test=text(row["test"]),
              selection=isinstance(row["selection"], str),
              measured=text(row["measured"]) or _is_number(row["measured"]),
              n_seeds=isinstance(n, int) and not isinstance(n, bool) and n >= 0,
              verdict=row["verdict"] in VERDICTS)
    bad = [key for key, good in ok.items() if not good]
    if bad:
        raise ValueError(f"claim row {rid!r}: field '{bad[0]}' must be {RULES[bad[0]]}, "
                         f"got {row[bad[0]]!r}")
    row["interval"] = _interval(row["interval"], f"claim row {rid!r}: field 'interval'")
    few_seeds = row["test"] in SEED_TESTS and row["n_seeds"] < MIN_SEEDS
    if few_seeds and row["verdict"] in ("holds", "does not hold"):
        raise ValueError(f"claim row {rid!r}: field 'verdict' is {row['verdict']!r} from "
                         f"{row['n_seeds']} seeds; below {MIN_SEEDS} it must be 'inconclusive'")
    if rid in POINTS and (row.get("points") is not None or row["verdict"] != "inconclusive"):
        _check_points(row)  # a row with a verdict shows its points; one not measured has none
    return row


def row(rid, claim, source, measured, interval, test, n_seeds, selection, verdict, **extra):
    """claim_row with the contract's fields in order (study_parts/claims.py writes many)."""
    return claim_row(id=rid, claim=claim, source=source, measured=measured, interval=interval,
                     test=test, n_seeds=n_seeds, selection=selection, verdict=verdict, **extra)


def check_claims(obj, required_ids=REQUIRED_IDS):
    """A whole claims object, {"rows": [...], ...}: every row valid, ids unique, every required
    id present. Returns the checked rows; raises ValueError naming the first problem."""
    rows = obj.get("rows") if isinstance(obj, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("claims: expected an object with a 'rows' list of objects")
    rows = [claim_row(**r) for r in rows]
    ids = [r["id"] for r in rows]
    twice = sorted({rid for rid in ids if ids.count(rid) > 1})
    if twice:
        raise ValueError(f"claims: ids appear more than once: {', '.join(twice)}")
    missing = [rid for rid in required_ids if rid not in ids]
    if missing:
        raise ValueError(f"claims: required ids missing: {', '.join(missing)}")
    return rows


def interval_text(row, signed="[{:+.3g}, {:+.3g}]"):
    """A row's interval as text: a difference or slope signed, a ratio as factors ("[2.5x, 4x]")."""
    iv = row["interval"]
    return "" if iv is None else ("[{:.3g}x, {:.3g}x]" if "ratio" in row else signed).format(*iv)


def sentence(row):
    """The summary sentence of a row, from its verdict and numbers only (flaw 8): "<verdict>:
    <claim> (<measured> [lo, hi], <k> seeds, <test>[, Holm-adjusted p])", and for an inconclusive
    row, why. The row is checked first, so no sentence can say more than a valid verdict."""
    row = claim_row(**row)
    m, iv = row["measured"], interval_text(row, "[{:+.3f}, {:+.3f}]")
    parts = [" ".join(filter(None, (m if isinstance(m, str) else f"{m:+.3f}", iv)))]
    if row["test"] in SEED_TESTS or row["n_seeds"]:
        parts.append(f"{row['n_seeds']} seed" + ("" if row["n_seeds"] == 1 else "s"))
    parts.append(row["test"])
    if "p_adjusted" in row:
        parts.append(f"Holm-adjusted p {row['p_adjusted']:.3g}")
    detail = ", ".join(parts)
    if row["verdict"] != "inconclusive":
        return f"{row['verdict']}: {row['claim']} ({detail})"
    few_seeds = row["test"] in SEED_TESTS and row["n_seeds"] < MIN_SEEDS
    why = (f"{row['n_seeds']} of the {MIN_SEEDS} seeds a verdict needs" if few_seeds
           else row.get("why") or "the interval does not clear the threshold at this noise")
    return f"inconclusive: {row['claim']} ({detail}; {why})"


if __name__ == "__main__":
    from errors import no_flags
    no_flags(__doc__)
    table = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042}
    assert all(round(t_quantile(0.975, df), 3) == want for df, want in table.items())
    print("t_0.975 for df " + ", ".join(f"{df}: {t_quantile(0.975, df):.4f}" for df in table))
    p, adj = mcnemar([1] * 10 + [0] * 2, [0] * 10 + [1] * 2)["p_value"], holm([.01, .04, .03, .005])
    assert abs(p - 79 / 2048) < 1e-12 and np.allclose(adj, [0.03, 0.06, 0.06, 0.02]), (p, adj)
    print(f"McNemar, 10 vs 2 discordant: p = {p:.4f} (2·79/4096); Holm [.01, .04, .03, .005] -> "
          f"{[round(x, 3) for x in adj]}")
