"""
Qwen2.5 from scratch: config, modules, safetensors loading, tokenizer, KV cache, sampler.

    python model.py --toy                          # build/load the toy model, check, generate
    python model.py --model Qwen/Qwen2.5-3B --prompt "Question: 2+2?"

Parameter names equal Hugging Face's (model.layers.0.self_attn.q_proj.weight, ...), so a
checkpoint loads with a strict load_state_dict. Reference: transformers' modeling_qwen2.py.
"""
import json
import os
import sys
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# -----------------------------------------------------------------------------
# User errors and checked reads: every file rank1 reads fails with its path and what is wrong


class UserError(ValueError):
    """A problem the user can fix, not a bug in rank1: a missing or corrupt file (the message names
    it and says what is wrong), a bad flag. Library callers (tests, study.py) catch it like any
    ValueError; a script that called exit_on_user_error() prints it as one line and exits 2."""


def user_exit(message):
    """A script's own refusal (a bad flag, a run folder in the way): `error: message` on stderr, and
    the SystemExit to raise, status 2; str() of it is still the message."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    stop = SystemExit(str(message))
    stop.code = 2  # the interpreter exits with .code and prints nothing more (it is printed already)
    return stop


def exit_on_user_error():
    """Called at the top of every script's __main__: an uncaught UserError ends the program as
    user_exit does, one line and status 2; any other exception (a bug) keeps its traceback."""
    default = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError):
            raise user_exit(value)  # SystemExit raised in the hook: the interpreter exits with it
        default(kind, value, tb)
    if not getattr(sys.excepthook, "rank1", False):
        hook.rank1 = True
        sys.excepthook = hook


def read_json(path):
    """A JSON file, or a UserError that names it and says what is wrong."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                        f"truncated or corrupt?") from None


