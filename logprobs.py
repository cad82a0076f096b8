"""
Per-token log-probs for training, under autograd: what GRPO's policy loss and SFT's NLL are made
of. reference_logprobs() is the whole idea in a dozen lines; the rest computes the same numbers
without ever holding the logits of a batch, and without running a shared prompt G times.

    python logprobs.py                             # the fast paths equal the reference on the toy

- logprobs_from_hidden / ChunkedLogprobs: the lm_head and log-softmax chunk_size tokens at a
  time (Qwen's logits are 151,936 floats a token), with the frozen head's gradient made in
  forward, so LoRA's backward never remakes the logits.
- token_logprobs: every position of whole sequences (SFT, and GRPO with --grad-checkpoint).
- completion_logprobs: GRPO's G completions of a prompt read one prefill of it (a KV cache that
  keeps autograd's graph) instead of running it G times; on the toy the prompt is ~3/4 of a row.
"""
import torch

from sampler import KVCache, left_pad


def reference_logprobs(model, prompts, completions, owner, temperature=1.0):
    """completion_logprobs the obvious way: each prompt + completion whole, its full logits,
    log_softmax, gather. -> logp (K, L) float32 and mask (K, L) bool, L the longest completion."""
    device, K = model.lm_head.weight.device, len(completions)
    L = max(1, max(map(len, completions)))
    logp = torch.zeros(K, L, device=device)
    mask = torch.zeros(K, L, dtype=torch.bool, device=device)
    for k, (o, c) in enumerate(zip(owner, completions)):
        ids = torch.tensor([prompts[o] + c], device=device)                      # (1, P + n)
        P = len(prompts[o])
        logits = model(ids)[0, P - 1:-1].float() / temperature                  # (n, V)
        logp[k, :len(c)] = logits.log_softmax(-1).gather(-1, ids[0, P:, None]).squeeze(-1)
        mask[k, :len(c)] = True
    return logp, mask

# -----------------------------------------------------------------------------
# The lm_head, chunked


class ChunkedLogprobs(torch.autograd.Function):
    """h (N, C), weight (V, C), targets (N,) -> (N,) float32 log softmax(h @ weightᵀ / T)[target].

    The logits are N×vocab floats (151,936 per token for Qwen): never all made at once,
    chunk_size tokens at a time. Backward is where the cost hides. Token i's log-prob depends on
    h_i alone, so its gradient with respect to h_i is one C-vector, J_i = d logp_i / d h_i =
    (onehot_i - softmax_i) @ W / T, and any loss of the log-probs (the GRPO policy loss with or
    without clipping, the KL term, SFT's NLL) only scales it: dL/dh_i = dL/dlogp_i · J_i. So when
    the head's weight is frozen (LoRA) the forward pass computes J (N, C), cheap to keep, while
    each chunk's softmax is at hand; backward is one multiply. Two head matmuls in all, as for
    full logits kept for backward (transformers), where checkpointed chunks make three (forward,
    recompute, gradient), and the head is a quarter of Qwen2.5-0.5B's weights. Liger-Kernel's
    fused linear cross-entropy does the same for a known loss; J keeps the loss free.

    When the weight trains too (full fine-tuning, a tied embedding), its gradient
    Σ_i dL/dlogp_i · (onehot_i - softmax_i) h_iᵀ / T needs every softmax again once dL/dlogp is
    known: backward recomputes each chunk's logits (one head matmul more than keeping them, and
    no N×vocab memory)."""

    @staticmethod
    def forward(ctx, h, weight, targets, temperature, chunk_size):
        need_h, need_w = ctx.needs_input_grad[:2]
        N = h.shape[0]
        w = weight.to(h.dtype)  # the matmul in h's dtype, as autocast would (and backward)
        logp = torch.empty(N, device=h.device, dtype=torch.float)
        J = torch.empty_like(h) if need_h and not need_w else None              # (N, C)
        for s in range(0, N, chunk_size):
            logits = (h[s:s + chunk_size] @ w.T).float()                         # (n, V) float32
            if temperature != 1:
                logits /= temperature
            lsm = logits.log_softmax(-1)                                         # (n, V)
            del logits
            t = targets[s:s + chunk_size, None]                                  # (n, 1)
            logp[s:s + chunk_size] = lsm.gather(-1, t).squeeze(-1)
            if J is not None:
                ones = torch.ones_like(t, dtype=lsm.dtype)
                grad_logits = lsm.exp_().neg_().scatter_add_(-1, t, ones)        # onehot - p
                J[s:s + chunk_size] = grad_logits.to(w.dtype) @ w / temperature
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.save_for_backward(J if J is not None else h, weight if need_w else None, targets)
        return logp

    @staticmethod
    def backward(ctx, grad):                                                     # (N,) dL/dlogp
        saved, weight, targets = ctx.saved_tensors
        if weight is None:  # frozen head: J was made in forward
            return (grad[:, None] * saved).to(saved.dtype), None, None, None, None
        h, T, chunk = saved, ctx.temperature, ctx.chunk_size
        w = weight.to(h.dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight)                                        # (V, C)
        for s in range(0, h.shape[0], chunk):
            t = targets[s:s + chunk, None]                                       # (n, 1)
            logits = (h[s:s + chunk] @ w.T).float()                              # (n, V), again
            p = (logits / T if T != 1 else logits).softmax(-1)
            g = grad[s:s + chunk, None] / T                                      # (n, 1)
            d = p.mul_(-g).scatter_add_(-1, t, g).to(w.dtype)      # dL/dlogits = g·(onehot - p)
            if grad_h is not None:
                grad_h[s:s + chunk] = d @ w
            grad_w += d.T @ h[s:s + chunk]
        return grad_h, grad_w, None, None, None


