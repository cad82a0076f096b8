"""logprobs.py: the fast paths equal logprobs.reference_logprobs (prompt + completion whole, full
logits, log_softmax, gather) in values and gradients; ChunkedLogprobs (the lm_head chunked, the
frozen head's gradient made in forward) gives the loss and gradients of checkpointed chunks for the
GRPO loss with clipping and KL, for SFT's NLL, for LoRA (frozen head) and full fine-tuning (trained,
tied head); and LoRA's backward no longer remakes the logits. Gradients are compared by a
norm-relative error, ||a - b|| / ||b||, which holds on any CPU's rounding (an elementwise tolerance
failed on another x86 CPU by 1.1e-8 on one element)."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

import flops
import grpo
import model
import sft
from lora import apply_lora
from logprobs import (completion_logprobs, reference_logprobs as whole_reference, relative_error,
                      token_logprobs, whole_sequence_logprobs)
from model import Qwen2, Qwen2Config, load_model


def reference_logprobs(m, ids, temperature=1.0, chunk_size=1024):
    """The implementation before ChunkedLogprobs: each chunk checkpointed, recomputed in backward."""
    def chunk(h, weight, targets):
        logits = (h @ weight.T).float() / temperature
        return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    B, T = ids.shape
    h = m(ids, hidden_only=True)[:, :-1].reshape(B * (T - 1), -1)
    t = ids[:, 1:].reshape(-1)
    return torch.cat([checkpoint(chunk, h[s:s + chunk_size], m.lm_head.weight, t[s:s + chunk_size], use_reentrant=False)
                      for s in range(0, len(t), chunk_size)]).view(B, T - 1)


def grpo_loss(logp, ids, kl_ref):
    """grpo.py's loss on fixed random rollouts: clipped policy loss + 0.1 · k3 KL."""
    g = torch.Generator().manual_seed(1)
    N, T = logp.shape
    old = logp.detach() + 0.3 * torch.randn(N, T, generator=g)          # off policy: some ratios clip
    adv = torch.randn(N, generator=g)
    mask = torch.rand(N, T, generator=g) > 0.3
    loss = grpo.policy_loss(logp, old, adv, mask, clip=0.2, n_tokens=mask.sum() + 3)
    return loss + 0.1 * grpo.kl_k3(logp, kl_ref)[mask].sum() / mask.sum()


def lora_toy(toy_dir):
    m = load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False)
    apply_lora(m, 2, 8.0, verbose=False)
    torch.manual_seed(0)
    with torch.no_grad():  # B = 0 would give A no gradient
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return m.train()


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
@pytest.mark.parametrize("temperature,chunk_size", [(1.0, 1024), (0.7, 13)])
def test_grpo_loss_and_gradients_equal_the_checkpointed_chunks(toy_dir, full, temperature, chunk_size):
    m = lora_toy(toy_dir) if not full else load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False).train()
    if full:
        m.requires_grad_(True)                                            # the tied head trains too
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_lp = token_logprobs(m, ids, temperature=temperature) - 0.1  # a stand-in reference policy
    out = []
    for fn in (reference_logprobs, token_logprobs):
        m.zero_grad(set_to_none=True)
        logp = fn(m, ids, temperature=temperature, chunk_size=chunk_size)
        loss = grpo_loss(logp, ids, ref_lp)
        loss.backward()
        out.append((logp.detach(), loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (lp0, l0, g0), (lp1, l1, g1) = out
    assert torch.equal(lp0, lp1)                                          # the same forward arithmetic
    assert torch.allclose(l0, l1, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and len(g0) == (len(list(m.parameters())) if full else 2 * 7 * model.TOY_CONFIG.num_hidden_layers)
    for n in g0:
        assert relative_error(g1[n], g0[n]) < 1e-5, (n, relative_error(g1[n], g0[n]))
    assert all(g.norm() > 0 for g in g1.values())


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_sft_loss_and_gradients_equal_cross_entropy(toy_dir, full):
    m = lora_toy(toy_dir) if not full else load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False).train()
    if full:
        m.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    inputs, targets = torch.randint(0, 256, (2, 2, 15), generator=g)
    mask = torch.rand(2, 15, generator=g) > 0.4
    out = []
    for ours in (False, True):
        m.zero_grad(set_to_none=True)
        if ours:
            loss = sft.sft_loss(m, inputs, targets, mask, chunk_size=5)
        else:  # the loss before: F.cross_entropy on checkpointed chunks
            h, t = m(inputs, hidden_only=True)[mask], targets[mask]
            loss = sum(checkpoint(lambda h, w, t: torch.nn.functional.cross_entropy((h @ w.T).float(), t, reduction="sum"),
                                  h[s:s + 5], m.lm_head.weight, t[s:s + 5], use_reentrant=False)
                       for s in range(0, len(t), 5)) / len(t)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = out
    assert torch.allclose(l0, l1, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert relative_error(g1[n], g0[n]) < 1e-5, (n, relative_error(g1[n], g0[n]))


def test_lora_backward_does_not_remake_the_logits():
    """FLOPs of a LoRA training pass: two head matmuls (forward, input gradient), as flops.py counts,
    where the checkpointed chunks made three. Full fine-tuning still recomputes once (weight gradient)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = Qwen2(cfg)
    apply_lora(m, 1, 32.0, verbose=False)
    m.train()
    ids = torch.randint(0, cfg.vocab_size, (4, 40))

    def measure(fn):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn(m, ids, chunk_size=16).sum().backward()
        return counter.get_total_flops()
    head = 2 * 4 * 39 * cfg.hidden_size * cfg.vocab_size                  # one head matmul on the 39 scored positions
    analytic = flops.grpo_step_flops(cfg, 2, 2, 10, 30, 1, "all", shared_prompt=False)["training"]
    ours, before = measure(token_logprobs), measure(reference_logprobs)
    assert ours == analytic, (ours, analytic)
    assert abs(before - ours - head) <= 0.02 * head, (before - ours, head)


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
@pytest.mark.parametrize("path", ["shared-prompt", "whole-sequence", "grad-checkpoint"])
def test_fast_paths_equal_the_reference(toy_dir, full, path):
    """completion_logprobs (each prompt once, its completions reading its cache), the whole-sequence
    path and activation checkpointing give reference_logprobs' values and gradients: ragged
    prompts, ragged completions, a prompt with several samples, temperature 0.7."""
    m = lora_toy(toy_dir) if not full else load_model(toy_dir, device="cpu", dtype=torch.float32, verbose=False).train()
    if full:
        m.requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (9, 3, 14)]
    completions = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (6, 1, 11, 4, 8)]
    owner = [0, 0, 1, 2, 2]
    weight = torch.randn(5, 11, generator=g)                                # any loss of the log-probs

    def run(fn):
        m.zero_grad(set_to_none=True)
        m.grad_checkpointing = path == "grad-checkpoint"
        logp, mask = fn(m, prompts, completions, owner, 0.7)
        (weight * logp * mask).sum().backward()
        m.grad_checkpointing = False
        return logp[mask].detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    fast = {"shared-prompt": completion_logprobs, "grad-checkpoint": completion_logprobs,
            "whole-sequence": lambda *a: whole_sequence_logprobs(*a, chunk_size=7)}[path]
    (lp0, g0), (lp1, g1) = run(whole_reference), run(fast)
    assert lp1.shape == lp0.shape == (sum(map(len, completions)),)
    assert relative_error(lp1, lp0) < 1e-6, relative_error(lp1, lp0)
    assert relative_error(g1, g0) < 1e-5, relative_error(g1, g0)
    assert g0.norm() > 0
