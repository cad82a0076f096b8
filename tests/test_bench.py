"""bench.py runs and reports; the sampler's static (compile=True) path equals the eager one; activation
checkpointing changes memory, not gradients."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sampler
import model
from logprobs import token_logprobs
from model import load_model
from sampler import KVCache, generate

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100], [9, 9, 9, 9]]


def lively_toy(toy_dir):
    """The random toy with its projections ×5: at init it only repeats its last token, so greedy
    output would not notice a wrong mask or position; scaled up, it depends on the whole context."""
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    return m


def test_static_decode_step_equals_eager(toy_dir):
    """The same decode steps through a plain eager cache (slices, pos, SDPA) and a shared static
    one (the prompts a prefix with spare empty slots, index_copy_ at a tensor slot, attention over
    every slot with the empty ones masked): same logits."""
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    ids = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(1))
    pad = torch.ones(3, 6, dtype=torch.bool)
    pad[0, :4] = pad[2, :1] = False                                   # left padding, ragged
    steps = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(2))
    out = {}
    with torch.no_grad():
        for static in (False, True):
            cache = KVCache(m.config, 3, 6 + 5 + 7, "cpu", torch.float32)  # spare slots stay empty
            m(ids, pad_mask=pad, cache=cache)
            if static:
                cache.share(1, 5 + 7)
                cache.make_static()
            logits = []
            for t in range(5):
                logits.append(sampler.decode_step(m, steps[:, t:t + 1], cache))
                if static:
                    cache.slot += 1
            out[static] = torch.stack(logits)
    assert cache.slot.item() == 5 and cache.mask.sum().item() == 3 * 5  # its own slots: 5 each
    err = ((out[True] - out[False]).abs().max() / out[False].abs().max()).item()
    assert err < 1e-5, err


def test_static_generate_equals_eager(toy_dir, monkeypatch):
    """generate(compile=True) with torch.compile replaced by the identity: the static-shape code
    itself, run eagerly. Greedy output equals compile=False, also when stop tokens make rows finish
    (the static path halves the batch, the eager one drops finished rows); so do samples and stop
    strings."""
    m = lively_toy(toy_dir)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    ref = generate(m, PROMPTS, 20, temperature=0, n=2)
    assert len({tuple(c) for c in ref}) == 4 and all(len(set(c)) > 3 for c in ref)  # varied text
    assert not compiled
    assert generate(m, PROMPTS, 20, temperature=0, n=2, compile=True) == ref
    assert compiled == [sampler.decode_step]
    stop = [ref[2][3], ref[6][2], ref[0][5]]                          # tokens we know will appear
    ref_stop = generate(m, PROMPTS, 20, temperature=0, n=2, stop_ids=stop)
    assert sum(len(c) < 20 for c in ref_stop) >= 4                     # enough finish early to shrink the batch
    assert generate(m, PROMPTS, 20, temperature=0, n=2, stop_ids=stop, compile=True) == ref_stop
    same_as_eager_sampled_and_with_stop_strings(m)


def same_as_eager_sampled_and_with_stop_strings(m):
    """Sampled output (counter-based noise: no draw depends on the batch) and stop strings (rows cut
    at the token that completes one) are the same compiled and eager."""
    from test_model import pick_stops, stop_cut
    tok = model.toy_tokenizer()
    kw = dict(temperature=1.0, n=2, keys=[7, 8, 9, 10])
    ref = generate(m, PROMPTS, 20, **kw)
    assert generate(m, PROMPTS, 20, compile=True, **kw) == ref
    stops = pick_stops(tok, ref)
    cut = [stop_cut(tok, c, stops) for c in ref]
    assert sum(len(c) < 20 for c in cut) >= 3
    for check_every in (1, 8):
        assert generate(m, PROMPTS, 20, stop_strings=stops, tokenizer=tok, check_every=check_every,
                        compile=True, **kw) == cut


@pytest.mark.skipif(os.environ.get("RANK1_COMPILE_TESTS") != "1",
                    reason="torch.compile on a CPU takes ~1 min; set RANK1_COMPILE_TESTS=1")
def test_compiled_generate_equals_eager(toy_dir):
    m = lively_toy(toy_dir)
    ref = generate(m, PROMPTS, 20, temperature=0, n=2)
    assert generate(m, PROMPTS, 20, temperature=0, n=2, compile=True) == ref
    stop = [ref[2][3], ref[6][2], ref[0][5]]
    assert generate(m, PROMPTS, 20, temperature=0, n=2, stop_ids=stop, compile=True) == \
        generate(m, PROMPTS, 20, temperature=0, n=2, stop_ids=stop)
    same_as_eager_sampled_and_with_stop_strings(m)


def test_grad_checkpointing_recomputes_and_keeps_gradients(toy_dir, monkeypatch):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32).train()
    m.requires_grad_(True)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    calls, mlp_forward = [], model.MLP.forward                          # (module hooks miss the recompute)
    monkeypatch.setattr(model.MLP, "forward", lambda self, x: calls.append(1) or mlp_forward(self, x))
    L = m.config.num_hidden_layers
    grads = {}
    for flag in (False, True):
        m.grad_checkpointing = flag
        m.zero_grad()
        calls.clear()
        token_logprobs(m, ids).sum().backward()
        grads[flag] = [p.grad.clone() for p in m.parameters()]
        assert len(calls) == (2 * L if flag else L)                    # each block again in backward
    for g0, g1 in zip(grads[False], grads[True]):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-7)
    calls.clear()
    with torch.no_grad():                                               # no autograd: nothing to recompute
        m(ids)
    assert len(calls) == L


def test_bench_toy_prints_the_table_and_json(tmp_path):
    peer = all(importlib.util.find_spec(p) for p in ("transformers", "peft"))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "bench.py", "--toy", "--batch", "2", "--group", "2", "--prompt-len", "8",
           "--max-new-tokens", "8", "--reps", "2", "--warmup", "1", "--out", str(out)] + (["--peer"] if peer else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokens/s" in r.stdout and "of floor" in r.stdout and "copy bandwidth" in r.stdout
    res = json.loads(out.read_text())
    names = [row["name"] for row in res["rows"]]
    want = ["sampling", "train LoRA r1", "train full FT (fp32)"]
    if peer:
        want += ["peer sampling", "peer train LoRA r1"]
    for w in want:
        assert any(n.startswith(w) for n in names), (w, names)
    for row in res["rows"]:
        assert "error" not in row, row
        for key in ("tokens_per_s", "mean_s", "min_s", "peak_gb", "floor_s", "of_floor"):
            assert row[key] > 0, (row["name"], key, row[key])
        assert row["min_s"] <= row["mean_s"]
    sampling = next(row for row in res["rows"] if row["name"] == "sampling")
    assert sampling["tokens"] == 2 * 2 * 8                              # B x G x N: nothing stops early
    assert res["bandwidth_bytes_per_s"] > 0 and res["matmul_flops_per_s"] > 0
    assert all(v > 0 for v in res["floors"].values())
    if peer:
        assert set(res["ratios"]) >= {"sampling_vs_peer", "lora_step_vs_peer", "full_step_vs_peer"}
        assert all(v > 0 for v in res["ratios"].values())
        assert not any("memory" in k for k in res["ratios"])           # a CPU's peak RSS only grows: no ratio
        assert any(n.startswith("peer train full FT") for n in names)


def test_acceptance_dry_path_writes_every_figure_beside_its_goal(tmp_path):
    """bench.py --acceptance on a CPU: the GPU run's four parts at toy shapes, one JSON."""
    out = tmp_path / "acceptance.json"
    r = subprocess.run([sys.executable, "bench.py", "--acceptance", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["dry"] and res["shape"] == "toy"
    goals = res["goals"]
    want = {"compiled_greedy_equals_eager", "grpo_step_s", "sampling_of_bandwidth_floor"}
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("peft"):
        want |= {"logits_max_rel_err", "sampling_vs_peer", "lora_step_vs_peer"}
        assert goals["logits_max_rel_err"]["ok"], goals["logits_max_rel_err"]        # fp32: the same logits
    assert want <= set(goals), (want, set(goals))
    for k, v in goals.items():
        assert set(v) == {"value", "goal", "ok"} and isinstance(v["ok"], bool), (k, v)
    assert goals["compiled_greedy_equals_eager"]["ok"], res["compiled_greedy"]          # the static step, eagerly
    assert res["compiled_greedy"]["distinct_tokens"] > 8                                # a lively model, not one token
    assert len(res["grpo"]["step_s"]) == 3 and all(s > 0 for s in res["grpo"]["step_s"])
    assert [row["step"] for row in res["grpo"]["steps"]] == [1, 2, 3]
    assert any(row["name"] == "train LoRA r1" for row in res["bench"]["rows"])
