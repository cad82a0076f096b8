"""
The claims of the seeds, measured: LoRA Without Regret's (each method at its own best LR, over
seeds) and the trajectory study's (PCA over every checkpoint, the plane, rank-1 truncation), and
the capacity knee and the skill dial, in one command that writes RESULTS.md.

    python study.py --toy                  # the central claims on the toy world, 2 CPU jobs (~1 h)
    python study.py --full                 # every claim (~10 h of two single-threaded jobs)
    python study.py --full --dry-run       # every run it would launch, with its estimated time
    python study.py --from results         # RESULTS.md and the figures again, from results/ alone
    python study.py --model Qwen/Qwen2.5-3B --dry-run   # the plan at GPU scale, with GPU-hours

It runs the scripts as subprocesses (grpo.py, sft.py, eval_gsm8k.py, geometry.py), one thread
each, --jobs at a time, into runs/study/<run>/, in three phases (study_parts/plan.py). LRs are
chosen on the toy's validation split, verdicts read on its test split (study_parts/claims.py, with
the tests of study_parts/stats.py). Each run records its exact arguments and the code version
(its stamp in runs/study/stamps/, its args.json); a finished run is reused only when both match,
an interrupted one resumes, and a run made by other code or flags is moved to runs/study/stale/.
After each run, a small summary goes to results/runs/<run>.json (args, code, per-step metrics,
final evaluations; no checkpoints): `--from results` rebuilds RESULTS.md byte for byte from those
alone (study_parts/report.py), and a fresh clone takes them for its finished runs.
"""
import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

import runs
import versions
from study_parts import gpu, plan
from study_parts import report as study_report, summaries as study_summaries
from eval_gsm8k import over_problems, pass_at_k
from errors import (COUNT, HelpFormatter, UserError, exit_on_user_error, jsonl_rows, read_json,
                    user_exit, write_json)

HERE = Path(__file__).resolve().parent
TRAIN_KEYS = ("step", "reward", "loss", "tokens", "t_sample", "t_train", "seconds", "length")

# -----------------------------------------------------------------------------
# A run's state: finished, reusable, stale


def finished(run, root):
    folder = root / run.name
    if run.script == "eval_gsm8k.py":
        return (folder / "rows.jsonl").exists()
    if run.script == "geometry.py":
        return (folder / "geometry.json").exists()
    if not (folder / "metrics.jsonl").exists():
        return False
    evals = [r for r in runs.read_metrics(folder) if "eval_accuracy" in r]
    if run.group == "base_build":  # the base itself is written after the last evaluation
        return bool(evals) and (folder / "model.safetensors").exists() and \
            evals[-1]["step"] >= run.steps
    return bool(evals) and evals[-1]["step"] >= run.steps


def stamp(run, code):
    """What a run's stamp records: its arguments, its plan metadata (geometry's: the runs it
    reads) and the code hash (runs.code_version)."""
    return {"argv": run.args, "meta": run.meta, "code": code}


def stamp_of(root, run):
    """Where the study records what launched a run: beside its folder (a trainer writes only
    into a folder of its own), root/stamps/<run>.json."""
    return root / "stamps" / f"{run.name}.json"


def built(run, root):
    """{build: sha256 of its model.safetensors (None: not there)} for the builds a run needs."""
    out = {}
    for name in run.needs:
        path = root / name / "model.safetensors"
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return out


def known_from_summary(run, root, results, code):
    """A finished run whose folder is gone (a fresh clone, say) is known from its summary alone
    when that records the same arguments, plan metadata and code, and for a run on a built base
    the same base, bit for bit (a build made again on another CPU differs in its last bits): the
    claims read nothing else. A base build is not (later runs read the base); a geometry run
    only with its geometry.json."""
    path = results / "runs" / f"{run.name}.json"
    if run.group == "base_build" or not path.exists() or \
            run.group == "geometry" and not (results / "geometry.json").exists():
        return False
    s = read_json(path)
    c = s.get("code")
    return s.get("argv") == run.args and s.get("meta") == run.meta and \
        (c.get("hash") if isinstance(c, dict) else c) == code and \
        (not run.needs or s.get("built") == built(run, root))


