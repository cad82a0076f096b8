"""
FLOPs and parameter counts of full fine-tuning versus LoRA, of sampling versus training, and the
bits-versus-capacity calculator: how much an RL or SFT run can teach versus what LoRA can hold.

    python flops.py                                  # Qwen2.5-3B, rank 1, the default GRPO step
    python flops.py --model Qwen/Qwen2.5-3B --rank 64
    python flops.py --model Llama-3.1-8B --rank 1 --targets mlp --json
    python flops.py --model toy_base                 # any folder with a config.json
    python flops.py --adapter tinylora --u 13 --tie 1   # TinyLoRA's 13 parameters (26 bits) at 3B

Below rank 1 (lora.py): LoRA-XS trains r² numbers per matrix, TinyLoRA u per group of tied
matrices (u × round(n·(1 - tie)) for n adapted matrices, PEFT's grouping); both keep A and B
frozen, so their backward skips dA and dB and pays only the small dR.

Everything is arithmetic on the config: the built-in shapes need no download. Conventions:
- A FLOP is a multiply or an add, so a matmul (m×k)@(k×n) costs 2·m·k·n. Only matmuls are
  counted (norms, RoPE, softmax, SiLU, biases and the embedding lookup are O(T·C), noise at
  this scale): the convention of torch.utils.flop_counter, which the tests check us against.
- Attention is counted over the full T×T square, as model.py runs it: SDPA with a mask (the
  GRPO trainer pads) or its math backend computes every block and masks afterwards. A causal
  FlashAttention kernel skips the upper half: there the attention rows overstate the work ≤ 2×.
- Backward of y = x·Wᵀ costs two matmuls of the forward's size: dX = dY·W (input gradient) and
  dW = dYᵀ·X (weight gradient). Full fine-tuning does both (≈ 3× forward); LoRA freezes W, so
  it pays dX only (≈ 2× forward) plus the small adapter matmuls: the 2/3 of "LoRA Without
  Regret" (Schulman and Thinking Machines, 2025). Autograd also skips dX where nothing
  upstream needs it; we follow it exactly (see step_flops), which under LoRA is layer 0.
"""
import argparse
import json
import math
import os

