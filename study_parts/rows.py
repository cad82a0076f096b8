"""
What every claim row shares: the test split's size, the sources, how an estimate is printed, the
fields of a comparative row (its margin and the mde of its design), a row for runs that are not
there. claims.py, capacity.py and geometry_rows.py build their rows on these.
"""
import math

import numpy as np

from study_parts import stats as st
from study_parts.stats import row

TEST = 1111          # the toy test split; every study run is scored on all of it
LWR, TRAJ, TINY = "LoRA Without Regret", "the trajectory study", "Morris et al. 2026 (TinyLoRA)"
VAL_SELECTION = "validation split: the LR with the best mean over seeds"
STEER = 0.5          # a run "steers" when its test accuracy passes this (base 0.19, mode 0.91)


def fmt(est):
    """An estimate in the measured text; its interval is the row's own, printed beside it."""
    return f"{est['estimate']:+.3f}"


def verdict_greater(interval, n_seeds):
    """"A exceeds B": holds when the interval of A − B lies above 0, does not hold below it."""
    return st.verdict_worse(None if interval is None else [-interval[1], -interval[0]], n_seeds)


def power(est, margin):
    """The fields every comparative row carries: its margin and its design's mde."""
    mde = st.mde(est)
    return dict(margin=margin, mde=None if math.isinf(mde) else round(mde, 4))


def missing(rid, claim, source, what):
    """A row whose runs are not there (not in this plan, or unfinished): inconclusive, saying so."""
    return row(rid, claim, source, f"not measured: {what}", None, "none", 0, "", "inconclusive",
               why=what)


def mean_of(t, seeds=None):
    return float(np.mean([t[s] for s in (seeds or t)]))

