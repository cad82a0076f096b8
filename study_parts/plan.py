"""
The study's plan: every run as (script, arguments), in phases. study.py launches them and claims.py
reads them; nothing here trains or reads a result but the scores that place later grids.

Phase 1, grids fixed before any result. GRPO sweeps of rank 1 and full fine-tuning, nine LRs √2
apart around each one's expected optimum, three seeds, at 40 steps of 32 prompts and at 10 of 8
(short runs); SFT sweeps read on held-out loss; SFT's LR against rank under three scalings (α/r,
rsLoRA's α/√r, a constant); the ladder below rank 1 (LoRA-XS, TinyLoRA) and TinyLoRA's 13 and 1
parameters; the memorisation task's LR choice (facts of seed 0); the skill-dial bases.
Phase 2, from phase 1's scores: ranks 4 and 16, targets and layers (around rank 1's fastest LR:
accuracy ties at its ceiling), Adam's invariance, the batch-size pair, the dial's adapters.
Phase 3, for power and brackets: seeds 3-9 where a verdict needs them, two more LRs past the edge
of any grid whose optimum is on its edge (study.py repeats phase 3 until none is), and the
capacity knee at every data size (facts of seed 1, each method at the LR chosen on seed 0's
once that grid stops growing).
Then geometry.py over the best LoRA runs. Every verdict is read on the test split (the knee: on
another draw of facts); no LR is ever chosen on it.

    python -m study_parts.plan         # the plan's size: runs, steps and estimated one-thread hours
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from study_parts import stats

HERE = Path(__file__).resolve().parents[1]  # the repository: its scripts and toy_base/
SEEDS = (0, 1, 2)                          # MIN_SEEDS of stats: three for any verdict
POWER_SEEDS = tuple(range(10))             # where "matches within 0.02" needs the power
STEPS, PROMPTS, GROUP = 40, 32, 8          # a study GRPO run: 10,240 episodes
SHORT = (10, 8)                            # (steps, prompts) of a short run: 640 episodes
ROOT2 = 2 ** 0.5


def grid(center, n):
    """n LRs √2 apart, the middle one at center (n odd)."""
    return [center * ROOT2 ** (k - n // 2) for k in range(n)]


RL_GRID = dict(r1=grid(1e-3, 9), full=grid(4e-4, 9))      # 2.5e-4..4e-3, 1e-4..1.6e-3
SHORT_GRID = dict(r1=grid(2e-3, 9), full=grid(8e-4, 9))
SFT_GRID = dict(sft_r1=grid(1e-3, 9), sft_full=grid(1e-4, 9))
ALPHA1_GRID = grid(8e-3, 7)                # α = r = 1: the update 32x smaller, the LR higher
TINY_GRID = [3e-3, 1e-2, 3e-2]             # TinyLoRA's v scales W's own singular directions
LADDER = {"xs1": ["--adapter", "loraxs", "--rank", "1"],    # 42 parameters: r² a matrix
          "xs2": ["--adapter", "loraxs", "--rank", "2"],    # 168
          "xs4": ["--adapter", "loraxs", "--rank", "4"],    # 672
          "xs8": ["--adapter", "loraxs", "--rank", "8"],    # 2,688
          "tiny546": ["--adapter", "tinylora", "--u", "13", "--tie", "0"]}  # 13 a matrix, untied
LADDER_GRID = [1e-3, 3e-3, 1e-2]
SMALL = {"tiny1": ["--adapter", "tinylora", "--u", "1", "--tie", "1"],    # 1 parameter
         "tiny13": ["--adapter", "tinylora", "--u", "13", "--tie", "1"]}  # 13 parameters
SFT_STEPS, SFT_BATCH = 60, 64              # 3,840 worked answers
RANKS = (1, 4, 16, 64)                     # SFT's LR against rank
SCALINGS = {"alpha_r": (0.0, []), "rslora": (-0.5, ["--rslora"]), "constant": (-1.0, [])}
VAL = 1040                                 # the whole toy validation split, where LRs are chosen
SAMPLES = 8                                # completions a problem for pass@k and the mode's share
DIAL = (0.0, 0.1, 0.3)                     # the skill dial: 0.1 is the shipped toy_base/
THIRDS = ("first", "middle", "last")
VARIANTS = ("attn", "mlp", *THIRDS)        # rank 1 on fewer matrices: targets, then layers
POWERED = ("r1", "full", "r4", "r16", *(f"r1_{v}" for v in VARIANTS),  # ten seeds at the
           *LADDER)                                                     # best LR: the power
GEOMETRY = ("r1", "r4", "r16")             # the groups whose best runs geometry.py reads
# the capacity knee: facts (toy_task.fact_problems) memorised by SFT, 39.9 bits each
FACTS = (16, 64, 256, 1024, 2048)          # data sizes: 638 .. 81,627 bits (128x)
FACT_TUNE = 256                            # the size at which each method's LR is chosen
FACT_EPOCHS, FACT_BATCH = 128, 64
KNEE_METHODS = {"r1": 1, "r4": 4, "r16": 16, "full": 0}
FACT_GRID = {m: [5e-4, 1e-3, 2e-3] for m in KNEE_METHODS}  # the pilots: 1e-3 best of r1, full
P, Q = 3.0, 0.1  # Adam's invariance: (α, σ_A, η_A, η_B) -> (α/(pq), p·σ_A, p·η_A, q·η_B)
EXTEND_MAX = 4   # at most this many LRs past a grid's first edge: a bound, not a chase


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


def facts_path(root, n, seed):
    return root / "facts" / f"s{seed}_n{n}"


# one thread's seconds a step (GRPO at 32 prompts: full fine-tuning, an adapter; SFT at batch 64
# of worked answers, of facts) and an evaluation of a whole split, on the 2-core development
# machine beside another job (measured on the study's own runs)
SECONDS = dict(grpo=1.3, grpo_adapter=2.2, sft=0.7, fact=0.4, eval=10.0, samples=17.0,
               pretrain=0.86, plane_point=8.0)


def built(base):
    """The build a run on a study-built base needs (its run's name is the base's folder)."""
    return (Path(base).name,) if base else ()


def grpo(group, lr, seed, base=None, steps=STEPS, prompts=PROMPTS, extra=(), samples=0, **meta):
    lr = float(lr_text(lr))  # the name, the flag and the value agree
    name = f"grpo_{group}_lr{lr_text(lr)}_s{seed}"
    args = ["--toy", "--lr", lr_text(lr), "--seed", str(seed), "--steps", str(steps),
            "--batch", str(prompts), "--eval-every", "0", "--eval-limit", "0",
            "--val-limit", str(VAL), "--no-eval-start", *extra]
    # checkpoints: eight along the way for the geometry's runs, else the last only
    args += ["--save-every", str(max(1, steps // 8) if group in GEOMETRY else steps)]
    args += ["--model", str(base)] if base else []
    args += ["--eval-samples", str(samples)] if samples else []
    full = "--rank" in args and args[args.index("--rank") + 1] == "0"
    t = steps * SECONDS["grpo" if full else "grpo_adapter"] * prompts / PROMPTS + \
        2 * SECONDS["eval"] + (SECONDS["samples"] if samples else 0)
    return Run(name, "grpo.py", args, group, lr, seed, steps, t, meta, built(base))


def sft(group, lr, seed, base=None, steps=SFT_STEPS, batch=SFT_BATCH, extra=(), val=True,
        **meta):
    """An SFT run on the toy task's worked answers (or --data's), with the held-out loss."""
    lr = float(lr_text(lr))
    name = f"sft_{group.replace('sft_', '')}_lr{lr_text(lr)}_s{seed}"  # sft_r1, sft_p0_tiny1
    args = ["--toy", "--model", str(base or HERE / "toy_base"), "--lr", lr_text(lr), "--seed",
            str(seed), "--steps", str(steps), "--batch-size", str(batch), "--eval-limit", "0",
            "--no-eval-start", "--eval-loss", *extra]
    args += ["--val-limit", str(VAL)] if val else []
    t = steps * SECONDS["sft"] * batch / SFT_BATCH + (2 if val else 1) * SECONDS["eval"]
    return Run(name, "sft.py", args, group, lr, seed, steps, t, meta, built(base))


def facts(method, lr, n, seed, root):
    """SFT memorising n facts of fact seed `seed`, FACT_EPOCHS epochs; its evaluations (four, the
    last at the end) read each trained fact's bits (sft.py --eval-loss on the same facts)."""
    batch = min(FACT_BATCH, n)
    steps = FACT_EPOCHS * n // batch
    extra = rank_flags(KNEE_METHODS[method]) + ["--eval-every", str(steps // 4), "--task",
                                                "gsm8k", "--data", str(facts_path(root, n, seed))]
    run = sft(f"facts_{method}_n{n}_f{seed}", lr, 0, steps=steps, batch=batch, extra=extra,
              val=False, facts=n, fact_seed=seed, method=method)
    run.seconds = steps * SECONDS["fact"] * batch / FACT_BATCH + 4 * (2 + n / 100)
    return run


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
    plan = [grpo(g, lr, s, extra=rank_flags(1 if g == "r1" else 0),
                 samples=SAMPLES if g == "r1" else 0) for g, lrs in RL_GRID.items()
            for lr in lrs for s in SEEDS]
    sft_seeds = SEEDS if full else (0,)
    plan += [sft(g, lr, s, extra=rank_flags(1 if g == "sft_r1" else 0)) for g, lrs in
             SFT_GRID.items() for lr in lrs for s in sft_seeds]
    plan += [Run("eval_base_p0.1", "eval_gsm8k.py", ["--toy", "--model", str(HERE / "toy_base"),
                 "--samples", str(SAMPLES)], "base", seconds=SECONDS["eval"] + SECONDS["samples"],
                 meta=dict(p=0.1))]
    if not full:
        return plan
    steps, prompts = SHORT
    plan += [grpo("r1_alpha1", lr, s, extra=rank_flags(1) + ["--alpha", "1"])
             for lr in ALPHA1_GRID for s in SEEDS]
    plan += [grpo(f"{g}_short", lr, s, steps=steps, prompts=prompts,
                  extra=rank_flags(1 if g == "r1" else 0)) for g, lrs in SHORT_GRID.items()
             for lr in lrs for s in SEEDS]
    plan += [grpo("tiny13", lr, s, extra=SMALL["tiny13"], samples=SAMPLES) for lr in TINY_GRID
             for s in SEEDS]
    plan += [grpo("tiny1", lr, 0, extra=SMALL["tiny1"]) for lr in TINY_GRID]
    plan += [grpo(g, lr, s, extra=flags) for g, flags in LADDER.items() for lr in LADDER_GRID
             for s in SEEDS]
    plan += [sft(f"sft_{k}", lr, 0, extra=flags) for k, flags in SMALL.items() for lr in TINY_GRID]
    plan += [sft_rank(scaling, r, lr, s) for scaling, (power, _) in SCALINGS.items()
             for r in RANKS[1:] for lr in grid(1e-3 * r ** power, 7) for s in SEEDS]
    plan += [facts(m, lr, FACT_TUNE, 0, root) for m, lrs in FACT_GRID.items() for lr in lrs]
    for p in DIAL:
        if p != 0.1:
            out = base_path(root, p)
            plan += [Run(out.name, "sft.py", ["--toy", "--skill-p", f"{p:g}"], "base_build",
                         steps=2000, seconds=2000 * SECONDS["pretrain"], meta=dict(p=p))]
            plan += [Run(f"eval_{out.name}", "eval_gsm8k.py", ["--toy", "--model", str(out),
                         "--samples", str(SAMPLES)], "base", meta=dict(p=p),
                         seconds=SECONDS["eval"] + SECONDS["samples"], needs=(out.name,))]
    return plan


def sft_rank(scaling, rank, lr, seed):
    """SFT LoRA at one rank under one scaling: α/r (α = 32), rsLoRA (α/√r) or constant (α = 32r:
    α/r = 32 at every rank). Rank 1 is the same run in all three: the sft_r1 sweep."""
    flags = rank_flags(rank) + SCALINGS[scaling][1]
    flags += ["--alpha", f"{32 * rank:g}"] if scaling == "constant" else []
    return sft(f"sft_{scaling}_r{rank}", lr, seed, extra=flags, scaling=scaling, rank=rank)

# -----------------------------------------------------------------------------
# Phase 2: grids around phase 1's optima


def phase2(root, mode, best):
    """best: {group: LR} from phase 1's scores (summaries.best_lrs, plus fast_<group> for the
    best mean training reward, loss_<group> for the lowest validation loss and knee_<method> for
    the facts' most stored bits). Runs that need an LR not yet known are left out."""
    plan, c = [], best.get("fast_r1", best.get("r1"))  # accuracy ties at its ceiling: reward
    seeds = SEEDS if mode == "full" else (0,)           # over the steps still tells LRs apart
    if c:  # ranks 4 and 16, each around rank 1's fastest LR (for the matches rows and geometry)
        plan += [grpo(f"r{r}", lr, s, extra=rank_flags(r)) for r in (4, 16) for lr in around(c)
                 for s in seeds]
    if mode != "full":
        return plan
    if c:
        # fewer matrices adapted: each variant at c and 2c (it is expected to want an LR no lower)
        plan += [grpo(f"r1_{v}", lr, s, extra=rank_flags(1) + variant_flags(v))
                 for v in VARIANTS for lr in around(c, (1, 2)) for s in SEEDS]
        # Adam with ε ≈ 0 and no clipping (the clip factor depends on the gradient's norm, which
        # the reparametrization changes): the first two should match step for step, α alone not;
        # at the validation-best LR, away from the collapses near the fast one (rounding forks)
        adam, a, v = rank_flags(1) + ["--adam-eps", "1e-30", "--grad-clip", "0"], \
            f"{32.0 / (P * Q):g}", best.get("r1", c)
        plan += [grpo("adam", v, 0, steps=30, extra=adam),
                 grpo("adam_pq", P * v, 0, steps=30, extra=adam + [
                     "--alpha", a, "--init-scale", f"{P:g}", "--lr-ratio", f"{Q / P:g}"]),
                 grpo("adam_alpha", v, 0, steps=30, extra=adam + ["--alpha", a])]
    for rank in (1, 0):  # batch 32 against 256, the same 3,840 examples, around the best loss
        g = f"sft_{'r1' if rank else 'full'}"
        lr = best.get(f"loss_{g}", best.get(g))
        if lr:
            for batch, steps in ((32, 120), (256, 15)):
                plan += [sft(f"{g}_b{batch}", x, s, steps=steps, batch=batch,
                             extra=rank_flags(rank)) for x in around(lr) for s in SEEDS]
    for p in DIAL:  # the dial's adapters on the bases this study builds: RL at half and the
        base = base_path(root, p)  # whole of the fastest LR, SFT at 1x and 2x its lowest loss's
        if p == 0.1 or not (base / "model.safetensors").exists():
            continue
        for kind, flags in [("tiny1", SMALL["tiny1"]), ("tiny13", SMALL["tiny13"]),
                            ("r1", rank_flags(1)), ("full", rank_flags(0))]:
            for regime in ("", "sft_"):
                lr = best.get(f"loss_sft_{kind}", best.get(f"sft_{kind}")) if regime else \
                    best.get(f"fast_{kind}", best.get(kind))  # accuracy ties at the ceiling
                if lr is None:
                    continue
                make = sft if regime else grpo
                plan += [make(f"p{p:g}_{regime}{kind}", x, 0, base=base, extra=flags)
                         for x in around(lr, (1, 2) if regime else (0.5, 1))]
    return plan


def variant_flags(v):
    return ["--targets", v] if v in ("attn", "mlp") else ["--layers", v]

# -----------------------------------------------------------------------------
# Phase 3: seeds for power, LRs past an edge


def phase3(root, mode, best, edges):
    """best: as phase2's; edges: {group: [LRs to add]} (extensions(): an optimum on its grid's
    edge). Seeds 3-9 (0-2 ran in the grids) at the chosen LR of the groups whose "matches" rows
    need the power, at rank 1's and full's fastest LR (rank1_slower_rl) and at the short runs'
    (the share of seeds that steer); the knee at every size, each method at the LR its tuning
    facts chose. What reads an LR from a grid that is still growing waits for it to stop (study.py
    repeats this)."""
    if mode != "full":
        return []
    plan, more = [], POWER_SEEDS[len(SEEDS):]
    ready = lambda key, grid: best.get(key) and grid not in edges
    for g in POWERED:  # full, r<rank>, r1_<variant> or an adapter of the ladder
        if ready(g, g):
            flags = LADDER.get(g) or rank_flags(0 if g == "full" else int(g.split("_")[0][1:])) + (
                variant_flags(g[3:]) if g.startswith("r1_") else [])
            plan += [grpo(g, best[g], s, extra=flags) for s in more]
    for g in ("r1", "full"):  # at the fastest LRs, 40 steps and short: rank1_slower_rl, ten_steps
        for short, kw in (("", {}), ("_short", dict(steps=SHORT[0], prompts=SHORT[1]))):
            if ready(f"fast_{g}{short}", g + short):
                plan += [grpo(g + short, best[f"fast_{g}{short}"], s, **kw,
                              extra=rank_flags(int(g == "r1"))) for s in more]
    for g, lrs in edges.items():
        plan += [x for lr in lrs for x in extension(root, g, lr)]
    for m in KNEE_METHODS:  # the knee: every size, on facts the LR was not chosen on
        if ready(f"knee_{m}", f"facts_{m}_n{FACT_TUNE}_f0"):
            plan += [facts(m, best[f"knee_{m}"], n, 1, root) for n in FACTS]
    return list({r.name: r for r in plan}.values())  # a fastest LR may be the chosen one


def extension(root, group, lr):
    """The runs of `group` at one more LR, every seed its grid has, built as phase 1 built it."""
    if group in RL_GRID:
        return [grpo(group, lr, s, extra=rank_flags(1 if group == "r1" else 0)) for s in SEEDS]
    if group.endswith("_short"):
        return [grpo(group, lr, s, steps=SHORT[0], prompts=SHORT[1],
                     extra=rank_flags(1 if group.startswith("r1") else 0)) for s in SEEDS]
    if group in SFT_GRID:
        return [sft(group, lr, s, extra=rank_flags(1 if group == "sft_r1" else 0))
                for s in SEEDS]
    if group == "r1_alpha1":
        return [grpo(group, lr, s, extra=rank_flags(1) + ["--alpha", "1"]) for s in SEEDS]
    if group.startswith("sft_") and "_r" in group:  # sft_<scaling>_r<rank>
        scaling, rank = group[4:].rsplit("_r", 1)
        return [sft_rank(scaling, int(rank), lr, s) for s in SEEDS]
    if group in LADDER:
        return [grpo(group, lr, s, extra=LADDER[group]) for s in SEEDS]
    if group.startswith("facts_"):  # facts_<method>_n<size>_f0
        method = group.split("_")[1]
        return [facts(method, lr, FACT_TUNE, 0, root)]
    return []


def first_grid(group):
    """The LRs phase 1 gave a grid whose optimum must be bracketed, and whether its metric is
    better higher (mean training reward, stored bits) or lower (held-out loss); None for the
    other groups."""
    if group in RL_GRID:
        return RL_GRID[group], True
    if group.endswith("_short") and group[:-6] in SHORT_GRID:
        return SHORT_GRID[group[:-6]], True
    if group == "r1_alpha1":
        return ALPHA1_GRID, True
    if group in LADDER:  # an adapter this small may want an LR past the grid's top
        return LADDER_GRID, True
    if group in SFT_GRID:
        return SFT_GRID[group], False
    if group.startswith("facts_") and group.endswith(f"_n{FACT_TUNE}_f0"):
        return FACT_GRID[group.split("_")[1]], True
    for scaling, (power, _) in SCALINGS.items():
        for r in RANKS[1:]:
            if group == f"sft_{scaling}_r{r}":
                return grid(1e-3 * r ** power, 7), False
    return None


def extensions(tables):
    """{group: the LRs to add}: two LRs √2 apart past the edge of each grid whose best mean sits
    on that edge, tables {group: {lr: [value per seed]}} in each group's own metric; at most
    EXTEND_MAX past the first grid, after which the edge optimum is reported as a bound."""
    out = {}
    for group, table in tables.items():
        known = first_grid(group)
        if known is None or len(table) < 3:
            continue
        first, higher = known
        past = [lr for lr in table if lr_text(lr) not in {lr_text(x) for x in first}]
        mean = {lr: sum(v) / len(v) for lr, v in table.items()}
        best = (max if higher else min)(sorted(mean), key=mean.get)
        if best in (min(table), max(table)) and len(past) < EXTEND_MAX:
            step = ROOT2 if best == max(table) else 1 / ROOT2
            out[group] = [best * step, best * step * step]
    return out

# -----------------------------------------------------------------------------
# Phase 4: the trajectory geometry of the best LoRA runs


def geometry_run(root, mode):
    src = root / "geometry_runs"
    args = [str(src), "--plane", "--grid", "9", "--truncate", "1", "--eval-limit", "512"]
    n = 9 ** 2 + 20
    return Run("geometry", "geometry.py", args, "geometry", seconds=n * SECONDS["plane_point"],
               meta=dict(src=str(src)))


def write_data(root):
    """The memorisation task's facts as GSM8K-format JSONL for sft.py --task gsm8k --data: a
    folder per (fact seed, size) whose train.jsonl and test.jsonl hold the same facts (what was
    stored is read on what was trained; the held-out draw is the other fact seed)."""
    import toy_task
    for seed, sizes in ((0, [FACT_TUNE]), (1, FACTS)):
        for n in sizes:
            folder = facts_path(root, n, seed)
            folder.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(p) + "\n" for p in toy_task.fact_problems(n, seed))
            for split in ("train", "test"):
                path = folder / f"{split}.jsonl"
                if not path.exists() or path.read_text() != text:
                    path.write_text(text)


