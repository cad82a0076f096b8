"""
Supervised fine-tuning on prompt/solution pairs, LoRA or full, and the toy world's base model.

    python sft.py --toy                               # the toy base from scratch (~30 CPU-min)
    python sft.py --toy --model toy_base --rank 1     # LoRA SFT of the shipped toy base
    python sft.py --rank 1                            # rank-1 LoRA, Qwen2.5-3B on GSM8K train
    python sft.py --rank 0 --model Qwen/Qwen2.5-0.5B  # full fine-tuning
    python sft.py --toy --model toy_base --adapter tinylora --u 13 --tie 1   # 13 parameters
    python sft.py --rank 1 --data data/gsm8k --resume  # GSM8K from a local folder; continue
    torchrun --nproc_per_node 8 sft.py --rank 1       # data parallel on 8 GPUs: the same run

The loss is the mean cross-entropy over solution tokens only (sft_loss): the prompt is given, not
learned, and each solution ends in eos so the model learns to stop. Batches hold examples of
similar length (--bucket; the toy shuffles); the batch of a step is a function of (seed, step),
all that resuming needs. Default LR: Thinking Machines' fitted rule, 5e-5 x (10 if LoRA) x
(2000/hidden)^p (docs/design.md); the toy has its preset. The toy base (--toy without --model) is
pretrained on toy_task's mix at skill dial --skill-p (toy_base/README.md). --eval-loss adds the
held-out loss, and each problem's answer in bits (what a model stores of a memorised fact).
Simplified on purpose: no sequence packing. Under torchrun each process takes a share of every
step's batch and the gradients are summed before clipping: N processes end where one does.
"""
import argparse
import math
import os
import random
import time

import torch
from tqdm import tqdm

import adapters
from data_parallel import all_reduce, barrier, close_distributed, init_distributed, sum_grads
from errors import (COUNT, COUNT0, FRACTION, NONNEGATIVE, POSITIVE, SEED, HelpFormatter,
                    exit_on_user_error, user_exit)
from eval_gsm8k import add_eval_args, training_eval
from gsm8k import format_prompt, format_solution, load_splits, load_task
from toy_task import TOY_NEW_TOKENS, final_answer, pretrain_stream
from logprobs import logprobs_from_hidden
from model import (TOY_CONFIG, Qwen2, load_config, load_model, load_tokenizer, pick_dtype,
                   save_model, toy_tokenizer)
from runs import (append_metrics, begin_run, load_trainer_state, on_signals, open_run,
                  read_metrics, save_checkpoint)

# -----------------------------------------------------------------------------
# Data: tokenized examples, length-bucketed batches, the loss mask


def encode(tokenizer, problems):
    """[(prompt ids, solution ids + eos, loss flags)]. The two are encoded apart, as at inference,
    where the model continues the encoded prompt; the eos teaches it to stop. Every solution token
    is in the loss here; the toy base's pretraining leaves some out (toy_task.encode_doc)."""
    out = []
    for p in problems:
        target = tokenizer.encode(format_solution(p["answer"])) + [tokenizer.eos_id]
        out.append((tokenizer.encode(format_prompt(p["question"])), target, [True] * len(target)))
    return out


