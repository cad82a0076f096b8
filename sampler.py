"""
Sampling from model.py's Qwen2: the rule, the plain reference sampler, then the fast one.

    python sampler.py --toy                        # fast = reference, and its speed
    python sampler.py --model Qwen/Qwen2.5-3B --prompt "Question: 2+2?\\nAnswer:"

A sample is a function of its indices alone: sample j of prompt i draws its t-th token by
Gumbel-max with noise hashed from (the prompt's key, j, t), never a generator's state
(sample_token): the same alone or in any batch, eager or compiled, resumed or not, on any number
of processes (up to float rounding, which can flip a near-tie). reference_generate() draws it
with a full forward per token; generate() draws the same samples fast: prompts prefilled once
into a KVCache, read in place by their n samples (shared_attention), finished rows leaving the
batch, stop strings checked every few tokens."""
import argparse
import time

import torch
import torch.nn.functional as F

from errors import COUNT, HelpFormatter, UserError, exit_on_user_error
from model import TOY_BASE, load_model, load_tokenizer

# -----------------------------------------------------------------------------
# The rule: Gumbel-max with noise hashed from the sample's indices


def sample_token(logits, temperature, top_p, keys, position):
    """logits (B, V) -> token ids (B,) and their log-probs under softmax(logits / temperature).

    Gumbel-max: argmax(logits / T + g), g i.i.d. Gumbel(0, 1), is an exact draw from
    softmax(logits / T); with the tokens outside the nucleus set to -inf first, an exact draw
    from the renormalized nucleus. g = gumbel_noise(keys, position): keys (B,) the rows' 32-bit
    keys, position the index of the token in its completion."""
    logits = logits.float()
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, torch.zeros_like(tok, dtype=torch.float)
    logits = logits / temperature
    logp = logits.log_softmax(-1)
    if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose mass reaches top_p
        sorted_p, idx = logp.exp().sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    tok = (logits + gumbel_noise(keys, position, logits.shape[-1])).argmax(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def gumbel_noise(keys, position, vocab_size):
    """Gumbel(0, 1) noise (N, V) hashed from (row key, position, token id): no generator state,
    so a row's noise never depends on which rows share its batch, in which order, or on compile.

    u = 1 - w is uniform and g = -log(-log u) = -log(-log1p(-w)): w = (32 random bits + 0.5) /
    2^32 in float32 is exact near 0, where g's upper tail lives (w = 1 after rounding gives
    g = -inf, a token that loses: harmless). g then lies in [-2.8, 22.9], so a token more than
    ~26 nats below the best is never drawn (probability < 7e-12 each)."""
    h = combine(keys, position)[:, None]                                   # (N, 1)
    v = hash32(torch.arange(vocab_size, device=keys.device))[None, :]      # (1, V)
    w = (hash32(h ^ v).float() + 0.5) * 2.0 ** -32                         # (N, V) in (0, 1]
    return -torch.log(-torch.log1p(-w))


MASK32 = 0xFFFFFFFF


def hash32(x):
    """A 32-bit hash, elementwise on int64 tensors or ints (low 32 bits read): Wellons' lowbias32
    xorshift-multiply rounds, multipliers below 2^31 so no int64 product overflows. Plain integer
    ops: vectorized on any device, the same bits everywhere."""
    x = x & MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & MASK32
    x = ((x ^ (x >> 15)) * 0x1B873593) & MASK32
    return x ^ (x >> 16)


def combine(h, x):
    """The hash h with the counter x folded in (int64 tensors or ints): a new 32-bit hash."""
    return hash32(h ^ hash32(x))


def sample_key(*counters):
    """Integers (seed, step, prompt index, ...) -> one 32-bit key, e.g. for generate(keys=...)."""
    h = 0
    for x in counters:  # both halves of a 64-bit integer
        h = combine(combine(h, x & MASK32), (x >> 32) & MASK32)
    return h


def row_keys(keys, n, device):
    """One integer key per prompt (B,) -> a 32-bit key per output row (B*n,): row i*n + j, sample
    j of prompt i, is keyed by (keys[i], j) and nothing else."""
    k = torch.as_tensor(keys, dtype=torch.long, device=device)             # (B,)
    h = combine(hash32(k), k >> 32)                                        # both halves of a key
    j = torch.arange(n, device=device)[None, :]                            # (1, n)
    return combine(h[:, None], j).flatten()                                # (B*n,)


def prompt_keys(keys, n_prompts, temperature, generator):
    """The prompts' keys: as given, else consecutive ones from one draw of `generator`."""
    if keys is None:
        base = 0
        if temperature:  # greedy decoding draws nothing
            device = generator.device if generator is not None else "cpu"
            base = torch.randint(2 ** 62, (1,), generator=generator, device=device).item()
        keys = [base + i for i in range(n_prompts)]
    assert len(keys) == n_prompts, f"{len(keys)} keys for {n_prompts} prompts"
    return keys

# -----------------------------------------------------------------------------
# The reference sampler: one sample at a time, a full forward per token


@torch.inference_mode()
def reference_generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(),
                       stop_strings=(), tokenizer=None, generator=None, keys=None, n=1,
                       return_logprobs=False):
    """generate() the obvious way: each sample alone, the whole text through the model for every
    new token (no cache, no padding, no batch), the same keyed noise. Returns what generate()
    returns: completion i*n + j is prompt i's sample j, cut after its first stop token or the
    token that completes a stop string; with return_logprobs also each token's log-prob."""
    device = model.lm_head.weight.device
    keys = row_keys(prompt_keys(keys, len(prompts), temperature, generator), n, device)  # (B*n,)
    out, out_lp = [], []
    for i, prompt in enumerate(prompts):
        for j in range(n):
            completion, logps = [], []
            for t in range(max_new_tokens):
                logits = model(torch.tensor([prompt + completion], device=device))[:, -1]  # (1, V)
                tok, lp = sample_token(logits, temperature, top_p, keys[i * n + j:i * n + j + 1], t)
                completion.append(tok.item())
                logps.append(lp.item())
                text = tokenizer.decode(completion) if stop_strings else ""
                if completion[-1] in stop_ids or any(s in text for s in stop_strings):
                    break
            out.append(completion)
            out_lp.append(logps)
    return (out, out_lp) if return_logprobs else out

