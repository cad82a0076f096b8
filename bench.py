"""
Speed on one device: the sampler and the GRPO training step, measured against the physical floors
and, where they are installed, against transformers + peft doing the same work.

    python bench.py --toy                          # the toy's GRPO step on a CPU, a minute
    python bench.py --toy --peer --compile         # + transformers/peft, + the compiled decode step
    python bench.py --shape Qwen2.5-3B --batch 64 --group 8 --max-new-tokens 512 --compile --peer
    python bench.py --shape Qwen2.5-3B --grad-checkpoint --out runs/bench_3b.json
    python bench.py --acceptance --tokenizer T --data D   # one H100/H200, <= 8 min, every GPU goal
    python bench.py --against 7bfcfd6             # the toy's commands, this commit against that one

Random weights of the real shape, made on the device (no download): speed depends on the shapes,
not on what the weights are. Nothing stops early (no stop token, and the peer gets
min_new_tokens = max_new_tokens), so every completion is --max-new-tokens long, ours and the peer's.

- sampling: sampler.generate, B prompts x G samples x N new tokens at temperature 1: generated
  tokens/s. Peer: transformers' generate (do_sample, num_return_sequences=G, its default dynamic
  KV cache and SDPA attention, what TRL's GRPOTrainer calls when it does not use vLLM).
- training: one GRPO step on the B*G sequences of P + N tokens: log-probs, the on-policy policy-
  gradient loss, backward in micro-batches, gradient clipping, Adam. Tokens (P + N per
  sequence)/s and peak memory. LoRA (bf16 base, fp32 adapters) and full fine-tuning (fp32 weights
  and Adam, bf16 autocast on a GPU; plain fp32 on a CPU). Peer: peft's LoRA on transformers' Qwen2
  and transformers' full fine-tuning, log-probs taken TRL's way (the full logits, then
  log_softmax row by row).
- floors: a decode step reads every weight and the whole KV cache once (bytes / the measured copy
  bandwidth); any work needs flops.py's matmul FLOPs (FLOPs / the measured matmul rate). The floor
  is the larger of the two times; "of floor" = floor time / measured time (100% = at the limit).
"""
import argparse
import importlib.util
import os
import platform

import torch

from bench_parts.acceptance import GOALS, acceptance
from bench_parts.compare import compare
from bench_parts.measure import (measure_bandwidth, measure_matmul, peer_logprobs, peer_model,
                           print_table, random_model, reset_peak, run, train_step)
from errors import (COUNT, COUNT0, SEED, HelpFormatter, check_writable, exit_on_user_error,
                    write_json)