def open_safetensors(path):
    """safe_open(path) for tensors read one at a time, or a UserError that names the file. The
    header is checked against the file's size here, so a truncated file fails now, not later."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); truncated or corrupt?") from None


def load_safetensors(path):
    """Every tensor of a safetensors file as {name: tensor}, or a UserError that names the file."""
    f = open_safetensors(path)
    return {k: f.get_tensor(k) for k in f.keys()}


# -----------------------------------------------------------------------------
# Config

@dataclass
class Qwen2Config:
    vocab_size: int = 151936             # embedding rows (rows past the tokenizer's are padding)
    hidden_size: int = 2048              # C, the residual width
    intermediate_size: int = 11008       # MLP width
    num_hidden_layers: int = 36
    num_attention_heads: int = 16        # query heads
    num_key_value_heads: int = 2         # grouped-query attention: kv heads shared by n_head/n_kv
    head_dim: int = 0                    # 0 = hidden_size // num_attention_heads
    rope_theta: float = 1e6              # RoPE base θ
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True     # lm_head shares embed_tokens' weight
    attention_bias: bool = True          # Qwen2 has q/k/v biases; Llama has none
    bos_token_id: int = 151643
    eos_token_id: int = 151643

    def __post_init__(self):
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        assert self.num_attention_heads % self.num_key_value_heads == 0, \
            f"{self.num_attention_heads} heads not divisible by {self.num_key_value_heads} kv heads"

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        if "rope_parameters" in d:  # transformers 5.x moved rope_theta here
            d.setdefault("rope_theta", d["rope_parameters"].get("rope_theta", 1e6))
        if d.get("model_type", "qwen2") == "qwen2":
            d.setdefault("attention_bias", True)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path):
        d = read_json(path)
        if not isinstance(d, dict):
            raise UserError(f"{path}: a config.json holds one JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError, AssertionError) as e:
            raise UserError(f"{path}: not a Qwen2 config ({e})") from None

    def to_hf_dict(self):
        """config.json in the form transformers writes (4.x keys, which 5.x also reads)."""
        d = asdict(self)
        d.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                 torch_dtype="float32", use_sliding_window=False, attention_dropout=0.0)
        return d


# -----------------------------------------------------------------------------
# Math as plain functions

def rms_norm(x, weight, eps):
    # Statistics in float32, then cast back *before* the weight multiply: this is what Qwen2
    # was trained with (transformers' Qwen2RMSNorm), so bf16 logits match bit for bit.
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rope_cos_sin(position_ids, head_dim, theta, dtype):
    # inv_freq_i = 1 / θ^(2i/d); angles in float32 for any model dtype (positions reach 32k,
    # and bf16 would round them to 8 bits of mantissa). Frequencies are concatenated, not
    # interleaved: dimension i pairs with i + d/2 (see rotate_half).
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float,
                                             device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)              # (B, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x (B, H, T, D); cos/sin (B, T, D) broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def attention_mask(key_mask, start, T):
    """Boolean (B, 1, T, S) mask, True = may attend: causal over cache slots, real keys only.

    key_mask (B, S) marks the slots that hold real tokens (left padding is False). A padding
    query would see no key at all and softmax would give NaN, so every query may see itself;
    those rows are garbage and nothing reads them."""
    B, S = key_mask.shape
    q = torch.arange(start, start + T, device=key_mask.device)[:, None]  # (T, 1) absolute slot
    k = torch.arange(S, device=key_mask.device)[None, :]                  # (1, S)
    mask = (k <= q)[None] & key_mask[:, None, :]                          # (B, T, S)
    return (mask | (k == q)[None])[:, None]                               # (B, 1, T, S)


# -----------------------------------------------------------------------------
# KV cache: an explicit object passed to forward, preallocated once (static shapes)

class KVCache:
    """Keys and values of every layer, (B, Hkv, S, D), filled slot by slot; `mask` marks real tokens.

    Eager mode: `pos` (an int) slots are filled; a forward appends T tokens and attends over them.
    Static mode (`make_static`, for generate(compile=True)): a forward writes one token per row at
    `slot`, a (1,) tensor, and attends over all S slots with the empty ones masked out. Every step
    then has the same shapes and reads no Python number that changes (torch.compile would recompile
    for each new int), which is what torch.compile and CUDA graphs need. The caller moves `slot`."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)  # (B, Hkv, S, D)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # real tokens
        self.pos = 0  # slots filled so far, the same for every row (prompts are left-padded)
        self.slot = None  # static mode: the slot the next token goes to, a (1,) tensor

    def make_static(self, slot):
        self.slot = torch.tensor([slot], device=self.mask.device)
        # the compiled step writes these in place: marked, CUDA graphs neither copy them on every
        # replay nor refuse to capture a step that mutates its inputs
        for t in (*self.k, *self.v, self.mask):
            torch._dynamo.mark_static_address(t)

    def update(self, layer, k, v):
        if self.slot is not None:  # static: write at a tensor index, return the whole cache
            self.k[layer].index_copy_(2, self.slot, k)
            self.v[layer].index_copy_(2, self.slot, v)
            return self.k[layer], self.v[layer]
        T = k.shape[2]
        assert self.pos + T <= self.k[layer].shape[2], f"cache full: {self.pos} + {T} > {self.k[layer].shape[2]}"
        self.k[layer][:, :, self.pos:self.pos + T] = k
        self.v[layer][:, :, self.pos:self.pos + T] = v
        return self.k[layer][:, :, :self.pos + T], self.v[layer][:, :, :self.pos + T]

    def select(self, rows):
        """Keep only these batch rows (finished sequences drop out; prompts fan out to samples)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.mask = self.mask[rows]
        if self.slot is not None:  # new tensors: mark them too
            self.make_static(self.slot.item())


# -----------------------------------------------------------------------------
# Modules (names equal Hugging Face's so checkpoints load with a strict load_state_dict)

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        C, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(C, self.n_head * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)    # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)    # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                              # (B, Hkv, S, D)
        # grouped-query attention: query head h reads kv head h // (H / Hkv). SDPA's enable_gqa does
        # that without copying K/V, except on CUDA with a mask: there the math kernel repeats K/V
        # H/Hkv times. So when decoding one (always masked) token, the H/Hkv query heads that share
        # a kv head become H/Hkv queries of that head instead: same result, no enable_gqa.
        if T == 1 and mask is not None:
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, -1, self.head_dim), k, v,
                                               attn_mask=mask).reshape(B, self.n_head, 1, self.head_dim)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=self.n_kv != self.n_head)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)  # pre-norm
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # activation checkpointing when training: keep each block's input only and recompute the
        # block in backward. One more forward (+1/3 of a full fine-tuning step's FLOPs, +1/2 of
        # LoRA's); activations shrink to the blocks' inputs plus one block's insides at a time.
        self.grad_checkpointing = False
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # one matrix embeds tokens and scores them
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(m):  # transformers' initializer_range 0.02; only the toy trains from scratch
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, pad_mask=None, cache=None, hidden_only=False):
        """input_ids (B, T) -> logits (B, T, vocab), or the final-normed hidden states (B, T, C).

        pad_mask (B, T): True for real tokens (left or right padding). cache: a KVCache that
        this call appends to. Without either, plain causal attention."""
        B, T = input_ids.shape
        if cache is not None and cache.slot is not None:  # static decode step (see KVCache)
            assert T == 1 and pad_mask is None, f"a static cache takes one token per row, got {T}"
            cache.mask.index_fill_(1, cache.slot, True)
            positions = cache.mask.sum(-1, keepdim=True) - 1                          # (B, 1)
            mask = cache.mask[:, None, None, :]                                        # (B, 1, 1, S)
        elif pad_mask is None and cache is None:
            mask, positions = None, torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            start = cache.pos if cache is not None else 0
            if pad_mask is None:
                pad_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            if cache is not None:
                cache.mask[:, start:start + T] = pad_mask
                key_mask = cache.mask[:, :start + T]                                   # (B, S)
            else:
                key_mask = pad_mask
            # a token's position counts the real tokens before it, so padding shifts nothing
            positions = (key_mask.long().cumsum(-1)[:, start:] - 1).clamp_min(0)       # (B, T)
            mask = attention_mask(key_mask, start, T)                                  # (B, 1, T, S)
        x = self.model.embed_tokens(input_ids)                                         # (B, T, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache)
        if cache is not None and cache.slot is None:
            cache.pos += T
        x = self.model.norm(x)
        return x if hidden_only else self.lm_head(x)


# -----------------------------------------------------------------------------
# Loading and saving (Hugging Face folder layout: config.json + safetensors)

def pick_device(device=None):
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype, device):
    """bf16 on a GPU that supports it (half the memory, tensor cores), else fp32. Returns a reason."""
    if dtype is not None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        return dtype, "as asked"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "GPU supports bf16"
    return torch.float32, f"no bf16 GPU ({device.type})"


def resolve_path(name_or_path, patterns=("*.json", "*.safetensors")):
    """A local folder as is; otherwise a hub id such as Qwen/Qwen2.5-3B, downloaded once."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise UserError(f"no model folder at {name_or_path!r} (expected a folder with "
                                f"config.json and model.safetensors, or a hub id like Qwen/Qwen2.5-3B)")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name_or_path, allow_patterns=list(patterns))
    except Exception as e:
        raise UserError(f"could not download {name_or_path!r} from the Hugging Face hub ({type(e).__name__}: "
                           f"{e}). Offline? Point --model at a local folder with config.json, "
                           f"model.safetensors (or shards + index) and tokenizer.json.") from e


