"""
GRPO: sample G answers to each question, reward the right ones, push up the answers that beat
their group. LoRA of any rank, or full fine-tuning; checkpoints that resume exactly.

    python grpo.py --toy --rank 1                # the toy world from toy_base/, 2-core CPU, minutes
    python grpo.py --toy --rank 0                # full fine-tuning (LR a tenth of LoRA's)
    python grpo.py --toy --rank 1 --reference    # the same run through the plain reference code
    python grpo.py --toy --adapter tinylora --u 13 --tie 1   # TinyLoRA: 13 trainable parameters
    python grpo.py --rank 1 --compile            # Qwen2.5-3B on GSM8K train, one GPU
    torchrun --nproc_per_node 8 grpo.py --rank 1 # data parallel on 8 GPUs: the same run, faster

A step (the loop at the bottom): B prompts x G samples (rollout), reward 1 for a right strict
answer, advantage = reward - group mean, a token-level policy-gradient loss over micro-batches,
Adam(0.9, 0.95), constant LR, clipping at 1.0 (docs/design.md, "GRPO"). One process alternates
sampling and training on the same weights (the sampler is never stale). --reference runs it
through the plain code (no cache, no chunking, every sample trained). Under torchrun each process
takes whole groups and the gradients are summed: N processes end where one does.
"""
import argparse
import math
import os
import time
from collections import namedtuple

import torch

import adapters
from data_parallel import (all_gather, all_reduce, barrier, close_distributed, init_distributed,
                           sum_grads)
from errors import (COUNT, COUNT0, NONNEGATIVE, POSITIVE, SEED, HelpFormatter, exit_on_user_error,
                    number, user_exit)
from eval_gsm8k import add_eval_args, training_eval
from gsm8k import (STOP_STRINGS, batch_indices, extract_answer, format_prompt, load_splits,
                   load_task, reward, stop_ids, truncate)
from lora import adapters_disabled, lora_modules, merged
from logprobs import completion_logprobs, reference_logprobs, sampler_grid
from model import TOY_BASE, load_config, load_model, load_tokenizer, pick_device, pick_dtype
from runs import (append_metrics, begin_run, load_trainer_state, newest_checkpoint, on_signals,
                  open_run, read_metrics, save_checkpoint)
from sampler import generate, reference_generate, sample_key
from toy_task import TOY_NEW_TOKENS

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
    """-Σ A·ratio·mask / Σ mask with ratio = exp(logp - logp_old): logp (N, T) the trainer's
    log-probs under grad, logp_old (N, T) the sampler's, adv (N,) one advantage per sample, mask
    (N, T) True on completion tokens.
    - One sum over every token of the batch, divided once by the token count: DAPO's token-level
      loss (Yu et al. 2025, §3.3); DeepSeekMath's GRPO averages within each sequence first, which
      weights a token of a short answer more. n_tokens: the whole batch's count, so micro-batch
      gradients add up to the batch's.
    - On policy ratio = 1 and the gradient is A·∇logp: REINFORCE with the group mean as baseline;
      the ratio corrects for the sampler and trainer rounding differently (bf16, cache).
    - clip=ε: PPO's clipped surrogate min(ratio·A, clip(ratio, 1-ε, 1+ε)·A) (Schulman et al.
      2017, eq. 7), for a batch reused by several updates (--epochs > 1)."""
    ratio = torch.exp(logp - logp_old)                                   # (N, T)
    obj = ratio * adv[:, None]
    if clip is not None:
        obj = torch.minimum(obj, ratio.clamp(1 - clip, 1 + clip) * adv[:, None])
    n = mask.sum() if n_tokens is None else n_tokens
    return -torch.where(mask, obj, 0.0).sum() / n


def kl_k3(logp, logp_ref):
    """KL(π || π_ref) per token from samples of π: exp(r) - r - 1, r = logp_ref - logp, the "k3"
    estimator (Schulman 2020, "Approximating KL Divergence"; GRPO's eq. 4): unbiased, >= 0."""
    r = logp_ref - logp
    return torch.exp(r) - r - 1

# -----------------------------------------------------------------------------
# The pieces of a step: rollouts (of the problems gsm8k.batch_indices picks), micro-batches


