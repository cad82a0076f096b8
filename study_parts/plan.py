"""
The study's plan: every run as (script, arguments), in three phases. study.py launches them and
claims.py reads them; nothing here trains or reads a result but the validation scores that
place phase 2's grids.

Phase 1, fixed grids chosen before any result: GRPO sweeps of rank 1 and full fine-tuning (five
LRs a factor 2 apart, so every LoRA/full ratio on the grid is 10·2^j, three seeds each), TinyLoRA,
SFT sweeps, SFT of the direct answers by rank (the loss-by-rank figure), the skill-dial bases.
Phase 2, grids a factor 2 around a phase-1 optimum chosen on the validation split: ranks 4 and 16,
α = 1, targets and layers (each variant its own grid), the capacity knee, Adam's invariance, the
batch-size pair, the dial's adapters on the other bases. The knee's and the dial's GRPO grids sit
around each method's fastest LR instead (the best mean training reward), since the toy's final
accuracies tie at a ceiling over much of the sweep. Phase 3: geometry.py over the best LoRA
runs. Every verdict is read on the test split; no LR is ever chosen on it.

    python -m study_parts.plan         # the plan's size: runs, steps and estimated one-thread hours
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from study_parts import stats

HERE = Path(__file__).resolve().parents[1]  # the repository: its scripts and toy_base/
SEEDS = (0, 1, 2)                          # MIN_SEEDS of stats: three for any verdict
STEPS, PROMPTS, GROUP = 40, 32, 8          # a study GRPO run: 10,240 episodes
LORA_GRID = [5e-4 * 2 ** k for k in range(5)]   # 5e-4 .. 8e-3
FULL_GRID = [5e-5 * 2 ** k for k in range(5)]   # 5e-5 .. 8e-4: LoRA/full ratios are 10·2^j
TINY_GRID = [3e-3, 1e-2, 3e-2]             # TinyLoRA's v scales W's own singular directions
SFT_STEPS, SFT_BATCH = 60, 64              # 3,840 worked answers
DIRECT_STEPS = 126                         # one epoch of the 8,054 train problems at batch 64
VAL = 1040                                 # the whole toy validation split, where LRs are chosen
SAMPLES = 8                                # completions a problem for pass@k and the mode's share
DIAL = (0.0, 0.1, 0.3)                     # the skill dial: 0.1 is the shipped toy_base/
KNEE = [(10, 8), (20, 16), (STEPS, PROMPTS), (120, 32)]  # (steps, prompts): 640 .. 30,720 episodes
THIRDS = ("first", "middle", "last")
GEOMETRY = ("r1", "r4", "r16")             # the groups whose best runs geometry.py reads
SMALL = {"tiny1": ["--adapter", "tinylora", "--u", "1", "--tie", "1"],    # 1 parameter
         "tiny13": ["--adapter", "tinylora", "--u", "13", "--tie", "1"]}  # 13 parameters
P, Q = 3.0, 0.1  # Adam's invariance: (α, σ_A, η_A, η_B) -> (α/(pq), p·σ_A, p·η_A, q·η_B)


@dataclass
class Run:
    name: str                # its folder under the study's root
    script: str              # grpo.py, sft.py, eval_gsm8k.py or geometry.py
    args: list               # everything but --out and --resume
    group: str               # what it measures: a method at one setting ("r1", "sft_full_b32")
    lr: float = 0.0
    seed: int = 0
    steps: int = 0           # training steps (0: not a training run)
    seconds: float = 0.0     # estimated, one thread
    meta: dict = field(default_factory=dict)
    needs: tuple = ()        # runs that must finish first (a base's evaluation needs its build)

    def command(self, root):
        out = root / self.name
        if self.script == "eval_gsm8k.py":
            return [sys.executable, str(HERE / self.script), *self.args, "--out",
                    str(out / "rows.jsonl")]
        resume = [] if self.script == "geometry.py" else ["--resume"]
        return [sys.executable, str(HERE / self.script), *self.args, "--out", str(out), *resume]


def lr_text(lr):
    return f"{lr:.3g}"


def base_path(root, p):
    """The dial's base at p: the shipped toy_base/ at 0.1, else one this study builds."""
    return HERE / "toy_base" if p == 0.1 else root / f"base_p{p:g}"


