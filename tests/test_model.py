"""model.py: parity with the reference, cache, sampler, loading, tokenizer, bad input."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import sampler
import model
from conftest import assert_same_tokens
from errors import UserError
from logprobs import token_logprobs
from model import Qwen2Config, load_model, load_tokenizer
from sampler import generate

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def reference_logits(sd, cfg, ids):
    """Float64 Qwen2 written independently of model.py: eager attention, repeat_kv, no cache."""
    g = lambda k: sd[k].double()
    B, T = ids.shape
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    norm = lambda x, w: w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps))
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, D, 2).double() / D)
    ang = torch.arange(T).double()[:, None] * inv[None]                   # (T, D/2)
    cos, sin = ang.cos(), ang.sin()

    def rope(x):  # (B, h, T, D), halves rotate together
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = g("model.embed_tokens.weight")[ids]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = norm(x, g(p + "input_layernorm.weight"))
        q = (h @ g(p + "self_attn.q_proj.weight").T + g(p + "self_attn.q_proj.bias")).view(B, T, H, D).transpose(1, 2)
        k = (h @ g(p + "self_attn.k_proj.weight").T + g(p + "self_attn.k_proj.bias")).view(B, T, Hkv, D).transpose(1, 2)
        v = (h @ g(p + "self_attn.v_proj.weight").T + g(p + "self_attn.v_proj.bias")).view(B, T, Hkv, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / D ** 0.5
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + y @ g(p + "self_attn.o_proj.weight").T
        h = norm(x, g(p + "post_attention_layernorm.weight"))
        m = F.silu(h @ g(p + "mlp.gate_proj.weight").T) * (h @ g(p + "mlp.up_proj.weight").T)
        x = x + m @ g(p + "mlp.down_proj.weight").T
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).double()
    return norm(x, g("model.norm.weight")) @ head.T


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def save_tiny(path, tied=True, seed=0, **over):
    torch.manual_seed(seed)
    m = model.Qwen2(Qwen2Config(**{**TINY, "tie_word_embeddings": tied, **over}))
    with torch.no_grad():  # non-trivial norms and biases, so a wrong formula shows
        for n, p in m.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_model(m, str(path))
    return m


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_float64_reference(tmp_path, tied):
    save_tiny(tmp_path, tied=tied)
    m = load_model(str(tmp_path), device="cpu", dtype=torch.float32)
    sd = {k: v for k, v in m.state_dict().items()}
    ids = torch.randint(0, TINY["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    err = rel_err(m(ids), reference_logits(sd, m.config, ids))
    assert err < 1e-5, err


@pytest.mark.parametrize("layout", ["tied", "untied", "sharded"])
def test_logits_match_transformers(tmp_path, layout):
    """Bit for bit, what RESULTS.md claims: float32 logits equal Qwen2ForCausalLM's, and bfloat16
    logits equal those of Qwen2ForCausalLM.from_pretrained(dtype=bfloat16), for tied, untied and
    sharded checkpoints. (A float32 transformers model cast with .to(bfloat16) differs: the cast
    also rounds its RoPE inv_freq buffer to bf16, which from_pretrained keeps in float32.)"""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(**TINY, tie_word_embeddings=layout != "untied", rope_theta=1e6)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path, max_shard_size="100KB" if layout == "sharded" else "5GB")
    if layout == "sharded":
        assert os.path.exists(tmp_path / "model.safetensors.index.json")
    ids = torch.randint(0, TINY["vocab_size"], (2, 23), generator=torch.Generator().manual_seed(1))
    pad = torch.ones_like(ids, dtype=torch.bool)
    pad[1, 15:] = False
    for dtype in (torch.float32, torch.bfloat16):
        m = load_model(str(tmp_path), device="cpu", dtype=dtype)
        theirs = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
        with torch.no_grad():
            ours, want = m(ids), theirs(ids).logits
            want_pad = theirs(ids, attention_mask=pad.long()).logits
        assert ours.dtype == want.dtype == dtype
        assert torch.equal(ours, want), (dtype, (ours.float() - want.float()).abs().max())
        # right padding: causal, so the real tokens' logits do not depend on the pads after them
        assert torch.equal(ours[pad], want_pad[pad]), dtype


def test_config_forms():
    old = dict(TINY, rope_theta=5e5, model_type="qwen2")
    new = dict(TINY, rope_parameters={"rope_theta": 5e5, "rope_type": "default"}, model_type="qwen2")
    assert Qwen2Config.from_dict(old).rope_theta == Qwen2Config.from_dict(new).rope_theta == 5e5
    assert Qwen2Config.from_dict(new).attention_bias and Qwen2Config.from_dict(new).head_dim == 16


def test_cached_decoding_equals_full_forward(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(2))
    pad = torch.ones(3, 12, dtype=torch.bool)
    pad[0, :5] = pad[2, :2] = False                   # left padding, ragged
    with torch.no_grad():
        full = m(ids, pad_mask=pad, cache=sampler.KVCache(m.config, 3, 12, "cpu", torch.float32))
        cache = sampler.KVCache(m.config, 3, 12, "cpu", torch.float32)
        pre = m(ids[:, :7], pad_mask=pad[:, :7], cache=cache)
        steps = [m(ids[:, i:i + 1], cache=cache) for i in range(7, 12)]
    inc = torch.cat([pre] + steps, 1)
    assert rel_err(inc[pad], full[pad]) < 1e-5
    # and a left-padded row equals the same row alone, unpadded
    with torch.no_grad():
        alone = m(ids[:1, 5:])
    assert rel_err(full[0, 5:], alone[0]) < 1e-5


def test_greedy_is_batch_independent_and_honours_stops(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100], [9, 9, 9, 9]]
    alone = [generate(m, [p], 20, temperature=0)[0] for p in prompts]
    batch = generate(m, prompts, 20, temperature=0)
    logits = lambda i, prefix: m(torch.tensor([prompts[i] + prefix]))[0, -1]
    with torch.no_grad():
        assert_same_tokens(batch, alone, logits)
    assert all(len(c) == 20 for c in batch)
    stop = [alone[1][4], alone[3][2]]                  # tokens we know will appear
    cut = generate(m, prompts, 20, temperature=0, stop_ids=stop)
    for full, c in zip(alone, cut):
        first = next((i for i, t in enumerate(full) if t in stop), None)
        assert c == (full if first is None else full[:first + 1])
    assert generate(m, prompts, 20, temperature=0, n=3)[3:6] == [alone[1]] * 3


def test_sampling_is_seeded_and_logprobs_match_trainer(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44]]
    run = lambda seed: generate(m, prompts, 16, temperature=1.0, n=4, return_logprobs=True,
                                generator=torch.Generator().manual_seed(seed))
    (a, lp), (b, _), (c, _) = run(0), run(0), run(1)
    assert a == b and a != c
    assert len({tuple(x) for x in a[:4]}) > 1          # the 4 samples of one prompt differ
    # the sampler's log-probs are the trainer's: recompute on prompt + completion
    for i, comp in enumerate(a):
        p = prompts[i // 4]
        with torch.no_grad():
            re = token_logprobs(m, torch.tensor([p + comp]))[0, len(p) - 1:]
        assert torch.allclose(re, torch.tensor(lp[i]), atol=1e-5)


def lively(toy_dir):
    """The random toy with its projections ×5: varied text instead of one repeated token."""
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    return m


def test_samples_are_a_function_of_prompt_key_and_index(toy_dir):
    """Counter-based sampling: a prompt's samples are the same alone, in a batch, in any order, and
    when other rows finish early and leave the batch; another key gives other samples."""
    m = lively(toy_dir)
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100], [9, 9, 9, 9]]
    keys = [3, 1 << 40, -7, 12345]                      # any integers, 64-bit and negative too
    run = lambda ps, ks, **kw: generate(m, ps, 24, temperature=1.0, n=3, keys=ks, **kw)
    alone = [run([p], [k]) for p, k in zip(prompts, keys)]
    assert run(prompts, keys) == sum(alone, [])
    order = [2, 0, 3, 1]
    assert run([prompts[i] for i in order], [keys[i] for i in order]) == sum((alone[i] for i in order), [])
    assert len({tuple(c) for c in alone[1]}) == 3        # the n samples of a prompt differ
    assert run([prompts[1]], [keys[1] + 1]) != alone[1]
    # rows that stop early leave the batch (at different checks): the others do not notice
    stop = [alone[0][0][3], alone[2][1][2]]
    for check_every in (1, 4):
        cut = run(prompts, keys, stop_ids=stop, check_every=check_every)
        for full, c in zip(sum(alone, []), cut):
            first = next((i for i, t in enumerate(full) if t in stop), None)
            assert c == (full if first is None else full[:first + 1])
    assert sum(len(c) < 24 for c in cut) >= 3


def test_gumbel_sampler_matches_softmax():
    """Frequencies of 40,000 draws (over keys; 1,000 over positions of one key) against
    softmax(logits / T), and against the renormalized nucleus with top-p: chi-square, 5 degrees of
    freedom, bound 40 (a correct sampler exceeds it with probability ~1e-7)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    N, V = 40000, logits.shape[1]

    def chi2(toks, p):
        counts = torch.bincount(toks, minlength=V).double()
        keep = p > 0
        assert counts[~keep].sum() == 0
        return ((counts[keep] - N * p[keep]) ** 2 / (N * p[keep])).sum().item()

    for T in (1.0, 0.7):
        p = (logits[0].double() / T).softmax(-1)
        by_key = sampler.sample_token(logits.expand(N, V), T, 1.0, sampler.row_keys(range(N), 1, "cpu"), 0)[0]
        key = sampler.row_keys([0], 1, "cpu")
        by_pos = torch.cat([sampler.sample_token(logits, T, 1.0, key, t)[0] for t in range(N // 40)])
        assert chi2(by_key, p) < 40 and chi2(torch.cat([by_pos] * 40), p) < 40 * 40
    nucleus = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).double()
    p = logits[0].double().softmax(-1)
    nucleus[:3] = p[:3] / p[:3].sum()                    # .51 + .19 < 0.8 <= .51 + .19 + .11
    toks = sampler.sample_token(logits.expand(N, V), 1.0, 0.8, sampler.row_keys(range(N), 1, "cpu"), 0)[0]
    assert chi2(toks, nucleus) < 40
    # the noise: uniform bits, no exact 0 or 1 reaching the Gumbel
    g = sampler.gumbel_noise(sampler.row_keys(range(8), 1, "cpu"), 5, 151936)
    assert torch.isfinite(g).float().mean() > 0.9999 and not torch.isposinf(g).any()
    assert abs(g.mean().item() - 0.5772) < 0.01                  # the Euler-Mascheroni constant


def stop_cut(tokenizer, ids, stop_strings):
    """The reference: ids up to the first token whose prefix text contains a stop string."""
    for L in range(len(ids)):
        if any(s in tokenizer.decode(ids[:L + 1]) for s in stop_strings):
            return ids[:L + 1]
    return ids


def pick_stops(tokenizer, completions, k=3, length=2):
    """Stop strings that occur in these completions: a few `length`-character pieces of their text
    (no replacement characters), taken from their middles."""
    stops = []
    for c in completions:
        text = tokenizer.decode(c)
        for a in range(len(text) // 2, len(text) - length):
            s = text[a:a + length]
            if "\ufffd" not in s and s.isprintable() and s not in stops:
                stops.append(s)
                break
        if len(stops) == k:
            break
    return stops


def test_stop_strings_cut_where_the_text_check_does(toy_dir):
    """Batched, ragged, n > 1, greedy and sampled, any check period: each row ends at the token
    whose text completes a stop string (the byte tokenizer: strings of several tokens)."""
    m, tok = lively(toy_dir), model.toy_tokenizer()
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100], [9, 9, 9, 9]]
    for temperature in (0.0, 1.0):
        full = generate(m, prompts, 30, temperature=temperature, n=2, keys=[1, 2, 3, 4])
        stops = pick_stops(tok, full)
        ref = [stop_cut(tok, c, stops) for c in full]
        assert len(stops) == 3 and sum(len(r) < 30 for r in ref) >= 3
        for check_every in (1, 3, 8, 64):
            out, lps = generate(m, prompts, 30, temperature=temperature, n=2, keys=[1, 2, 3, 4],
                                stop_strings=stops, tokenizer=tok, check_every=check_every,
                                return_logprobs=True)
            assert out == ref, (check_every, temperature)
            assert [len(lp) for lp in lps] == [len(r) for r in ref]


def test_top_p_keeps_the_nucleus(toy_dir):
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    toks = set(sampler.sample_token(logits.expand(200, 4), 1.0, 0.7, sampler.row_keys(range(200), 1, "cpu"), 0)[0].tolist())
    assert toks == {0, 1}                              # p = .66, .24, .09: 0 alone is < 0.7


def test_chunked_logprobs_equal_full_and_same_gradient(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32)
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    lp = token_logprobs(m, ids, chunk_size=7)
    ref = m(ids).float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert rel_err(lp, ref) < 1e-6
    g1 = torch.autograd.grad(lp.sum(), m.model.norm.weight)[0]
    g2 = torch.autograd.grad(ref.sum(), m.model.norm.weight)[0]
    assert rel_err(g1, g2) < 1e-5


def test_bf16_loading(toy_dir):
    m32 = load_model(toy_dir, device="cpu", dtype=torch.float32)
    m16 = load_model(toy_dir, device="cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    assert m16.lm_head.weight is m16.model.embed_tokens.weight  # still tied after loading
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(m16(ids).float(), m32(ids)) < 3e-2


def test_real_qwen_tokenizer_round_trips_gsm8k(shared_data):
    tok = load_tokenizer(str(shared_data / "qwen2.5-tokenizer" / "tokenizer.json"))
    assert tok.eos_id == 151643 and tok.token_to_id("<|im_end|>") == 151645
    with open(shared_data / "gsm8k" / "test.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    for r in rows:
        for text in (r["question"], r["answer"]):
            assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Hello world") == [9707, 1879]


def test_bad_input_names_the_problem(tmp_path):
    from safetensors.torch import load_file, save_file
    with pytest.raises(UserError, match="nowhere"):
        load_model(str(tmp_path / "nowhere"))
    save_tiny(tmp_path / "ok")
    sd = load_file(tmp_path / "ok" / "model.safetensors")

    def variant(name, state, config_text=None):
        d = tmp_path / name
        d.mkdir()
        save_file(state, d / "model.safetensors")
        (d / "config.json").write_text(config_text or (tmp_path / "ok" / "config.json").read_text())
        return str(d)

    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(UserError, match="model.layers.1.mlp.up_proj.weight"):
        load_model(variant("missing", missing))
    wrong = dict(sd, **{"model.layers.0.self_attn.k_proj.weight": torch.zeros(5, 64)})
    with pytest.raises(ValueError, match="model.layers.0.self_attn.k_proj.weight"):
        load_model(variant("shape", wrong))
    with pytest.raises(ValueError, match="config.json"):
        load_model(variant("config", sd, config_text="{not json"))