def state(run, root, code, results, files=()):
    """"reuse", "resume" (ours, unfinished) or "new" (nothing there, or another run's: moved).
    files: the names whose folders later runs read, which a summary cannot stand in for."""
    folder = root / run.name
    if not folder.exists():
        return "reuse" if run.name not in files and known_from_summary(run, root, results, code) \
            else "new"
    mine = stamp_of(root, run).exists() and read_json(stamp_of(root, run)) == stamp(run, code)
    if mine and (folder / "args.json").exists():  # the run's own record of the code it ran
        mine = runs.read_args(folder).get("code", {}).get("hash") == code
    if mine:
        return "reuse" if finished(run, root) else "resume"
    stale = root / "stale" / f"{run.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    stale.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(stale))
    print(f"note: {folder} was made by other code or flags: moved to {stale}")
    return "new"

# -----------------------------------------------------------------------------
# Summaries: what results/ keeps of a run


def summarize(run, root, code, wall=None):
    """A run folder reduced to what the claims read, a few KB; wall: its seconds, when launched."""
    folder = root / run.name
    s = dict(name=run.name, script=run.script, group=run.group, lr=run.lr, seed=run.seed,
             steps=run.steps, meta=run.meta, argv=run.args, code=code, wall_seconds=wall)
    if run.needs:
        s["built"] = built(run, root)
    if run.script == "eval_gsm8k.py":
        s["base"] = base_summary([r for _, r in jsonl_rows(folder / "rows.jsonl")])
        return s
    if run.script == "geometry.py":  # no args.json; its geometry.json goes to results/ whole
        return s
    args = runs.read_args(folder)
    s["code"] = args.get("code", code)
    rows = runs.read_metrics(folder)
    evals = [r for r in rows if "eval_accuracy" in r]
    facts = run.group.startswith("facts_")  # each answer's bits: the knee's last evaluation's
    s["evals"] = [r if facts and i == len(evals) - 1 else
                  {k: v for k, v in r.items() if k != "eval_answer_bits"}
                  for i, r in enumerate(evals)]
    s["train"] = [{k: r[k] for k in TRAIN_KEYS if k in r} for r in rows
                  if "eval_accuracy" not in r]
    return s


def base_summary(rows):
    """Greedy accuracy and the sampled statistics of a base from eval_gsm8k.py's rows."""
    k = rows[0]["sampled_samples"]
    c = [r["sampled_correct"] for r in rows]
    m, cm = [r["sampled_in_mode"] for r in rows], [r["sampled_correct_in_mode"] for r in rows]
    out = dict(n=len(rows), k=k, accuracy=sum(r["correct"] for r in rows) / len(rows),
               correct="".join("1" if r["correct"] else "0" for r in rows))
    for key, values, weights in (("pass1", [x / k for x in c], None),
                                 (f"pass{k}", [pass_at_k(k, x, k) for x in c], None),
                                 ("mode_share", m, [k] * len(rows)), ("acc_in_mode", cm, m),
                                 ("acc_outside", [x - y for x, y in zip(c, cm)],
                                  [k - y for y in m])):
        out[key], out[f"{key}_ci"] = over_problems(values, weights)
    return out


def write_summary(run, root, results, code, wall=None):
    (results / "runs").mkdir(parents=True, exist_ok=True)
    write_json(results / "runs" / f"{run.name}.json", summarize(run, root, code, wall))


def read_summaries(results):
    folder = Path(results) / "runs"
    if not folder.is_dir():
        raise user_exit(f"{folder}: no run summaries (study.py writes them as its runs finish)")
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))}

# -----------------------------------------------------------------------------
# Launching