FAST = float(lr_text(RL_GRID["r1"][5]))  # a dry run's LRs: rank 1's fastest centres phase 2
GUESS = {"r1": 1e-3, "full": 4e-4, "sft_r1": 1e-3, "sft_full": 1e-4, "tiny1": 1e-2,
         "tiny13": 1e-2, "sft_tiny1": 1e-2, "sft_tiny13": 1e-2, "fast_r1_short": 2e-3,
         "fast_full_short": 8e-4, "fast_r1": FAST, "fast_full": 5.66e-4, "r4": FAST,
         "r16": FAST, **{f"r1_{v}": FAST for v in VARIANTS}, **{g: LADDER_GRID[1] for g in LADDER},
         **{f"knee_{m}": lrs[1] for m, lrs in FACT_GRID.items()}}


def planned(root, mode, best=GUESS, edges=None):
    """Every run of the plan, the later phases at `best`'s LRs, without duplicates."""
    out = {}
    for r in phase1(root, mode) + phase2(root, mode, best) + phase3(root, mode, best, edges or {}):
        out.setdefault(r.name, r)
    return list(out.values())


if __name__ == "__main__":
    from errors import no_flags
    no_flags(__doc__)
    root = Path("runs/study")
    for mode in ("toy", "full"):
        plan = planned(root, mode) + [geometry_run(root, mode)]
        hours = sum(r.seconds for r in plan) / 3600
        print(f"--{mode}: {len(plan)} runs, {sum(r.steps for r in plan):,} steps, about "
              f"{hours:.1f} one-thread hours ({hours / 2:.1f} h on two jobs; the dial's runs on "
              f"the bases it builds are planned once those exist, grid extensions once seen)")
    assert stats.MIN_SEEDS <= len(SEEDS)
