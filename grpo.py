"""
GRPO: sample G answers to each question, reward the right ones, push up the answers that beat
their group. LoRA of any rank, or full fine-tuning; checkpoints that resume exactly.

    python grpo.py --toy --rank 1                # the toy world from toy_base/, 2-core CPU, minutes
    python grpo.py --toy --rank 0                # full fine-tuning (LR a tenth of LoRA's)
    python grpo.py --toy --rank 4 --seed 1 --out runs/grpo_toy_r4_s1
    python grpo.py --toy --adapter tinylora --u 13 --tie 1   # TinyLoRA: 13 trainable parameters
    python grpo.py --rank 1 --compile            # Qwen2.5-3B on GSM8K train, one GPU
    python grpo.py --rank 1 --data data/gsm8k --resume   # GSM8K from a local folder; continue
    torchrun --nproc_per_node 8 grpo.py --rank 1 # data parallel on 8 GPUs: the same run, faster

Per step: B prompts x G samples at temperature 1 (rollout), reward 1 for a right strict answer,
advantage = reward - group mean (group_advantages), a token-level policy-gradient loss with the
importance ratio against the sampler's log-probs (policy_loss), Adam(0.9, 0.95), constant LR,
gradient clipping at 1.0 (docs/design.md, "GRPO"). Simplified on purpose: one process alternates
sampling and training on the same weights (no inference server, so the sampler is never stale),
no format or length reward. Under torchrun each process samples and trains on its share of the
step's prompts (whole groups, so advantages stay local) and the gradients are summed before
clipping: N processes end where one does (data_parallel.py).
"""
import argparse
import math
import os
import random
import time

import torch

import adapters
from data_parallel import (all_gather, all_reduce, barrier, close_distributed, init_distributed,
                           sum_grads)
from errors import (COUNT, COUNT0, FRACTION, NONNEGATIVE, POSITIVE, exit_on_user_error, number,
                    user_exit)
from eval_gsm8k import training_eval
from gsm8k import (STOP_STRINGS, extract_answer, format_prompt, load_splits, load_task, reward,
                   stop_ids, truncate)
from lora import adapters_disabled, lora_modules, merged
from logprobs import completion_logprobs, sampler_grid
from model import TOY_BASE, load_config, load_model, load_tokenizer, pick_dtype
from runs import (append_metrics, load_trainer_state, newest_checkpoint, on_ctrl_c, read_metrics,
                  save_checkpoint, start_run, trim_metrics)
from sampler import generate, sample_key

# -----------------------------------------------------------------------------
# The math


def group_advantages(rewards, std_norm=False, eps=1e-4):
    """rewards (B, G) -> advantages (B, G): each reward minus its group's mean.

    std_norm=True also divides by the group's std, as GRPO does (DeepSeekMath, Shao et al. 2024,
    §4.1.2); the default leaves it out, as Dr. GRPO argues (Liu et al. 2025, §3.1: the std
    up-weights questions that are nearly always or never solved). A group whose rewards are all
    equal teaches nothing and gets exactly 0 (the mean of equal floats can round off them)."""
    B, G = rewards.shape
    assert G >= 2, f"a group needs at least 2 samples to have a baseline, got {G}"
    adv = rewards - rewards.mean(1, keepdim=True)
    if std_norm:  # unbiased std and eps 1e-4, as TRL's GRPOTrainer
        adv = adv / (rewards.std(1, keepdim=True) + eps)
    same = (rewards == rewards[:, :1]).all(1, keepdim=True)              # (B, 1)
    return adv.masked_fill(same, 0.0)


def policy_loss(logp, logp_old, adv, mask, clip=None, n_tokens=None):
    """-Σ A·ratio·mask / Σ mask with ratio = exp(logp - logp_old), a float under grad.

    logp (N, T) the trainer's log-probs under grad, logp_old (N, T) the sampler's, adv (N,) one
    advantage per sample broadcast over its tokens, mask (N, T) True on completion tokens.
    - The sum runs over every token of the batch and is divided once by the token count: DAPO's
      token-level loss (Yu et al. 2025, §3.3). DeepSeekMath's GRPO averages within each sequence
      first, which weights a token of a short answer more than one of a long answer.
    - On policy, ratio = 1 and the gradient is A·∇logp: REINFORCE with the group mean as
      baseline. The ratio corrects for the sampler and the trainer computing slightly different
      log-probs (bf16, cache vs full forward), an importance weight that is 1 up to rounding.
    - clip=ε: PPO's clipped surrogate min(ratio·A, clip(ratio, 1-ε, 1+ε)·A) (Schulman et al.
      2017, eq. 7), only needed when a batch is reused for several updates (--epochs > 1) and
      the policy drifts from the sampler.
    - n_tokens: the whole batch's Σ mask when the batch is split into micro-batches, so the
      micro-batch gradients add up to the full batch's."""
    ratio = torch.exp(logp - logp_old)                                   # (N, T)
    obj = ratio * adv[:, None]
    if clip is not None:
        obj = torch.minimum(obj, ratio.clamp(1 - clip, 1 + clip) * adv[:, None])
    n = mask.sum() if n_tokens is None else n_tokens
    return -torch.where(mask, obj, 0.0).sum() / n