from errors import COUNT, FRACTION, NONNEGATIVE, HelpFormatter, UserError, exit_on_user_error
from model import Qwen2Config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    # the model and the adapter
    add("--model", default="Qwen2.5-3B", help=f"built-in name ({', '.join(SHAPES)}; 'Qwen/' "
        "or 'meta-llama/' prefix optional) or a local folder / config.json")
    add("--adapter", default="lora", choices=("lora", "loraxs", "tinylora"),
        help="lora: B·A; loraxs: R (r x r) inside W's top-r SVD; tinylora: R = Σ v_i P_i, "
        "u parameters per group (lora.py)")
    add("--rank", type=COUNT, default=None, help="LoRA rank (LoRA-XS, TinyLoRA: the SVD rank r); "
        "default 1, 2 for tinylora (the full fine-tuning numbers are always shown too)")
    add("--u", type=COUNT, default=13, help="TinyLoRA: trainable parameters per group")
    add("--tie", type=FRACTION, default=0.0, help="TinyLoRA weight tying (PEFT's): "
        "0 = one v per matrix, 1 = one v for all")
    add("--targets", default="all", choices=list(TARGETS), help="adapted projections: "
        "all seven, attn (q,k,v,o), mlp (gate,up,down)")
    # the GRPO step (grpo.py's flags and defaults)
    add("--batch", type=COUNT, default=32, help="prompts per step, as grpo.py's --batch")
    add("--group", type=COUNT, default=8, help="samples per prompt G, as grpo.py's --group")
    add("--prompt-len", type=COUNT, default=150, help="prompt tokens (a GSM8K question is "
        "~60 Qwen tokens; ~150 with a few-shot/format prompt, an assumption)")
    add("--max-new-tokens", type=COUNT, default=512, help="tokens sampled per completion (all "
        "of them: no early stop, an upper bound), as grpo.py's --max-new-tokens")
    # one training step on whole sequences
    add("--sequences", type=COUNT, default=None, help="sequences per training step (default: "
        "batch × group = 256)")
    add("--seq-len", type=COUNT, default=None, help="tokens per sequence "
        "(default: prompt-len + max-new-tokens = 662)")
    # bits versus capacity
    add("--steps", type=COUNT, default=500, help="GRPO steps of this project's run, "
        "for the bits table (an assumption)")
    add("--sft-tokens", type=COUNT, default=910_161, help="SFT target tokens "
        "(default: GSM8K train's 7,473 answers, Qwen2.5 tokenizer)")
    add("--sft-loss", type=NONNEGATIVE, default=0.5, help="SFT loss in nats/token "
        "(default 0.5 is an assumption: pass sft.py's measured value)")
    add("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.rank is None:
        args.rank = 2 if args.adapter == "tinylora" else 1
    return args


# -----------------------------------------------------------------------------
# Built-in shapes (config.json of each hub repo, the fields that matter here)

_QWEN = dict(max_position_embeddings=32768, rope_theta=1e6, num_key_value_heads=2,
             vocab_size=151936)
SHAPES = {
    "Qwen2.5-0.5B": dict(_QWEN, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14),
    "Qwen2.5-1.5B": dict(_QWEN, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12),
    "Qwen2.5-3B": dict(_QWEN, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16),
    "Qwen2.5-7B": dict(_QWEN, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4,
                       vocab_size=152064, tie_word_embeddings=False),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8,
                         vocab_size=128256, tie_word_embeddings=False, attention_bias=False,
                         rope_theta=5e5, rms_norm_eps=1e-5, max_position_embeddings=131072,
                         bos_token_id=128000, eos_token_id=128001),
}
TARGETS = {"all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
           "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "mlp": ("gate_proj", "up_proj", "down_proj")}


def get_config(name_or_path):
    """A built-in name (hub prefix and -Instruct optional: same shapes) or a local config.json."""
    if os.path.isdir(name_or_path):
        name_or_path = os.path.join(name_or_path, "config.json")
    if os.path.isfile(name_or_path):
        return Qwen2Config.from_json(name_or_path, qwen2_only=False)
    key = name_or_path.split("/")[-1].lower().removesuffix("-instruct").removeprefix("meta-")
    shapes = {k.lower(): v for k, v in SHAPES.items()}
    if key not in shapes:
        raise UserError(f"unknown model {name_or_path!r}: not a local folder/config.json, "
                        f"nor one of {list(SHAPES)}")
    return Qwen2Config(**shapes[key])


# -----------------------------------------------------------------------------
# Parameter counts

def matrix_shapes(cfg):
    """(in, out) of each projection of one layer; y = x·Wᵀ with W of shape (out, in)."""
    C, I = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (C, q), "k_proj": (C, kv), "v_proj": (C, kv), "o_proj": (q, C),
            "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}


def count_params(cfg):
    C, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    per_layer = sum(i * o for i, o in matrix_shapes(cfg).values()) + 2 * C  # + two RMSNorm weights
    if cfg.attention_bias:  # q, k, v carry a bias; o_proj never does
        per_layer += (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    head = 0 if cfg.tie_word_embeddings else V * C
    return V * C + L * per_layer + C + head  # embedding, layers, final norm, lm_head


def count_lora_params(cfg, rank, targets="all"):
    """A (r×in) and B (out×r) per adapted matrix: r·(in + out)."""
    shapes = matrix_shapes(cfg)
    return cfg.num_hidden_layers * sum(rank * sum(shapes[t]) for t in TARGETS[targets])


def count_loraxs_params(cfg, rank, targets="all"):
    """R (r×r) per adapted matrix, whatever its shape."""
    return cfg.num_hidden_layers * len(TARGETS[targets]) * rank * rank


def count_tinylora_params(cfg, u, tie, targets="all"):
    """u per group; PEFT's round(n·(1 - tie)) groups of the n adapted matrices (at least one)."""
    n = cfg.num_hidden_layers * len(TARGETS[targets])
    return u * max(1, round(n * (1.0 - tie)))


def count_adapter_params(cfg, adapter, rank, u=13, tie=0.0, targets="all"):
    return {"lora": lambda: count_lora_params(cfg, rank, targets),
            "loraxs": lambda: count_loraxs_params(cfg, rank, targets),
            "tinylora": lambda: count_tinylora_params(cfg, u, tie, targets)}[adapter]()


# -----------------------------------------------------------------------------
# One training step: forward + backward on B×T tokens

ROWS = (*TARGETS["all"], "attn_scores", "attn_values", "lm_head", "lora")


def _linear(rows, name, n, d_in, d_out, grad_in, train_w, rank, adapter="lora"):
    """Add y = x·Wᵀ (+ the LoRA branch x·Aᵀ·Bᵀ, or x·Aᵀ·Rᵀ·Bᵀ) on n tokens; return whether y needs
    a gradient."""
    mm = 2 * n * d_in * d_out
    rows[name][0] += mm
    rows[name][1] += mm if grad_in else 0       # dX = dY·W, only if x needs a gradient
    rows[name][2] += mm if train_w else 0       # dW = dYᵀ·X, only if W trains
    if rank and adapter == "lora":
        a, b = 2 * n * d_in * rank, 2 * n * rank * d_out  # x·Aᵀ, then (x·Aᵀ)·Bᵀ
        rows["lora"][0] += a + b
        rows["lora"][1] += b + (a if grad_in else 0)      # d(x·Aᵀ) = dY·B, then dX += d(x·Aᵀ)·A
        rows["lora"][2] += a + b                          # dB = dYᵀ·(x·Aᵀ), dA = d(x·Aᵀ)ᵀ·x
    elif rank:  # LoRA-XS, TinyLoRA: A and B frozen, only R (r×r) trains
        # h = x·Aᵀ, g = h·Rᵀ, g·Bᵀ
        a, rr, b = 2 * n * d_in * rank, 2 * n * rank * rank, 2 * n * rank * d_out
        rows["lora"][0] += a + rr + b
        rows["lora"][1] += b + (rr + a if grad_in else 0)  # dg = dY·B, dh = dg·R, dX += dh·A
        rows["lora"][2] += rr                              # dR = dgᵀ·h (R = Σ v_i P_i is no matmul)
    return grad_in or train_w or rank > 0


def step_flops(cfg, batch, seq_len, rank=0, targets="all", adapter="lora", kv_len=None,
               head_tokens=None):
    """{row: [forward, input-gradient, weight-gradient]} FLOPs of one step; rank 0 = full
    fine-tuning. kv_len: keys each query reads (default seq_len; more when a cache holds a prompt
    before them); head_tokens: positions through the lm_head (default all B·T; token_logprobs scores
    T - 1 a sequence, and a prompt pass that only fills the cache none).

    Autograd computes a gradient only for tensors that need one. In full fine-tuning the
    embedding trains, so every activation does. Under LoRA the embedding is frozen: the stream
    entering layer 0 needs no gradient, so layer 0's q/k/v (or with --targets mlp, its whole
    attention and gate/up) skip dX. We track that flag through each layer exactly."""
    B, T, H, D = batch, seq_len, cfg.num_attention_heads, cfg.head_dim
    n, full, adapted = B * T, rank == 0, set(TARGETS[targets])
    shapes = matrix_shapes(cfg)
    rows = {r: [0, 0, 0] for r in ROWS}

    def linear(name, grad_in):
        return _linear(rows, name, n, *shapes[name], grad_in, full,
                       0 if full or name not in adapted else rank, adapter)

    grad = full  # does the residual stream need a gradient?
    # one (T×D)@(D×S) per head and sequence; K/V heads are shared (GQA), not the work
    att = 2 * B * H * T * (kv_len or T) * D
    for _ in range(cfg.num_hidden_layers):
        gq, gk, gv = linear("q_proj", grad), linear("k_proj", grad), linear("v_proj", grad)
        rows["attn_scores"][0] += att                          # S = Q·Kᵀ
        rows["attn_scores"][1] += att * gq + att * gk          # dQ = dS·K, dK = dSᵀ·Q
        rows["attn_values"][0] += att                          # Y = P·V, P = softmax(S)
        rows["attn_values"][1] += att * (gq or gk) + att * gv  # dP = dY·Vᵀ, dV = Pᵀ·dY
        grad = linear("o_proj", gq or gk or gv) or grad        # x + attn(x)
        g_act = linear("gate_proj", grad) | linear("up_proj", grad)  # both always run: | not or
        grad = linear("down_proj", g_act) or grad              # h + mlp(h)
    # lm_head on every position; tied or not, its weight trains only in full fine-tuning
    _linear(rows, "lm_head", n if head_tokens is None else head_tokens, cfg.hidden_size,
            cfg.vocab_size, grad, full, 0)
    return rows


def total(rows, col=None):
    return sum(r[col] if col is not None else sum(r) for r in rows.values())


# -----------------------------------------------------------------------------
# Sampling, as model.generate does it, and the whole GRPO step

def forward_flops(cfg, tokens, pairs, logits):
    """Forward FLOPs of one sequence: `tokens` tokens through the projections, `pairs`
    (query, key) pairs of attention, the lm_head on `logits` positions."""
    proj = 2 * tokens * sum(i * o for i, o in matrix_shapes(cfg).values())
    att = 2 * 2 * pairs * cfg.num_attention_heads * cfg.head_dim  # Q·Kᵀ and P·V
    return cfg.num_hidden_layers * (proj + att) + 2 * logits * cfg.hidden_size * cfg.vocab_size


def sampling_flops(cfg, prompts, samples, prompt_len, new_tokens):
    """model.generate: one prefill per prompt (the G samples share it, and only the last
    position's logits are computed), then new_tokens - 1 one-token forwards per sample
    (the first token comes from the prefill), each reading the whole cache."""
    P, N = prompt_len, new_tokens
    # the full P×P square, as SDPA with a mask does
    prefill = prompts * forward_flops(cfg, P, P * P, 1)
    # step t = 1..N-1 feeds one token at slot P+t-1, which attends to the P+t filled slots
    decode = prompts * samples * forward_flops(cfg, N - 1, (N - 1) * P + N * (N - 1) // 2, N - 1)
    return {"prefill": prefill, "decode": decode, "total": prefill + decode}


def grpo_step_flops(cfg, prompts, samples, prompt_len, new_tokens, rank, targets, adapter="lora",
                    shared_prompt=True):
    """Sampling + one training step on B prompts × G samples (KL off, the default: the sampler's
    log-probs serve as the old policy, so no extra forward). The trainer is
    model.completion_logprobs: each prompt runs once (no head: it fills the cache), then the B·G
    completions run attending to prompt + completion slots, the head on every completion position.
    shared_prompt=False counts token_logprobs on the B·G whole sequences instead (grpo.py's path
    under --grad-checkpoint). logprobs_from_hidden makes the head's input gradient in forward when
    the head is frozen (LoRA: no extra work); when it trains (rank 0), backward recomputes the head
    once more for its weight gradient: counted here. A micro-batch that splits a group runs its
    prompt once more: not counted."""
    B, G, P, N = prompts, samples, prompt_len, new_tokens
    sample = sampling_flops(cfg, B, G, P, N)["total"]
    if shared_prompt:
        head = B * G * N
        train = total(step_flops(cfg, B, P, rank, targets, adapter, head_tokens=0))
        train += total(step_flops(cfg, B * G, N, rank, targets, adapter, kv_len=P + N,
                                  head_tokens=head))
    else:  # token_logprobs scores positions 0..T-2 of each sequence (the last one predicts nothing)
        head = B * G * (P + N - 1)
        train = total(step_flops(cfg, B * G, P + N, rank, targets, adapter, head_tokens=head))
    train += 2 * head * cfg.hidden_size * cfg.vocab_size if rank == 0 else 0  # the recompute
    return {"sampling": sample, "training": train, "total": sample + train}


# -----------------------------------------------------------------------------
# Bits versus capacity (the argument of "LoRA Without Regret" for why rank 1 suffices in RL)

# Allen-Zhu & Li 2024, "Physics of Language Models 3.3": ~2 bits of knowledge per parameter
BITS_PER_PARAM = 2.0


def distinct_advantages(group):
    """Binary reward, advantage r - mean(group): with k of G correct, A ∈ {1 - k/G, -k/G}, so
    across all k every advantage is j/G for j = -(G-1)..G-1, i.e. 2G - 1 values (0 included:
    all-equal groups). An episode's scalar signal thus carries at most log2(2G - 1) bits; dividing
    by the group's std relabels the values, it does not add any."""
    return 2 * group - 1


def rl_bits_per_episode(group, reward_values=2):
    """The tighter of two bounds: the reward itself (log2 #values = 1 bit if binary; the group's
    advantages are a function of its G rewards, so ≤ 1 bit per episode on average) and the
    advantage's distinct values."""
    return min(math.log2(reward_values), math.log2(distinct_advantages(group)))


def adapter_label(adapter, rank, u, tie):
    return {"lora": f"r={rank}", "loraxs": f"LoRA-XS r={rank}",
            "tinylora": f"TinyLoRA u={u} tie={tie:g}"}[adapter]


def bits_table(cfg, name, rank, targets, args):
    """Worked examples: (label, bits the data can carry, adapter parameters (--adapter), capacity
    in bits)."""
    llama = get_config("Llama-3.1-8B")
    lora_llama = count_lora_params(llama, 1)
    lora_here = count_adapter_params(cfg, args.adapter, rank, args.u, args.tie, targets)
    label = adapter_label(args.adapter, rank, args.u, args.tie)
    episodes = args.steps * args.batch * args.group
    sft = args.sft_tokens * args.sft_loss / math.log(2)  # nats -> bits
    rows = [("MATH 10k problems × 32 samples, Llama-3.1-8B r=1",
             10_000 * 32 * rl_bits_per_episode(32), lora_llama),
            ("DeepSeek-R1-Zero 5.3M episodes, Llama-3.1-8B r=1",
             5.3e6 * 1.0, lora_llama),  # ≤ 1 bit each
            (f"GRPO {args.steps}×{args.batch}×{args.group} episodes, {name} {label}",
             episodes * rl_bits_per_episode(args.group), lora_here),
            (f"SFT {args.sft_tokens:,} tok × {args.sft_loss} nats, {name} {label}", sft, lora_here)]
    return [dict(example=e, bits=b, lora_params=p, capacity_bits=p * BITS_PER_PARAM,
                 fill=b / (p * BITS_PER_PARAM)) for e, b, p in rows]


SMALL_ADAPTERS = [("tinylora", 2, 1, 1.0), ("tinylora", 2, 1, 0.0),
                  ("tinylora", 2, 13, 1.0), ("tinylora", 2, 13, 0.5), ("tinylora", 2, 13, 0.0),
                  ("loraxs", 1, 0, 0.0), ("loraxs", 2, 0, 0.0), ("loraxs", 16, 0, 0.0),
                  ("lora", 1, 0, 0.0)]


def small_adapters_table(cfg, targets="all"):
    """Trainable parameters and their capacity (2 bits each) from 1 parameter up to rank-1 LoRA."""
    return [dict(adapter=a, rank=r, u=u if a == "tinylora" else None,
                 tie=t if a == "tinylora" else None,
                 label=("LoRA " if a == "lora" else "") + adapter_label(a, r, u, t),
                 params=(p := count_adapter_params(cfg, a, r, u, t, targets)),
                 capacity_bits=p * BITS_PER_PARAM) for a, r, u, t in SMALL_ADAPTERS]


# -----------------------------------------------------------------------------
# Printing

def si(x):
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:7.2f}{unit}"
    return f"{x:7.0f} "


def print_split(title, rows):
    print(f"\n{title}\n{'':12s} {'forward':>9s} {'dX':>9s} {'dW':>9s} {'total':>9s}")
    for r, (f, dx, dw) in rows.items():
        if f + dx + dw:
            print(f"{r:12s} {si(f)}  {si(dx)}  {si(dw)}  {si(f + dx + dw)}")
    print(f"{'sum':12s} {si(total(rows, 0))}  {si(total(rows, 1))}  {si(total(rows, 2))}  "
          f"{si(total(rows))}")


if __name__ == "__main__":
    args = parse_args()
    exit_on_user_error()
    cfg = get_config(args.model)
    name = (os.path.basename(args.model.rstrip("/")) if os.path.exists(args.model)
            else args.model.split("/")[-1])
    B = args.sequences or args.batch * args.group
    T = args.seq_len or args.prompt_len + args.max_new_tokens
    full, lora = step_flops(cfg, B, T), step_flops(cfg, B, T, args.rank, args.targets, args.adapter)
    sample = sampling_flops(cfg, args.batch, args.group, args.prompt_len, args.max_new_tokens)
    grpo = {k: grpo_step_flops(cfg, args.batch, args.group, args.prompt_len, args.max_new_tokens,
                               r, args.targets, args.adapter)
            for k, r in (("full", 0), ("lora", args.rank))}
    label = adapter_label(args.adapter, args.rank, args.u, args.tie)
    bits = bits_table(cfg, name, args.rank, args.targets, args)
    out = dict(model=name, rank=args.rank, targets=args.targets, batch=B, seq_len=T,
               adapter=args.adapter, u=args.u, tie=args.tie,
               params=count_params(cfg),
               lora_params=count_lora_params(cfg, args.rank, args.targets),
               adapter_params=count_adapter_params(cfg, args.adapter, args.rank, args.u, args.tie,
                                                   args.targets),
               small_adapters=small_adapters_table(cfg, args.targets),
               lora_params_by_targets={t: count_lora_params(cfg, args.rank, t) for t in TARGETS},
               flops_full=total(full), flops_lora=total(lora), ratio=total(lora) / total(full),
               split_full={r: dict(zip(("fwd", "dx", "dw"), v)) for r, v in full.items()},
               split_lora={r: dict(zip(("fwd", "dx", "dw"), v)) for r, v in lora.items()},
               sampling=dict(sample, prompts=args.batch, samples=args.group,
                             prompt_len=args.prompt_len, new_tokens=args.max_new_tokens),
               grpo_step=grpo, bits=bits)
    if args.json:
        print(json.dumps(out, indent=2))
        raise SystemExit
    C, L = cfg.hidden_size, cfg.num_hidden_layers
    print(f"{name}: hidden {C}, inter {cfg.intermediate_size}, {L} layers, "
          f"{cfg.num_attention_heads} heads, {cfg.num_key_value_heads} kv heads, "
          f"vocab {cfg.vocab_size}, tied {cfg.tie_word_embeddings}")
    print(f"parameters {out['params']:,}; LoRA rank {args.rank}: " +
          ", ".join(f"{t} {n:,}" for t, n in out["lora_params_by_targets"].items()) +
          f" ({100 * out['lora_params'] / out['params']:.4f}% with {args.targets})")
    print(f"\none training step on {B} × {T} = {B * T:,} tokens "
          f"(FLOPs; dX = input gradients, dW = weight gradients)")
    print_split("full fine-tuning", full)
    if args.adapter != "lora":
        print(f"{label}: {out['adapter_params']:,} trainable parameters with {args.targets}")
    print_split(f"{'LoRA rank ' + str(args.rank) if args.adapter == 'lora' else label} "
                f"({args.targets})", lora)
    # + lm_head; the lookup is no matmul
    matmul = L * sum(i * o for i, o in matrix_shapes(cfg).values()) + cfg.vocab_size * C
    print(f"\nLoRA / full = {out['ratio']:.4f}  "
          f"(2/3 = 0.6667; attention has no weights, so it costs 3× forward in both)")
    print(f"rule of thumb 6·N·tokens = {si(6 * matmul * B * T)} "
          f"(N = {matmul:,} matmul parameters, attention left out)")
    print(f"\nsampling {args.batch} prompts × {args.group} samples, "
          f"{args.prompt_len} prompt + {args.max_new_tokens} new tokens:"
          f" prefill {si(sample['prefill'])}, decode {si(sample['decode'])}")
    for k, g in grpo.items():
        print(f"GRPO step, {k:4s}: sampling {si(g['sampling'])} + training {si(g['training'])} "
              f"= {si(g['total'])}  (sampling {100 * g['sampling'] / g['total']:.0f}%)")
    G = args.group
    print(f"\nbits vs capacity: an episode carries ≤ log2(#reward values) = 1 bit for a binary "
          f"reward (its advantage takes ≤ 2G-1 = {distinct_advantages(G)} values, "
          f"log2 = {math.log2(distinct_advantages(G)):.2f}); "
          f"capacity = adapter params × {BITS_PER_PARAM:g} bits")
    print("fill = bits / capacity: below 1, the adapter can hold all the run can teach")
    print(f"{'example':60s} {'bits':>9s} {'params':>12s} {'capacity':>9s} {'fill':>7s}")
    for b in bits:
        print(f"{b['example']:60s} {si(b['bits'])} {b['lora_params']:12,d} "
              f"{si(b['capacity_bits'])} {b['fill']:7.3f}")
    print(f"\nbelow rank 1 ({args.targets}): trainable parameters and their capacity at "
          f"{BITS_PER_PARAM:g} bits each")
    for row in out["small_adapters"]:
        print(f"{row['label']:28s} {row['params']:12,d} parameters "
              f"{row['capacity_bits']:14,.0f} bits")
