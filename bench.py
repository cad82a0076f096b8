"""
Speed on one device: the sampler and the GRPO training step, measured against the physical floors
and, where they are installed, against transformers + peft doing the same work.

    python bench.py --toy                          # the toy model on a CPU, seconds
    python bench.py --toy --peer --compile         # + transformers/peft, + the compiled decode step
    python bench.py --shape Qwen2.5-3B --batch 64 --group 8 --new-tokens 512 --compile --peer   # one H100
    python bench.py --shape Qwen2.5-3B --grad-checkpoint --json runs/bench_3b.json
    python bench.py --acceptance                   # one H100/H200, <= 8 min: every GPU goal -> runs/acceptance.json

Random weights of the real shape, made on the device (no download): speed depends on the shapes,
not on what the weights are. Nothing stops early (no stop token, and the peer gets
min_new_tokens = max_new_tokens), so every completion is --new-tokens long for us and for the peer.

- sampling: model.generate, B prompts x G samples x N new tokens at temperature 1: generated tokens/s.
  Peer: transformers' generate (do_sample, num_return_sequences=G, its default dynamic KV cache and
  SDPA attention, what TRL's GRPOTrainer calls when it does not use vLLM).
- training: one GRPO step on the B*G sequences of P + N tokens: log-probs, the on-policy policy-
  gradient loss, backward in micro-batches, gradient clipping, Adam. Tokens (P + N per sequence)/s
  and peak memory. LoRA (bf16 base, fp32 adapters) and full fine-tuning (fp32 weights and Adam,
  bf16 autocast on a GPU; plain fp32 on a CPU). Peer: peft's LoRA on transformers' Qwen2 and
  transformers' full fine-tuning, log-probs taken TRL's way (the model's full logits, then
  log_softmax row by row).
- floors: a decode step reads every weight and the whole KV cache once (bytes / the measured copy
  bandwidth); any work needs flops.py's matmul FLOPs (FLOPs / the measured matmul rate). The floor
  is the larger of the two times; "of floor" = floor time / measured time (100% = at the limit).
"""
import argparse
import importlib.util
import json
import os
import platform
import resource
import time

import torch

from model import TOY_CONFIG, Qwen2, RMSNorm, exit_on_user_error, generate, pick_device, pick_dtype, token_logprobs
from lora import apply_lora
from flops import count_params, get_config, sampling_flops, si, step_flops, total

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# what to run on
parser.add_argument("--shape", default="Qwen2.5-3B", help="model shape: a flops.py name (Qwen2.5-0.5B/1.5B/3B/7B, Llama-3.1-8B) or a config.json; random weights")
parser.add_argument("--toy", action="store_true", help="the toy model (model.TOY_CONFIG) and a tiny workload: seconds on a CPU")
parser.add_argument("--device", default=None, help="cuda / mps / cpu; default the best available")
parser.add_argument("--threads", type=int, default=None, help="CPU threads; default torch's, 1 with --toy (its matrices are too small to split, and threads fight on a busy CPU)")
parser.add_argument("--dtype", default=None, help="weights for sampling and the LoRA base; default bf16 on a bf16 GPU, else float32")
# the workload (defaults: DESIGN.md's GRPO step with 64 prompts; tiny with --toy)
parser.add_argument("--batch", type=int, default=None, help="prompts B; default 64 (4 with --toy)")
parser.add_argument("--group", type=int, default=None, help="samples per prompt G; default 8 (4 with --toy)")
parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens P; default 150 (16 with --toy)")
parser.add_argument("--new-tokens", type=int, default=None, help="new tokens N per sample, all of them generated; default 512 (32 with --toy)")
parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward in the training step; default 8; 0 = all at once (the --toy default)")
parser.add_argument("--rank", type=int, default=1, help="LoRA rank of the LoRA training step")
# speed switches
parser.add_argument("--compile", action="store_true", help="generate(compile=True): static-shape decode step under torch.compile (CUDA graphs on a GPU)")
parser.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing in the training steps (ours: model.grad_checkpointing; peer: gradient_checkpointing_enable)")
parser.add_argument("--peer", action="store_true", help="also time transformers' generate and a peft LoRA step (skipped, loudly, where not installed)")
parser.add_argument("--no-full", action="store_true", help="skip the full fine-tuning step (it needs ~16 bytes a parameter: 49 GB at 3B)")
# measurement
parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each measurement (after the warm-up)")
parser.add_argument("--peer-reps", type=int, default=None, help="timed repetitions of the peer's sampling; default --reps (transformers' generate is the slow row)")
parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (compilation, CUDA graph capture, allocator)")
parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
parser.add_argument("--json", default=None, help="also write the results to this JSON file")
# the one-shot acceptance run
parser.add_argument("--acceptance", action="store_true", help="the GPU acceptance run (<= 8 min on one H100/H200; see acceptance()); "
                    "on a CPU or with --toy its dry path at toy shapes (seconds). Writes --json (default runs/acceptance.json)")