def logprobs_from_hidden(h, weight, targets, temperature=1.0, chunk_size=1024):
    """Final-normed hidden states (N, C) -> (N,) float32 log-probs of targets under weight
    (V, C)."""
    return ChunkedLogprobs.apply(h, weight, targets, temperature, chunk_size)


def token_logprobs(model, input_ids, temperature=1.0, chunk_size=1024):
    """(B, T) ids -> (B, T-1) float32: [b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])."""
    B, T = input_ids.shape
    h = model(input_ids, hidden_only=True)[:, :-1].reshape(B * (T - 1), -1)
    targets = input_ids[:, 1:].reshape(-1)
    logp = logprobs_from_hidden(h, model.lm_head.weight, targets, temperature, chunk_size)
    return logp.view(B, T - 1)

# -----------------------------------------------------------------------------
# GRPO's completions, each prompt computed once for all its samples


def completion_logprobs(model, prompts, completions, owner, temperature=1.0, chunk_size=1024):
    """Log-probs of completions given their prompts, each prompt computed once for its samples.

    prompts: token lists; completions: token lists; owner[k]: the index of completion k's prompt.
    -> logp (K, L) float32 and mask (K, L) bool, L the longest completion: logp[k, j] =
    log p(completions[k][j] | prompt, completions[k][:j]), as reference_logprobs. The prompts run
    once (left-padded, into a KVCache that keeps autograd's graph), the cache fans out to the
    completions (cache.select, a differentiable gather: the prompt's keys and values get the
    gradient of every sample that read them), and the completions (right-padded) attend to it.
    With activation checkpointing every sample runs whole (whole_sequence_logprobs), since
    recomputing a block in backward would write the cache a second time."""
    if model.grad_checkpointing and model.training and torch.is_grad_enabled():
        return whole_sequence_logprobs(model, prompts, completions, owner, temperature, chunk_size)
    device = model.lm_head.weight.device
    L, K = max(1, max(map(len, completions))), len(completions)
    ids_p, mask_p = left_pad(prompts, device)                                  # (Bp, P)
    ids_c = torch.zeros(K, L, dtype=torch.long)
    mask_c = torch.zeros(K, L, dtype=torch.bool)
    for k, c in enumerate(completions):  # right padding: pads come after, nothing real sees them
        ids_c[k, :len(c)], mask_c[k, :len(c)] = torch.tensor(c, dtype=torch.long), True
    ids_c, mask_c = ids_c.to(device), mask_c.to(device)
    owner = torch.as_tensor(owner, dtype=torch.long, device=device)
    cache = KVCache(model.config, len(prompts), ids_p.shape[1] + L, device,
                    model.lm_head.weight.dtype)
    h_p = model(ids_p, pad_mask=mask_p, cache=cache, hidden_only=True)        # (Bp, P, C)
    cache.select(owner)                                                        # (K, Hkv, P + L, D)
    h_c = model(ids_c, pad_mask=mask_c, cache=cache, hidden_only=True)        # (K, L, C)
    # completion token j is predicted at slot P-1+j: the prompt's last slot for j = 0
    h = torch.cat([h_p[owner, -1:], h_c[:, :-1]], dim=1)                      # (K, L, C)
    logp = logprobs_from_hidden(h.reshape(K * L, -1), model.lm_head.weight, ids_c.reshape(-1),
                                temperature, chunk_size)
    return logp.view(K, L), mask_c