from flops import count_params, get_config, sampling_flops, si, step_flops, total
from logprobs import token_logprobs
from lora import ALL_LINEAR, apply_lora
from model import TOY_CONFIG, pick_device, pick_dtype
from sampler import generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    # what to run on
    add("--shape", default="Qwen2.5-3B", help="model shape: a flops.py name (Qwen2.5-0.5B/1.5B/"
        "3B/7B, Llama-3.1-8B) or a config.json; random weights")
    add("--toy", action="store_true", help="the toy model (model.TOY_CONFIG) and a tiny "
        "workload: seconds on a CPU")
    add("--device", default=None, help="cuda / mps / cpu; default the best available")
    add("--threads", type=COUNT, default=None, help="CPU threads; default torch's, 1 with --toy "
        "(its matrices are too small to split, and threads fight on a busy CPU)")
    add("--dtype", default=None, help="weights for sampling and the LoRA base; default bf16 on "
        "a bf16 GPU, else float32")
    # the workload (defaults: the GRPO step of grpo.py with 64 prompts; tiny with --toy)
    add("--batch", type=COUNT, default=None, help="prompts per step B; default 64 (32 with --toy)")
    add("--group", type=COUNT, default=None, help="samples per prompt G; default 8")
    add("--prompt-len", type=COUNT, default=None, help="prompt tokens P; default 150 (73 with "
        "--toy)")
    add("--max-new-tokens", type=COUNT, default=None, help="new tokens N per sample, all of them "
        "generated; default 512 (28 with --toy)")
    add("--micro-batch", type=COUNT0, default=None, help="sequences per forward/backward in the "
        "training step; 0 = all at once; default 8 (64 with --toy)")
    add("--rank", type=COUNT, default=1, help="LoRA rank of the LoRA training step")
    # speed switches
    add("--compile", action="store_true", help="generate(compile=True): static-shape decode step "
        "under torch.compile (CUDA graphs on a GPU)")
    add("--grad-checkpoint", action="store_true", help="activation checkpointing in the training "
        "steps (ours: model.grad_checkpointing; peer: gradient_checkpointing_enable)")
    add("--peer", action="store_true", help="also time transformers' generate and a peft LoRA "
        "step (skipped, loudly, where not installed)")
    add("--no-full", action="store_true", help="skip the full fine-tuning step (it needs ~16 "
        "bytes a parameter: 49 GB at 3B)")
    # measurement
    add("--reps", type=COUNT, default=3, help="timed repetitions of each measurement (after the "
        "warm-up)")
    add("--peer-reps", type=COUNT, default=None, help="timed repetitions of the peer's sampling; "
        "default --reps (transformers' generate is the slow row)")
    add("--warmup", type=COUNT0, default=1, help="untimed runs first (compilation, CUDA graph "
        "capture, allocator)")
    add("--seed", type=SEED, default=0, help="seed of the random weights and inputs")
    add("--out", default=None, help="also write the results to this JSON file; default none")
    # side by side with an earlier commit
    add("--against", default=None, metavar="COMMIT", help="time the toy world's commands on this "
        "checkout's HEAD and on COMMIT, in turns, --reps times (bench_parts/compare.py); writes "
        "--out (default results/speed.json) and results/figures/speed.png; default none")
    # the one-shot acceptance run
    add("--acceptance", action="store_true", help="the GPU acceptance run (<= 8 min on one "
        "H100/H200; bench_parts/acceptance.py); on a CPU or with --toy its dry path at toy shapes "
        "(seconds). Writes --out (default runs/acceptance.json)")
    add("--tokenizer", default=None, help="--acceptance on a GPU: the real Qwen2.5 "
        "tokenizer.json for the GRPO steps (required there; default none)")
    add("--data", default=None, help="--acceptance on a GPU: folder with GSM8K train.jsonl and "
        "test.jsonl for the GRPO steps (required there: no internet; default none)")
    args = p.parse_args(argv)
    if args.toy:
        # the toy GRPO step's real shape: 32 prompts x 8, a ~73-token prompt, ~28 new tokens
        preset = dict(batch=32, group=8, prompt_len=73, max_new_tokens=28, micro_batch=64,
                      threads=1)
    else:
        preset = dict(batch=64, group=8, prompt_len=150, max_new_tokens=512, micro_batch=8,
                      threads=torch.get_num_threads())
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args, p


def floors(cfg, args, device, dtype, gpu):
    """What this device can do at best: its copy bandwidth and matmul rate, and the seconds the
    workload's bytes and FLOPs take at those rates."""
    B, G, P, N = args.batch, args.group, args.prompt_len, args.max_new_tokens
    big = gpu or not args.toy
    bandwidth = measure_bandwidth(device, 2 ** 31 if gpu else 2 ** 28 if big else 2 ** 26)
    matmul = measure_matmul(device, dtype, 8192 if gpu else 2048 if big else 1024)
    print(f"measured: copy bandwidth {bandwidth / 1e9:,.1f} GB/s, {dtype} matmul "
          f"{matmul / 1e12:,.2f} TFLOP/s")
    elem = torch.finfo(dtype).bits // 8
    C, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    # the embedding lookup reads B rows, not V
    weight_bytes = (count_params(cfg) - (0 if cfg.tie_word_embeddings else V * C)) * elem
    kv_bytes_per_token = 2 * L * cfg.num_key_value_heads * cfg.head_dim * elem  # K, V, each layer
    # decode step t = 1..N-1 reads the weights and a cache of P + t tokens per sequence
    decode_bytes = (N - 1) * (weight_bytes + B * G * kv_bytes_per_token * (P + N / 2))
    sample_flops = sampling_flops(cfg, B, G, P, N)["total"]
    f = dict(sample_bandwidth_s=decode_bytes / bandwidth, sample_flops_s=sample_flops / matmul,
             lora_flops_s=total(step_flops(cfg, B * G, P + N, args.rank)) / matmul,
             full_flops_s=total(step_flops(cfg, B * G, P + N, 0)) / matmul)
    print(f"floors: sampling reads {si(decode_bytes)}B ({f['sample_bandwidth_s']:.4f} s) and "
          f"does {si(sample_flops)}FLOP ({f['sample_flops_s']:.4f} s); training step "
          f"{f['lora_flops_s']:.3f} s (LoRA r{args.rank}), {f['full_flops_s']:.3f} s (full)")
    return f, bandwidth, matmul