parser.add_argument("--tokenizer", default="../shared/data/qwen2.5-tokenizer/tokenizer.json", help="--acceptance: the real Qwen2.5 tokenizer.json for the GRPO steps")
parser.add_argument("--data", default="../shared/data/gsm8k", help="--acceptance: folder with GSM8K train.jsonl and test.jsonl for the GRPO steps (the device has no internet)")

# what the GPU run must show (issue 16), beside every figure it writes
GOALS = dict(sampling_vs_peer=">= 5", sampling_of_bandwidth_floor=">= 0.5", lora_step_vs_peer="> 1",
             lora_memory_vs_peer="<= 1", full_step_vs_peer="> 1", full_memory_vs_peer="<= 1")

# -----------------------------------------------------------------------------
# Timing and memory


def sync(device):
    if device.type == "cuda":  # the GPU runs behind Python: wait for it before reading the clock
        torch.cuda.synchronize()


def timed(fn, reps, warmup, device):
    """Seconds of each of `reps` runs of fn, after `warmup` runs (compilation, allocator) timed apart."""
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
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / min(timed(lambda: a @ b, reps, 2, device)[0])

# -----------------------------------------------------------------------------
# Models with random weights, ours and the peer's


def random_model(cfg, device, dtype, seed):
    """model.Qwen2 with random weights of this shape, made on the device in dtype (3B in bf16 is 6 GB):
    built on the meta device, given storage with to_empty, then initialized in place."""
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
        print(f"{name}: out of memory ({str(e).splitlines()[0]}); try --micro-batch 4 or --grad-checkpoint")
        rows.append(dict(name=name, error="out of memory"))
        return
    mean = sum(times) / len(times)
    rows.append(dict(name=name, tokens=tokens, tokens_per_s=tokens / mean, mean_s=mean, min_s=min(times),
                     peak_gb=peak_gb(device), floor_s=floor_s, of_floor=floor_s / mean, warmup_s=warm))
    print(f"  {name}: {tokens / mean:,.0f} tokens/s ({mean:.3f} s mean, {min(times):.3f} s min; warm-up {warm:.1f} s)")


def print_table(rows, gpu):
    memory = "peak GB" if gpu else "RSS GB"  # a CPU's peak RSS so far (peak_gb)
    print(f"\n{'':38s} {'tokens/s':>11s} {'mean s':>9s} {'min s':>9s} {memory:>8s} {'floor s':>9s} {'of floor':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:38s} {r['error']}")
        else:
            print(f"{r['name']:38s} {r['tokens_per_s']:11,.0f} {r['mean_s']:9.3f} {r['min_s']:9.3f} {r['peak_gb']:8.2f} "
                  f"{r['floor_s']:9.3f} {100 * r['of_floor']:7.1f}%")

# -----------------------------------------------------------------------------
# The one-shot GPU acceptance run: python bench.py --acceptance


def goal(value, target, ok):
    return dict(value=value, goal=target, ok=bool(ok))


