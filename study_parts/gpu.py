"""
The study's plan at GPU scale, printed only (`python study.py --model Qwen/Qwen2.5-3B --dry-run`):
the runs the claims would need on a real model, each with its GPU-hours from flops.py.
"""
import flops
from study_parts.plan import SEEDS


def gpu_plan(model):
    """Each run's steps and its GPU-hours from flops.py, at an assumed 40% of an H100's 989 bf16
    TFLOP/s for training and 60% of its 3.35 TB/s for decoding (every decode step reads the bf16
    weights once for the whole batch)."""
    cfg = flops.get_config(model)
    flop_s, bw, (B, G, Pl, N) = 0.4 * 989e12, 0.6 * 3.35e12, (32, 8, 150, 512)
    decode = N * 2 * flops.count_params(cfg) / bw

    def hours(rank, steps):
        train = flops.grpo_step_flops(cfg, B, G, Pl, N, rank, "all")["training"] / flop_s
        return steps * (train + decode) / 3600
    runs = [("sweep", r, lr, 200) for r in (1, 4, 0)
            for lr in ([1e-5, 2e-5, 4e-5, 8e-5, 1.6e-4] if r else [1e-6, 2e-6, 4e-6, 8e-6, 1.6e-5])]
    runs += [("trajectory", r, 5e-5, 500) for r in (1, 2, 4, 8)]
    print(f"{model}: {B} prompts x {G} samples, {N} new tokens; assumed {flop_s / 1e12:.0f} "
          f"TFLOP/s, {bw / 1e12:.1f} TB/s")
    total = 0.0
    for claim, r, lr, steps in runs:
        total += hours(r, steps)
        print(f"  {hours(r, steps):5.1f} GPU-h  {claim:10} python grpo.py --model {model} --rank "
              f"{r} --lr {lr:g} --steps {steps}")
    print(f"  + {len(SEEDS)} seeds at each best LR, targets and layers at rank 1, then `python "
          f"geometry.py runs/ --plane --truncate 1`; choose the LRs on held-out train problems "
          f"(--val-limit covers only the toy's validation split)\n"
          f"{total:.1f} GPU-hours for the runs listed, one seed each")
