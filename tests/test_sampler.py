"""sampler.generate (KV cache, left padding, shared prefill, finished rows leaving, stop strings)
draws the samples of sampler.reference_generate (one prompt at a time, a full forward per token, the
same keyed noise), token for token, greedy and sampled."""
import pytest
import torch

import sampler
from model import load_model, toy_tokenizer
from sampler import generate, reference_generate


def lively(toy_dir):
    """The random toy model with its projections scaled up: at init it mostly repeats a token."""
    m = load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(4.0)
    return m


def first_difference(a, b):
    t = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return t if t is not None or len(a) == len(b) else min(len(a), len(b))


def assert_same_samples(m, prompts, keys, a, b, temperature, at_least):
    """Completions a[i] and b[i] of prompts[i] (row key keys[i]) are equal, or part where the two
    candidate tokens' perturbed scores under a full forward tie to float rounding (a cached and a
    full forward round differently, which may flip a near-tie: then the rest may differ)."""
    same = 0
    for i, (x, y) in enumerate(zip(a, b)):
        t = first_difference(x, y)
        if t is None:
            same += 1
            continue
        assert t < min(len(x), len(y)), f"row {i}: one stopped at token {t} where the other went on"
        logits = m(torch.tensor([prompts[i] + y[:t]]))[:, -1].float()
        if temperature:
            logits = logits / temperature + sampler.gumbel_noise(keys[i:i + 1], t, logits.shape[-1])
        gap = (logits[0, x[t]] - logits[0, y[t]]).abs() / logits.abs().max()
        assert gap < 1e-5, f"row {i} differs at token {t} by {gap:.2e} of the scores: not a tie"
    assert same >= at_least, f"only {same} of {len(a)} completions identical"


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_fast_sampler_equals_the_reference(toy_dir, temperature):
    m = lively(toy_dir)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 13, 1, 9)]  # ragged
    kw = dict(temperature=temperature, keys=[11, 12, 13, 14], n=3)
    free = generate(m, prompts, 24, **kw)
    kw["stop_ids"] = [free[0][5]]  # a token some rows draw: they end there, the others go on
    fast = generate(m, prompts, 24, check_every=5, **kw)
    slow = reference_generate(m, prompts, 24, **kw)
    assert len(fast) == len(slow) == 12
    rows = [p for p in prompts for _ in range(3)]
    assert_same_samples(m, rows, sampler.row_keys(kw["keys"], 3, "cpu"), fast, slow, temperature, 10)
    if temperature:
        assert len({tuple(c) for c in fast}) > 4, "the samples of a prompt should differ"
    assert any(len(c) < 24 and c[-1] == kw["stop_ids"][0] for c in fast), "no row stopped"


def test_stop_strings_cut_where_the_reference_cuts(toy_dir):
    """A stop string spanning several tokens: the fast sampler checks every few tokens and cuts
    after the token that completes it, as the reference does checking every token."""
    m, tok = lively(toy_dir), toy_tokenizer()
    prompts = [tok.encode("Question: 1+1?\nAnswer:"), tok.encode("ab")]
    kw = dict(temperature=1.0, stop_strings=("e", "x1"), tokenizer=tok, keys=[3, 4], n=4)
    fast = generate(m, prompts, 30, check_every=7, **kw)
    slow = reference_generate(m, prompts, 30, **kw)
    assert fast == slow
    cut = [c for c in fast if len(c) < 30]
    assert cut, "some completions should meet a stop string within 30 tokens"
    for c in cut:
        text = tok.decode(c)
        assert any(s in text for s in ("e", "x1")) and not any(s in tok.decode(c[:-1]) for s in ("e", "x1"))


def test_a_sample_depends_on_its_indices_alone(toy_dir):
    """Sample j of a prompt keyed k is the same alone, in a bigger batch, or in another order."""
    m = lively(toy_dir)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    together = generate(m, prompts, 12, temperature=1.0, keys=[1, 2, 3], n=2)
    alone = generate(m, prompts[1:2], 12, temperature=1.0, keys=[2], n=2)
    reordered = generate(m, prompts[::-1], 12, temperature=1.0, keys=[3, 2, 1], n=2)
    keys = sampler.row_keys([2], 2, "cpu")
    assert_same_samples(m, prompts[1:2] * 2, keys, together[2:4], alone, 1.0, 1)
    assert_same_samples(m, prompts[1:2] * 2, keys, reordered[2:4], alone, 1.0, 1)
    keys = sampler.row_keys([1], 2, "cpu")
    assert_same_samples(m, prompts[:1] * 2, keys, reordered[4:], together[:2], 1.0, 1)


def test_shared_attention_equals_attention_over_copied_prefixes():
    """Rows that read their prompt's prefix in place (shared_attention) get what plain attention
    gets over a copy of the prefix in front of each row's own keys: grouped-query heads, ragged
    prefixes (a left-padded prompt), several new tokens a row, and rows missing from the grid (a
    finished sample that left the batch)."""
    g = torch.Generator().manual_seed(0)
    B, n, Hkv, rep, P, S, T, D = 3, 4, 2, 3, 7, 5, 2, 8
    k_pre, v_pre = (torch.randn(B, Hkv, P, D, generator=g) for _ in range(2))
    prefix_mask = torch.ones(B, P, dtype=torch.bool)
    prefix_mask[1, :3] = False                                           # prompt 1 is shorter
    slots = torch.tensor([0, 1, 3, 4, 6, 7, 8, 9, 11])                  # 9 of the 12 places
    owner = slots // n
    N = len(slots)
    q = torch.randn(N, Hkv * rep, T, D, generator=g)
    k, v = (torch.randn(N, Hkv, S, D, generator=g) for _ in range(2))
    own = torch.ones(N, S, dtype=torch.bool)
    own[2, 3:] = False                                                   # a row with fewer keys
    mask = sampler.attention_mask(own, S - T, T)                         # (N, 1, T, S)
    mask = torch.cat([prefix_mask[owner][:, None, None, :].expand(-1, 1, T, -1), mask], -1)
    got = sampler.shared_attention(q, k_pre, v_pre, k, v, mask, slots, n)
    keys, values = torch.cat([k_pre[owner], k], 2), torch.cat([v_pre[owner], v], 2)
    want = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                            enable_gqa=True)
    assert ((got - want).norm() / want.norm()).item() < 1e-6
    # every place filled, in order (no row has left): slots=None, the same attention
    full = torch.arange(B * n)
    q, k, v = (torch.randn(B * n, *x.shape[1:], generator=g) for x in (q, k, v))
    mask = torch.cat([prefix_mask[full // n][:, None, None, :].expand(-1, 1, T, -1),
                      sampler.attention_mask(torch.ones(B * n, S, dtype=torch.bool), S - T, T)], -1)
    got = sampler.shared_attention(q, k_pre, v_pre, k, v, mask, None, n)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([k_pre[full // n], k], 2), torch.cat([v_pre[full // n], v], 2),
        attn_mask=mask, enable_gqa=True)
    assert ((got - want).norm() / want.norm()).item() < 1e-6