def sampler_grid(sampler_logps, mask):
    """The sampler's per-token log-probs laid on completion_logprobs' (n, L) grid, where mask is
    True (row by row, left to right: the order of the lists)."""
    old = torch.zeros(mask.shape, device=mask.device)
    old[mask] = torch.tensor([x for lp in sampler_logps for x in lp], device=mask.device)
    return old


def whole_sequence_logprobs(model, prompts, completions, owner, temperature, chunk_size):
    """completion_logprobs by token_logprobs over each prompt + completion, right-padded."""
    device = model.lm_head.weight.device
    P, L, K = max(map(len, prompts)), max(1, max(map(len, completions))), len(completions)
    ids = torch.zeros(K, P + L, dtype=torch.long)
    for k, (o, c) in enumerate(zip(owner, completions)):
        ids[k, :len(prompts[o]) + len(c)] = torch.tensor(prompts[o] + c, dtype=torch.long)
    full = token_logprobs(model, ids.to(device), temperature, chunk_size)     # (K, P+L-1)
    start = torch.tensor([len(prompts[o]) - 1 for o in owner], device=device)[:, None]  # (K, 1)
    lengths = torch.tensor([len(c) for c in completions], device=device)[:, None]
    mask = torch.arange(L, device=device)[None] < lengths
    return full.gather(1, start + torch.arange(L, device=device)[None]), mask

# -----------------------------------------------------------------------------
# Self-check: python logprobs.py


def relative_error(a, b):
    """||a - b|| / ||b||: a tolerance on the whole tensor, which holds on any CPU's rounding."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


if __name__ == "__main__":
    from errors import exit_on_user_error, no_flags
    no_flags(__doc__)
    from model import TOY_CONFIG, Qwen2
    exit_on_user_error()
    torch.manual_seed(0)
    model = Qwen2(TOY_CONFIG).train()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (9, 14, 5)]
    completions = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 3, 11, 6)]
    owner = [0, 0, 1, 2]
    results = []
    for fn in (reference_logprobs, completion_logprobs, whole_sequence_logprobs):
        model.zero_grad(set_to_none=True)
        args = (0.7, 1024) if fn is whole_sequence_logprobs else (0.7,)
        logp, mask = fn(model, prompts, completions, owner, *args)
        (logp * mask).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp[mask].detach(), grad))
        if fn is not reference_logprobs:
            (lp0, g0), (lp, gr) = results[0], results[-1]
            e_lp, e_g = relative_error(lp, lp0), relative_error(gr, g0)
            print(f"{fn.__name__} vs reference_logprobs: log-probs rel. error {e_lp:.1e}, "
                  f"gradient rel. error {e_g:.1e}")
            assert relative_error(lp, lp0) < 1e-5 and relative_error(gr, g0) < 1e-4
    print("logprobs.py: all checks passed")