def kl_k3(logp, logp_ref):
    """Per-token estimate of KL(π || π_ref) from samples of π: exp(r) - r - 1 with r = logp_ref -
    logp, the "k3" estimator (Schulman 2020, "Approximating KL Divergence"), as in GRPO's eq. 4:
    unbiased, never negative."""
    r = logp_ref - logp
    return torch.exp(r) - r - 1

# -----------------------------------------------------------------------------
# Data and rollouts


def batch_indices(n, batch, step, seed):
    """The problems of training step `step` (1-based). Epoch e reads a permutation of the n
    problems seeded by (seed, e), so the data position is a function of the step and resuming
    needs only it."""
    lo, hi = (step - 1) * batch, step * batch                           # positions in the stream
    first = lo // n
    stream = []
    for epoch in range(first, (hi - 1) // n + 1):
        perm = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(perm)                  # str seed: stable in Python
        stream += perm
    return stream[lo - first * n:hi - first * n]


def rollout(model, tokenizer, problems, keys, args):
    """G samples of each problem, sample j of problem i keyed by (keys[i], j) alone, scored by
    the GSM8K rule -> prompts, completions (sample i*G + j: problem i), the sampler's per-token
    log-probs, the texts and rewards (b, G)."""
    prompts = [tokenizer.encode(format_prompt(p["question"])) for p in problems]
    model.eval()
    with merged(model):  # W + ΔW as one matrix while sampling (a float32 base; lora.merged)
        completions, logps = generate(model, prompts, args.max_new_tokens,
                                      temperature=args.temperature, stop_ids=stop_ids(tokenizer),
                                      stop_strings=STOP_STRINGS, tokenizer=tokenizer, keys=keys,
                                      n=args.group, return_logprobs=True, compile=args.compile)
    texts = [tokenizer.decode(c) for c in completions]
    answers = [p["answer"] for p in problems for _ in range(args.group)]
    rewards = torch.tensor([reward(t, a) for t, a in zip(texts, answers)])
    return prompts, completions, logps, texts, rewards.view(len(problems), args.group)


# -----------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    # model and adapter
    add("--toy", action="store_true", help="toy world: the shipped base toy_base/, the toy task, "
        "the toy preset of batch/group/steps/LR")
    add("--model", default=None, help="hub id or local folder; default Qwen/Qwen2.5-3B, or "
        "toy_base/ with --toy")
    add("--adapter", default="lora", choices=adapters.KINDS, help="lora: B·A; loraxs: only R "
        "(rank x rank) in U Σ R Vᵀ; tinylora: R = Σ v_i P_i, only v trains (tinylora.py)")
    add("--rank", type=COUNT0, default=None, help="LoRA rank (LoRA-XS, TinyLoRA: the SVD rank r); "
        "0 = full fine-tuning (every weight, embeddings included); default 1, 2 for tinylora")
    add("--alpha", type=POSITIVE, default=32.0, help="LoRA alpha; the update is scaled by "
        "alpha/rank (LoRA only)")
    add("--u", type=COUNT, default=13, help="TinyLoRA: trainable parameters per group of modules")
    add("--tie", type=FRACTION, default=0.0, help="TinyLoRA weight tying (PEFT's): 0 = one v per "
        "module, 1 = one v for all")
    add("--targets", default="all", help="LoRA targets: all, attn, mlp, or projections like "
        "q_proj,v_proj")
    add("--layers", default=None, help="LoRA layers: indices like 0,1,2 or first/middle/last "
        "thirds; default all")
    add("--dtype", default=None, help="float32 / bfloat16; default bf16 on a bf16 GPU, else fp32 "
        "(LoRA factors stay fp32)")
    add("--device", default=None, help="cuda / mps / cpu; default the best available")
    # data and sampling
    add("--task", default=None, help="gsm8k or toy; default gsm8k, toy with --toy")
    add("--data", default=None, help="GSM8K data: a folder holding train.jsonl and test.jsonl, "
        "or one JSONL file (training and evaluation then both read it); default "
        "~/.cache/rank1/gsm8k (downloaded once)")
    add("--batch", type=COUNT, default=None, help="prompts per step, all processes together under "
        "torchrun; default 32")
    add("--group", type=number(int, low=2), default=None, help="samples per prompt G; default 8")
    add("--max-new-tokens", type=COUNT, default=None, help="completion budget (sampling and "
        "evaluation); default 512, 48 with --toy")
    add("--temperature", type=POSITIVE, default=1.0, help="sampling temperature (> 0); log-probs "
        "are taken under the same one")
    # optimization
    add("--steps", type=COUNT, default=None, help="training steps (one batch of rollouts each); "
        "default 200, 60 with --toy")
    add("--lr", type=POSITIVE, default=None, help="Adam LR, constant; default 5e-5 (1e-3 with "
        "--toy), a tenth of that for --rank 0")
    add("--epochs", type=COUNT, default=1, help="updates per batch of rollouts; > 1 turns on PPO "
        "clipping")
    add("--clip", type=POSITIVE, default=0.2, help="PPO clip range eps, used only with "
        "--epochs > 1")
    add("--kl", type=NONNEGATIVE, default=0.0, help="weight of the k3 KL to the adapter-off base "
        "model; 0 = none (LoRA only)")
    add("--std-norm", action="store_true", help="divide advantages by the group std (GRPO as in "
        "DeepSeekMath); default off (Dr. GRPO)")
    add("--grad-clip", type=NONNEGATIVE, default=1.0, help="clip the gradient's global norm to "
        "this; 0 = off")
    add("--adam-eps", type=POSITIVE, default=1e-8, help="Adam's epsilon; ~0 (1e-30) makes Adam "
        "blind to each tensor's gradient scale (docs/design.md, Adam's two degrees of freedom)")
    add("--lr-ratio", type=POSITIVE, default=1.0, help="LoRA only: LR of B over LR of A "
        "(eta_B / eta_A); --lr is A's")
    add("--init-scale", type=POSITIVE, default=1.0, help="LoRA only: multiply A's initialization "
        "(PEFT's Kaiming-uniform) by this, sigma_A")
    add("--micro-batch", type=COUNT0, default=None, help="sequences per forward/backward "
        "(gradients accumulate), per process under torchrun; default 8, 0 = all (with --toy)")
    add("--grad-checkpoint", action="store_true", help="activation checkpointing: recompute "
        "each block in backward (less memory, ~1/2 more LoRA FLOPs)")
    add("--compile", action="store_true", help="rollouts with generate(compile=True): compiled "
        "decode step, CUDA graphs on a GPU (the first steps compile)")
    add("--seed", type=COUNT0, default=0, help="seed of LoRA's init, data order and sampling")
    # evaluation and checkpoints
    add("--eval-every", type=COUNT0, default=None, help="evaluate every N steps (also at step 0 "
        "and at the end); default 20, 10 with --toy; 0 = start and end only")
    add("--eval-limit", type=COUNT0, default=None, help="held-out test problems to evaluate on; 0 "
        "= the whole split; default 200, 256 with --toy")
    add("--eval-batch-size", type=COUNT, default=None, help="prompts per generate() call in "
        "evaluation; default 64, 256 with --toy")
    add("--val-limit", type=COUNT0, default=0, help="toy: at the final evaluation also the first N "
        "val problems (where the study picks LRs); 0 = none")
    add("--eval-start", action=argparse.BooleanOptionalAction, default=True, help="evaluate "
        "the base at step 0 (--no-eval-start: skip it; the study measures each base once)")
    add("--eval-samples", type=COUNT0, default=0, help="at the final evaluation also K samples a "
        "problem: pass@1, pass@K, the toy's latent mode; 0 = greedy only")
    add("--save-every", type=COUNT, default=10, help="checkpoint every N steps (and at the end)")
    add("--out", default=None, help="run folder; default runs/grpo[_toy]_r<rank> "
        "(runs/grpo[_toy]_full for --rank 0)")
    add("--resume", action="store_true", help="continue from the newest complete checkpoint in "
        "--out (a fresh start if there is none)")
    return resolve(p.parse_args(argv))


def resolve(args):
    """The presets (the toy world, or the real run of docs/design.md) and every check of the
    arguments, in one place."""
    if args.rank is None:
        args.rank = 2 if args.adapter == "tinylora" else 1
    if args.adapter != "lora" and args.rank == 0:
        raise user_exit(f"--adapter {args.adapter} needs --rank >= 1 (--rank 0 is full "
                        f"fine-tuning, --adapter lora)")
    if args.toy:
        preset = dict(model=TOY_BASE, task="toy", batch=32, group=8, max_new_tokens=48, steps=60,
                      lr=1e-3, micro_batch=0, eval_every=10, eval_limit=256, eval_batch_size=256)
    else:
        preset = dict(model="Qwen/Qwen2.5-3B", task="gsm8k", batch=32, group=8,
                      max_new_tokens=512, steps=200, lr=5e-5, micro_batch=8, eval_every=20,
                      eval_limit=200, eval_batch_size=64)
    if args.lr is None and args.rank == 0:
        preset["lr"] /= 10  # full fine-tuning wants ~1/10 of LoRA's LR (LoRA Without Regret)
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        kind = {"lora": f"r{args.rank}", "loraxs": f"xs{args.rank}",
                "tinylora": f"tiny_u{args.u}_tie{args.tie:g}"}[args.adapter]
        args.out = f"runs/grpo{'_toy' if args.toy else ''}_{kind if args.rank else 'full'}"
    if args.val_limit and args.task != "toy":
        raise user_exit("--val-limit: only the toy task has a validation split")
    lora_knobs = args.lr_ratio != 1 or args.init_scale != 1
    if (args.rank == 0 or args.adapter != "lora") and lora_knobs:
        raise user_exit(f"--lr-ratio ({args.lr_ratio}) and --init-scale ({args.init_scale}) are "
                        f"LoRA's knobs: they need --adapter lora and --rank >= 1")
    if args.kl and args.rank == 0:  # the reference would be a second full copy of the weights
        raise user_exit("--kl needs LoRA (the reference is the model with adapters off); with "
                        "--rank 0 it would need a frozen copy of every weight, which grpo.py "
                        "does not keep")
    return args

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    exit_on_user_error()
    args = parse_args()
    # one process per device under torchrun (rank 0 writes the run folder and prints)
    rank, world, device = init_distributed(args.device)
    if args.batch % world:
        raise user_exit(f"--batch {args.batch} prompts do not split evenly over {world} processes")
    full = args.rank == 0
    if full and args.dtype is None and device.type != "cpu":
        # Adam's steps (~LR relative to a weight) vanish in bf16's 8-bit mantissa; LoRA's factors
        # are fp32 under a bf16 base, so full fine-tuning gets fp32 weights, with TF32 matmuls
        args.dtype = "float32"
        torch.backends.cuda.matmul.allow_tf32 = True
        print("full fine-tuning: float32 weights (bf16 would drop Adam's small updates), TF32")
    # everything that can be refused is checked before the run folder is written
    pick_dtype(args.dtype, device)
    load_config(args.model)
    tokenizer = load_tokenizer(args.model)
    train_set, eval_set = load_splits(args.task, args.data, args.eval_limit)
    val_set = load_task(args.task, "val")[:args.val_limit] if args.val_limit else []
    free = {"resume", "out", "steps", "device", "eval_every", "eval_batch_size", "save_every",
            "grad_checkpoint", "val_limit", "eval_samples", "eval_start"}  # resumable
    ckpt = start_run(args, free, rank)
    on_ctrl_c(args.out)

    # --- model, adapter, optimizer
    torch.manual_seed(args.seed)
    model = load_model(ckpt if (ckpt and full) else args.model, device=device, dtype=args.dtype)
    if full:
        model.requires_grad_(True)
    else:
        adapters.apply(model, args.adapter, args.rank, args.alpha, args.u, args.tie, args.targets,
                       args.layers)
        with torch.no_grad():  # sigma_A -> init_scale * sigma_A (a resumed adapter loads over it)
            for m in lora_modules(model).values():
                m.lora_A.mul_(args.init_scale)
        if ckpt:
            adapters.load(model, ckpt)
    model.grad_checkpointing = args.grad_checkpoint
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    # Adam(0.9, 0.95); B's LR is --lr-ratio times A's (one group each; full fine-tuning has one)
    is_b = lambda n: n.endswith("lora_B")
    groups = [dict(params=[p for n, p in named if not is_b(n)], lr=args.lr),
              dict(params=[p for n, p in named if is_b(n)], lr=args.lr * args.lr_ratio)]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.95),
                                 eps=args.adam_eps)
    start = 0
    if ckpt:
        state, tensors = load_trainer_state(ckpt, optimizer, named)
        torch.set_rng_state(tensors["rng.torch_cpu"])  # (the sampler has no state: keys below)
        start = state["step"]
        if rank == 0:
            trim_metrics(args.out, start)
        print(f"resumed from {ckpt} at step {start}")
    elif rank == 0 and os.path.exists(os.path.join(args.out, "metrics.jsonl")):
        os.remove(os.path.join(args.out, "metrics.jsonl"))

    # --- data: this process's prompts of each step are lo..hi, its evaluation problems a stride
    B, G = args.batch, args.group
    lo, hi = rank * B // world, (rank + 1) * B // world
    micro = args.micro_batch or (hi - lo) * G
    clip = args.clip if args.epochs > 1 else None
    what = "full fine-tuning" if full else f"{args.adapter} rank {args.rank}"
    print(f"{args.task}: {len(train_set)} train problems, {len(eval_set)} held out | {B} prompts "
          f"x {G} samples, {args.steps} steps, lr {args.lr:.1e}, {what}, "
          f"{sum(p.numel() for p in params):,} trainable parameters -> {args.out}"
          + (f" | {world} processes, {B // world} prompts each" if world > 1 else ""))

    def evaluate(step):
        """Greedy accuracy on the held-out problems (at the end also val and sampled metrics): a
        metrics row and a line; returns seconds."""
        final = step == args.steps
        row = dict(step=step, **training_eval(model, tokenizer, eval_set, args, final, val_set,
                                              rank, world))
        if rank == 0:
            append_metrics(args.out, row)
        print(f"step {step:5d}/{args.steps} | eval accuracy {row['eval_accuracy']:.3f} | "
              f"flexible {row['eval_flexible_accuracy']:.3f} | format "
              f"{row['eval_format_rate']:.3f}")
        return row["eval_seconds"]

    def log_step(step, rewards, n_tokens, n_format, health, t_sample, t_train):
        """One metrics row and one line per step; rewards (B, G) of the whole batch."""
        zero_var = (rewards == rewards[:, :1]).all(1).float().mean().item()
        fmt = n_format / (B * G)
        row = dict(step=step, reward=rewards.mean().item(), reward_std=rewards.std().item(),
                   zero_var=zero_var, length=n_tokens / (B * G), format_rate=fmt,
                   logp_gap=health["logp_gap"], kl_sampler=health["kl_sampler"],
                   loss=health["loss"], grad_norm=health["grad_norm"], lr=args.lr,
                   t_sample=round(t_sample, 3), t_train=round(t_train, 3),
                   tokens_per_s=n_tokens / t_sample,
                   **({"kl_ref": health["kl_ref"]} if "kl_ref" in health else {}))
        if rank == 0:
            append_metrics(args.out, row)
        print(f"step {step:5d}/{args.steps} | reward {row['reward']:.3f} ± {row['reward_std']:.2f} "
              f"| zero-var {zero_var:.2f} | len {row['length']:5.1f} | fmt {fmt:.2f} | gap "
              f"{row['logp_gap']:.1e} | gnorm {row['grad_norm']:.3f} | lr {args.lr:.1e} | sample "
              f"{t_sample:5.1f} s, train {t_train:5.1f} s | {row['tokens_per_s']:6.0f} tok/s")

    def save(step):
        """The checkpoint of a step: weights, Adam's moments, the RNG, the data position."""
        state = dict(step=step, data_seed=args.seed, epoch=step * B // len(train_set),
                     position=step * B % len(train_set), samples=step * B * G)
        # the same in every process (same seed, and nothing draws from it after the init)
        rng = {"rng.torch_cpu": torch.get_rng_state()}
        if rank == 0:
            save_checkpoint(os.path.join(args.out, f"step_{step:06d}"), model, optimizer, named,
                            state, full=full, tokenizer=tokenizer, base_name=args.model, extra=rng)
        barrier()  # the others wait until the checkpoint is on disk: it is the whole run's

    t_sample_total = t_train_total = t_eval_total = 0.0
    if start == 0 and args.eval_start:
        t_eval_total += evaluate(0)

    # -------------------------------------------------------------------------
    # The loop: sample, score, update
    for step in range(start + 1, args.steps + 1):
        # --- rollouts: sample j of the step's prompt k is a function of (seed, step, k, j) alone,
        # the same in any batch, eager or compiled, resumed or not, on any process (sampler.py)
        t0 = time.time()
        problems = [train_set[i] for i in batch_indices(len(train_set), B, step, args.seed)]
        keys = [sample_key(args.seed, step, k) for k in range(B)]
        prompts, completions, sampler_logps, texts, rewards = rollout(
            model, tokenizer, problems[lo:hi], keys[lo:hi], args)
        adv = group_advantages(rewards, args.std_norm).flatten().to(device)  # (b*G,)
        # the loss is normalized by the whole batch's token count (DAPO's token-level mean)
        n_format = sum(extract_answer(truncate(t)) is not None for t in texts)
        n_tokens, n_format = map(int, all_reduce([sum(map(len, completions)), n_format]))
        t_sample = time.time() - t0

        # --- update(s): micro-batches accumulate one batch gradient
        t0 = time.time()
        model.train()
        for epoch in range(args.epochs):
            optimizer.zero_grad(set_to_none=True)
            loss_sum, gap, kl_sampler, kl_ref = 0.0, 0.0, 0.0, 0.0
            # a group whose advantages are all 0 adds 0·ratio to the loss and nothing to the
            # gradient: it is left out (not with --kl, whose term does not vanish)
            teach = [k for k in range(len(completions)) if args.kl or adv[k // G * G:(k // G + 1) * G].any()]
            for p in params:
                p.grad = torch.zeros_like(p)
            for s in range(0, len(teach), micro):
                ks = teach[s:s + micro]
                firsts = sorted({k // G for k in ks})
                owner = [firsts.index(k // G) for k in ks]
                batch = ([prompts[i] for i in firsts], [completions[k] for k in ks], owner)
                logp, mask = completion_logprobs(model, *batch, temperature=args.temperature)
                old = sampler_grid([sampler_logps[k] for k in ks], mask)                  # (n, L)
                loss = policy_loss(logp, old, adv[ks], mask, clip, n_tokens)
                if args.kl:
                    with torch.no_grad(), adapters_disabled(model):
                        ref, _ = completion_logprobs(model, *batch, temperature=args.temperature)
                    kl = kl_k3(logp, ref)[mask].sum() / n_tokens
                    loss = loss + args.kl * kl
                    kl_ref += kl.item()
                loss.backward()
                loss_sum += loss.item()
                d = (logp.detach() - old)[mask]                                       # health:
                gap += d.abs().sum().item() / n_tokens                    # trainer vs sampler
                kl_sampler += kl_k3(old[mask], logp.detach()[mask]).sum().item() / n_tokens
            sum_grads(params)                                           # + the other processes'
            loss_sum, gap, kl_sampler, kl_ref = all_reduce([loss_sum, gap, kl_sampler, kl_ref])
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or math.inf).item()
            if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                raise SystemExit(f"step {step}: loss {loss_sum} / grad norm {grad_norm} is not "
                                 f"finite; stopping without an update. Last good checkpoint: "
                                 f"{newest_checkpoint(args.out) or 'none'}")
            optimizer.step()
            if epoch == 0:  # on-policy health: the sampler's and the trainer's log-probs agree
                gap0, kl0 = gap, kl_sampler
        t_train = time.time() - t0
        t_sample, t_train = all_reduce([t_sample, t_train], op="max")  # the slowest process's
        t_sample_total, t_train_total = t_sample_total + t_sample, t_train_total + t_train

        # --- log, evaluate, checkpoint (rank 0 writes)
        health = dict(loss=loss_sum, grad_norm=grad_norm, logp_gap=gap0, kl_sampler=kl0,
                      **({"kl_ref": kl_ref} if args.kl else {}))
        log_step(step, all_gather(rewards), n_tokens, n_format, health, t_sample, t_train)
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            t_eval_total += evaluate(step)
        if step == args.steps or step % args.save_every == 0:
            save(step)

    # --- summary
    close_distributed()
    if rank > 0:
        raise SystemExit  # rank 0 reads the metrics and prints the summary
    evals = [r for r in read_metrics(args.out) if "eval_accuracy" in r]
    if len(evals) >= 2:
        print(f"eval accuracy {evals[0]['eval_accuracy']:.3f} (step {evals[0]['step']}) -> "
              f"{evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']})")
    total = t_sample_total + t_train_total + t_eval_total
    if total:  # a resumed run that was already finished did nothing
        share = lambda t: f"{t:.1f} s ({100 * t / total:.0f}%)"
        print(f"time this session: sampling {share(t_sample_total)}, training "
              f"{share(t_train_total)}, evaluation {share(t_eval_total)}")