# b prompts (token ids), b*G completions (sample i*G + j of prompt i), the sampler's log-prob of
# each completion token, the completions decoded, and their rewards (b, G)
Rollouts = namedtuple("Rollouts", "prompts completions logps texts rewards")


def rollout(model, tokenizer, problems, keys, args):
    """G samples of each problem, sample j of problem i keyed by (keys[i], j) alone, scored by
    the GSM8K rule (gsm8k.reward) -> Rollouts."""
    prompts = [tokenizer.encode(format_prompt(p["question"])) for p in problems]
    sampling = dict(temperature=args.temperature, stop_ids=stop_ids(tokenizer), keys=keys,
                    stop_strings=STOP_STRINGS, tokenizer=tokenizer, n=args.group,
                    return_logprobs=True)
    model.eval()
    if args.reference:  # the plain way: each sample alone, a full forward per token
        completions, logps = reference_generate(model, prompts, args.max_new_tokens, **sampling)
    else:               # the same samples fast: a KV cache, W + ΔW merged (lora.merged)
        with merged(model):
            completions, logps = generate(model, prompts, args.max_new_tokens, **sampling,
                                          compile=args.compile)
    texts = [tokenizer.decode(c) for c in completions]
    answers = [p["answer"] for p in problems for _ in range(args.group)]
    rewards = torch.tensor([reward(t, a) for t, a in zip(texts, answers)])
    return Rollouts(prompts, completions, logps, texts, rewards.view(len(problems), args.group))


