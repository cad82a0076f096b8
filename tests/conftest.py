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