def read_safetensors(path):
    """All tensors of a folder: model.safetensors, or the shards its index names."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no \"weight_map\" object naming the shards")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise UserError(f"no model.safetensors or model.safetensors.index.json in {path}")
    state = {}
    for name in files:
        state.update(load_safetensors(os.path.join(path, name)))
    return state


def load_model(name_or_path, device=None, dtype=None, verbose=True):
    path = resolve_path(name_or_path)
    config = Qwen2Config.from_json(os.path.join(path, "config.json"))
    device = pick_device(device)
    dtype, why = pick_dtype(dtype, device)
    with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
        model = Qwen2(config)
    state = read_safetensors(path)
    if config.tie_word_embeddings:  # tied checkpoints store the matrix once, under embed_tokens
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    expected = model.state_dict()
    missing = [k for k in expected if state.get(k) is None]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise UserError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, "
                             f"config.json implies {tuple(v.shape)}")
    model.load_state_dict({k: t.to(device=device, dtype=dtype) for k, t in state.items()}, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter with two
    model.eval()
    if verbose:
        n = sum(p.numel() for p in model.parameters())
        print(f"loaded {name_or_path}: {n:,} parameters on {device}, {dtype} ({why})")
    return model


def save_model(model, path):
    """config.json + model.safetensors, the layout load_model (and transformers) read."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # stored once, as transformers does
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