# seconds of one thread per step (GRPO at 32 prompts, SFT at batch 64) and per evaluation of a
# whole split, measured on the 2-core development machine with two jobs side by side
SECONDS = dict(grpo=3.3, sft=0.6, eval=10.0, samples=30.0, pretrain=0.86, plane_point=10.0)


def built(base):
    """The build a run on a study-built base needs (its run's name is the base's folder)."""
    return (Path(base).name,) if base else ()


def grpo(group, lr, seed, base=None, steps=STEPS, prompts=PROMPTS, extra=(), samples=0, **meta):
    name = f"grpo_{group}_lr{lr_text(lr)}_s{seed}"
    args = ["--toy", "--lr", lr_text(lr), "--seed", str(seed), "--steps", str(steps),
            "--batch", str(prompts), "--eval-every", "0", "--eval-limit", "0",
            "--val-limit", str(VAL), "--no-eval-start", *extra]
    # checkpoints: eight along the way for the geometry's runs, else the last only
    args += ["--save-every", str(max(1, steps // 8) if group in GEOMETRY else steps)]
    args += ["--model", str(base)] if base else []
    args += ["--eval-samples", str(samples)] if samples else []
    t = steps * SECONDS["grpo"] * prompts / PROMPTS + 2 * SECONDS["eval"] + \
        (SECONDS["samples"] if samples else 0)
    return Run(name, "grpo.py", args, group, lr, seed, steps, t, meta, built(base))


def sft(group, lr, seed, base=None, steps=SFT_STEPS, batch=SFT_BATCH, extra=(), val=True,
        **meta):
    name = f"sft_{group.replace('sft_', '')}_lr{lr_text(lr)}_s{seed}"  # sft_r1, sft_p0_tiny1
    args = ["--toy", "--model", str(base or HERE / "toy_base"), "--lr", lr_text(lr), "--seed",
            str(seed), "--steps", str(steps), "--batch-size", str(batch), "--eval-limit", "0",
            "--no-eval-start", *extra]
    args += ["--val-limit", str(VAL)] if val else []
    t = steps * SECONDS["sft"] * batch / SFT_BATCH + (2 if val else 1) * SECONDS["eval"]
    return Run(name, "sft.py", args, group, lr, seed, steps, t, meta, built(base))


def rank_flags(rank):
    return ["--rank", str(rank)]


def around(lr, factors=(0.5, 1, 2)):
    return [lr * f for f in factors]

# -----------------------------------------------------------------------------
# Phase 1: fixed grids


def phase1(root, mode):
    """Every run whose grid is fixed in advance. --toy: the central claims (GRPO rank 1 and full
    fine-tuning, three seeds; SFT rank 1 and full, one seed); --full: everything."""
    full = mode == "full"
    plan = [grpo("r1", lr, s, extra=rank_flags(1), samples=SAMPLES) for lr in LORA_GRID
            for s in SEEDS]
    plan += [grpo("full", lr, s, extra=rank_flags(0)) for lr in FULL_GRID for s in SEEDS]
    sft_seeds = SEEDS if full else (0,)
    plan += [sft("sft_r1", lr, s, extra=rank_flags(1)) for lr in LORA_GRID for s in sft_seeds]
    plan += [sft("sft_full", lr, s, extra=rank_flags(0)) for lr in FULL_GRID for s in sft_seeds]
    plan += [Run("eval_base_p0.1", "eval_gsm8k.py", ["--toy", "--model", str(HERE / "toy_base"),
                 "--samples", str(SAMPLES)], "base", seconds=SECONDS["eval"] + SECONDS["samples"],
                 meta=dict(p=0.1))]
    if not full:
        return plan
    plan += [grpo("tiny13", lr, s, extra=SMALL["tiny13"], samples=SAMPLES) for lr in TINY_GRID
             for s in SEEDS]
    plan += [grpo("tiny1", lr, 0, extra=SMALL["tiny1"]) for lr in TINY_GRID]
    plan += [sft(f"sft_{k}", lr, 0, extra=flags) for k, flags in SMALL.items() for lr in TINY_GRID]
    # SFT of the direct answers (many bits: mental arithmetic), one epoch, by rank
    data = ["--task", "gsm8k", "--data", str(root / "direct")]
    for rank in (1, 4, 16, 0):
        grid = [2e-3, 4e-3, 8e-3] if rank else [2e-4, 4e-4, 8e-4]
        plan += [sft(f"direct_{'r' + str(rank) if rank else 'full'}", lr, s, steps=DIRECT_STEPS,
                     extra=rank_flags(rank) + data, val=False, rank=rank)
                 for lr in grid for s in SEEDS]
    for p in DIAL:
        if p != 0.1:
            out = base_path(root, p)
            plan += [Run(out.name, "sft.py", ["--toy", "--skill-p", f"{p:g}"], "base_build",
                         steps=2000, seconds=2000 * SECONDS["pretrain"], meta=dict(p=p))]
            plan += [Run(f"eval_{out.name}", "eval_gsm8k.py", ["--toy", "--model", str(out),
                         "--samples", str(SAMPLES)], "base", meta=dict(p=p),
                         seconds=SECONDS["eval"] + SECONDS["samples"], needs=(out.name,))]
    return plan

# -----------------------------------------------------------------------------
# Phase 2: grids around phase 1's optima (chosen on the validation split)


def phase2(root, mode, best):
    """best: {group: LR} from phase 1's validation scores (claims.best_lrs). Runs that
    need an LR not yet known (its group unfinished) are left out."""
    plan, c, f = [], best.get("r1"), best.get("full")
    seeds = SEEDS if mode == "full" else (0,)
    if c:  # ranks 4 and 16, each around rank 1's optimum (the claim: it varies little)
        plan += [grpo(f"r{r}", lr, s, extra=rank_flags(r)) for r in (4, 16) for lr in around(c)
                 for s in seeds]
    if mode != "full":
        return plan
    if c:
        plan += [grpo("r1_alpha1", lr, s, extra=rank_flags(1) + ["--alpha", "1"])
                 for lr in around(c, (4, 8, 16, 32)) for s in SEEDS]
        # fewer matrices adapted: each variant at c and 2c (an adapter on fewer matrices is
        # expected to want an LR no lower; the budget allows two)
        plan += [grpo(f"r1_{t}", lr, s, extra=rank_flags(1) + ["--targets", t])
                 for t in ("attn", "mlp") for lr in around(c, (1, 2)) for s in SEEDS]
        plan += [grpo(f"r1_{t}", lr, s, extra=rank_flags(1) + ["--layers", t])
                 for t in THIRDS for lr in around(c, (1, 2)) for s in SEEDS]
        # Adam with ε ≈ 0 and no clipping (the clip factor depends on the gradient's norm, which
        # the reparametrization changes): the first two should match step for step, α alone not
        adam = rank_flags(1) + ["--adam-eps", "1e-30", "--grad-clip", "0"]
        a = f"{32.0 / (P * Q):g}"
        plan += [grpo("adam", c, 0, steps=30, extra=adam),
                 grpo("adam_pq", P * c, 0, steps=30, extra=adam + [
                     "--alpha", a, "--init-scale", f"{P:g}", "--lr-ratio", f"{Q / P:g}"]),
                 grpo("adam_alpha", c, 0, steps=30, extra=adam + ["--alpha", a])]
    # the capacity knee, its grids around each method's fastest LR (final accuracies tie at a
    # ceiling, so the validation argmax is no guide to what a shorter or longer run wants)
    for method, lr, rank in (("r1", best.get("fast_r1", c), 1),
                             ("full", best.get("fast_full", f), 0)):
        for steps, prompts in KNEE:
            if lr is None or (steps, prompts) == (STEPS, PROMPTS):
                continue  # the main sweep is the knee's middle point
            grid = around(lr, (0.5, 1)) if steps > STEPS else around(lr)
            plan += [grpo(f"{method}_e{steps * prompts * GROUP}", x, s, steps=steps,
                          prompts=prompts, extra=rank_flags(rank)) for x in grid for s in SEEDS]
    for rank in (1, 0):  # batch 32 against 256, the same 3,840 examples, each at its own best
        lr = best.get(f"sft_{'r1' if rank else 'full'}")
        if lr:
            for batch, steps in ((32, 120), (256, 15)):
                plan += [sft(f"sft_{'r1' if rank else 'full'}_b{batch}", x, s, steps=steps,
                             batch=batch, extra=rank_flags(rank)) for x in around(lr)
                         for s in SEEDS]
    for p in DIAL:  # the dial's adapters on the bases this study builds: RL at half and the
        base = base_path(root, p)  # whole of the fastest LR, SFT at 1x and 2x its best
        if p == 0.1 or not (base / "model.safetensors").exists():
            continue
        for kind, flags in [("tiny1", SMALL["tiny1"]), ("tiny13", SMALL["tiny13"]),
                            ("r1", rank_flags(1)), ("full", rank_flags(0))]:
            for regime in ("", "sft_"):
                lr = best.get("sft_" + kind) if regime else best.get("fast_" + kind, best.get(kind))
                if lr is None:
                    continue
                make = sft if regime else grpo
                plan += [make(f"p{p:g}_{regime}{kind}", x, 0, base=base, extra=flags)
                         for x in around(lr, (1, 2) if regime else (0.5, 1))]
    return plan

# -----------------------------------------------------------------------------
# Phase 3: the trajectory geometry of the best LoRA runs


def geometry_run(root, mode):
    src = root / "geometry_runs"
    args = [str(src), "--plane", "--grid", "9", "--truncate", "1", "--eval-limit", "512"]
    n = 9 ** 2 + 20
    return Run("geometry", "geometry.py", args, "geometry", seconds=n * SECONDS["plane_point"],
               meta=dict(src=str(src)))


def gpu_plan(model):
    """The plan at GPU scale, printed only: each run's steps and its GPU-hours from flops.py, at
    an assumed 40% of an H100's 989 bf16 TFLOP/s for training and 60% of its 3.35 TB/s for
    decoding (every decode step reads the bf16 weights once for the whole batch)."""
    import flops
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


def write_direct_data(root):
    """The direct-answer SFT data ("#### 43", no steps) of the toy's train and test splits, as
    GSM8K-format JSONL for sft.py --task gsm8k --data: mental arithmetic, many bits an example."""
    import toy_task
    folder = root / "direct"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = [json.dumps(dict(question=p["question"],
                                 answer=toy_task.direct_answer(p["answer"])))
                 for p in toy_task.toy_problems(split)]
        path = folder / f"{split}.jsonl"
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


if __name__ == "__main__":
    from errors import no_flags
    no_flags(__doc__)
    root = Path("runs/study")
    guess = {"r1": 2e-3, "full": 2e-4, "sft_r1": 2e-3, "sft_full": 2e-4, "tiny1": 1e-2,
             "tiny13": 1e-2, "sft_tiny1": 1e-2, "sft_tiny13": 1e-2}
    for mode in ("toy", "full"):
        plan = phase1(root, mode) + phase2(root, mode, guess) + [geometry_run(root, mode)]
        hours = sum(r.seconds for r in plan) / 3600
        print(f"--{mode}: {len(plan)} runs, {sum(r.steps for r in plan):,} steps, about "
              f"{hours:.1f} one-thread hours ({hours / 2:.1f} h on two jobs; the dial's runs on "
              f"the bases it builds are planned once those exist)")
    assert stats.MIN_SEEDS <= len(SEEDS)
