"""
Qwen2.5 from scratch: the config, the modules, safetensors loading and saving, the tokenizer, and
the toy model.

    python model.py --toy                          # the shipped toy base: load, complete a prompt
    python model.py --model Qwen/Qwen2.5-3B --prompt "Question: 2+2?"

Parameter names equal Hugging Face's (model.layers.0.self_attn.q_proj.weight, ...), so a
checkpoint loads with a strict load_state_dict. Reference: transformers' modeling_qwen2.py.
This file is the textbook: one forward pass, plain causal attention. Sampling with a KV cache
lives in sampler.py and the training log-probs in logprobs.py; both call Qwen2.forward with a
cache object, which supplies the positions and the attention mask of what it holds. Where the
files come from (a folder, or a hub id downloaded once) is hub.py's.
"""
import os
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from errors import (COUNT, NONNEGATIVE, HelpFormatter, UserError, exit_on_user_error, read_json,
                    write_atomic, write_json)
from hub import read_safetensors, resolve_path

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
            d.setdefault("rope_theta", (d["rope_parameters"] or {}).get("rope_theta", 1e6))
        if d.get("model_type", "qwen2") == "qwen2":
            d.setdefault("attention_bias", True)
        kept = {f.name: f.type for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in kept and v is not None}
        for k in ("bos_token_id", "eos_token_id"):  # some checkpoints list several; the first
            if isinstance(d.get(k), list) and d[k]:
                d[k] = d[k][0]
        for k, v in d.items():  # config.json is user input: "hidden_size": "128" is refused here
            ok = isinstance(v, (int, float) if kept[k] is float else kept[k])
            if not ok or (isinstance(v, bool) and kept[k] is not bool):
                raise ValueError(f'"{k}": {v!r} is not {kept[k].__name__}')
            low = 0 if k in ("head_dim", "bos_token_id", "eos_token_id") else 1  # ints; floats > 0
            if kept[k] in (int, float) and not (v > 0 if kept[k] is float else v >= low):
                raise ValueError(f'"{k}": {v!r} is out of range ({">= 0" if low == 0 else "> 0"})')
        return cls(**d)

    @classmethod
    def from_json(cls, path, qwen2_only=True):
        """config.json of a Qwen2 (a Llama shape too with qwen2_only=False: flops.py counts it)."""
        d = read_json(path)
        if not isinstance(d, dict):
            raise UserError(f"{path}: a config.json holds one JSON object, got {type(d).__name__}")
        if qwen2_only and d.get("model_type", "qwen2") != "qwen2":
            raise UserError(f"{path}: model_type {d['model_type']!r}; model.py implements qwen2 "
                            f"(Qwen2 and Qwen2.5) only")
        unsupported = [k for k in ("rope_scaling", "use_sliding_window") if d.get(k)]
        if unsupported:  # ignoring them would give other logits than the model's own
            raise UserError(f"{path}: {', '.join(f'{k} {d[k]!r}' for k in unsupported)}: not "
                            f"supported by this model code (plain RoPE, full attention)")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError, AssertionError, AttributeError, ZeroDivisionError) as e:
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
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float, device=position_ids.device)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)              # (B, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x (B, H, T, D); cos/sin (B, T, D) broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]

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
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        C, D = cfg.hidden_size, cfg.head_dim
        self.head_dim = D
        self.q_proj = nn.Linear(C, self.n_head * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, self.n_kv * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        B, T, C = x.shape
        D = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_head, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, D).transpose(1, 2)    # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, D).transpose(1, 2)    # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            # causal attention over these T tokens; grouped-query attention: query head h reads
            # kv head h // (H / Hkv), which SDPA's enable_gqa does without copying K and V
            gqa = self.n_kv != self.n_head
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # over the cached tokens too: sampler.KVCache stores k, v and attends
            y = cache.attend(self.layer_idx, q, k, v, mask)              # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * D))


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

    def forward(self, input_ids, cache=None, pad_mask=None, hidden_only=False):
        """input_ids (B, T) -> logits (B, T, vocab), or the final-normed hidden states (B, T, C).

        cache: a sampler.KVCache that this call reads and appends to; it knows which of its slots
        hold real tokens (pad_mask (B, T), True = real, marks the new ones), so it gives each
        token's position and the attention mask. Without a cache: positions 0..T-1, causal."""
        B, T = input_ids.shape
        if cache is None:
            assert pad_mask is None, "padding is recorded in a KVCache (sampler.py): pass one"
            positions, mask = torch.arange(T, device=input_ids.device).expand(B, T), None
        else:
            positions, mask = cache.begin(T, pad_mask)                 # (B, T), (B, 1, T, S)
        x = self.model.embed_tokens(input_ids)                         # (B, T, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.end(T)
        x = self.model.norm(x)
        return x if hidden_only else self.lm_head(x)

# -----------------------------------------------------------------------------
# Loading and saving (Hugging Face folder layout: config.json + safetensors)


def pick_device(device=None):
    """cuda, then mps, then cpu; a device asked for must exist here."""
    if device is not None:
        there = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available,
                 "cpu": lambda: True}
        if str(device).split(":")[0] not in there or not there[str(device).split(":")[0]]():
            raise UserError(f"--device {device}: not a device of this machine ({', '.join(there)})")
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype, device):
    """bf16 on a GPU that supports it (half the memory, tensor cores), else fp32; and why."""
    if dtype is not None:
        named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if isinstance(dtype, str) and dtype not in named:
            raise UserError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
        return named.get(dtype, dtype), "as asked"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "GPU supports bf16"
    return torch.float32, f"no bf16 GPU ({device.type})"


