"""
geometry.py at Qwen2.5-3B scale, measured and projected without the model: the Gram matrix of
many synthetic rank-1 adapters (time, peak memory), and the bytes a decode step reads when many
plane points share one generate() call.

    python geometry.py --bench-scale 100   # Gram of 100 rank-1 Qwen2.5-3B adapters: time, memory
    python geometry.py --decode-bytes      # what batching the plane saves at Qwen2.5-3B
"""
import json
import math
import resource
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

import lora
from adapters import SavedFactors
from factored import factored_inner, gram
from model import Qwen2Config
from errors import describe


def rss_anon_mib():
    """Anonymous resident memory, MiB (Linux): what the process allocated, without the page cache
    that the mmapped safetensors files add to RSS (reclaimable, and shared with the OS)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))


def bench_scale(n, device, rank=1, seed=0):
    """Write n synthetic PEFT adapters of Qwen2.5-3B's shapes (Qwen2Config's defaults) to a temp
    dir, then time their Gram matrix; a thread samples the anonymous memory every 5 ms for its
    peak."""
    config, g = Qwen2Config(), torch.Generator().manual_seed(seed)
    shapes = {lora.module_name(i, t): shape for i in range(config.num_hidden_layers)
              for t, shape in lora.projection_shapes(config).items()}
    per = sum(rank * (o + i) for o, i in shapes.values())
    dense = sum(o * i for o, i in shapes.values())
    print(f"{n} synthetic rank-{rank} adapters of Qwen2.5-3B's shapes: {len(shapes)} matrices, "
          f"{per:,} parameters each; Gram in float64 on {device}, {torch.get_num_threads()} CPU "
          f"threads")
    with tempfile.TemporaryDirectory() as tmp:
        for k in tqdm(range(n), desc="write"):  # one adapter in memory at a time
            folder = Path(tmp) / f"step_{k:06d}"
            folder.mkdir()
            tensors = {}
            for name, (o, i) in shapes.items():
                for part, shape in (("A", (rank, i)), ("B", (o, rank))):
                    key = f"{lora.PEFT_PREFIX}{name}.lora_{part}.weight"
                    tensors[key] = torch.randn(shape, generator=g) * 0.01
            save_file(tensors, str(folder / "adapter_model.safetensors"))
            config_json = {"peft_type": "LORA", "r": rank, "lora_alpha": 32}
            (folder / "adapter_config.json").write_text(json.dumps(config_json))
        before, peak, stop = rss_anon_mib(), [0.0], threading.Event()

        def watch():
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss_anon_mib())
        watcher = threading.Thread(target=watch)
        watcher.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        updates = [SavedFactors(Path(tmp) / f"step_{k:06d}") for k in range(n)]
        K = gram(updates, device)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        watcher.join()
        check = factored_inner(dict(updates[0]), dict(updates[-1]))
    assert abs(check - K[0, -1]) <= 1e-9 * math.sqrt(K[0, 0] * K[-1, -1]), (check, K[0, -1])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"Gram {n}x{n}: {seconds:.1f} s wall, {cpu:.1f} s CPU (all threads). Anonymous memory: "
          f"{before:.0f} MiB before, peak {peak[0]:.0f} MiB (+{peak[0] - before:.0f}); peak RSS "
          f"with the mmapped files' pages {maxrss:.0f} MiB. The dense updates would take "
          f"{n * dense * 4 / 2**30:,.0f} GiB in float32. K[0, -1] equals factored_inner.")


def decode_bytes(config, rows, context, stacked_rank, weight_bytes=2, kv_bytes=2):
    """Bytes one decode step reads: the base weights once (embeddings as lm_head, tied or not),
    the stacked adapter factors (float32) once, and every row's KV cache over `context` tokens."""
    C, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    shapes = lora.projection_shapes(config).values()
    weights = (L * sum(o * i for o, i in shapes) + V * C) * weight_bytes
    factors = L * stacked_rank * sum(o + i for o, i in shapes) * 4
    kv = rows * context * 2 * L * config.num_key_value_heads * config.head_dim * kv_bytes
    return weights, factors, kv


def print_decode_bytes(batch, max_new_tokens, prompt=150, stacked_rank=150,
                       ks=(1, 4, 16, 64, 226)):
    """The plane at Qwen2.5-3B (Qwen2Config's defaults, bf16): what one decode step reads with K
    points per pass of `batch` prompts each, against one point per pass. Decoding reads every
    weight once per step whatever the batch, so bytes per generated token fall as K·batch rows
    share them, until the rows' own KV caches dominate. The context is the prompt plus half the
    budget (a mean)."""
    config, ctx = Qwen2Config(), prompt + max_new_tokens // 2
    per = lambda k: sum(decode_bytes(config, k * batch, ctx, stacked_rank)) / (k * batch)
    w, f, kv1 = decode_bytes(config, batch, ctx, stacked_rank)
    print(f"Qwen2.5-3B decode step, bf16 weights {w / 1e9:.2f} GB, stacked rank-{stacked_rank} "
          f"factors (fp32) {f / 1e9:.2f} GB, KV cache {kv1 / batch / 1e6:.1f} MB a row at {ctx} "
          f"tokens; {batch} prompts per point per pass")
    print(f"{'points per pass':>15} | {'rows':>6} | {'GB read a step':>14} | "
          f"{'MB per generated token':>22} | {'gain':>5}")
    for k in ks:
        total = sum(decode_bytes(config, k * batch, ctx, stacked_rank))
        print(f"{k:>15} | {k * batch:>6} | {total / 1e9:>14.1f} | {per(k) / 1e6:>22.1f} | "
              f"{per(1) / per(k):>5.2f}x")


if __name__ == "__main__":
    describe(__doc__)
