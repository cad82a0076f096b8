"""
Data parallel under torchrun: one process per device, and the same run as one process.

    torchrun --nproc_per_node 8 grpo.py --rank 1   # 8 GPUs (NCCL)
    torchrun --nproc_per_node 2 sft.py --toy --model toy_base --rank 1   # 2 CPU processes (gloo)

`torchrun` starts N copies of the script. Each builds the same model from the same seed (or
checkpoint), takes its share of every step's batch, and adds its gradient to the others' before
clipping and Adam, so all N take the same step and stay equal; rank 0 alone writes the run folder
and prints. A run on N processes ends where one process ends because a sample is a function of
(seed, step, prompt, sample) alone (sampler.py) and the loss is divided by the whole batch's token
count. Without torchrun every helper here is the identity. torch.distributed is the engine (NCCL
on CUDA, gloo on a CPU); nothing is built on top of it.
"""
import os
import sys

import torch
import torch.distributed as dist

from errors import describe, user_exit
from model import pick_device


def init_distributed(device=None):
    """(rank, world size, device). Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set): a process
    group, NCCL on CUDA and gloo on a CPU, this process's own GPU cuda:LOCAL_RANK, and stdout of
    every rank but 0 sent to os.devnull, so one process prints (stderr stays: every rank's errors
    show). Without torchrun: (0, 1, pick_device(device)), and nothing else happens."""
    device = pick_device(device)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise user_exit(f"torchrun: data parallel runs on cuda (NCCL) or cpu (gloo), not "
                        f"{device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if rank:
        sys.stdout = open(os.devnull, "w")
    return rank, world, device


def comm_device():
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values, op="sum"):
    """A list of numbers -> their sums (or "max") over the processes, as floats (float64, so
    counts and sums of floats come back as one process would add them, to rounding)."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def all_gather(t):
    """Every process's tensor (same shape), concatenated along dim 0 in rank order: with
    contiguous shares, the whole batch in its order."""
    if not dist.is_initialized():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def sum_grads(params):
    """Add up every process's gradients, in place. Each process's loss is its share of the
    batch's loss, already divided by the *whole* batch's count (tokens), so the sum is the
    gradient of one process on the whole batch, to rounding; it comes before clipping and Adam,
    so every process takes the same step. One all-reduce per tensor: a few MB for LoRA, and what
    DDP does in buckets."""
    if not dist.is_initialized():
        return
    for p in params:
        assert p.grad is not None, \
            f"a trainable parameter {tuple(p.shape)} got no gradient: the processes would disagree"
        dist.all_reduce(p.grad)


def reduce_eval(row):
    """The evaluation row of one process's share (eval_set[rank::world]) -> the whole set's: the
    rates are counts over eval_n, so the counts and n add up (the result is exactly one
    process's k / n); eval_seconds is the slowest process's."""
    if not dist.is_initialized():
        return row
    rates = ("eval_accuracy", "eval_flexible_accuracy", "eval_format_rate")
    n = row["eval_n"]
    *counts, n_all = all_reduce([round(row[k] * n) for k in rates] + [n])
    seconds, = all_reduce([row["eval_seconds"]], op="max")
    shares = [None] * dist.get_world_size()  # each process's problems by stride: interleave them
    dist.all_gather_object(shares, row["eval_correct"])
    correct = "".join(s[i // len(shares)] for i, s in
                      ((i, shares[i % len(shares)]) for i in range(int(n_all))))
    return {**row, **{k: c / max(n_all, 1) for k, c in zip(rates, counts)},
            "eval_n": int(n_all), "eval_seconds": round(seconds, 2), "eval_correct": correct}


def barrier():
    if dist.is_initialized():
        dist.barrier()


def close_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    describe(__doc__)
