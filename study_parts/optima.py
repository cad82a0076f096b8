"""
Where a learning rate is best, read from a grid of runs over seeds: the argmax of a mean (best_lr,
with the bootstrap of its place), and the vertex of a parabola in log-LR fitted around it
(vertex), with a bootstrap over seeds; ratios of two methods' optima and the slope of the optimum
against rank. A metric that saturates (final accuracy at a ceiling) puts the argmax on a plateau
where it is a coin toss; the vertex is read from a metric that does not (mean training reward,
held-out loss), and only when the best grid point has a neighbour on each side: an optimum on
the grid's edge is a bound, reported as such, never as a number.

    python -m study_parts.optima        # self-check: a known parabola, its vertex and interval
"""
import math

import numpy as np

# -----------------------------------------------------------------------------
# The argmax of a grid (a tie goes to the smaller LR)


def best_lr(scores):
    """The LR with the highest mean validation accuracy over its seeds, {lr: [accuracy per seed]};
    a tie goes to the smaller LR, a rule fixed in advance. fsum makes the mean order-free."""
    best, best_mean = None, -math.inf
    for lr in sorted(scores):
        mean = math.fsum(scores[lr]) / len(scores[lr])
        if mean > best_mean:
            best, best_mean = lr, mean
    return best


def cross_fit(table):
    """{lr: {seed: x}} -> {seed: x at the LR the other seeds choose}: each seed is read at the LR
    with the best mean over the other seeds, so no seed is scored at an LR it picked itself (the
    leave-one-seed-out answer to the winner's curse when selection and score are the same number).
    Needs two seeds or more that every LR has; {} otherwise."""
    common = set.intersection(*(set(v) for v in table.values())) if table else set()
    seeds = sorted(common)
    if len(seeds) < 2:
        return {}
    return {s: table[best_lr({lr: [v[o] for o in seeds if o != s] for lr, v in table.items()})][s]
            for s in seeds}


def _bootstrap_best(scores, n_boot, rng):
    """n_boot draws of the best LR, each after resampling every LR's seeds with replacement."""
    lrs = sorted(scores)
    means = np.stack([np.asarray(scores[lr], dtype=float)[
        rng.integers(0, len(scores[lr]), size=(n_boot, len(scores[lr])))].mean(axis=1)
        for lr in lrs], axis=1)  # (n_boot, n_lrs)
    return np.asarray(lrs, dtype=float)[means.argmax(axis=1)]  # first maximum: the smaller LR


def argmax_bootstrap(scores, n_boot=2000, seed=0):
    """{lr: share of bootstrap resamples over seeds in which it is best}: a confidence set for the
    best LR, quantized to the grid. An LR with one seed is never resampled differently, so its
    share understates the doubt: run every grid point with several seeds."""
    draws = _bootstrap_best(scores, n_boot, np.random.default_rng(seed))
    return {lr: float(np.mean(draws == lr)) for lr in sorted(scores)}


def lr_ratio_interval(scores_a, scores_b, n_boot=2000, seed=0, level=0.95):
    """The ratio of method A's best LR to method B's (e.g. LoRA over full fine-tuning), and a
    bootstrap interval over seeds: the lower and higher percentiles of best_a/best_b with both
    methods' seeds resampled, so its ends are ratios of grid points, not interpolations."""
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_best(scores_a, n_boot, rng) / _bootstrap_best(scores_b, n_boot, rng)
    lo = float(np.quantile(ratios, 0.5 - level / 2, method="lower"))
    hi = float(np.quantile(ratios, 0.5 + level / 2, method="higher"))
    return dict(ratio=best_lr(scores_a) / best_lr(scores_b), interval=[lo, hi], n_boot=n_boot,
                test="bootstrap over seeds")


# -----------------------------------------------------------------------------
# The vertex of a parabola in log-LR, bracketed or not


def vertex(scores, higher=True, width=2):
    """The optimum of a metric over an LR grid {lr: [value per seed]}: the vertex of the
    least-squares parabola in x = log2(lr) through the best grid point (mean over seeds) and up
    to `width` neighbours on each side. None when it is not bracketed: the best point sits on
    the grid's edge, the parabola does not bend the right way, or its vertex falls outside the
    points it was fitted to. higher: larger is better
    (mean training reward); False for a loss. The vertex may fall between grid points."""
    fit = parabola(scores, higher, width)
    if fit is None:
        return None
    window, coef, centre = fit
    a, b = coef[0] * (1 if higher else -1), coef[1] * (1 if higher else -1)
    if a >= 0:
        return None
    top = centre - b / (2 * a)  # log2 of the optimum
    inside = math.log2(window[0]) <= top <= math.log2(window[-1])
    return float(2.0 ** top) if inside else None  # past its points: not a measure


