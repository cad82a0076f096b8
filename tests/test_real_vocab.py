"""The real vocabulary before any GPU sees it: a tiny random Qwen2 with Qwen2.5's 151,936 embedding
rows and the real tokenizer.json, through generate()'s stop strings, grpo.py and
eval_gsm8k.py --harness lm-eval (the prompts, token lengths and stops of a real run)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gsm8k
import eval_gsm8k as E
from model import Qwen2, Qwen2Config, load_model, load_tokenizer, save_model
from sampler import generate
from test_model import stop_cut

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TOKENIZER = SHARED / "qwen2.5-tokenizer" / "tokenizer.json"
GSM8K = SHARED / "gsm8k"
pytestmark = pytest.mark.skipif(not (TOKENIZER.exists() and (GSM8K / "train.jsonl").exists()),
                                reason="../shared/data (Qwen2.5's tokenizer.json, GSM8K) absent")


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen_tiny")
    torch.manual_seed(0)
    save_model(Qwen2(Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)), str(path))
    shutil.copy(TOKENIZER, path / "tokenizer.json")
    return path


def across_tokens(tok, ids):
    """A stop string that starts in one token of `ids` and ends in the next (Qwen's tokens are long)."""
    for k in range(len(ids) // 2, len(ids) - 1):
        a, b = tok.decode(ids[k:k + 1]), tok.decode(ids[k + 1:k + 2])
        if a and b and (a + b).isprintable() and "\ufffd" not in a + b:
            return a[-2:] + b[:2]
    raise AssertionError("no two printable tokens in a row")


def test_stop_strings_with_qwen_tokens(qwen_tiny):
    m, tok = load_model(str(qwen_tiny), device="cpu", verbose=False), load_tokenizer(str(qwen_tiny))
    assert len(tok.encode(" Question:")) == 2 and len(tok.encode("\n\nQuestion:")) == 3  # several tokens
    prompts = [tok.encode(E.format_prompt("Ann has 3 pens. How many?")), tok.encode("Question:")]  # ragged
    full = generate(m, prompts, 24, n=2, keys=[5, 6])
    stops = [across_tokens(tok, c) for c in full[:3]]
    ref = [stop_cut(tok, c, stops) for c in full]
    assert sum(len(r) < 24 for r in ref) >= 3
    assert any(not any(s in tok.decode(r[-1:]) for s in stops) for r in ref if len(r) < 24)  # a string across tokens
    for check_every in (1, 5):
        assert generate(m, prompts, 24, n=2, keys=[5, 6], stop_strings=stops, tokenizer=tok,
                        check_every=check_every) == ref


def test_grpo_and_lm_eval_harness_run(qwen_tiny, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "grpo.py"), "--model", str(qwen_tiny), "--data", str(GSM8K), "--rank", "1",
           "--steps", "1", "--batch", "1", "--group", "2", "--max-new-tokens", "12", "--micro-batch", "0",
           "--eval-limit", "1", "--eval-batch-size", "1", "--device", "cpu", "--out", str(out),
           "--reference"]  # every sample trains (a random model's rewards are all 0): a gap to read
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 1] and rows[1]["logp_gap"] < 1e-4
    cmd = [sys.executable, str(ROOT / "eval_gsm8k.py"), "--model", str(qwen_tiny), "--harness", "lm-eval",
           "--data", str(GSM8K / "test.jsonl"), "--train-data", str(GSM8K / "train.jsonl"), "--limit", "2",
           "--max-new-tokens", "8", "--device", "cpu", "--out", str(tmp_path / "rows.jsonl")]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "strict-match" in res.stdout and "5-shot" in res.stdout, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    test, train = E.load_gsm8k("test", GSM8K / "test.jsonl"), E.load_gsm8k("train", GSM8K / "train.jsonl")
    draws = gsm8k.lm_eval_shots(train, 2)
    assert [r["prompt"] for r in rows] == [gsm8k.lm_eval_prompt(p["question"], d) for p, d in zip(test, draws)]
    assert all(r["prompt"].count("Question:") == 6 and 0 < r["tokens"] <= 8 for r in rows)