def load_config(name_or_path):
    """The Qwen2Config of a model folder or hub id (config.json only: cheap, and checked)."""
    return Qwen2Config.from_json(os.path.join(resolve_path(name_or_path), "config.json"))


def load_model(name_or_path, device=None, dtype=None, verbose=True):
    path = resolve_path(name_or_path)
    config = load_config(path)
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
        raise UserError(f"{path}: missing tensors {missing[:5]}, unexpected tensors "
                        f"{unexpected[:5]}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise UserError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, "
                            f"config.json implies {tuple(v.shape)}")
    state = {k: t.to(device=device, dtype=dtype) for k, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter with two
    model.eval()
    if verbose:
        n = sum(p.numel() for p in model.parameters())
        shown = os.path.relpath(path) if os.path.isabs(str(name_or_path)) else name_or_path
        print(f"loaded {shown}: {n:,} parameters on {device}, {dtype} ({why})")
    return model


def save_model(model, path):
    """config.json + model.safetensors, the layout load_model (and transformers) read."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    write_json(os.path.join(path, "config.json"), cfg)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # stored once, as transformers does
    write_atomic(os.path.join(path, "model.safetensors"),
                 lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


class Tokenizer:
    """A thin wrapper over tokenizers.Tokenizer: no special tokens are added on encode."""

    def __init__(self, tok, eos_token="<|endoftext|>"):
        self.tok = tok
        self.eos_id = tok.token_to_id(eos_token)
        if self.eos_id is None:
            raise UserError(f"the tokenizer has no {eos_token} token (Qwen2.5's and the toy's do)")
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
    path = name_or_path if name_or_path.endswith(".json") else \
        os.path.join(resolve_path(name_or_path, patterns=("tokenizer.json",)), "tokenizer.json")
    if not os.path.exists(path):
        raise UserError(f"no tokenizer at {path}")
    try:
        tok = Tokenizer(HFTokenizer.from_file(path))
    except Exception as e:  # the tokenizers library raises a bare Exception on a bad file
        raise UserError(f"{path}: not a readable tokenizer.json ({e})") from None
    config = os.path.join(os.path.dirname(path), "config.json")
    if os.path.exists(config) and tok.vocab_size > Qwen2Config.from_json(config).vocab_size:
        raise UserError(f"{path}: {tok.vocab_size:,} tokens, but the model beside it "
                        f"({config}) embeds {Qwen2Config.from_json(config).vocab_size:,}: ids past "
                        f"its rows have no embedding")
    return tok

# -----------------------------------------------------------------------------
# The toy world: a tiny Qwen2 and a byte-level tokenizer, saved like a real checkpoint

# The toy base the toy world's runs start from, shipped with the code (made by `python sft.py
# --toy`, toy_base/README.md says how), so that every machine starts from the same weights.
TOY_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_base")
TOY_CONFIG = Qwen2Config(vocab_size=257, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=1e4, max_position_embeddings=512,
                         bos_token_id=256, eos_token_id=256)


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
    torch.manual_seed(seed)
    save_model(Qwen2(config), path)
    toy_tokenizer().tok.save(os.path.join(path, "tokenizer.json"))
    return path

# -----------------------------------------------------------------------------
# Self-check: python model.py --toy


@torch.no_grad()
def complete_slowly(model, ids, max_new_tokens, temperature, eos_id, generator):
    """The textbook way to generate: one full forward over the whole text per new token, then the
    last position's logits, sampled (temperature 0: argmax). sampler.py does the same work with a
    KV cache, many prompts at a time, and keyed noise."""
    out = []
    while len(out) < max_new_tokens and eos_id not in out[-1:]:
        logits = model(torch.tensor([ids + out], device=model.lm_head.weight.device))[0, -1]
        probs = (logits.float() / max(temperature, 1e-30)).softmax(-1).cpu()
        out.append(int(logits.argmax()) if temperature == 0 else
                   int(torch.multinomial(probs, 1, generator=generator)))
    return out


if __name__ == "__main__":
    import argparse
    import time
    exit_on_user_error()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--toy", action="store_true", help="the shipped toy base (toy_base/); also the default")
    add("--model", default=None,
        help="local folder or hub id (Qwen/Qwen2.5-3B); default the toy base")
    add("--prompt", help="text to complete",
        default="Question: Ann has 23 eggs and buys 5 boxes of 4. How many eggs?\nAnswer:")
    add("--max-new-tokens", type=COUNT, default=64, help="tokens to generate")
    add("--temperature", type=NONNEGATIVE, default=0.0, help="0 = greedy")
    add("--device", default=None, help="cuda / mps / cpu (default: best available)")
    add("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on a bf16 GPU, else fp32)")
    args = parser.parse_args()
    path = args.model or TOY_BASE
    model, tok = load_model(path, device=args.device, dtype=args.dtype), load_tokenizer(path)
    ids = tok.encode(args.prompt)
    if not ids:
        raise UserError("--prompt '': an empty text has no token to continue")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    out = complete_slowly(model, ids, args.max_new_tokens, args.temperature, tok.eos_id, g)
    dt = time.perf_counter() - t0
    print(f"prompt: {args.prompt!r}\ncompletion: {tok.decode(out)!r}")
    print(f"{len(out)} tokens in {dt:.2f} s, a full forward each (sampler.py caches keys and "
          f"values: `python sampler.py --toy`)")