class Tokenizer:
    """A thin wrapper over tokenizers.Tokenizer: no special tokens are added on encode."""

    def __init__(self, tok, eos_token="<|endoftext|>"):
        self.tok = tok
        self.eos_id = tok.token_to_id(eos_token)
        assert self.eos_id is not None, f"tokenizer has no {eos_token} token"
        self.pad_id = self.eos_id  # padding is masked out everywhere; any id will do
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self.tok.token_to_id(token)


def load_tokenizer(name_or_path):
    from tokenizers import Tokenizer as HFTokenizer
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(
        resolve_path(name_or_path, patterns=("tokenizer.json",)), "tokenizer.json")
    if not os.path.exists(path):
        raise UserError(f"no tokenizer at {path}")
    try:
        return Tokenizer(HFTokenizer.from_file(path))
    except Exception as e:  # the tokenizers library raises a bare Exception on a bad file
        raise UserError(f"{path}: not a readable tokenizer.json ({e})") from None


# -----------------------------------------------------------------------------
# Sampling: Gumbel-max with counter-based noise, so that a sample is a function of its indices

MASK32 = 0xFFFFFFFF


def hash32(x):
    """A 32-bit integer hash, elementwise on an int64 tensor (or an int; only the low 32 bits are
    read): xorshift-multiply rounds as Wellons' lowbias32, a bijection of [0, 2^32), with multipliers
    below 2^31, so that no int64 product overflows. Plain integer ops, so it runs vectorized on any
    device and gives the same bits everywhere."""
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
    """One integer key per prompt (B,) -> a 32-bit key per output row (B*n,): row i*n + j, sample j
    of prompt i, is keyed by (keys[i], j) and nothing else."""
    k = torch.as_tensor(keys, dtype=torch.long, device=device)                 # (B,)
    h = combine(hash32(k), k >> 32)                                            # both halves of a 64-bit key
    return combine(h[:, None], torch.arange(n, device=device)[None, :]).flatten()  # (B*n,)


def gumbel_noise(keys, position, vocab_size):
    """Gumbel(0, 1) noise (N, V) hashed from (row key, position, token id): no generator state, so
    a row's noise never depends on which rows share its batch, in which order, or on compile.

    u = 1 - w is uniform and g = -log(-log u) = -log(-log1p(-w)): w = (32 random bits + 0.5) / 2^32
    in float32 is exact near 0, where g's upper tail lives (w = 1 after rounding gives g = -inf, a
    token that loses: harmless). g then lies in [-2.8, 22.9], so a token more than ~26 nats below the
    best is never drawn (probability < 7e-12 each)."""
    h = combine(keys, position)[:, None]                                       # (N, 1)
    v = hash32(torch.arange(vocab_size, device=keys.device))[None, :]          # (1, V)
    w = (hash32(h ^ v).float() + 0.5) * 2.0 ** -32                             # (N, V) in (0, 1]
    return -torch.log(-torch.log1p(-w))


def sample_token(logits, temperature, top_p, keys, position):
    """logits (B, V) -> token ids (B,) and their log-probs under softmax(logits / temperature).

    Gumbel-max: argmax(logits / T + g), g i.i.d. Gumbel(0, 1), is an exact draw from
    softmax(logits / T); with the tokens outside the nucleus set to -inf first, an exact draw from
    the renormalized nucleus. g = gumbel_noise(keys, position): keys (B,) the rows' 32-bit keys,
    position the index of the token in its completion."""
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


def find_stop(tokenizer, ids, stop_strings, start, window):
    """The first index L >= start such that the text of ids[:L + 1] contains a stop string, else
    None; ids[:start] are known to contain none. Decodes tails only: with a byte-level tokenizer
    (Qwen's, the toy's) every token is at least one byte, so a string of at most `window` bytes that
    ends in token L lies within ids[L - window + 1 : L + 1]."""
    text = tokenizer.decode(ids[max(0, start - window + 1):])  # all of the new tokens at once: a miss is the common case
    if not any(s in text for s in stop_strings):
        return None
    for L in range(start, len(ids)):
        text = tokenizer.decode(ids[max(0, L - window + 1):L + 1])
        if any(s in text for s in stop_strings):
            return L
    raise AssertionError(f"a stop string in the text of {ids[start - window + 1:]} but in no tail of it")


def decode_step(model, tok, cache):
    """tok (B, 1) -> next-token logits (B, V), appending to the cache: what compile=True compiles."""
    return model(tok, cache=cache)[:, -1]