# -----------------------------------------------------------------------------
# The KV cache: an explicit object passed to Qwen2.forward, preallocated once


def attention_mask(key_mask, start, T):
    """Boolean (B, 1, T, S) mask, True = may attend: causal over cache slots, real keys only
    (key_mask (B, S); left padding is False). A padding query would see no key and softmax would
    give NaN, so every query may see itself; those rows are garbage and nothing reads them."""
    B, S = key_mask.shape
    q = torch.arange(start, start + T, device=key_mask.device)[:, None]  # (T, 1) absolute slot
    k = torch.arange(S, device=key_mask.device)[None, :]                  # (1, S)
    mask = (k <= q)[None] & key_mask[:, None, :]                          # (B, T, S)
    return (mask | (k == q)[None])[:, None]                               # (B, 1, T, S)


class KVCache:
    """Keys and values of every layer, (B, Hkv, S, D); `mask` (B, S) marks the slots that hold
    real tokens, `pos` the slots filled (prompts are left-padded). A forward of T tokens appends
    them and attends over all (prefill, training). After share(n), each forward is a decode step
    of one token a row and each prompt's keys are read once for its n rows (shared_attention).
    make_static() (generate(compile=True)) then writes at `slot`, a (1,) tensor the caller moves,
    and attends over every slot, the empty ones masked: fixed shapes and no changing Python
    number, which torch.compile and CUDA graphs need."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)  # (B, Hkv, S, D)
        L = config.num_hidden_layers
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(L)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(L)]
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.pos = 0
        self.prefix = None  # shared: (keys, values, mask, real lengths) of the B prompts
        self.slot = None    # static: the slot the next token goes to

    def share(self, n, max_len):
        """The B cached prompts become prefixes read in place (no copy) by n rows each, with room
        for max_len tokens of their own: row i*n + j is prompt i's sample j, its place in the
        (B, n) grid kept in `slots` as rows leave (select)."""
        (B, Hkv, _, D), dtype, device = self.k[0].shape, self.k[0].dtype, self.mask.device
        self.prefix = (self.k, self.v, self.mask, self.mask.sum(-1))
        self.slots, self.n = torch.arange(B * n, device=device), n
        self.k = [torch.zeros(B * n, Hkv, max_len, D, device=device, dtype=dtype) for _ in self.k]
        self.v = [torch.zeros(B * n, Hkv, max_len, D, device=device, dtype=dtype) for _ in self.v]
        self.mask = torch.zeros(B * n, max_len, dtype=torch.bool, device=device)
        self.pos = 0

    def begin(self, T, pad_mask=None):
        """Qwen2.forward of T new tokens: record which are real (pad_mask (B, T), None = all) and
        return their positions (B, T) and the attention mask (B, 1, T, S)."""
        if self.prefix is not None:  # a decode step: one token a row, after its prompt's prefix
            assert T == 1 and pad_mask is None, f"a shared cache takes one token a row, got {T}"
            _, _, prefix_mask, prefix_len = self.prefix
            owner = self.slots // self.n                                           # (N,)
            if self.slot is None:
                self.mask[:, self.pos] = True
                own = self.mask[:, :self.pos + 1]                                  # (N, t)
            else:  # static: every slot, the empty ones masked
                self.mask.index_fill_(1, self.slot, True)
                own = self.mask
            positions = prefix_len[owner, None] + own.sum(-1, keepdim=True) - 1   # (N, 1)
            return positions, torch.cat([prefix_mask[owner], own], 1)[:, None, None]
        start = self.pos
        if pad_mask is None:
            pad_mask = torch.ones(self.mask.shape[0], T, dtype=torch.bool, device=self.mask.device)
        self.mask[:, start:start + T] = pad_mask
        key_mask = self.mask[:, :start + T]                                    # (B, S)
        # a token's position counts the real tokens before it, so padding shifts nothing
        positions = (key_mask.long().cumsum(-1)[:, start:] - 1).clamp_min(0)  # (B, T)
        return positions, attention_mask(key_mask, start, T)                   # (B, 1, T, S)

    def update(self, layer, k, v):
        """Store the new keys and values (B, Hkv, T, D); return the layer's whole filled cache."""
        if self.slot is not None:  # static: write at a tensor index, return the whole cache
            self.k[layer].index_copy_(2, self.slot, k)
            self.v[layer].index_copy_(2, self.slot, v)
            return self.k[layer], self.v[layer]
        T, S = k.shape[2], self.k[layer].shape[2]
        assert self.pos + T <= S, f"cache full: {self.pos} + {T} > {S}"
        self.k[layer][:, :, self.pos:self.pos + T] = k
        self.v[layer][:, :, self.pos:self.pos + T] = v
        return self.k[layer][:, :, :self.pos + T], self.v[layer][:, :, :self.pos + T]

    def attend(self, layer, q, k, v, mask):
        """Attention.forward with a cache: q (B, H, T, D) over every cached key -> (B, H, T, D)."""
        k, v = self.update(layer, k, v)                                        # (B, Hkv, S, D)
        if self.prefix is not None:
            keys, values, _, _ = self.prefix
            full = len(self.slots) == keys[layer].shape[0] * self.n  # no row has left yet
            return shared_attention(q, keys[layer], values[layer], k, v, mask,
                                    None if full else self.slots, self.n)
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    def end(self, T):
        self.pos += T if self.slot is None else 0

    def make_static(self):
        assert self.prefix is not None, "make_static() comes after share()"
        self.slot = torch.tensor([self.pos], device=self.mask.device)
        # the compiled step writes these in place: marked, CUDA graphs neither copy them on every
        # replay nor refuse to capture a step that mutates its inputs
        for t in (*self.k, *self.v, self.mask):
            torch._dynamo.mark_static_address(t)

    def select(self, rows):
        """Keep only these batch rows (finished samples leave; a prompt's samples in training)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.mask = self.mask[rows]
        if self.prefix is not None:
            self.slots = self.slots[rows]
        if self.slot is not None:  # new tensors: mark them too
            self.pos, self.slot = self.slot.item(), None
            self.make_static()


def shared_attention(q, k_prefix, v_prefix, k, v, mask, slots, n):
    """Attention of rows that share prefixes, each prefix read once for all of its rows: q
    (N, H, T, D) the rows' new queries; k_prefix, v_prefix (B, Hkv, P, D) one prefix per prompt;
    k, v (N, Hkv, S, D) each row's own keys and values; mask (N, 1, T, P + S), True = may attend;
    row i holds place slots[i] of a (B, n) grid, its prompt slots[i] // n (None: all, in order).
    The scores against a prefix are one matmul per prompt and kv head, (n·rep·T, D) @ (D, P),
    not one per row (cascade attention, as FlashInfer's shared-prefix decoding); one softmax
    then spans prefix and own keys. -> (N, H, T, D)."""
    N, H, T, D = q.shape
    B, Hkv, P, _ = k_prefix.shape
    rep = H // Hkv                                   # query head h reads kv head h // rep

    def by_prompt(x):  # rows (N, Hkv, rep·T, X) -> prompts (B, Hkv, n·rep·T, X), empty places 0
        if slots is not None:  # rows have left: scatter them into their places
            grid = x.new_zeros(B * n, *x.shape[1:])
            grid[slots] = x
            x = grid
        return x.view(B, n, Hkv, -1, x.shape[-1]).transpose(1, 2).reshape(B, Hkv, -1, x.shape[-1])

    def by_row(x):     # prompts (B, Hkv, n·rep·T, X) -> rows (N, Hkv, rep·T, X)
        x = x.view(B, Hkv, n, -1, x.shape[-1]).transpose(1, 2).flatten(0, 1)
        return x if slots is None else x[slots]

    q = q.reshape(N, Hkv, rep * T, D) * D ** -0.5
    scores = torch.cat([by_row(by_prompt(q) @ k_prefix.transpose(-1, -2)),      # (N, Hkv, rep*T, P)
                        q @ k.transpose(-1, -2)], -1)                          # (N, Hkv, rep*T, S)
    scores = scores.view(N, Hkv, rep, T, -1).masked_fill(~mask[:, :, None], float("-inf"))
    p = scores.float().softmax(-1).to(q.dtype).view(N, Hkv, rep * T, -1)
    y = by_row(by_prompt(p[..., :P].contiguous()) @ v_prefix) + p[..., P:] @ v  # (N, Hkv, rep*T, D)
    return y.reshape(N, H, T, D)


def left_pad(prompts, device):
    """Token lists -> ids and pad_mask (B, P), left-padded so every row's next token goes into
    the same slot."""
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, P, dtype=torch.long)
    pad_mask = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], pad_mask[i, P - len(p):] = torch.tensor(p), True
    return ids.to(device), pad_mask.to(device)

# -----------------------------------------------------------------------------
# The fast sampler: generate()


def find_stop(tokenizer, ids, stop_strings, start, window):
    """The first L >= start such that the text of ids[:L + 1] holds a stop string, else None
    (ids[:start] hold none). Decodes tails only: with a byte-level tokenizer (Qwen's, the toy's)
    a string of at most `window` bytes that ends in token L lies in ids[L - window + 1:L + 1]."""
    text = tokenizer.decode(ids[max(0, start - window + 1):])  # all new tokens: a miss is common
    if not any(s in text for s in stop_strings):
        return None
    for L in range(start, len(ids)):
        text = tokenizer.decode(ids[max(0, L - window + 1):L + 1])
        if any(s in text for s in stop_strings):
            return L
    raise AssertionError(f"a stop string in the text of {ids[start - window + 1:]} but in no tail")


def cut_at_stop_strings(tokenizer, stop_strings, tokens, logps, alive, rows, checked, t):
    """Cut each of `rows` after the token that completes its first stop string, looking at the
    tokens written since `checked` (the first t tokens are written)."""
    window = max(len(s.encode()) for s in stop_strings)  # in tokens: each token is >= 1 byte
    start = max(0, checked - window + 1)
    for r, row in zip(rows, tokens[rows, start:t].tolist()):
        row = row[:row.index(-1)] if -1 in row else row
        L = find_stop(tokenizer, row, stop_strings, checked - start, window)
        if L is not None:
            tokens[r, start + L + 1:], logps[r, start + L + 1:], alive[r] = -1, 0.0, False


def rows_to_keep(done, compile):
    """Which batch rows stay for the next decode steps, or None for all: eager drops the finished
    ones once they are a quarter; compiled halves the batch, live rows first, so few shapes."""
    if not compile and done.sum() * 4 >= len(done):
        return ~done
    if compile and done.sum() * 2 >= len(done):
        return done.int().argsort(stable=True)[:len(done) // 2]
    return None


def decode_step(model, tok, cache):
    """tok (B, 1) -> next-token logits (B, V), appending to the cache (compile=True compiles it)."""
    return model(tok, cache=cache)[:, -1]


@torch.inference_mode()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(),
             stop_strings=(), tokenizer=None, generator=None, keys=None, n=1,
             return_logprobs=False, compile=False, check_every=8, row_state=()):
    """reference_generate()'s samples, fast: completions (without the prompt) cut after their
    first stop token or the token that completes a stop string; output i*n + j is prompt i's
    sample j, and the n samples of a prompt share its prefill; return_logprobs adds each token's
    log-prob. keys: one integer per prompt (grpo.py: sample_key(seed, step, prompt)); None =
    consecutive keys from one draw of `generator`. Stop strings are looked for in the decoded
    text every `check_every` tokens, the loop's only host syncs (finished rows leave the batch
    there too); a row is still cut where its string completes. compile=True: the decode step
    with static shapes under torch.compile, CUDA graphs on a GPU; the first call of a shape
    compiles. row_state: objects with .select(rows) holding per-row state the model reads
    (factored.RowWeights: each row's adapter weights), which follow the rows as the cache does."""
    assert prompts and all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    assert tokenizer is not None or not stop_strings, "stop_strings need a tokenizer"
    device = model.lm_head.weight.device
    B, N = len(prompts), len(prompts) * n
    keys = row_keys(prompt_keys(keys, B, temperature, generator), n, device)   # (N,)
    ids, pad_mask = left_pad(prompts, device)                                  # (B, P)
    P, S = ids.shape[1], max_new_tokens
    if compile:  # round up, so batches of other lengths reuse the compiled shapes
        P, S = -(-P // 64) * 64, -(-S // 64) * 64
    cache = KVCache(model.config, B, P, device, model.lm_head.weight.dtype)
    h = model(ids, pad_mask=pad_mask, cache=cache, hidden_only=True)
    logits = model.lm_head(h[:, -1])                                           # (B, V)
    cache.share(n, S)  # each prompt's n samples read its keys and values in place
    if n > 1:
        fan = torch.arange(B, device=device).repeat_interleave(n)
        for c in row_state:
            c.select(fan)
        logits = logits[fan]
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    tokens = torch.full((N, max_new_tokens), -1, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new_tokens, device=device)
    rows = torch.arange(N, device=device)      # which output each batch row writes to
    alive = torch.ones(N, dtype=torch.bool, device=device)
    unchecked = list(range(N))                 # rows alive at the last check: their tokens need one
    checked = 0                                # tokens before this index hold no stop string
    step = decode_step
    if compile:
        cache.make_static()
        step = torch.compile(decode_step, mode="reduce-overhead" if device.type == "cuda" else None)
    for t in range(max_new_tokens):
        tok, lp = sample_token(logits, temperature, top_p, keys[rows], t)
        live = alive[rows]                     # rows finished since the last check write nothing
        tokens[rows, t] = torch.where(live, tok, -1)
        logps[rows, t] = torch.where(live, lp, 0.0)
        alive[rows] = live & ~torch.isin(tok, stop)
        last = t == max_new_tokens - 1
        if last or (t + 1) % check_every == 0:  # host-side bookkeeping, every few tokens
            if stop_strings:
                cut_at_stop_strings(tokenizer, stop_strings, tokens, logps, alive, unchecked,
                                    checked, t + 1)
                checked = t + 1
            unchecked = alive.nonzero().flatten().tolist()
            if last or not unchecked:
                break
            keep = rows_to_keep(~alive[rows], compile)
            if keep is not None:
                for c in (cache, *row_state):
                    c.select(keep)
                rows, tok = rows[keep], tok[keep]
        if compile:  # a new step: the graph may reuse its outputs' memory
            torch.compiler.cudagraph_mark_step_begin()
        logits = step(model, tok[:, None], cache)
        if compile:
            cache.slot += 1  # the static step writes at cache.slot; moving it is the caller's job
    out, out_lp = [], []
    for row, row_lp in zip(tokens.tolist(), logps.tolist()):
        L = row.index(-1) if -1 in row else len(row)
        out.append(row[:L])
        out_lp.append(row_lp[:L])
    return (out, out_lp) if return_logprobs else out

# -----------------------------------------------------------------------------
# Self-check: python sampler.py --toy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--toy", action="store_true", help="use the shipped toy base (toy_base/)")
    parser.add_argument("--model", default=None,
                        help="local folder or hub id (Qwen/Qwen2.5-3B); default the toy base")
    parser.add_argument("--prompt", help="text to complete", default="Question: Ann has 23 eggs "
                        "and buys 5 boxes of 4. How many eggs?\nAnswer:")
    parser.add_argument("--max-new-tokens", type=COUNT, default=48, help="tokens to generate")
    parser.add_argument("--device", default=None, help="cuda / mps / cpu; default the best one")
    args = parser.parse_args()
    exit_on_user_error()
    path = args.model or TOY_BASE
    model, tok = load_model(path, device=args.device), load_tokenizer(path)
    if not (ids := tok.encode(args.prompt)):
        raise UserError("--prompt '': an empty text has no token to continue")
    prompts, same = [ids, ids[:len(ids) // 2], ids[3:]], []  # fast = reference, token by token
    for T in (0.0, 1.0):
        kw = dict(temperature=T, stop_ids=[tok.eos_id], stop_strings=("Question:",),
                  tokenizer=tok, keys=[7, 8, 9], n=2)
        fast = generate(model, prompts, args.max_new_tokens, **kw)
        same.append(sum(a == b for a, b in zip(fast, reference_generate(
            model, prompts, args.max_new_tokens, **kw))))
    print(f"generate vs reference_generate: {same[0]}/6 greedy and {same[1]}/6 sampled "
          f"completions identical (3 prompts of different lengths x 2 samples)")
    for B, n, T in ((1, 1, 0.0), (8, 4, 1.0)):  # speed
        t0 = time.perf_counter()
        outs = generate(model, [ids] * B, args.max_new_tokens, temperature=T, n=n,
                        stop_ids=[tok.eos_id], keys=range(B))
        dt, n_tok = time.perf_counter() - t0, sum(map(len, outs))
        print(f"{n_tok} tokens in {dt:.2f} s = {n_tok / dt:.1f} tokens/s ({B} prompts x {n} "
              f"samples, temperature {T:g}): {tok.decode(outs[0])!r}")