def parabola(scores, higher=True, width=2):
    """The fit vertex() reads: (the LRs of its window, np.polyfit's coefficients of the mean
    metric in x − centre with x = log2(lr), centre), or None when the best mean is on an edge."""
    lrs = sorted(scores)
    y = np.array([math.fsum(scores[lr]) / len(scores[lr]) for lr in lrs])
    i = int(np.argmax(y if higher else -y))
    if i == 0 or i == len(lrs) - 1:
        return None
    lo, hi = max(0, i - width), min(len(lrs), i + width + 1)
    x = np.log2(lrs[lo:hi])
    return lrs[lo:hi], np.polyfit(x - x.mean(), y[lo:hi], 2), float(x.mean())  # centred


def resampled(scores, rng):
    """The grid with every LR's seeds drawn again with replacement (a bootstrap over seeds)."""
    return {lr: np.asarray(v, dtype=float)[rng.integers(0, len(v), len(v))].tolist()
            for lr, v in scores.items()}


def vertex_interval(scores, higher=True, n_boot=2000, seed=0, level=0.95):
    """vertex() and a percentile bootstrap over seeds (log scale); `bracketed`: the point
    estimate exists; `share_bracketed`: the share of resamples in which it does. With three seeds
    an LR, a bootstrap sees (n−1)/n of the variance: read the interval as a lower bound."""
    rng = np.random.default_rng(seed)
    draws = [vertex(resampled(scores, rng), higher) for _ in range(n_boot)]
    ok = np.log2([d for d in draws if d is not None])
    point = vertex(scores, higher)
    interval = None if point is None or len(ok) < n_boot / 2 else \
        [float(2.0 ** np.quantile(ok, q)) for q in (0.5 - level / 2, 0.5 + level / 2)]
    return dict(lr=point, interval=interval, bracketed=point is not None,
                share_bracketed=len(ok) / n_boot, n_boot=n_boot)


def vertex_ratio(scores_a, scores_b, higher=True, n_boot=2000, seed=0, level=0.95, width=2):
    """A's optimum over B's (e.g. LoRA's LR over full fine-tuning's), both vertices, with a joint
    bootstrap over seeds; `bracketed` only when both optima are interior points."""
    rng = np.random.default_rng(seed)
    a, b = vertex(scores_a, higher, width), vertex(scores_b, higher, width)
    draws = []
    for _ in range(n_boot):
        va = vertex(resampled(scores_a, rng), higher, width)
        vb = vertex(resampled(scores_b, rng), higher, width)
        if va is not None and vb is not None:
            draws.append(math.log2(va / vb))
    bracketed = a is not None and b is not None
    interval = [float(2.0 ** np.quantile(draws, 0.5 - level / 2)),
                float(2.0 ** np.quantile(draws, 0.5 + level / 2))] \
        if bracketed and len(draws) >= n_boot / 2 else None
    return dict(ratio=a / b if bracketed else None, lr_a=a, lr_b=b, interval=interval,
                bracketed=bracketed, share_bracketed=len(draws) / n_boot, n_boot=n_boot)


def rank_slope(by_rank, higher=True, n_boot=2000, seed=0, level=0.95):
    """The slope of log2(optimal LR) against log2(rank) over {rank: scores}, each optimum a
    vertex, with a joint bootstrap over seeds: 0 when the optimum is flat in rank, −½ when it
    falls like r^-½, −1 like 1/r. None where any rank's optimum is not bracketed."""
    ranks = sorted(by_rank)
    x = np.log2(ranks)

    def slope(v):
        return None if any(t is None for t in v) else float(np.polyfit(x, np.log2(v), 1)[0])
    point = slope([vertex(by_rank[r], higher) for r in ranks])
    rng = np.random.default_rng(seed)
    draws = [slope([vertex(resampled(by_rank[r], rng), higher) for r in ranks])
             for _ in range(n_boot)]
    ok = [d for d in draws if d is not None]
    interval = [float(np.quantile(ok, q)) for q in (0.5 - level / 2, 0.5 + level / 2)] \
        if point is not None and len(ok) >= n_boot / 2 else None
    return dict(slope=point, interval=interval, bracketed=point is not None,
                share_bracketed=len(ok) / n_boot, optima={r: vertex(by_rank[r], higher)
                                                          for r in ranks})


if __name__ == "__main__":
    from errors import no_flags
    no_flags(__doc__)
    rng = np.random.default_rng(0)
    grid = [1e-3 * 2 ** (k / 2) for k in range(7)]  # √2 apart; the truth: 2.83e-3 (k = 3)
    truth = lambda lr: 0.9 - 0.05 * (math.log2(lr) - math.log2(2.83e-3)) ** 2
    scores = {lr: list(truth(lr) + rng.normal(0, 0.005, 3)) for lr in grid}
    v = vertex_interval(scores)
    print(f"vertex {v['lr']:.3g} (truth 2.83e-3), 95% [{v['interval'][0]:.3g}, "
          f"{v['interval'][1]:.3g}], bracketed in {v['share_bracketed']:.0%} of resamples")
    assert abs(math.log2(v["lr"] / 2.83e-3)) < 0.15, v  # within a tenth of a grid step
    assert vertex({lr: s for lr, s in scores.items() if lr < 2e-3}) is None, "an edge optimum"