@torch.inference_mode()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(), stop_strings=(),
             tokenizer=None, generator=None, keys=None, n=1, return_logprobs=False, compile=False,
             check_every=8, row_state=()):
    """Complete each prompt (a list of token ids); returns completions without the prompt, each cut
    after its first stop token or after the token that completes its first stop string. n samples
    per prompt share one prefill; output i*n + j is prompt i's sample j. temperature=0 is greedy.

    Randomness (DESIGN.md, "Sampling randomness"): sample j of prompt i draws its t-th token with
    noise hashed from (keys[i], j, t) alone, so it comes out the same alone or in any batch, in any
    order, eager or compiled (up to float rounding of the logits, which can flip a near-tie).
    keys: one integer per prompt (grpo.py: sample_key(seed, step, the prompt's place in the step));
    None = consecutive keys from one draw of `generator` (torch's global generator if None).

    stop_strings (e.g. "Question:", several tokens long) are looked for in the text, decoded with
    `tokenizer`, every `check_every` tokens: the only host syncs of the loop (also where finished
    rows leave the batch). A row is cut at the token that completes the string, whatever check_every
    is: the rows run on for a few tokens, which are then dropped (see find_stop).

    compile=True runs the decode step with static shapes (KVCache.make_static) under torch.compile,
    with CUDA graphs on a GPU ("reduce-overhead"): the first call of a shape compiles (slow), later
    calls replay.

    row_state: objects with .select(rows) that hold per-row state the model reads besides the KV
    cache (lora.RowWeights: each row's adapter weights, one per prompt); they follow the batch's
    rows as the cache does, fanned out to the n samples and dropped as rows finish."""
    assert prompts and all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
    assert tokenizer is not None or not stop_strings, "stop_strings need a tokenizer to decode with"
    device = model.lm_head.weight.device
    B, P, N = len(prompts), max(len(p) for p in prompts), len(prompts) * n
    if keys is None:  # one draw, then consecutive keys: seeded, but tied to the prompts' order
        base = torch.randint(2 ** 62, (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu").item() if temperature else 0
        keys = [base + i for i in range(B)]
    assert len(keys) == B, f"{len(keys)} keys for {B} prompts"
    keys = row_keys(keys, n, device)                                        # (N,)
    ids = torch.zeros(B, P, dtype=torch.long)
    pad_mask = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompts):  # left-pad so every row's next token goes into the same slot
        ids[i, P - len(p):], pad_mask[i, P - len(p):] = torch.tensor(p), True
    ids, pad_mask = ids.to(device), pad_mask.to(device)
    S = P + max_new_tokens
    if compile:  # round up, so batches with other prompt lengths reuse the compiled shapes
        S = -(-S // 64) * 64
    cache = KVCache(model.config, B, S, device, model.lm_head.weight.dtype)
    h = model(ids, pad_mask=pad_mask, cache=cache, hidden_only=True)
    logits = model.lm_head(h[:, -1])                                        # (B, V)
    if n > 1:  # fan each prefilled prompt out to its n samples
        fan = torch.arange(B, device=device).repeat_interleave(n)
        for c in (cache, *row_state):
            c.select(fan)
        logits = logits[fan]
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    window = max((len(s.encode()) for s in stop_strings), default=0)       # in tokens: each is >= 1 byte
    tokens = torch.full((N, max_new_tokens), -1, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new_tokens, device=device)
    rows = torch.arange(N, device=device)       # which output each batch row writes to
    alive = torch.ones(N, dtype=torch.bool, device=device)
    unchecked = list(range(N))                  # rows alive at the last check: their new tokens need one
    checked = 0                                 # tokens before this index hold no stop string
    step = decode_step
    if compile:
        cache.make_static(cache.pos)
        step = torch.compile(decode_step, mode="reduce-overhead" if device.type == "cuda" else None)
    for t in range(max_new_tokens):
        tok, lp = sample_token(logits, temperature, top_p, keys[rows], t)
        live = alive[rows]                      # rows that finished since the last check write nothing
        tokens[rows, t] = torch.where(live, tok, -1)
        logps[rows, t] = torch.where(live, lp, 0.0)
        alive[rows] = live & ~torch.isin(tok, stop)
        last = t == max_new_tokens - 1
        if last or (t + 1) % check_every == 0:  # host-side bookkeeping, every few tokens
            if stop_strings:
                start = max(0, checked - window + 1)
                for r, row in zip(unchecked, tokens[unchecked, start:t + 1].tolist()):
                    row = row[:row.index(-1)] if -1 in row else row
                    L = find_stop(tokenizer, row, stop_strings, checked - start, window)
                    if L is not None:           # cut after the token that completes the string
                        tokens[r, start + L + 1:], logps[r, start + L + 1:], alive[r] = -1, 0.0, False
                checked = t + 1
            unchecked = alive.nonzero().flatten().tolist()
            if last or not unchecked:
                break
            done = ~alive[rows]
            keep = None
            if not compile and done.sum() * 4 >= len(rows):  # drop finished rows once they are a quarter
                keep = ~done
            elif compile and done.sum() * 2 >= len(rows):  # halve the batch, live rows first: few shapes
                keep = done.int().argsort(stable=True)[:len(rows) // 2]
            if keep is not None:
                for c in (cache, *row_state):
                    c.select(keep)
                rows, tok = rows[keep], tok[keep]
        if compile:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the graph may reuse its outputs' memory
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
# Per-token log-probs for training

class ChunkedLogprobs(torch.autograd.Function):
    """h (N, C), weight (V, C), targets (N,) -> (N,) float32 log softmax(h @ weightᵀ / T)[target].

    The logits are N×vocab floats (151,936 per token for Qwen): never all made at once, chunk_size
    tokens at a time. Backward is where the cost hides. Token i's log-prob depends on h_i alone, so
    its gradient with respect to h_i is one C-vector, d logp_i / d h_i = (onehot_i - softmax_i) @ W / T,
    and any loss of the log-probs (the GRPO policy loss with or without clipping, the KL term, SFT's
    NLL) only scales it: dL/dh_i = dL/dlogp_i · J_i. So when the head's weight is frozen (LoRA) the
    forward pass computes J (N, C), cheap to keep, while each chunk's softmax is at hand; backward
    is one multiply. Two head matmuls in all, as for full logits kept for backward (transformers),
    where the checkpointed chunks this replaces made three (forward, recompute, gradient), and the
    head is a quarter of Qwen2.5-0.5B's weights. Liger-Kernel's fused linear cross-entropy does the
    same for a known loss; J keeps the loss free. Measured at 0.5B shape on a 2-core CPU
    (README, bench.py): ours 0.77x peft's step before, >= 1x after.

    When the weight trains too (full fine-tuning, a tied embedding), its gradient Σ_i dL/dlogp_i ·
    (onehot_i - softmax_i) h_iᵀ / T needs every softmax again once dL/dlogp is known: backward
    recomputes each chunk's logits (one head matmul more than keeping them, and no N×vocab memory)."""

    @staticmethod
    def forward(ctx, h, weight, targets, temperature, chunk_size):
        need_h, need_w = ctx.needs_input_grad[:2]
        N = h.shape[0]
        w = weight.to(h.dtype)  # the matmul in h's dtype, as autocast would (and backward, outside autocast)
        logp = torch.empty(N, device=h.device, dtype=torch.float)
        J = torch.empty_like(h) if need_h and not need_w else None             # (N, C)
        for s in range(0, N, chunk_size):
            logits = (h[s:s + chunk_size] @ w.T).float()                       # (n, V) float32
            if temperature != 1:
                logits /= temperature
            lsm = logits.log_softmax(-1)                                       # (n, V)
            del logits
            t = targets[s:s + chunk_size, None]                                # (n, 1)
            logp[s:s + chunk_size] = lsm.gather(-1, t).squeeze(-1)
            if J is not None:
                grad_logits = lsm.exp_().neg_().scatter_add_(-1, t, torch.ones_like(t, dtype=lsm.dtype))  # onehot - p
                J[s:s + chunk_size] = grad_logits.to(w.dtype) @ w / temperature
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.save_for_backward(J if J is not None else h, weight if need_w else None, targets)
        return logp

    @staticmethod
    def backward(ctx, grad):                                                    # grad (N,) = dL/dlogp
        saved, weight, targets = ctx.saved_tensors
        if weight is None:  # frozen head: J was made in forward
            return (grad[:, None] * saved).to(saved.dtype), None, None, None, None
        h, T, chunk = saved, ctx.temperature, ctx.chunk_size
        w = weight.to(h.dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight)                                       # (V, C) in the weight's dtype
        for s in range(0, h.shape[0], chunk):
            t = targets[s:s + chunk, None]                                      # (n, 1)
            logits = (h[s:s + chunk] @ w.T).float()                             # (n, V), recomputed
            p = (logits / T if T != 1 else logits).softmax(-1)
            g = grad[s:s + chunk, None] / T                                     # (n, 1)
            d = p.mul_(-g).scatter_add_(-1, t, g).to(w.dtype)                   # dL/dlogits = g·(onehot - p)
            if grad_h is not None:
                grad_h[s:s + chunk] = d @ w
            grad_w += d.T @ h[s:s + chunk]
        return grad_h, grad_w, None, None, None


def logprobs_from_hidden(h, weight, targets, temperature=1.0, chunk_size=1024):
    """Final-normed hidden states (N, C) -> (N,) float32 log-probs of targets under weight (V, C)."""
    return ChunkedLogprobs.apply(h, weight, targets, temperature, chunk_size)


def token_logprobs(model, input_ids, pad_mask=None, temperature=1.0, chunk_size=1024):
    """(B, T) ids -> (B, T-1) float32: [b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1]).
    The lm_head works chunk_size tokens at a time (ChunkedLogprobs)."""
    B, T = input_ids.shape
    h = model(input_ids, pad_mask=pad_mask, hidden_only=True)[:, :-1].reshape(B * (T - 1), -1)
    targets = input_ids[:, 1:].reshape(-1)
    return logprobs_from_hidden(h, model.lm_head.weight, targets, temperature, chunk_size).view(B, T - 1)


def completion_logprobs(model, prompts, completions, owner, temperature=1.0, chunk_size=1024):
    """Log-probs of completions given their prompts, each prompt computed once for all its samples.

    prompts: token lists; completions: token lists; owner[k]: the index of completion k's prompt.
    -> logp (K, L) float32 and mask (K, L) bool, L the longest completion: logp[k, j] =
    log p(completions[k][j] | prompt, completions[k][:j]). GRPO's G samples of a prompt share it,
    and in the toy world the prompt is ~3/4 of every sequence: token_logprobs over prompt +
    completion would run it G times. Here the prompts run once (left-padded, into a KVCache that
    keeps autograd's graph), the cache fans out to the completions (cache.select, a differentiable
    gather: the prompt's keys and values get the gradient of every sample that read them), and the
    completions (right-padded) attend to it. Same math as token_logprobs on the concatenations,
    equal to float rounding (tests/test_grpo.py). With activation checkpointing every sample runs
    whole (token_logprobs), since recomputing a block in backward would write the cache again."""
    device = model.lm_head.weight.device
    P, L = max(map(len, prompts)), max(1, max(map(len, completions)))
    Bp, K = len(prompts), len(completions)
    if model.grad_checkpointing and model.training and torch.is_grad_enabled():
        # recomputing a block in backward would write the cache a second time: each sample whole instead
        ids = torch.zeros(K, P + L, dtype=torch.long)
        for k, (o, c) in enumerate(zip(owner, completions)):
            ids[k, :len(prompts[o]) + len(c)] = torch.tensor(prompts[o] + c, dtype=torch.long)
        full = token_logprobs(model, ids.to(device), temperature=temperature, chunk_size=chunk_size)  # (K, P+L-1)
        start = torch.tensor([len(prompts[o]) - 1 for o in owner], device=device)[:, None]      # (K, 1)
        mask = torch.arange(L, device=device)[None] < torch.tensor([len(c) for c in completions], device=device)[:, None]
        return full.gather(1, start + torch.arange(L, device=device)[None]), mask
    ids_p = torch.zeros(Bp, P, dtype=torch.long)
    mask_p = torch.zeros(Bp, P, dtype=torch.bool)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at slot P-1
        ids_p[i, P - len(p):], mask_p[i, P - len(p):] = torch.tensor(p), True
    ids_c = torch.zeros(K, L, dtype=torch.long)
    mask_c = torch.zeros(K, L, dtype=torch.bool)
    for k, c in enumerate(completions):  # right padding: pads come after, and nothing real sees them
        ids_c[k, :len(c)], mask_c[k, :len(c)] = torch.tensor(c, dtype=torch.long), True
    ids_p, mask_p, ids_c, mask_c = (t.to(device) for t in (ids_p, mask_p, ids_c, mask_c))
    owner = torch.as_tensor(owner, dtype=torch.long, device=device)
    cache = KVCache(model.config, Bp, P + L, device, model.lm_head.weight.dtype)
    h_p = model(ids_p, pad_mask=mask_p, cache=cache, hidden_only=True)             # (Bp, P, C)
    cache.select(owner)                                                            # (K, Hkv, P + L, D)
    h_c = model(ids_c, pad_mask=mask_c, cache=cache, hidden_only=True)             # (K, L, C)
    # completion token j is predicted at slot P-1+j: the prompt's last slot for j = 0
    h = torch.cat([h_p[owner, -1:], h_c[:, :-1]], dim=1)                          # (K, L, C)
    logp = logprobs_from_hidden(h.reshape(K * L, -1), model.lm_head.weight, ids_c.reshape(-1), temperature, chunk_size)
    return logp.view(K, L), mask_c


# -----------------------------------------------------------------------------
# The toy world: a tiny Qwen2 and a byte-level tokenizer, saved like a real checkpoint

# The toy base the toy world's runs start from, shipped with the code (made by `python sft.py --toy`):
# the SFT curve jumps between evaluations, so a base rebuilt on another CPU lands elsewhere.
TOY_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_base")
TOY_CONFIG = Qwen2Config(vocab_size=257, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4,
                         max_position_embeddings=512, bos_token_id=256, eos_token_id=256)


def toy_tokenizer():
    """One token per byte (256) plus <|endoftext|> = 256, built with the tokenizers library:
    a byte-level BPE with no merges, so any text encodes and the toy needs no training data."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = [c for _, c in sorted((ord(c), c) for c in alphabet)]
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_chars)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tok)


def make_toy_checkpoint(path, config=TOY_CONFIG, seed=0):
    """A randomly initialized toy model in the folder layout of a real checkpoint."""
    import os
    torch.manual_seed(seed)
    save_model(Qwen2(config), path)
    toy_tokenizer().tok.save(os.path.join(path, "tokenizer.json"))
    return path


# -----------------------------------------------------------------------------
# Self-check: python model.py --toy

if __name__ == "__main__":
    import argparse, time
    exit_on_user_error()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="use the shipped toy base (toy_base/)")
    parser.add_argument("--model", default=None, help="local folder or hub id, e.g. Qwen/Qwen2.5-3B")
    parser.add_argument("--prompt", default="Question: Ann has 23 eggs and buys 5 boxes of 4. How many eggs?\nAnswer:", help="text to complete")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on a bf16 GPU, else fp32)")
    args = parser.parse_args()
    if args.model is None and not args.toy:
        parser.print_help()
        print("\n(no --model given: running on the toy model)\n")
    path = args.model or TOY_BASE
    model, tok = load_model(path, device=args.device, dtype=args.dtype), load_tokenizer(path)
    ids = tok.encode(args.prompt)
    dev = model.lm_head.weight.device

    # check 1: decoding token by token through the cache equals one full forward
    with torch.inference_mode():
        x = torch.tensor([ids], device=dev)
        full = model(x)[0].float()
        cache = KVCache(model.config, 1, len(ids), dev, model.lm_head.weight.dtype)
        step = torch.cat([model(x[:, i:i + 1], cache=cache)[0] for i in range(len(ids))]).float()
    err = (full - step).abs().max().item() / full.abs().max().item()
    print(f"cached decoding vs full forward: max rel. error {err:.2e} over {len(ids)} positions")

    # check 2: generate, and measure the sampler
    t0 = time.perf_counter()
    out = generate(model, [ids], args.max_new_tokens, temperature=args.temperature, stop_ids=[tok.eos_id])[0]
    dt = time.perf_counter() - t0
    print(f"prompt: {args.prompt!r}\ncompletion: {tok.decode(out)!r}")
    print(f"{len(out)} tokens in {dt:.2f} s = {len(out) / dt:.1f} tokens/s (batch 1, {dev})")
    t0 = time.perf_counter()
    outs = generate(model, [ids] * 8, args.max_new_tokens, temperature=1.0, n=4, generator=torch.Generator(dev).manual_seed(0))
    dt = time.perf_counter() - t0
    n = sum(len(o) for o in outs)
    print(f"{n} tokens in {dt:.2f} s = {n / dt:.1f} tokens/s (8 prompts x 4 samples, temperature 1)")