def measure_ours(rows, cfg, args, device, dtype, gpu, work, f):
    """Sampling, then the LoRA step on the same model, then full fine-tuning."""
    prompts, ids, mask, adv, micro = work
    N, n_seq, T = args.max_new_tokens, len(ids), ids.shape[1]
    sample_floor = max(f["sample_bandwidth_s"], f["sample_flops_s"])
    print("ours (model.py, sampler.py, logprobs.py, lora.py)")
    model = random_model(cfg, device, dtype, args.seed)
    sampler = torch.Generator(device).manual_seed(args.seed)
    run(rows, f"sampling{' (compiled)' if args.compile else ''}",
        lambda: generate(model, prompts.tolist(), N, temperature=1.0, n=args.group,
                         generator=sampler, compile=args.compile),
        n_seq * N, sample_floor, args, device)
    if args.compile:
        torch.compiler.reset()  # drop the compiled step and its CUDA-graph memory before training
    apply_lora(model, args.rank, 32.0, verbose=False)
    model.train()
    model.grad_checkpointing = args.grad_checkpoint
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5, betas=(0.9, 0.95))
    step = train_step(lambda x: token_logprobs(model, x), params, opt, ids, mask, adv, micro, False)
    run(rows, f"train LoRA r{args.rank}", step, n_seq * T, f["lora_flops_s"], args, device)
    del model, params, opt
    if not args.no_full:
        reset_peak(device)
        # Adam's steps vanish in bf16 weights: fp32 weights and moments, bf16 autocast on a GPU
        model = random_model(cfg, device, torch.float32, args.seed).train().requires_grad_(True)
        model.grad_checkpointing = args.grad_checkpoint
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), fused=gpu)
        step = train_step(lambda x: token_logprobs(model, x), list(model.parameters()), opt, ids,
                          mask, adv, micro, gpu)
        run(rows, f"train full FT ({'fp32 + bf16 autocast' if gpu else 'fp32'})", step,
            n_seq * T, f["full_flops_s"], args, device)


def measure_peer(rows, cfg, args, device, dtype, gpu, work, f):
    """transformers' generate, peft's LoRA step, transformers' full fine-tuning."""
    prompts, ids, mask, adv, micro = work
    N, n_seq, T = args.max_new_tokens, len(ids), ids.shape[1]
    have = {m: importlib.util.find_spec(m) is not None for m in ("transformers", "peft")}
    if not have["transformers"]:
        print("--peer: transformers is not installed; no peer measurements (pip install "
              "transformers peft)")
        return
    import transformers
    print(f"peer (transformers {transformers.__version__})")
    hf = peer_model(random_model(cfg, device, dtype, args.seed), dtype)
    prompt_ids = prompts.to(device)
    run(rows, f"peer sampling (transformers, {hf.config._attn_implementation})",
        lambda: hf.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                            do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                            max_new_tokens=N, min_new_tokens=N, num_return_sequences=args.group,
                            pad_token_id=cfg.eos_token_id, eos_token_id=cfg.eos_token_id),
        n_seq * N, max(f["sample_bandwidth_s"], f["sample_flops_s"]), args, device,
        reps=args.peer_reps)
    if not have["peft"]:
        print("--peer: peft is not installed; no peer LoRA step")
    else:
        import peft
        config = peft.LoraConfig(r=args.rank, lora_alpha=32, lora_dropout=0.0,
                                 target_modules=list(ALL_LINEAR))
        hf = peft.get_peft_model(hf, config).train()
        if args.grad_checkpoint:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        params = [p for p in hf.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-5, betas=(0.9, 0.95))
        step = train_step(lambda x: peer_logprobs(hf, x), params, opt, ids, mask, adv, micro, False)
        run(rows, f"peer train LoRA r{args.rank} (peft {peft.__version__})", step, n_seq * T,
            f["lora_flops_s"], args, device)
    del hf
    if not args.no_full:  # the same weights, optimizer and autocast as ours
        reset_peak(device)
        hf = peer_model(random_model(cfg, device, torch.float32, args.seed), torch.float32)
        hf = hf.train().requires_grad_(True)
        if args.grad_checkpoint:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-6, betas=(0.9, 0.95), fused=gpu)
        step = train_step(lambda x: peer_logprobs(hf, x), list(hf.parameters()), opt, ids, mask,
                          adv, micro, gpu)
        run(rows, f"peer train full FT (transformers, {'fp32 + bf16 autocast' if gpu else 'fp32'})",
            step, n_seq * T, f["full_flops_s"], args, device)


