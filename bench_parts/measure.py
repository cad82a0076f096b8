"""
How bench.py measures: wall time with the GPU synchronized, peak memory, the device's copy
bandwidth and matmul rate (the physical floors), models with random weights of a real shape (ours
and transformers'), and the GRPO training step both run.

    python bench.py --toy              # uses all of these on a CPU in seconds
"""
import resource
import time

import torch

from model import Qwen2, RMSNorm




def sync(device):
    if device.type == "cuda":  # the GPU runs behind Python: wait for it before reading the clock
        torch.cuda.synchronize()


def timed(fn, reps, warmup, device):
    """Seconds of each of `reps` runs of fn, after `warmup` runs (compilation, allocator), timed
    apart."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, warm


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    """GPU: the most memory tensors held since reset_peak. CPU: the process's peak RSS so far,
    which cannot be reset, so later rows include earlier ones: a row's figure is a ceiling, and a
    ratio of two rows means nothing (bench reports memory ratios on a GPU only)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def measure_bandwidth(device, nbytes, reps=5):
    """Bytes/s of a large device copy: it reads and writes every byte, as decoding reads weights."""
    x = torch.empty(nbytes // 4, device=device)
    y = torch.empty_like(x)
    return 2 * nbytes / min(timed(lambda: y.copy_(x), reps, 2, device)[0])


def measure_matmul(device, dtype, n, reps=5):
    """FLOP/s of an n x n x n matmul in dtype (2 n^3 FLOPs), the best a dense layer can do here."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / min(timed(lambda: a @ b, reps, 2, device)[0])

# -----------------------------------------------------------------------------
# Models with random weights, ours and the peer's


def random_model(cfg, device, dtype, seed):
    """model.Qwen2 with random weights of this shape, made on the device in dtype (3B in bf16 is
    6 GB): built on the meta device, given storage with to_empty, then initialized in place."""
    with torch.device("meta"):
        m = Qwen2(cfg)
    m = m.to(dtype).to_empty(device=device)
    m.tie_weights()  # to_empty gave the tied matrix a storage per module
    torch.manual_seed(seed)
    with torch.no_grad():
        m.apply(m._init_weights)
        for mod in m.modules():
            if isinstance(mod, RMSNorm):
                mod.weight.fill_(1.0)
    return m.eval()


def peer_model(ours, dtype):
    """transformers' Qwen2ForCausalLM with our weights: the parameter names are the same."""
    import transformers
    hf_cfg = transformers.Qwen2Config(**ours.config.to_hf_dict())
    with torch.device(ours.lm_head.weight.device):
        hf = transformers.Qwen2ForCausalLM(hf_cfg).to(dtype)
    hf.load_state_dict(ours.state_dict())
    return hf.eval()


def peer_logprobs(hf, ids):
    """TRL's GRPOTrainer: the full (n, T, V) logits, then log_softmax one sequence at a time
    (trl's selective_log_softmax, its bf16 branch)."""
    logits = hf(input_ids=ids).logits[:, :-1]                                   # (n, T-1, V)
    return torch.stack([row.log_softmax(-1).gather(-1, t[:, None]).squeeze(-1).float()
                        for row, t in zip(logits, ids[:, 1:])])                 # (n, T-1)

# -----------------------------------------------------------------------------
# The two workloads


def train_step(logprobs_fn, params, optimizer, ids, mask, adv, micro, autocast):
    """One GRPO update on policy: the loss -Σ A·ratio·mask / Σ mask of grpo.policy_loss with
    ratio = exp(logp - logp.detach()) = 1, so the gradient is Σ A·∇logp / Σ mask."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        n_tokens = mask.sum()
        for s in range(0, len(ids), micro):
            with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
                logp = logprobs_fn(ids[s:s + micro])                            # (n, T-1)
            ratio = torch.exp(logp - logp.detach())
            loss = -(ratio * adv[s:s + micro, None] * mask[s:s + micro]).sum() / n_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return step


def run(rows, name, fn, tokens, floor_s, args, device, reps=None):
    """Time fn, add a row; an out-of-memory error becomes a row that says so."""
    reset_peak(device)
    try:
        times, warm = timed(fn, reps or args.reps, args.warmup, device)
    except torch.OutOfMemoryError as e:
        print(f"{name}: out of memory ({str(e).splitlines()[0]}); try --micro-batch 4 or "
              f"--grad-checkpoint")
        rows.append(dict(name=name, error="out of memory"))
        return
    mean = sum(times) / len(times)
    rows.append(dict(name=name, tokens=tokens, tokens_per_s=tokens / mean, mean_s=mean,
                     min_s=min(times), peak_gb=peak_gb(device), floor_s=floor_s,
                     of_floor=floor_s / mean, warmup_s=warm))
    print(f"  {name}: {tokens / mean:,.0f} tokens/s ({mean:.3f} s mean, {min(times):.3f} s min; "
          f"warm-up {warm:.1f} s)")


def print_table(rows, gpu):
    memory = "peak GB" if gpu else "RSS GB"  # a CPU's peak RSS so far (peak_gb)
    print(f"\n{'':38s} {'tokens/s':>11s} {'mean s':>9s} {'min s':>9s} {memory:>8s} "
          f"{'floor s':>9s} {'of floor':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:38s} {r['error']}")
        else:
            print(f"{r['name']:38s} {r['tokens_per_s']:11,.0f} {r['mean_s']:9.3f} "
                  f"{r['min_s']:9.3f} {r['peak_gb']:8.2f} "
                  f"{r['floor_s']:9.3f} {100 * r['of_floor']:7.1f}%")