def launch(todo, root, results, jobs, dry_run=False, ran=None, files=(), after=lambda: None):
    """Run what is not finished, `jobs` at a time, one thread each; a summary and after() when
    each ends; the names launched are appended to `ran`; files: runs whose folders must be there
    (state). -> {name: why} of the runs that failed."""
    hashes = {s: versions.code_version(HERE / s)["hash"] for s in {r.script for r in todo}}
    code = lambda run: hashes[run.script]  # today's code of the run's script
    states = {r.name: ("dry" if dry_run and (root / r.name).exists() else
                       state(r, root, code(r), results, files)) for r in todo}
    for r in todo:
        summary = results / "runs" / f"{r.name}.json"
        if states[r.name] == "reuse" and not summary.exists():
            write_summary(r, root, results, code(r))
        if states[r.name] == "new" and summary.exists() and not dry_run:
            summary.unlink()  # a stale run's summary goes with it
    todo = [r for r in todo if states[r.name] != "reuse"]
    total = sum(r.seconds for r in todo)
    print(f"{len(states)} runs, {len(states) - len(todo)} reused; {len(todo)} to run, about "
          f"{total / 3600:.1f} one-thread hours ({total / 3600 / jobs:.1f} h on {jobs} jobs)")
    if dry_run:
        for r in todo:
            print(f"  {r.seconds:6.0f} s  {r.name:40} {' '.join(r.command(root)[2:])}")
        return {}
    (root / "logs").mkdir(parents=True, exist_ok=True)
    threads = "1" if jobs > 1 else str(os.cpu_count() or 1)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    todo = sorted(todo, key=lambda r: (bool(r.needs), -r.seconds))  # no long run starts last
    by_name, done = {r.name: r for r in todo}, {r.name: threading.Event() for r in todo}

    def one(run):
        try:
            for need in run.needs:  # made by this launch (else reused): wait, then check it
                if need in by_name:
                    done[need].wait()
                    if not finished(by_name[need], root):
                        return run, f"needs {need}, which did not finish", 0.0
            return run_one(run)
        finally:
            done[run.name].set()

    def run_one(run):
        (ran if ran is not None else []).append(run.name)
        (root / run.name).mkdir(parents=True, exist_ok=True)
        stamp_of(root, run).parent.mkdir(parents=True, exist_ok=True)
        write_json(stamp_of(root, run), stamp(run, code(run)))
        t0 = time.time()
        with open(root / "logs" / f"{run.name}.log", "a") as log:
            proc = subprocess.run(run.command(root), stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=HERE)
        return run, proc.returncode, round(time.time() - t0, 1)

    failed = {}
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=round(total), desc="study",
                                                unit="s") as bar:
        for fut in as_completed([pool.submit(one, r) for r in todo]):
            run, rc, wall = fut.result()
            bar.update(round(run.seconds))
            if rc == 0 and finished(run, root):
                write_summary(run, root, results, code(run), wall)
            else:
                failed[run.name] = rc if isinstance(rc, str) else \
                    f"exit {rc}, see {root / 'logs' / (run.name + '.log')}"
                bar.write(f"FAILED {run.name}: {failed[run.name]}")
            after()
    return failed


class Ledger:
    """Each invocation's wall time and runs launched, in root/invocations.json, its line rewritten
    as each run ends: a study cut off (Ctrl-C, a session's end) keeps what it did until then."""
    def __init__(self, root, mode, ran):
        self.path, self.ran, self.t0 = root / "invocations.json", ran, time.time()
        self.lines = read_json(self.path) if self.path.exists() else []
        self.mine = dict(mode=mode, wall_seconds=0.0, launched=0, date=time.strftime("%Y-%m-%d"),
                         machine=machine())
        self.lines.append(self.mine)

    def __call__(self):
        self.mine.update(wall_seconds=round(time.time() - self.t0, 1), launched=len(self.ran))
        write_json(self.path, self.lines)

    def of(self, mode, previous):
        """This mode's: those in results/study.json from before the ledger, then the ledger's."""
        self()
        mine = [i for i in self.lines if i["mode"] == mode]
        return [i for i in previous if i["mode"] == mode and i not in mine] + mine