def acceptance(args):
    """Everything a first GPU session must show, in one command and at most ~8 minutes on one H100
    or H200, written to one JSON with each figure beside its goal:
    1. bf16 logits of model.py against transformers' Qwen2 on the GPU (same random 3B weights);
    2. generate(compile=True) greedy equals eager greedy (ragged prompts, a model made lively);
    3. the bench at Qwen2.5-3B shapes, 64 prompts x 8 samples x 512 tokens, compiled, with the peer;
    4. 3 GRPO steps of grpo.py's defaults with --compile, on random 3B weights saved to a folder beside
       the real Qwen2.5 tokenizer (the device has no internet and no Qwen weights; the speed is the
       shape's, and random weights never stop early, so every completion is 512 tokens long).
    On a CPU (or with --toy) the same code runs at toy shapes in seconds: the dry path the tests run.
    There torch.compile is the identity, so check 2 runs the static-shape decode step eagerly (inductor
    takes a minute on a CPU; `RANK1_COMPILE_TESTS=1 pytest tests/test_bench.py` runs the real one)."""
    import shutil, subprocess, sys, tempfile
    from model import save_model, toy_tokenizer
    t_start = time.time()
    device = pick_device(args.device)
    dry = device.type == "cpu" or args.toy
    cfg = TOY_CONFIG if dry else get_config("Qwen2.5-3B")
    dtype = torch.float32 if dry else torch.bfloat16
    out_path = args.json or "runs/acceptance.json"
    work = tempfile.mkdtemp(prefix="rank1_acceptance_")
    here = os.path.dirname(os.path.abspath(__file__))
    if not dry:
        for path, flag in ((args.tokenizer, "--tokenizer"), (os.path.join(args.data, "train.jsonl"), "--data"),
                           (os.path.join(args.data, "test.jsonl"), "--data")):
            if not os.path.exists(path):
                print(f"bench.py --acceptance: {path} not found; pass {flag} (the device has no internet)", file=sys.stderr)
                raise SystemExit(2)
    res = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU",
               dry=dry, shape="toy" if dry else "Qwen2.5-3B", dtype=str(dtype), torch=torch.__version__, goals={})
    print(f"acceptance ({'dry path, toy shapes' if dry else 'Qwen2.5-3B shapes'}) on {res['device']}")

    # --- 1. logits against transformers, the same weights
    model = random_model(cfg, device, dtype, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.eos_token_id, (2, 16) if dry else (4, 256), generator=g).to(device)
    if importlib.util.find_spec("transformers"):
        hf = peer_model(model, dtype)
        with torch.inference_mode():
            ours, theirs = model(ids).float(), hf(input_ids=ids).logits.float()
        del hf
        rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        res["logits_vs_transformers"] = dict(max_rel_err=rel, exact_fraction=(ours == theirs).float().mean().item(),
                                             argmax_agree=(ours.argmax(-1) == theirs.argmax(-1)).float().mean().item())
        res["goals"]["logits_max_rel_err"] = goal(rel, f"<= {tol}", rel <= tol)
        print(f"  logits vs transformers ({dtype}): max rel. error {rel:.2e}")
    else:
        print("  transformers is not installed: no logits check, no peer")

    # --- 2. compiled greedy equals eager greedy
    if dry:  # a CPU has no minute for inductor: the static-shape step, run eagerly (docstring)
        real_compile = torch.compile
        torch.compile = lambda fn, **kw: fn
    with torch.no_grad():  # made lively: random weights at init mostly repeat the last token
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    prompts = [torch.randint(0, cfg.eos_token_id, (n,), generator=g).tolist() for n in ((3, 9, 1, 4) if dry else (17, 150, 64, 3, 99, 120, 8, 40))]
    n_new = 12 if dry else 64
    eager = generate(model, prompts, n_new, temperature=0, n=2)
    t0 = time.time()
    compiled = generate(model, prompts, n_new, temperature=0, n=2, compile=True)
    compile_s = time.time() - t0
    if dry:
        torch.compile = real_compile
    torch.compiler.reset()
    same = sum(a == b for a, b in zip(eager, compiled))
    first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(eager, compiled)]
    res["compiled_greedy"] = dict(rows=len(eager), rows_equal=same, first_difference=first, distinct_tokens=len({t for c in eager for t in c}),
                                  first_call_s=compile_s)
    res["goals"]["compiled_greedy_equals_eager"] = goal(same / len(eager), "== 1", same == len(eager))
    print(f"  compiled greedy == eager greedy: {same}/{len(eager)} completions ({n_new} tokens, first call {compile_s:.1f} s)")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- 3. the bench at 3B shapes, in its own process (its memory, its compiled graphs)
    bench_json = os.path.join(work, "bench.json")
    shape = ["--toy", "--batch", "2", "--group", "2", "--prompt-len", "8", "--new-tokens", "8", "--reps", "1", "--warmup", "1"] if dry else \
        ["--shape", "Qwen2.5-3B", "--batch", "64", "--group", "8", "--prompt-len", "150", "--new-tokens", "512",
         "--compile", "--reps", "2", "--peer-reps", "1", "--warmup", "1"]
    cmd = [sys.executable, os.path.join(here, "bench.py"), *shape, "--no-full", "--device", device.type, "--json", bench_json]
    if importlib.util.find_spec("transformers"):
        cmd.append("--peer")
    print("  $ " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    with open(bench_json) as f:
        res["bench"] = json.load(f)
    for k, v in res["bench"]["ratios"].items():
        op, target = GOALS[k].split()
        res["goals"][k] = goal(v, GOALS[k], v >= float(target) if op == ">=" else v > float(target) if op == ">" else v <= float(target))

    # --- 4. three GRPO steps, grpo.py's defaults (32 prompts x 8 samples x 512 tokens), --compile
    folder = os.path.join(work, "model")
    torch.manual_seed(args.seed)
    save_model(random_model(cfg, "cpu" if dry else device, dtype, args.seed), folder)
    if dry:
        toy_tokenizer().tok.save(os.path.join(folder, "tokenizer.json"))
        task = ["--task", "toy", "--batch", "2", "--group", "2", "--max-new-tokens", "8", "--micro-batch", "0",
                "--eval-limit", "4", "--eval-batch-size", "4"]
    else:
        shutil.copy(args.tokenizer, os.path.join(folder, "tokenizer.json"))
        task = ["--data", args.data, "--compile", "--eval-limit", "8", "--eval-batch-size", "8"]
    run_dir = os.path.join(work, "grpo")
    cmd = [sys.executable, os.path.join(here, "grpo.py"), "--model", folder, "--rank", "1", "--steps", "3",
           "--eval-every", "0", "--device", device.type, "--out", run_dir, *task]
    print("  $ " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "t_train" in r]
    step_s = [r["t_sample"] + r["t_train"] for r in steps]
    res["grpo"] = dict(steps=steps, step_s=step_s)
    steady = min(step_s[1:]) if len(step_s) > 1 else step_s[0]  # step 1 compiles
    res["goals"]["grpo_step_s"] = goal(steady, "<= 6 (steps 2-3: step 1 compiles)", steady <= 6)
    print(f"  GRPO steps: {', '.join(f'{s:.1f} s' for s in step_s)}")
    shutil.rmtree(work)

    # --- the verdict, one JSON
    res["total_s"] = time.time() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nacceptance{' (dry path: toy figures, not the goals)' if dry else ''}, {res['total_s']:.0f} s:")
    for k, v in res["goals"].items():
        print(f"  {'ok  ' if v['ok'] else 'MISS'} {k:30s} {v['value']:10.4g}   goal {v['goal']}")
    print(f"wrote {out_path}")
    return res

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    args = parser.parse_args()
    exit_on_user_error()
    if args.acceptance:
        acceptance(args)
        raise SystemExit(0)
    preset = dict(batch=4, group=4, prompt_len=16, new_tokens=32, micro_batch=0, threads=1) if args.toy else \
        dict(batch=64, group=8, prompt_len=150, new_tokens=512, micro_batch=8, threads=torch.get_num_threads())
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    cfg = TOY_CONFIG if args.toy else get_config(args.shape)
    shape = "toy" if args.toy else args.shape
    device = pick_device(args.device)
    if device.type == "cpu" and not args.toy and args.device is None:
        parser.error(f"no GPU here: `python bench.py --toy` is the CPU setting ({shape} would take hours; "
                     f"pass --device cpu to time it anyway)")
    dtype, why = pick_dtype(args.dtype, device)
    B, G, P, N = args.batch, args.group, args.prompt_len, args.new_tokens
    n_seq, T = B * G, P + N
    micro = args.micro_batch or n_seq
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} ({device}), {dtype} ({why}), torch {torch.__version__}")
    print(f"{shape}: {count_params(cfg):,} parameters, random weights | {B} prompts x {G} samples, "
          f"{P} prompt + {N} new tokens | training micro-batch {micro}")

    # --- the floors: what this device can do at best
    big = gpu or not args.toy
    bandwidth = measure_bandwidth(device, 2 ** 31 if gpu else 2 ** 28 if big else 2 ** 26)
    matmul = measure_matmul(device, dtype, 8192 if gpu else 2048 if big else 1024)
    print(f"measured: copy bandwidth {bandwidth / 1e9:,.1f} GB/s, {dtype} matmul {matmul / 1e12:,.2f} TFLOP/s")
    elem = torch.finfo(dtype).bits // 8
    C, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    weight_bytes = (count_params(cfg) - (0 if cfg.tie_word_embeddings else V * C)) * elem  # the embedding lookup reads B rows, not V
    kv_bytes_per_token = 2 * L * cfg.num_key_value_heads * cfg.head_dim * elem              # K and V, every layer
    # decode step t = 1..N-1 reads the weights and a cache of P + t tokens per sequence: P + N/2 on average
    decode_bytes = (N - 1) * (weight_bytes + n_seq * kv_bytes_per_token * (P + N / 2))
    sample_flops = sampling_flops(cfg, B, G, P, N)["total"]
    floors = dict(sample_bandwidth_s=decode_bytes / bandwidth, sample_flops_s=sample_flops / matmul,
                  lora_flops_s=total(step_flops(cfg, n_seq, T, args.rank)) / matmul,
                  full_flops_s=total(step_flops(cfg, n_seq, T, 0)) / matmul)
    print(f"floors: sampling reads {si(decode_bytes)}B ({floors['sample_bandwidth_s']:.4f} s) and does "
          f"{si(sample_flops)}FLOP ({floors['sample_flops_s']:.4f} s); training step "
          f"{floors['lora_flops_s']:.3f} s (LoRA r{args.rank}), {floors['full_flops_s']:.3f} s (full)")
    sample_floor = max(floors["sample_bandwidth_s"], floors["sample_flops_s"])

    # --- the same random inputs for every measurement
    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, min(V, cfg.eos_token_id), (B, P), generator=g)
    ids = torch.cat([prompts.repeat_interleave(G, 0), torch.randint(0, min(V, cfg.eos_token_id), (n_seq, N), generator=g)], 1).to(device)
    mask = torch.zeros(n_seq, T - 1, dtype=torch.bool, device=device)
    mask[:, P - 1:] = True                                                       # completion tokens
    adv = (torch.randint(0, 2, (n_seq,), generator=g).float() - 0.5).to(device)  # ±0.5, a group's advantages
    rows = []

    # --- ours: sampling, then the LoRA step on the same model, then full fine-tuning
    print("ours (model.py, lora.py)")
    model = random_model(cfg, device, dtype, args.seed)
    sampler = torch.Generator(device).manual_seed(args.seed)
    run(rows, f"sampling{' (compiled)' if args.compile else ''}",
        lambda: generate(model, prompts.tolist(), N, temperature=1.0, n=G, generator=sampler, compile=args.compile),
        n_seq * N, sample_floor, args, device)
    if args.compile:
        torch.compiler.reset()  # drop the compiled step and its CUDA-graph memory before measuring training
    apply_lora(model, args.rank, 32.0, verbose=False)
    model.train()
    model.grad_checkpointing = args.grad_checkpoint
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5, betas=(0.9, 0.95))
    run(rows, f"train LoRA r{args.rank}", train_step(lambda x: token_logprobs(model, x), params, opt, ids, mask, adv, micro, False),
        n_seq * T, floors["lora_flops_s"], args, device)
    del model, params, opt
    if not args.no_full:
        reset_peak(device)
        # Adam's steps vanish in bf16 weights: fp32 master weights and moments, bf16 matmuls via autocast on a GPU
        model = random_model(cfg, device, torch.float32, args.seed).train().requires_grad_(True)
        model.grad_checkpointing = args.grad_checkpoint
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), fused=gpu)
        run(rows, f"train full FT ({'fp32 + bf16 autocast' if gpu else 'fp32'})",
            train_step(lambda x: token_logprobs(model, x), list(model.parameters()), opt, ids, mask, adv, micro, gpu),
            n_seq * T, floors["full_flops_s"], args, device)
        del model, opt

    # --- the peer: transformers' generate, peft's LoRA step
    have = {m: importlib.util.find_spec(m) is not None for m in ("transformers", "peft")}
    if args.peer and not have["transformers"]:
        print("--peer: transformers is not installed; no peer measurements (pip install transformers peft)")
    elif args.peer:
        import transformers
        print(f"peer (transformers {transformers.__version__})")
        hf = peer_model(random_model(cfg, device, dtype, args.seed), dtype)
        prompt_ids = prompts.to(device)
        run(rows, f"peer sampling (transformers, {hf.config._attn_implementation})",
            lambda: hf.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                                temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=N, min_new_tokens=N,
                                num_return_sequences=G, pad_token_id=cfg.eos_token_id, eos_token_id=cfg.eos_token_id),
            n_seq * N, sample_floor, args, device, reps=args.peer_reps)
        if not have["peft"]:
            print("--peer: peft is not installed; no peer LoRA step")
        else:
            import peft
            hf = peft.get_peft_model(hf, peft.LoraConfig(r=args.rank, lora_alpha=32, lora_dropout=0.0, target_modules=[
                "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])).train()
            if args.grad_checkpoint:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            params = [p for p in hf.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-5, betas=(0.9, 0.95))
            run(rows, f"peer train LoRA r{args.rank} (peft {peft.__version__})",
                train_step(lambda x: peer_logprobs(hf, x), params, opt, ids, mask, adv, micro, False),
                n_seq * T, floors["lora_flops_s"], args, device)
            del params, opt
        del hf
        if not args.no_full:  # transformers' full fine-tuning: the same weights, optimizer and autocast as ours
            reset_peak(device)
            hf = peer_model(random_model(cfg, device, torch.float32, args.seed), torch.float32).train().requires_grad_(True)
            if args.grad_checkpoint:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            opt = torch.optim.AdamW(hf.parameters(), lr=1e-6, betas=(0.9, 0.95), fused=gpu)
            run(rows, f"peer train full FT (transformers, {'fp32 + bf16 autocast' if gpu else 'fp32'})",
                train_step(lambda x: peer_logprobs(hf, x), list(hf.parameters()), opt, ids, mask, adv, micro, gpu),
                n_seq * T, floors["full_flops_s"], args, device)
            del hf, opt

    # --- the table, the ratios the issue asks for
    print_table(rows, gpu)
    by = {r["name"].split(" (")[0]: r for r in rows if "error" not in r}
    ratios = {}
    if "sampling" in by and "peer sampling" in by:
        ratios["sampling_vs_peer"] = by["sampling"]["tokens_per_s"] / by["peer sampling"]["tokens_per_s"]
    for kind, ours_name, peer_name in (("lora", f"train LoRA r{args.rank}", f"peer train LoRA r{args.rank}"),
                                       ("full", "train full FT", "peer train full FT")):
        if ours_name in by and peer_name in by:
            ratios[f"{kind}_step_vs_peer"] = by[ours_name]["tokens_per_s"] / by[peer_name]["tokens_per_s"]
            if gpu:  # a CPU's peak RSS only grows from row to row: no ratio to take
                ratios[f"{kind}_memory_vs_peer"] = by[ours_name]["peak_gb"] / by[peer_name]["peak_gb"]
    if "sampling" in by:
        ratios["sampling_of_bandwidth_floor"] = floors["sample_bandwidth_s"] / by["sampling"]["mean_s"]
    for k, v in ratios.items():
        print(f"{k:30s} {v:8.2f}   (goal {GOALS[k]} on an H100 at 3B shapes)")
    if not gpu:
        print("(RSS GB: the process's peak RSS so far, which never goes down, so later rows include earlier "
              "ones; memory ratios are measured on a GPU only)")
    if args.json:
        out = dict(device=name, device_type=device.type, dtype=str(dtype), torch=torch.__version__, shape=shape,
                   args=vars(args), bandwidth_bytes_per_s=bandwidth, matmul_flops_per_s=matmul,
                   floors=floors, rows=rows, ratios=ratios)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