def micro_batches(rollouts, adv, G, size, skip_zero=True):
    """The forward/backward passes of a step: (samples, (prompts, completions, owner)) for at most
    `size` samples each (0 = all), in order; sample k is prompt k // G's, each prompt is given
    once and owner[i] is the place of sample samples[i]'s prompt. With skip_zero, groups whose
    advantages are all 0 are left out: their loss is 0·ratio, so they add nothing."""
    teach = [k for k in range(len(adv))
             if not skip_zero or adv[k // G * G:(k // G + 1) * G].any()]
    size = size or max(1, len(teach))
    for samples in (teach[s:s + size] for s in range(0, len(teach), size)):
        firsts = sorted({k // G for k in samples})
        where = {p: i for i, p in enumerate(firsts)}
        yield samples, ([rollouts.prompts[p] for p in firsts],
                        [rollouts.completions[k] for k in samples],
                        [where[k // G] for k in samples])

# -----------------------------------------------------------------------------
# The update: the loss's gradient over micro-batches, then one Adam step


def policy_gradient(model, rollouts, adv, n_tokens, args):
    """The gradient of the batch's policy loss (+ the KL term with --kl), accumulated in .grad
    micro-batch by micro-batch -> health: the loss, and the trainer's log-probs' distance from
    the sampler's (rounding, on policy)."""
    logprobs = reference_logprobs if args.reference else completion_logprobs
    clip = args.clip if args.epochs > 1 else None
    skip = not (args.reference or args.kl)  # the plain path trains all; --kl is not 0 at adv 0
    health = dict(loss=0.0, gap=0.0, kl_sampler=0.0, kl_ref=0.0, tokens=0)
    for samples, batch in micro_batches(rollouts, adv, args.group, args.micro_batch, skip):
        logp, mask = logprobs(model, *batch, temperature=args.temperature)      # (n, L) each
        old = sampler_grid([rollouts.logps[k] for k in samples], mask)           # (n, L)
        loss = policy_loss(logp, old, adv[samples], mask, clip, n_tokens)
        if args.kl:
            loss = loss + args.kl * kl_to_base(model, logprobs, batch, logp, mask, n_tokens, args,
                                               health)
        loss.backward()
        new, old = logp.detach()[mask], old[mask]
        health["loss"] += loss.item()
        health["gap"] += (new - old).abs().sum().item()
        health["kl_sampler"] += kl_k3(old, new).sum().item()
        health["tokens"] += len(new)
    return health


def kl_to_base(model, logprobs, batch, logp, mask, n_tokens, args, health):
    """The k3 estimate of KL(π || base) summed over the batch's tokens / n_tokens: the base is
    the same model with its adapters off, so the reference costs no memory."""
    with torch.no_grad(), adapters_disabled(model):
        ref, _ = logprobs(model, *batch, temperature=args.temperature)
    kl = kl_k3(logp, ref)[mask].sum() / n_tokens
    health["kl_ref"] += kl.item()
    return kl


def optimizer_step(optimizer, params, health, args, step):
    """Sum every process's gradient, clip its norm, take the Adam step -> (health summed over the
    processes, the gradient norm). A non-finite loss or norm stops the run before the step."""
    for p in (p for p in params if p.grad is None):  # every advantage was 0: zeros
        p.grad = torch.zeros_like(p)
    sum_grads(params)
    keys = ("loss", "gap", "kl_sampler", "kl_ref", "tokens")
    health = dict(zip(keys, all_reduce([health[k] for k in keys])))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or math.inf).item()
    if not (math.isfinite(health["loss"]) and math.isfinite(grad_norm)):
        raise SystemExit(f"step {step}: loss {health['loss']} / grad norm {grad_norm} is not "
                         f"finite; stopping without an update. Last good checkpoint: "
                         f"{newest_checkpoint(args.out) or 'none'}")
    optimizer.step()
    return health, grad_norm

# -----------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    # model and adapter
    add("--toy", action="store_true", help="the toy world: toy_base/, the toy task, its preset")
    add("--model", default=None, help="hub id or folder; default Qwen/Qwen2.5-3B, --toy toy_base/")
    adapters.add_args(p, full="full fine-tuning (every weight, embeddings included)")
    add("--dtype", default=None, help="float32 / bfloat16; default bf16 on a bf16 GPU (float32 "
        "for --rank 0), else float32 (LoRA factors stay float32)")
    add("--device", default=None, help="cuda / mps / cpu; default the best available")
    # data and sampling
    add("--task", default=None, help="gsm8k or toy; default gsm8k, toy with --toy")
    add("--data", default=None, help="GSM8K: a folder with train.jsonl and test.jsonl, or one "
        "JSONL file for both; default ~/.cache/rank1/gsm8k (downloaded once)")
    add("--batch", type=COUNT, default=None, help="prompts per step (all processes); default 32")
    add("--group", type=number(int, low=2), default=None, help="samples per prompt G; default 8")
    add("--max-new-tokens", type=COUNT, default=None, help="completion budget; default 512, 48 "
        "with --toy")
    add("--temperature", type=POSITIVE, default=1.0, help="sampling temperature (log-probs too)")
    add("--reference", action="store_true", help="every step through the plain reference code "
        "(no cache, no chunking, every sample trained): slow, the same run to float rounding")
    # optimization
    add("--steps", type=COUNT, default=None, help="training steps; default 200, 60 with --toy")
    add("--lr", type=POSITIVE, default=None, help="Adam LR, constant; default 5e-5 (1e-3 with "
        "--toy), a tenth of that for --rank 0")
    add("--epochs", type=COUNT, default=1, help="updates per batch of rollouts (> 1: PPO clipping)")
    add("--clip", type=POSITIVE, default=0.2, help="PPO clip range eps (with --epochs > 1)")
    add("--kl", type=NONNEGATIVE, default=0.0, help="weight of the KL to the base (LoRA); 0 = none")
    add("--std-norm", action="store_true", help="divide advantages by the group std (DeepSeekMath)")
    add("--grad-clip", type=NONNEGATIVE, default=1.0, help="clip the gradient norm; 0 = off")
    add("--adam-eps", type=POSITIVE, default=1e-8, help="Adam's epsilon; ~0 (1e-30) makes Adam "
        "blind to each tensor's gradient scale (docs/design.md, Adam's two degrees of freedom)")
    add("--lr-ratio", type=POSITIVE, default=1.0, help="LoRA only: B's LR over A's (--lr is A's)")
    add("--init-scale", type=POSITIVE, default=1.0, help="LoRA only: multiply A's init (PEFT's "
        "Kaiming-uniform) by this, sigma_A")
    add("--micro-batch", type=COUNT0, default=None, help="sequences per forward/backward (per "
        "process); 0 = all; default 8, 64 with --toy")
    add("--grad-checkpoint", action="store_true", help="recompute each block in backward (memory)")
    add("--compile", action="store_true", help="a compiled decode step (CUDA graphs on a GPU)")
    add("--seed", type=SEED, default=0, help="seed of LoRA's init, data order and sampling")
    # evaluation and checkpoints
    add_eval_args(p, every="20, 10 with --toy", limit="200, 256 with --toy",
                  batch_size="64, 256 with --toy")
    add("--save-every", type=COUNT, default=10, help="checkpoint every N steps (and at the end)")
    add("--out", default=None, help="run folder; default runs/grpo[_toy]_r<rank> (or _full)")
    add("--resume", action="store_true", help="continue --out from its newest good checkpoint")
    return resolve(p.parse_args(argv))


def resolve(args):
    """The presets (the toy world, or the real run) and every check of the flags alone."""
    if args.rank is None:
        args.rank = 2 if args.adapter == "tinylora" else 1
    if args.adapter != "lora" and args.rank == 0:
        raise user_exit(f"--adapter {args.adapter} needs --rank >= 1 (--rank 0 is full "
                        f"fine-tuning, --adapter lora)")
    preset = dict(model=TOY_BASE, task="toy", batch=32, group=8, max_new_tokens=TOY_NEW_TOKENS,
                  steps=60, lr=1e-3, micro_batch=64, eval_every=10, eval_limit=256,
                  eval_batch_size=256) if args.toy else \
        dict(model="Qwen/Qwen2.5-3B", task="gsm8k", batch=32, group=8, max_new_tokens=512,
             steps=200, lr=5e-5, micro_batch=8, eval_every=20, eval_limit=200, eval_batch_size=64)
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
    lora_knobs = args.lr_ratio != 1 or args.init_scale != 1 or args.rslora
    if (args.rank == 0 or args.adapter != "lora") and lora_knobs:
        raise user_exit(f"--lr-ratio ({args.lr_ratio}), --init-scale ({args.init_scale}) and "
                        f"--rslora are LoRA's knobs: they need --adapter lora and --rank >= 1")
    if args.kl and args.rank == 0:  # the reference would be a second full copy of the weights
        raise user_exit("--kl needs LoRA (the reference is the model with adapters off); with "
                        "--rank 0 it would need a frozen copy of every weight, which grpo.py "
                        "does not keep")
    if args.rank == 0 and args.dtype is None and pick_device(args.device).type != "cpu":
        # Adam's steps (~LR relative to a weight) vanish in bf16's 8-bit mantissa; LoRA's factors
        # are fp32 under a bf16 base, so full fine-tuning gets fp32 weights, with TF32 matmuls
        args.dtype = "float32"
        torch.backends.cuda.matmul.allow_tf32 = True
    return args

def check_fit(args, config, tokenizer, train, held_out):
    """Sizes against what they must fit, before anything is written: the adapter against the
    matrices, a step's prompts against the problems, prompt + new tokens against the context."""
    if args.rank:
        adapters.check(config, args.rank, args.targets, args.layers)
    if args.batch > len(train):
        raise user_exit(f"--batch {args.batch}: a step's prompts are distinct problems, and the "
                        f"training split has {len(train)}")
    longest = max(len(tokenizer.encode(format_prompt(p["question"]))) for p in train + held_out)
    if longest + args.max_new_tokens > (context := config.max_position_embeddings):
        raise user_exit(f"--max-new-tokens {args.max_new_tokens}: with the longest prompt "
                        f"({longest} tokens) it passes the model's context ({context})")

# -----------------------------------------------------------------------------
# Setup: the model and its adapter, the optimizer, a resumed run's state


def build(args, ckpt, device):
    """(model, optimizer, named trainable parameters, the step to start after)."""
    full = args.rank == 0
    torch.manual_seed(args.seed)
    model = load_model(ckpt if (ckpt and full) else args.model, device=device, dtype=args.dtype)
    if full:
        model.requires_grad_(True)
    else:
        adapters.apply(model, args.adapter, args.rank, args.alpha, args.u, args.tie, args.targets,
                       args.layers, rslora=args.rslora)
        with torch.no_grad():  # sigma_A -> init_scale * sigma_A (a resumed adapter loads over it)
            for m in lora_modules(model).values():
                m.lora_A.mul_(args.init_scale)
        if ckpt:
            adapters.load(model, ckpt)
    model.grad_checkpointing = args.grad_checkpoint
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Adam(0.9, 0.95); B's LR is --lr-ratio times A's (one group each; full fine-tuning has one)
    is_b = lambda n: n.endswith("lora_B")
    groups = [dict(params=[p for n, p in named if not is_b(n)], lr=args.lr),
              dict(params=[p for n, p in named if is_b(n)], lr=args.lr * args.lr_ratio)]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.95),
                                 eps=args.adam_eps)
    if not ckpt:
        return model, optimizer, named, 0
    state, tensors = load_trainer_state(ckpt, optimizer, named)
    torch.set_rng_state(tensors["rng.torch_cpu"])  # (the sampler has no state: keys below)
    print(f"resumed from {ckpt} at step {state['step']}")
    return model, optimizer, named, state["step"]

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    exit_on_user_error(too_big="--group, --batch or --micro-batch")
    args = parse_args()
    # one process per device under torchrun (rank 0 writes the run folder and prints)
    rank, world, device = init_distributed(args.device)
    if args.batch % world:
        raise user_exit(f"--batch {args.batch} prompts do not split evenly over {world} processes")
    full = args.rank == 0
    # everything that can be refused is checked before the run folder is written
    pick_dtype(args.dtype, device)
    tokenizer = load_tokenizer(args.model)
    train_set, eval_set = load_splits(args.task, args.data, args.eval_limit)
    val_set = load_task(args.task, "val")[:args.val_limit] if args.val_limit else []
    check_fit(args, load_config(args.model), tokenizer, train_set, eval_set + val_set)
    free = {"resume", "out", "steps", "device", "eval_every", "eval_batch_size", "save_every",
            "grad_checkpoint", "val_limit", "eval_samples", "eval_start"}  # resumable
    ckpt = open_run(args, free, "grpo.py", rank)  # its lock taken; nothing written yet
    on_signals(args.out)
    model, optimizer, named, start = build(args, ckpt, device)
    params = [p for _, p in named]
    begin_run(args, "grpo.py", start, rank)  # args.json; metrics.jsonl cut to the checkpoint
    B, G = args.batch, args.group
    lo, hi = rank * B // world, (rank + 1) * B // world  # this process's prompts of each step
    what = "full fine-tuning" if full else f"{args.adapter} rank {args.rank}"
    print(f"{args.task}: {len(train_set)} train problems, {len(eval_set)} held out | {B} prompts "
          f"x {G} samples, {args.steps} steps, lr {args.lr:.1e}, {what}, "
          f"{sum(p.numel() for p in params):,} trainable parameters -> {args.out}"
          + (" | the reference path" if args.reference else "")
          + (f" | {world} processes, {B // world} prompts each" if world > 1 else ""))

    def evaluate(step):
        """Held-out accuracy (at the end also val and sampled): a row, a line; -> seconds."""
        row = dict(step=step, **training_eval(model, tokenizer, eval_set, args,
                                              step == args.steps, val_set, rank, world))
        if rank == 0:
            append_metrics(args.out, row)
        print(f"step {step:5d}/{args.steps} | eval accuracy {row['eval_accuracy']:.3f} | "
              f"flexible {row['eval_flexible_accuracy']:.3f} | format "
              f"{row['eval_format_rate']:.3f}")
        return row["eval_seconds"]

    def log_step(step, rollouts, n_tokens, health, grad_norm, t_sample, t_train):
        """One metrics row and one line per step, of the whole batch (every process's)."""
        rewards = all_gather(rollouts.rewards)                              # (B, G)
        zero_var = (rewards == rewards[:, :1]).all(1).float().mean().item()
        n_format, = all_reduce([sum(extract_answer(truncate(t)) is not None
                                    for t in rollouts.texts)])
        trained = health["tokens"]  # the tokens of the groups that taught something
        mean = lambda key: health[key] / trained if trained else None
        row = dict(step=step, reward=rewards.mean().item(), reward_std=rewards.std().item(),
                   zero_var=zero_var, length=n_tokens / (B * G), format_rate=n_format / (B * G),
                   logp_gap=mean("gap"), kl_sampler=mean("kl_sampler"), loss=health["loss"],
                   grad_norm=grad_norm, lr=args.lr, trained_tokens=int(trained),
                   t_sample=round(t_sample, 3), t_train=round(t_train, 3),
                   tokens_per_s=n_tokens / t_sample,
                   **({"kl_ref": health["kl_ref"]} if args.kl else {}))
        if rank == 0:
            append_metrics(args.out, row)
        gap = f"{row['logp_gap']:.1e}" if trained else "    -  "
        print(f"step {step:5d}/{args.steps} | reward {row['reward']:.3f} ± {row['reward_std']:.2f} "
              f"| zero-var {zero_var:.2f} | len {row['length']:5.1f} | fmt "
              f"{row['format_rate']:.2f} | gap {gap} | gnorm {grad_norm:.3f} | lr {args.lr:.1e} "
              f"| sample {t_sample:5.1f} s, train {t_train:5.1f} s | {row['tokens_per_s']:6.0f} "
              f"tok/s")

    def save(step):
        """The checkpoint of a step: weights, Adam's moments, the RNG, the data position."""
        state = dict(step=step, data_seed=args.seed, epoch=step * B // len(train_set),
                     position=step * B % len(train_set), samples=step * B * G)
        rng = {"rng.torch_cpu": torch.get_rng_state()}  # every process's is the same
        if rank == 0:
            save_checkpoint(os.path.join(args.out, f"step_{step:06d}"), model, optimizer, named,
                            state, full=full, tokenizer=tokenizer, base_name=args.model, extra=rng)
        barrier()  # the others wait until the checkpoint is on disk: it is the whole run's

    t_sample_total = t_train_total = t_eval_total = 0.0
    if start == 0 and args.eval_start:
        t_eval_total += evaluate(0)

    # -------------------------------------------------------------------------
    # The loop: sample, score, update, log
    for step in range(start + 1, args.steps + 1):
        # --- sample G answers to each prompt, sample j of prompt k keyed by (seed, step, k, j)
        t0 = time.time()
        problems = [train_set[i] for i in batch_indices(len(train_set), B, step, args.seed)]
        keys = [sample_key(args.seed, step, k) for k in range(B)]
        rollouts = rollout(model, tokenizer, problems[lo:hi], keys[lo:hi], args)
        # --- score: each reward against its group's mean
        adv = group_advantages(rollouts.rewards, args.std_norm).flatten().to(device)  # (b*G,)
        # the loss is divided by the whole batch's token count (DAPO's token-level mean)
        n_tokens, = all_reduce([sum(map(len, rollouts.completions))])
        t_sample = time.time() - t0

        # --- update: the loss's gradient over micro-batches, then Adam (once per epoch)
        t0 = time.time()
        model.train()
        for epoch in range(args.epochs):
            optimizer.zero_grad(set_to_none=True)
            health = policy_gradient(model, rollouts, adv, n_tokens, args)
            health, grad_norm = optimizer_step(optimizer, params, health, args, step)
            if epoch == 0:  # on-policy health: the sampler's and the trainer's log-probs agree
                first = health
        health = dict(health, **{k: first[k] for k in ("gap", "kl_sampler", "tokens")})
        t_sample, t_train = all_reduce([t_sample, time.time() - t0], op="max")  # the slowest's
        t_sample_total, t_train_total = t_sample_total + t_sample, t_train_total + t_train

        # --- log, evaluate, checkpoint (rank 0 writes)
        log_step(step, rollouts, n_tokens, health, grad_norm, t_sample, t_train)
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            t_eval_total += evaluate(step)
        if step == args.steps or step % args.save_every == 0:
            save(step)

    # --- summary (rank 0 reads the metrics)
    close_distributed()
    evals = [r for r in read_metrics(args.out) if "eval_accuracy" in r] if rank == 0 else []
    if len(evals) >= 2:
        print(f"eval accuracy {evals[0]['eval_accuracy']:.3f} (step {evals[0]['step']}) -> "
              f"{evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']})")
    total = t_sample_total + t_train_total + t_eval_total
    share = lambda t: f"{t:.1f} s ({100 * t / max(total, 1e-9):.0f}%)"
    print(f"time this session: sampling {share(t_sample_total)}, training "
          f"{share(t_train_total)}, evaluation {share(t_eval_total)}")