def choices(summaries):
    """The LRs the later phases build on: each group's validation-best (best_lrs), its fastest
    (fast_<group>: the best mean training reward), its lowest validation loss (loss_<group>) and
    each knee method's (knee_<method>: the most bits stored on the tuning facts)."""
    return study_summaries.best_lrs(summaries) | {
        f"fast_{g}": lr for g, lr in study_summaries.fast_lrs(summaries).items()} | {
        f"loss_{g}": lr for g, lr in study_summaries.loss_lrs(summaries).items()} | {
        f"knee_{m}": lr for m, lr in study_summaries.knee_lrs(
            summaries, plan.FACT_TUNE, plan.KNEE_METHODS).items()}


def edges(summaries):
    """plan.extensions of every grid whose optimum must be bracketed, each in its own metric."""
    tables = {}
    for g in sorted({s["group"] for s in summaries.values()}):
        known = plan.first_grid(g)
        if known:
            metric = ("stored_bits" if g.startswith("facts_") else "mean_reward") if known[1] \
                else "val_loss"
            tables[g] = study_summaries.lists(study_summaries.metric_table(summaries, g, metric))
    return plan.extensions(tables)


def blog_design(g):
    """PC1 + PC2 as the blog measured them, one run per rank (each rank's seed 0): a PCA of the
    sub-Gram of those runs' checkpoints (geometry.pca), beside geometry.py's pooled one."""
    import numpy as np
    from geometry import pca
    ix = [i for i, c in enumerate(g["checkpoints"]) if c["run"].endswith("_s0")]
    evr = pca(np.array(g["gram"])[np.ix_(ix, ix)])[1]
    return dict(runs=sorted({g["checkpoints"][i]["run"] for i in ix}), checkpoints=len(ix),
                explained_variance_ratio=[float(v) for v in evr[:10]])


def link_geometry_runs(root, names):
    """geometry.py reads every run under a folder: a folder of links to the chosen runs, its
    old links replaced (the choice follows the validation scores)."""
    src = root / "geometry_runs"
    src.mkdir(parents=True, exist_ok=True)
    for link in src.iterdir():
        if link.name not in names:
            link.unlink()
    for name in names:
        if not (src / name).exists():
            (src / name).symlink_to((root / name).resolve())


def geometry_choice(summaries, best):
    """The validation-best runs of ranks 1, 4 and 16, each grid seed (not the later seeds)."""
    return sorted(s["name"] for s in summaries.values()
                  if s["group"] in plan.GEOMETRY and s["lr"] == best.get(s["group"])
                  and s["seed"] in plan.SEEDS and study_summaries.final(s))


def matmul_rate(n=512, repeat=20):
    """This machine's float32 matmul rate on one thread (FLOP/s), for the study's floor."""
    import torch
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - t0)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"

# -----------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = p.add_argument
    add("--toy", action="store_true", help="the central claims (default when neither --full "
        "nor --from)")
    add("--full", action="store_true", help="every claim: seeds everywhere, targets and layers, "
        "α, batch size, Adam, SFT by rank, the capacity knee, the skill dial")
    add("--jobs", type=COUNT, default=os.cpu_count() or 1, help="runs at a time, one thread "
        "each (one job: every core); default the CPU count")
    add("--out", default="runs/study", help="the study's run folders and logs")
    add("--results", default="results", help="where the run summaries, claims.json, "
        "geometry.json and the figures go")
    add("--report", default="RESULTS.md", help="the file whose <!-- study --> ... <!-- /study "
        "--> block is the study's report")
    add("--from", dest="from_", metavar="RESULTS", default=None, help="run nothing: rebuild "
        "claims.json, the figures and the report from the summaries in this folder; default none")
    add("--dry-run", action="store_true", help="print every run it would launch, with its "
        "estimated time; run nothing")
    add("--model", default=None, help="with --dry-run: print the plan at GPU scale for this "
        "model (e.g. Qwen/Qwen2.5-3B) with its GPU-hours from flops.py; default none: the toy")
    add("--no-train", action="store_true", help="launch nothing: report on the runs whose "
        "summaries are there")
    return p.parse_args(argv)