def ratios_of(rows, f, args, gpu):
    """The ratios the GPU goals are about: ours over the peer's, and sampling's share of the
    bandwidth floor."""
    by = {r["name"].split(" (")[0]: r for r in rows if "error" not in r}
    ratios = {}
    if "sampling" in by and "peer sampling" in by:
        peer = by["peer sampling"]["tokens_per_s"]
        ratios["sampling_vs_peer"] = by["sampling"]["tokens_per_s"] / peer
    for kind, ours, peer in (("lora", f"train LoRA r{args.rank}", f"peer train LoRA r{args.rank}"),
                             ("full", "train full FT", "peer train full FT")):
        if ours in by and peer in by:
            ratios[f"{kind}_step_vs_peer"] = by[ours]["tokens_per_s"] / by[peer]["tokens_per_s"]
            if gpu:  # a CPU's peak RSS only grows from row to row: no ratio to take
                ratios[f"{kind}_memory_vs_peer"] = by[ours]["peak_gb"] / by[peer]["peak_gb"]
    if "sampling" in by:
        ratios["sampling_of_bandwidth_floor"] = f["sample_bandwidth_s"] / by["sampling"]["mean_s"]
    return ratios


if __name__ == "__main__":
    exit_on_user_error(too_big="--batch, --group or --micro-batch")
    args, parser = parse_args()
    if args.acceptance:
        acceptance(args)
        raise SystemExit(0)
    if args.against:
        out = args.out or "results/speed.json"
        check_writable(out)
        compare(args.against, args.reps, out, os.path.join(os.path.dirname(out) or ".",
                                                            "figures", "speed.png"))
        raise SystemExit(0)
    if args.out:
        check_writable(args.out)  # before the benchmark, not after it
    torch.set_num_threads(args.threads)
    cfg = TOY_CONFIG if args.toy else get_config(args.shape)
    shape = "toy" if args.toy else args.shape
    device = pick_device(args.device)
    if device.type == "cpu" and not args.toy and args.device is None:
        parser.error(f"no GPU here: `python bench.py --toy` is the CPU setting ({shape} would take "
                     f"hours; pass --device cpu to time it anyway)")
    dtype, why = pick_dtype(args.dtype, device)
    B, G, P, N = args.batch, args.group, args.prompt_len, args.max_new_tokens
    micro = args.micro_batch or B * G
    gpu = device.type == "cuda"
    cpu = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name() if gpu else cpu
    print(f"device: {name} ({device}), {dtype} ({why}), torch {torch.__version__}")
    print(f"{shape}: {count_params(cfg):,} parameters, random weights | {B} prompts x {G} samples, "
          f"{P} prompt + {N} new tokens | training micro-batch {micro}")
    f, bandwidth, matmul = floors(cfg, args, device, dtype, gpu)

    # --- the same random inputs for every measurement
    g = torch.Generator().manual_seed(args.seed)
    top = min(cfg.vocab_size, cfg.eos_token_id)
    prompts = torch.randint(0, top, (B, P), generator=g)
    ids = torch.cat([prompts.repeat_interleave(G, 0),
                     torch.randint(0, top, (B * G, N), generator=g)], 1).to(device)
    mask = torch.zeros(B * G, P + N - 1, dtype=torch.bool, device=device)
    mask[:, P - 1:] = True                                                       # completions
    adv = (torch.randint(0, 2, (B * G,), generator=g).float() - 0.5).to(device)  # ±0.5
    work, rows = (prompts, ids, mask, adv, micro), []
    measure_ours(rows, cfg, args, device, dtype, gpu, work, f)
    if args.peer:
        measure_peer(rows, cfg, args, device, dtype, gpu, work, f)

    print_table(rows, gpu)
    ratios = ratios_of(rows, f, args, gpu)
    for k, v in ratios.items():
        print(f"{k:30s} {v:8.2f}   (goal {GOALS[k]} on an H100 at 3B shapes)")
    if not gpu:
        print("(RSS GB: the process's peak RSS so far, which never goes down, so later rows "
              "include earlier ones; memory ratios are measured on a GPU only)")
    if args.out:
        out = dict(device=name, device_type=device.type, dtype=str(dtype), torch=torch.__version__,
                   shape=shape, args=vars(args), bandwidth_bytes_per_s=bandwidth,
                   matmul_flops_per_s=matmul, floors=f, rows=rows, ratios=ratios)
        write_json(args.out, out)
        print(f"wrote {args.out}")
