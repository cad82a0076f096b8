import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"  # ../shared beside the checkout; absent in a user's clone

# Tiny models gain nothing from threads, and on a busy 2-core machine a second thread waiting for
# a core made the suite ~10x slower. Subprocess tests inherit the variable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def no_lock_left_behind():
    """Scripts run in this process (runpy) hold their run folder's lock until exit, as a real
    process does; after each test they are released, so later tests start clean."""
    yield
    import runs
    runs.release_locks()


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is absent (only developers' machines have it)")
    return SHARED / "data"


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """A random toy checkpoint on disk: config.json, model.safetensors, tokenizer.json."""
    import model
    return model.make_toy_checkpoint(str(tmp_path_factory.mktemp("toy")), seed=0)


def assert_same_tokens(a, b, scores, at_least=None):
    """Token lists a[i] and b[i] are equal, or part only where the two tokens tie to float rounding:
    scores(i, prefix) gives the 1-D scores (logits, plus the keyed noise when sampling) the
    reference ranks after `prefix` of row i. Batching, a cache or another CPU round the last bits
    of the logits differently, which may flip a near-tie, and the rest of the row may then differ:
    an exact comparison would fail there on some machine, while a real bug (a wrong mask, a wrong
    key, a row mixed up) moves the scores far more than 1e-5 of their scale. at_least: how many
    rows must agree exactly (default all but one)."""
    assert len(a) == len(b), (len(a), len(b))
    same = 0
    for i, (x, y) in enumerate(zip(a, b)):
        t = next((t for t, (p, q) in enumerate(zip(x, y)) if p != q), None)
        if t is None:
            assert len(x) == len(y), f"row {i}: one stopped where the other went on: {x} {y}"
            same += 1
            continue
        s = scores(i, y[:t]).float()
        gap = (s[x[t]] - s[y[t]]).abs() / s.abs().max()
        assert gap < 1e-5, f"row {i} differs at token {t} by {gap:.2e} of the scores: not a tie"
    need = len(a) - 1 if at_least is None else at_least
    assert same >= need, f"only {same} of {len(a)} rows identical"