def epoch_batches(lengths, batch_size, seed, epoch, window=16):
    """One epoch's batches of example indices: shuffle, sort each window of `window` batches by
    length, cut it into batches, shuffle the batches. Similar lengths share a batch (little
    padding) while a batch still mixes problems; the remainder of batch_size is dropped (a new
    one each epoch)."""
    rng = random.Random(f"{seed}-{epoch}")                            # str seed: stable in Python
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    idx = idx[:len(idx) // batch_size * batch_size]
    batches = []
    for w in range(0, len(idx), window * batch_size):
        chunk = sorted(idx[w:w + window * batch_size], key=lambda i: lengths[i])
        batches += [chunk[s:s + batch_size] for s in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples, pad_id, device):
    """Right-padded inputs and targets (B, T) and the loss mask (B, T): targets[b, t] = the token
    after inputs[b, t], learned only where it is a solution token in the loss (or the eos)."""
    B, T = len(examples), max(len(p) + len(s) for p, s, _ in examples) - 1
    inputs = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (p, s, flags) in enumerate(examples):
        ids = torch.tensor(p + s)
        inputs[i, :len(ids) - 1], targets[i, :len(ids) - 1] = ids[:-1], ids[1:]
        mask[i, len(p) - 1:len(ids) - 1] = torch.tensor(flags)        # solution token j at P-1+j
    return inputs.to(device), targets.to(device), mask.to(device)

# -----------------------------------------------------------------------------
# The loss


def sft_loss(model, inputs, targets, mask, n_tokens=None, chunk_size=1024):
    """Mean next-token cross-entropy over the masked positions. Only their hidden states reach
    the lm_head, so prompt targets cost nothing and cannot leak into the loss; the logits are
    made chunk_size tokens at a time (logprobs.logprobs_from_hidden), never all stored.
    n_tokens: the whole batch's token count when it is split into micro-batches, so that their
    gradients add up to the batch's (every solution token weighs the same)."""
    h = model(inputs, hidden_only=True)[mask]                         # (N, C) masked positions
    t = targets[mask]                                                 # (N,)
    assert len(t) > 0, "no solution tokens in this batch"
    logp = logprobs_from_hidden(h, model.lm_head.weight, t, chunk_size=chunk_size)  # (N,)
    return -logp.sum() / (n_tokens or len(t))


@torch.no_grad()
def held_out_loss(model, tokenizer, problems, micro=64):
    """The SFT loss on problems (teacher-forced) -> (mean NLL, nats per solution token; each final
    answer's NLL in bits: the tokens before eos that spell the number after "####")."""
    was, device = model.training, model.lm_head.weight.device
    model.eval()
    examples, total, count, bits = encode(tokenizer, problems), 0.0, 0, []
    for s in range(0, len(examples), micro):
        batch = examples[s:s + micro]
        inputs, targets, mask = collate(batch, tokenizer.pad_id, device)
        h = model(inputs, hidden_only=True)                                      # (b, T, C)
        nll = -logprobs_from_hidden(h.flatten(0, 1), model.lm_head.weight,
                                    targets.flatten()).view_as(targets) * mask   # (b, T)
        total, count = total + nll.sum().item(), count + int(mask.sum())
        for (p, t, _), row, problem in zip(batch, nll, problems[s:s + micro]):
            gold = final_answer(problem["answer"])
            k = next((k for k in range(1, len(t)) if tokenizer.decode(t[-1 - k:-1]).strip() ==
                      gold), 0)                                 # the answer's tokens, eos last
            bits.append(row[len(p) + len(t) - 2 - k:len(p) + len(t) - 2].sum().item() / math.log(2))
    model.train(was)
    return total / max(count, 1), bits


def lr_at(step, args):
    """Linear warmup over --warmup steps, then constant, or cosine decay to --min-lr x the LR
    over the rest of the budget (the toy base's pretraining)."""
    if args.warmup and step <= args.warmup:
        return args.lr * step / args.warmup
    if args.schedule == "constant":
        return args.lr
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr + (1 - args.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def default_lr(config, lora):
    """Thinking Machines' rule fitted on SFT sweeps ("LoRA Without Regret"; docs/design.md)."""
    p = 0.0775 if config.attention_bias else 0.781                    # Qwen has q/k/v biases
    family = "Qwen" if p < 0.5 else "Llama"
    return 5e-5 * (10 if lora else 1) * (2000 / config.hidden_size) ** p, \
        f"5e-5 x {10 if lora else 1} x (2000/{config.hidden_size})^{p} (fitted for {family})"


# -----------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    # model and adapter
    add("--toy", action="store_true", help="toy world: the toy task and preset; without --model, "
        "train the toy base from scratch (model.TOY_CONFIG) into runs/toy_base")
    add("--model", default=None, help="hub id or local folder to fine-tune; default "
        "Qwen/Qwen2.5-3B (none with --toy: from scratch)")
    adapters.add_args(p, full="full fine-tuning (and from scratch, the default there)")
    add("--dtype", default=None, help="float32 / bfloat16; default bf16 on a bf16 GPU (float32 "
        "for --rank 0), else fp32")
    add("--device", default=None, help="cuda / mps / cpu; default the best available")
    # data
    add("--task", default=None, help="gsm8k or toy; default gsm8k, toy with --toy")
    add("--data", default=None, help="GSM8K data: a folder holding train.jsonl and test.jsonl, "
        "or one JSONL file (training and evaluation then both read it); default "
        "~/.cache/rank1/gsm8k (downloaded once)")
    add("--bucket", type=COUNT, default=None, help="batches per length-sorted window (less "
        "padding, less mixing); 1 = plain shuffled batches; default 16, toy 1")
    add("--max-len", type=COUNT, default=1024, help="drop training examples longer than this")
    add("--skill-p", type=FRACTION, default=0.1, help="toy base from scratch: the skill dial, the "
        "share of answers that start the worked mode (toy_task.pretrain_docs); 0 = never")
    add("--choice-rate", type=FRACTION, default=0.25, help="toy base from scratch: the share of "
        "problems that also teach the mode choice (toy_task.pretrain_docs)")
    # optimization
    add("--steps", type=COUNT, default=None, help="optimizer steps; default 250 (one epoch of "
        "GSM8K at batch 32); toy: 2000 from scratch, 60 fine-tuning")
    add("--batch-size", type=COUNT, default=None, help="examples per step, all processes together "
        "under torchrun; default 32, 64 with --toy")
    add("--lr", type=POSITIVE, default=None, help="AdamW LR; default the fitted rule (LoRA ~10x "
        "full), toy: its preset")
    add("--warmup", type=COUNT0, default=None, help="steps of linear LR warmup; default 0 (toy "
        "from scratch: 100)")
    add("--schedule", default=None, choices=("constant", "cosine"), help="the LR after the "
        "warmup: constant, or cosine decay to --min-lr x LR at the last step; default constant "
        "(toy from scratch: cosine)")
    add("--min-lr", type=FRACTION, default=0.05, help="--schedule cosine: the last step's LR as a "
        "fraction of --lr")
    add("--micro-batch", type=COUNT0, default=None, help="examples per forward/backward (gradients "
        "accumulate), per process under torchrun; 0 = the whole batch (share); default 8, toy 32 "
        "(from scratch 0)")
    add("--weight-decay", type=NONNEGATIVE, default=0.0, help="AdamW weight decay; 0 = plain Adam")
    add("--grad-clip", type=NONNEGATIVE, default=1.0, help="clip the gradient's global norm to "
        "this; 0 = off")
    add("--seed", type=SEED, default=0, help="seed of the init (LoRA's A, or the whole toy "
        "model) and the data order")
    # evaluation, logging, checkpoints
    add_eval_args(p, every="0, toy base 250", limit="200, toy 256", batch_size="64, toy 256")
    add("--max-new-tokens", type=COUNT, default=None, help="completion budget in evaluation; "
        "default 512, 48 with --toy")
    add("--target-acc", type=FRACTION, default=None, help="stop once eval accuracy reaches this; "
        "0 = off (the default)")
    add("--eval-loss", action="store_true", help="at each evaluation also the held-out loss "
        "(eval_loss, val_loss: nats per solution token); at the end each problem's answer in "
        "bits (eval_answer_bits)")
    add("--log-every", type=COUNT, default=10, help="print a progress line every N steps "
        "(metrics.jsonl gets every step)")
    add("--save-every", type=COUNT0, default=None, help="checkpoint every N steps (and at the "
        "end); 0 = only at the end; default 50, toy 0")
    add("--out", default=None, help="run folder; default runs/sft[_toy]_r<rank> (_full for "
        "--rank 0), runs/toy_base from scratch")
    add("--resume", action="store_true", help="continue --out from its newest good checkpoint")
    return resolve(p.parse_args(argv))


def resolve(args):
    """The presets (the toy base from scratch, toy fine-tuning, or the real run) and every check
    of the arguments, in one place. Sets args.scratch, and args.lr_rule (where the LR came from)."""
    args.scratch = scratch = args.toy and args.model is None
    args.lr_rule = None  # None: the fitted rule, once the model's config is read
    if args.rank is None and args.adapter == "tinylora":
        args.rank = 2  # the paper's SVD rank, PEFT's default
    if args.adapter != "lora" and (scratch or args.rank == 0):
        raise user_exit(f"--adapter {args.adapter} adapts a base model: it needs --model and "
                        f"--rank >= 1")
    toy = dict(task="toy", micro_batch=0, bucket=1, eval_limit=256, eval_batch_size=256,
               max_new_tokens=TOY_NEW_TOKENS, save_every=0, schedule="constant", target_acc=0)
    if scratch:  # the shipped toy base (toy_base/README.md): 2,000 steps of the pretraining mix
        preset = dict(toy, rank=0, steps=2000, batch_size=64, lr=3e-3, warmup=100,
                      schedule="cosine", eval_every=250)
    elif args.toy:  # micro-batches of 32: each pass's activations stay in the CPU's caches
        preset = dict(toy, rank=1, steps=60, batch_size=64, warmup=0, eval_every=0, micro_batch=32,
                      lr=3e-4 if args.rank == 0 else 1e-3)
    else:
        preset = dict(model="Qwen/Qwen2.5-3B", task="gsm8k", rank=1, steps=250, batch_size=32,
                      micro_batch=8, bucket=16, warmup=0, eval_every=0, eval_limit=200,
                      eval_batch_size=64, max_new_tokens=512, target_acc=0, save_every=50,
                      schedule="constant")
    if args.lr is not None:
        args.lr_rule = "--lr"
    elif scratch:
        args.lr_rule = "toy preset (from scratch: warmup, then cosine)"
    elif args.toy:
        method = "LoRA" if args.rank != 0 else "full fine-tuning"
        args.lr_rule = f"toy preset ({method}: best of 3 LRs in 60-step SFT of the toy base)"
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.val_limit and args.task != "toy":
        raise user_exit("--val-limit: only the toy task has a validation split")
    if not scratch and (args.skill_p != 0.1 or args.choice_rate != 0.25):
        raise user_exit("--skill-p and --choice-rate shape the toy base's pretraining: they need "
                        "--toy without --model")
    if scratch and args.rank != 0:
        raise user_exit(f"a model trained from scratch has no base to adapt: --rank {args.rank} "
                        f"needs --model")
    if args.out is None:
        kind = {"lora": f"r{args.rank}", "loraxs": f"xs{args.rank}",
                "tinylora": f"tiny_u{args.u}_tie{args.tie:g}"}[args.adapter]
        method = "full" if args.rank == 0 else kind
        args.out = "runs/toy_base" if scratch else f"runs/sft{'_toy' if args.toy else ''}_{method}"
    return args

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    exit_on_user_error(too_big="--batch-size or --micro-batch")
    args = parse_args()
    scratch, full, lr_rule = args.scratch, args.rank == 0, args.lr_rule
    del args.scratch, args.lr_rule  # derived, not arguments: args.json holds what was asked
    config = TOY_CONFIG if scratch else load_config(args.model)
    if args.lr is None:
        args.lr, lr_rule = default_lr(config, not full)
    # one process per device under torchrun (rank 0 writes the run folder and prints)
    rank, world, device = init_distributed(args.device)
    if args.batch_size % world:
        raise user_exit(f"--batch-size {args.batch_size} does not split evenly over {world} "
                        f"processes")
    if full and args.dtype is None and device.type != "cpu":
        args.dtype = "float32"  # Adam's steps (~LR relative to a weight) would vanish in bf16
        print("full fine-tuning: float32 weights (bf16 would drop Adam's small updates)")
    # everything that can be refused is checked before the run folder is written
    pick_dtype(args.dtype, device)
    tokenizer = toy_tokenizer() if scratch else load_tokenizer(args.model)
    train_problems, eval_set = load_splits(args.task, args.data, args.eval_limit)
    val_set = load_task(args.task, "val")[:args.val_limit] if args.val_limit else []
    if not full or args.rslora:
        adapters.check(config, args.rank, args.targets, args.layers, args.adapter, args.rslora)
    if not scratch:  # the examples, and how many batches an epoch holds
        train = encode(tokenizer, train_problems)
        n_all = len(train)
        train = [ex for ex in train if len(ex[0]) + len(ex[1]) <= args.max_len]
        lengths = [len(p) + len(s) for p, s, _ in train]
        n_batches = len(train) // args.batch_size
        if n_batches == 0:
            raise user_exit(f"{len(train)} of {n_all} training examples fit --max-len "
                            f"{args.max_len}: fewer than one batch of {args.batch_size} "
                            f"(--batch-size)")
    free = {"resume", "out", "steps", "device", "eval_every", "eval_batch_size", "log_every",
            "save_every", "val_limit", "eval_samples", "eval_start", "eval_loss"}  # resumable
    ckpt = open_run(args, free, "sft.py", rank)  # its lock taken; nothing written yet
    on_signals(args.out)

    # --- model, tokenizer, optimizer
    if scratch:  # one thread: a sum split over threads rounds otherwise, so the base would differ
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if scratch:
        model = load_model(ckpt, device=device, dtype=args.dtype) if ckpt else \
            Qwen2(config).to(device)
        n = sum(p.numel() for p in model.parameters())
        print(f"toy base from scratch: {n:,} parameters on {device}, float32")
    else:
        model = load_model(ckpt if (ckpt and full) else args.model, device=device, dtype=args.dtype)
    if full:
        model.requires_grad_(True)
    else:
        adapters.apply(model, args.adapter, args.rank, args.alpha, args.u, args.tie, args.targets,
                       args.layers, rslora=args.rslora)
        if ckpt:
            adapters.load(model, ckpt)
    print(f"lr {args.lr:.2e} from {lr_rule}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=args.weight_decay)
    start = 0
    if ckpt:
        start = load_trainer_state(ckpt, optimizer, named)[0]["step"]
        print(f"resumed from {ckpt} at step {start}")
    begin_run(args, "sft.py", start, rank)  # args.json; metrics.jsonl cut to the checkpoint

    # --- data: the batch of step s is a function of (seed, s), so resuming needs only s
    what = "full fine-tuning" if full else f"{args.adapter} rank {args.rank}"
    if scratch:  # the toy base: toy_task's pretraining mix at dial --skill-p, streamed
        stream = pretrain_stream(tokenizer.encode, tokenizer.eos_id, args.skill_p, args.seed,
                                 args.batch_size, args.choice_rate)
        for _ in range(start):
            next(stream)
        batch_of = lambda step: next(stream)
        data = f"the toy pretraining mix, skill dial {args.skill_p}, {len(train_problems)} problems"
    else:
        epochs = {}

        def batch_of(step):
            e = (step - 1) // n_batches
            if e not in epochs:
                epochs.clear()
                epochs[e] = epoch_batches(lengths, args.batch_size, args.seed, e, args.bucket)
            return e, [train[i] for i in epochs[e][(step - 1) % n_batches]]
        data = f"{len(train)} train examples ({n_all - len(train)} longer than {args.max_len} " \
               f"dropped), {args.steps / n_batches:.2f} epochs"
    print(f"{args.task}: {data}, {len(eval_set)} held out | batch {args.batch_size}, {args.steps} "
          f"steps | {what}, {sum(p.numel() for p in params):,} trainable parameters -> {args.out}"
          + (f" | {world} processes, {args.batch_size // world} examples each"
             if world > 1 else ""))

    def evaluate(step, write=print):
        """Greedy accuracy on the held-out problems (at the end also val and sampled metrics): a
        metrics row and a line."""
        row = dict(step=step, **training_eval(model, tokenizer, eval_set, args, step == args.steps,
                                              val_set, rank, world))
        if args.eval_loss and rank == 0:  # one process: the loss is cheap beside generation
            row["eval_loss"], bits = held_out_loss(model, tokenizer, eval_set)
            row.update({"eval_answer_bits": [round(b, 4) for b in bits]} if step == args.steps
                       else {}, **({"val_loss": held_out_loss(model, tokenizer, val_set)[0]}
                                   if val_set else {}))
        if rank == 0:
            append_metrics(args.out, row)
        write(f"step {step:5d}/{args.steps} | eval accuracy {row['eval_accuracy']:.3f} | flexible "
              f"{row['eval_flexible_accuracy']:.3f} | format {row['eval_format_rate']:.3f}"
              + (f" | {row['eval_seconds']:.1f} s" if step else ""))
        return row["eval_accuracy"]

    if start == 0 and args.eval_start:
        evaluate(0)

    # -------------------------------------------------------------------------
    # The loop
    model.train()
    epoch = None
    t_start, tokens_seen, step = time.time(), 0, start
    bar = tqdm(range(start + 1, args.steps + 1), desc="sft", initial=start, total=args.steps,
               dynamic_ncols=True, disable=rank > 0)
    for step in bar:
        t0 = time.time()
        epoch, examples = batch_of(step)
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        n_tokens = sum(sum(flags) for _, _, flags in examples)        # the whole batch's targets
        share = len(examples) // world                                # this process's examples
        mine = examples[rank * share:(rank + 1) * share]
        micro = args.micro_batch or len(mine)
        optimizer.zero_grad(set_to_none=True)
        loss, padded = 0.0, 0
        for s in range(0, len(mine), micro):
            # right padding needs no pad mask: causal attention never looks right
            inputs, targets, mask = collate(mine[s:s + micro], tokenizer.pad_id, device)
            micro_loss = sft_loss(model, inputs, targets, mask, n_tokens)
            micro_loss.backward()
            loss, padded = loss + micro_loss.item(), padded + inputs.numel()
        sum_grads(params)                                             # + the other processes'
        loss, padded = all_reduce([loss, padded])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or float("inf")).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise SystemExit(f"step {step}: loss {loss} / grad norm {grad_norm} is not finite; "
                             f"stopping without an update")
        optimizer.step()
        dt, = all_reduce([time.time() - t0], op="max")               # the slowest process's
        tokens_seen += n_tokens
        real = sum(len(p) + len(s) - 1 for p, s, _ in examples)
        row = dict(step=step, loss=loss, grad_norm=grad_norm, lr=lr, tokens=n_tokens,
                   seconds=round(dt, 3), padding=round(1 - real / padded, 4))
        if rank == 0:
            append_metrics(args.out, row)
        if step % args.log_every == 0 or step == args.steps:
            bar.write(f"step {step:5d}/{args.steps} | loss {row['loss']:.4f} | gnorm "
                      f"{grad_norm:7.3f} | lr {lr:.1e} | {padded / dt:7.0f} tok/s | {dt:5.2f} s "
                      f"| {time.time() - t_start:6.1f} s total")

        # --- evaluate, checkpoint; --target-acc stops the run once it is reached
        done = False
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            acc = evaluate(step, bar.write)
            done = bool(args.target_acc) and acc >= args.target_acc
        if done or step == args.steps or (args.save_every and step % args.save_every == 0):
            state = dict(step=step, epoch=epoch, data_seed=args.seed)
            if rank == 0:
                save_checkpoint(os.path.join(args.out, f"step_{step:06d}"), model, optimizer,
                                named, state, full=full, tokenizer=tokenizer, base_name=args.model)
            barrier()  # the others wait until the checkpoint is on disk: it is the whole run's
        if done:
            break
    bar.close()
    close_distributed()
    if rank > 0:
        raise SystemExit  # rank 0 reads the metrics and prints the summary

    # --- summary
    evals = [r for r in read_metrics(args.out) if "eval_accuracy" in r]
    first = f"{evals[0]['eval_accuracy']:.3f} (step {evals[0]['step']}) -> " * (len(evals) > 1)
    print(f"eval accuracy {first}{evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']}) | "
          f"{tokens_seen:,} solution tokens, {time.time() - t_start:.1f} s this session")
    if scratch:  # the base itself, a model folder beside its checkpoints
        save_model(model, args.out)
        tokenizer.tok.save(os.path.join(args.out, "tokenizer.json"))
        print(f"the toy base: {args.out} (config.json, model.safetensors, tokenizer.json); measure "
              f"it with `python eval_gsm8k.py --toy --model {args.out} --samples 8`")