def main(args):
    if args.model:
        if not args.dry_run:
            raise user_exit("--model prints the plan at GPU scale, which study.py does not run "
                            "on this machine: add --dry-run")
        gpu.gpu_plan(args.model)
        return
    if args.from_:
        meta = read_json(Path(args.from_) / "study.json")
        study_report.write(Path(args.from_), Path(args.report), meta)
        return
    mode = "full" if args.full else "toy"
    root, results = Path(args.out), Path(args.results)
    failed, ran = {}, []
    if not args.dry_run:
        root.mkdir(parents=True, exist_ok=True)
        (results / "runs").mkdir(parents=True, exist_ok=True)
        plan.write_data(root)
    ledger = (lambda: None) if args.dry_run else Ledger(root, mode, ran)
    go = lambda todo: {} if args.no_train else launch(todo, root, results, args.jobs,
                                                      args.dry_run, ran, after=ledger)
    if args.dry_run:  # the later phases follow phase 1's optima: planned at a guess
        go(plan.planned(root, mode))
        print(f"  {plan.geometry_run(root, mode).seconds:6.0f} s  geometry (every core)")
        return
    # what this plan ran: results/ may still hold summaries of runs an older plan made
    of = lambda todo: {n: s for n, s in read_summaries(results).items()
                       if n in {r.name for r in todo}}
    first = plan.phase1(root, mode)
    failed |= go(first)
    second = plan.phase2(root, mode, choices(of(first)))
    failed |= go(second)
    later, seen = [], {r.name for r in first + second}
    for _ in range(plan.EXTEND_MAX // 2 + 1):  # seeds for power; LRs past an edge, until none
        summaries = of(first + second + later)
        third = [r for r in plan.phase3(root, mode, choices(summaries), edges(summaries))
                 if r.name not in seen]
        if not third:
            break
        seen |= {r.name for r in third}
        later += third
        failed |= go(third)
    summaries = of(first + second + later)
    best = study_summaries.best_lrs(summaries)
    geo = plan.geometry_run(root, mode)
    chosen = geometry_choice(summaries, best)
    geo.meta["runs"] = chosen
    code = versions.code_version(HERE / geo.script)["hash"]
    if chosen and not args.no_train and not known_from_summary(geo, root, results, code):
        # their checkpoints: rerun where only a summary is left
        failed |= launch([r for r in first + second + later if r.name in chosen], root, results,
                         args.jobs, ran=ran, files=set(chosen), after=ledger)
        link_geometry_runs(root, chosen)
        failed |= launch([geo], root, results, 1, ran=ran, after=ledger)
    if (root / "geometry" / "geometry.json").exists():
        g = read_json(root / "geometry" / "geometry.json")
        g["blog_design"] = blog_design(g)
        g.pop("gram", None)  # the only large part; the figures and claims need none of it
        write_json(results / "geometry.json", g)
    known = {r.name for r in first + second + later}
    previous = read_json(results / "study.json") if (results / "study.json").exists() else {}
    seconds = sum(study_report.run_seconds(s) for n, s in read_summaries(results).items()
                  if n in known)
    meta = dict(mode=mode, code=versions.code_version(HERE / "grpo.py"), machine=machine(),
                jobs=args.jobs, invocations=ledger.of(mode, previous.get("invocations", [])),
                run_seconds=round(seconds, 1), matmul_flops=round(matmul_rate()),
                runs=sorted(known | ({geo.name} if chosen else set())), failed=failed)
    write_json(results / "study.json", meta)
    study_report.write(results, Path(args.report), meta)


if __name__ == "__main__":
    exit_on_user_error()
    try:
        main(parse_args())
    except UserError as e:
        raise user_exit(str(e)) from None
