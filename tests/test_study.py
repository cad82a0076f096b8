"""study.py: the plan, resumption (a finished run is not run again), verdicts from synthetic runs, the dry runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import toy_task
import study

ROOT = Path(__file__).resolve().parents[1]


def write_run(root, run, acc, rewards=None, base=0.5, n=study.TOY_TEST, t_train=1.0):
    """A finished run folder as grpo.py/sft.py write it: eval rows at step 0 and at the end."""
    folder = root / run.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(step=0, eval_accuracy=base, eval_n=n)]
    rewards = rewards if rewards is not None else [0.5] * run.steps
    rows += [dict(step=s + 1, reward=r, t_train=t_train, loss=0.0) for s, r in enumerate(rewards)]
    rows.append(dict(step=run.steps, eval_accuracy=acc, eval_n=n))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sweep_plan_spans_the_grid():
    plan = study.sweep_plan("toy")
    names = [r.name for r in plan]
    assert len(names) == len(set(names)), "two runs would share a folder"
    for method in ("r1", "r4", "r16", "full"):
        lrs = sorted(r.meta["lr"] for r in plan if r.claim == "rl_sweep" and r.meta["method"] == method)
        assert len(lrs) >= 4 and lrs[-1] / lrs[0] >= 30, (method, lrs)
    for r in plan:  # scored on the whole toy test split, started from the shipped base
        assert r.args[r.args.index("--eval-limit") + 1] == "0"
        assert "--toy" in r.args
    best = {"r1": 1e-3, "r4": 1e-3, "r16": 1e-3, "full": 1e-4, "sft_r1": 1e-3, "sft_full": 1e-4}
    more = study.rank1_plan(best["r1"]) + study.extras_plan(best)
    seeds = [r for r in more if r.claim == "rl_sweep"]
    assert {(r.meta["method"], r.meta["seed"]) for r in seeds} == {(m, s) for m in ("r1", "r4", "r16", "full") for s in (1, 2)}
    assert all(r.meta["lr"] == best[r.meta["method"]] for r in seeds), "seeds go to each method's best LR"
    follow = {(r.meta["method"], r.meta["seed"]) for r in more if r.claim in ("targets", "layers", "adam")}
    assert follow == {(f"r1_{t}", s) for t in ("attn", "mlp", "first", "middle", "last") for s in (0, 1, 2)} | \
        {(f"r1_{a}", 0) for a in ("adam", "adampq", "adamalpha")}, "targets and layers get 3 seeds, Adam's trio one"
    sizes = {r.meta["method"]: study.params_of(r.meta) for r in more + study.sweep_plan("toy")}
    assert sizes["r2_tiny_u13_tie1"] == 13 and sizes["r2_tiny_u1_tie1"] == 1 and sizes["r1"] == 7296
    assert sizes["full"] == 624_384 and sizes["r2_xs2"] == 84, sizes
    pq = next(r for r in more if r.meta["method"] == "r1_adampq")
    a = pq.args
    assert float(a[a.index("--lr") + 1]) == pytest.approx(study.P * 1e-3)
    assert float(a[a.index("--lr-ratio") + 1]) * float(a[a.index("--lr") + 1]) == pytest.approx(study.Q * 1e-3)  # η_B = q·η
    assert float(a[a.index("--alpha") + 1]) == pytest.approx(32 / (study.P * study.Q), rel=1e-5)


def test_launch_reuses_finished_runs_and_resumes_the_rest(tmp_path):
    """A fake script that records each call: a finished run is never launched again; an unfinished one
    is launched with --resume."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake.py"
    script.write_text(f"""import json, sys, os
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
open({str(calls)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
if "fail" in out: sys.exit(3)
rows = [dict(step=0, eval_accuracy=0.1), dict(step=4, eval_accuracy=0.2)]
open(os.path.join(out, "metrics.jsonl"), "w").write("".join(json.dumps(r) + "\\n" for r in rows))
""")
    plan = [study.Run(f"run{i}", str(script), ["--x", str(i)], "test", steps=4) for i in range(3)]
    plan.append(study.Run("fail", str(script), [], "test", steps=4))
    write_run(tmp_path, plan[0], 0.3)                                       # finished before the study
    (tmp_path / "run1").mkdir()                                              # interrupted: no final eval
    (tmp_path / "run1" / "metrics.jsonl").write_text(json.dumps(dict(step=0, eval_accuracy=0.1)) + "\n")
    failed = study.launch(plan, tmp_path, jobs=2)
    assert list(failed) == ["fail"] and "exit 3" in failed["fail"]
    lines = calls.read_text().splitlines()
    assert sorted(l.split("--out")[0].strip() for l in lines) == ["", "--x 1", "--x 2"]
    assert all(l.endswith("--resume") for l in lines)
    study.launch(plan[:3], tmp_path, jobs=2)                                  # all finished now
    assert len(calls.read_text().splitlines()) == 3


def test_claims_from_synthetic_runs(tmp_path):
    """Verdicts follow the numbers: rank 1 equal to full holds; rank 16 far below does not; the LR ratio
    of the best grid points is what is reported; attention-only far below all layers holds."""
    plan = study.sweep_plan("toy")
    best = {"r1": 3e-3, "r4": 3e-3, "r16": 3e-3, "full": 3e-4, "sft_r1": 1e-3, "sft_full": 1e-4}
    acc = {"r1": 0.70, "r4": 0.71, "r16": 0.50, "full": 0.70, "sft_r1": 0.6, "sft_full": 0.6}
    for r in plan:
        key = r.meta["method"] if r.script == "grpo.py" else "sft_" + r.meta["method"]
        at_best = r.meta["lr"] == best[key]
        write_run(tmp_path, r, acc[key] if at_best else acc[key] - 0.15)
    more = study.rank1_plan(best["r1"])
    for r in more:
        write_run(tmp_path, r, 0.45 if r.meta["method"] == "r1_attn" else 0.70,
                  rewards=[0.3] * 10 + [0.6] * 20 if r.meta["method"] == "r1_adamalpha" else [0.3] * 30)
    rows = study.claims(plan + more, tmp_path, "toy", None, best)
    verdict = {r["claim"]: r["verdict"] for r in rows}
    v = lambda text: next(val for k, val in verdict.items() if text in k)
    assert v("rank 1 matches") == "holds"
    assert v("rank 16 matches") == "does not hold"
    assert v("attention-only") == "holds"
    assert v("MLP-only") == "holds"
    assert v("last third do worse") == "does not hold"
    assert v("four knobs two") == "holds"
    rl_ratio = next(r for r in rows if r["claim"].startswith("RL: LoRA's best LR"))
    assert rl_ratio["measured"].startswith("10x") and rl_ratio["verdict"] == "holds"
    study.figures(plan, tmp_path, {k: v for k, v in best.items() if not k.startswith("sft")}, tmp_path)
    assert (tmp_path / "lr_sweep.png").stat().st_size > 10_000 and (tmp_path / "reward_best_lr.png").stat().st_size > 10_000


def test_intervals():
    m, se, df = study.estimate_mean([0.6, 0.7, 0.8], 1111)
    assert df == 2 and study.interval(m, se, df)[1] == pytest.approx(0.7 + 4.303 * 0.1 / 3 ** 0.5)
    m, se, df = study.estimate_mean([0.5], 1111)                           # one seed: binomial
    assert df == 0 and se == pytest.approx((0.25 / 1111) ** 0.5)
    assert study.verdict_match((0.0, 0.005, 0)) == "holds"
    assert study.verdict_match((-0.2, 0.01, 0)) == "does not hold"
    assert study.verdict_match((-0.05, 0.02, 0)) == "inconclusive"


def test_dry_runs_print_the_plans():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "study.py", "--toy", "--dry-run", "--out", "/nonexistent/study"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "grpo_r1_lr1e-3_s0" in out.stdout and "geometry" in out.stdout and "min" in out.stdout
    out = subprocess.run([sys.executable, "study.py", "--model", "Qwen/Qwen2.5-3B", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "GPU-h" in out.stdout and "--rank 8" in out.stdout
    out = subprocess.run([sys.executable, "study.py", "--model", "Qwen/Qwen2.5-3B"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 2 and "--dry-run" in out.stderr and "Traceback" not in out.stderr


def test_shipped_toy_base_is_the_documented_one():
    """toy_base/ holds the files whose sha256 its README lists, and scores the README's accuracy on the
    whole toy test split (to within one problem: another CPU's float kernels may flip a near tie)."""
    import hashlib
    import re
    import eval_gsm8k
    from model import TOY_BASE, load_model, load_tokenizer
    doc = (Path(TOY_BASE) / "README.md").read_text()
    for name, digest in re.findall(r"\| (\S+) \| ([0-9a-f]{64}) \|", doc):
        assert hashlib.sha256((Path(TOY_BASE) / name).read_bytes()).hexdigest() == digest, name
    k, n = re.search(r"\((\d+) of ([\d,]+);", doc).groups()
    k, n = int(k), int(n.replace(",", ""))
    problems = toy_task.toy_problems("test")
    assert len(problems) == n
    m, tok = load_model(TOY_BASE, device="cpu", verbose=False), load_tokenizer(TOY_BASE)
    summary, _ = eval_gsm8k.evaluate(m, tok, problems, batch_size=256, max_new_tokens=48, progress=False)
    assert abs(summary["accuracy"] * n - k) <= 1, (summary["accuracy"], k / n)


def test_no_train_reports_what_finished(tmp_path):
    """--no-train launches no training run: the report holds the claims of the finished runs and names
    the ones that did not run."""
    plan = [r for r in study.sweep_plan("toy") if r.meta["method"] in ("r1", "full") and r.script == "grpo.py"]
    for r in plan:
        write_run(tmp_path, r, 0.7 if r.meta["lr"] in (1e-3, 1e-4) else 0.6)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "study.py", "--toy", "--no-train", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "rank 1 matches full fine-tuning" in report and "**holds**" in report
    assert "grpo_r4_lr1e-3_s0: not run (--no-train)" in report and "grpo_r1_attn_lr1e-3_s0: not run" in report
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert claims["best_lr"]["r1"] == 1e-3 and claims["best_lr"]["full"] == 1e-4
    assert not (tmp_path / "grpo_r4_lr1e-3_s0").exists(), "--no-train must not start a run"


def test_geometry_folders_and_links(tmp_path):
    """--toy and --full keep their geometry apart (grid 9 and 15, maybe other best runs); the links
    folder holds exactly the chosen runs, and a stale link stops the study with a user error."""
    toy, full = study.geometry_plan(tmp_path, [], "toy"), study.geometry_plan(tmp_path, [], "full")
    assert (toy.name, full.name) == ("geometry", "geometry_full") and toy.meta["src"] != full.meta["src"]
    assert toy.args[toy.args.index("--grid") + 1] == "9" and full.args[full.args.index("--grid") + 1] == "15"
    for name in ("run_a", "run_b"):
        (tmp_path / name).mkdir()
    study.link_runs(tmp_path, toy, ["run_a"])
    study.link_runs(tmp_path, toy, ["run_a"])                               # again: nothing to do
    assert sorted(p.name for p in Path(toy.meta["src"]).iterdir()) == ["run_a"]
    assert Path(toy.meta["src"], "run_a").resolve() == (tmp_path / "run_a").resolve()
    with pytest.raises(SystemExit, match="run_a is not one of the best-LR runs"):
        study.link_runs(tmp_path, toy, ["run_b"])


def test_report_answers_the_open_questions(tmp_path):
    """The report's open questions are geometry.py's: PCs to 90% (all, per rank, per run) and each run's
    directness beside the steps at which its reward got half and 90% of the way."""
    g = dict(pcs_to_90=dict(all=3, per_rank={"1": 2}, per_run={"grpo_r1_lr1e-3_s0": 2}),
             directness={"grpo_r1_lr1e-3_s0": dict(path_over_displacement=1.6, step_to_50pct_reward=21,
                                                    step_to_90pct_reward=48, final_reward=0.64)})
    study.write_report(tmp_path, [], {"r1": 1e-3}, study.open_questions(g), 60.0, "toy", {}, (1, 60.0))
    report = (tmp_path / "report.md").read_text()
    assert "all runs 3, rank 1 2, grpo_r1_lr1e-3_s0 2" in report
    assert "| grpo_r1_lr1e-3_s0 | 1.60 | 21 | 48 | 0.64 |" in report


def test_batch_claim(tmp_path):
    """LoRA's large-batch penalty: full fine-tuning's lead over rank 1 growing from batch 32 to 256
    holds; the same lead at both sizes is within the noise."""
    best = {"r1": 1e-3, "r4": 1e-3, "r16": 1e-3, "full": 3e-4, "sft_r1": 1e-3, "sft_full": 3e-4}
    plan = [r for r in study.sweep_plan("toy") + study.extras_plan(best) if r.script == "sft.py"]
    batch = [r for r in plan if r.claim == "batch"]
    assert sorted((r.meta["rank"], r.meta["batch"], r.steps * r.meta["batch"]) for r in batch) == \
        [(0, 32, 3840), (0, 256, 3840), (1, 32, 3840), (1, 256, 3840)]
    for grows, verdict in ((True, "holds"), (False, "inconclusive")):
        for r in plan:
            acc = 0.80 if r.meta["rank"] == 0 else 0.78
            if grows and r.meta["rank"] == 1 and r.meta["batch"] == 256:
                acc = 0.60
            write_run(tmp_path / str(grows), r, acc)
        (row,) = study.batch_claim(plan, tmp_path / str(grows), best)
        assert row["verdict"] == verdict, row
        assert ("+0.200 at batch 256" if grows else "+0.020 at batch 32, +0.020 at batch 64, +0.020 at batch 256") in row["measured"]


def test_params_table_and_figure(tmp_path):
    """--full's accuracy-vs-parameters: each adapter at its best LR in RL and SFT, a table row per size
    from 1 parameter to full fine-tuning, and the figure."""
    best = {"r1": 1e-3, "r4": 1e-3, "r16": 1e-3, "full": 3e-4, "sft_r1": 1e-3, "sft_full": 3e-4}
    plan = study.sweep_plan("full") + study.extras_plan(best)
    for r in plan:
        n = study.params_of(r.meta)
        write_run(tmp_path, r, 0.5 + 0.02 * len(str(n)) + (0.01 if r.meta["lr"] == 1e-3 else 0.0))
    rl, sft = study.size_curve(plan, tmp_path, best, "rl"), study.size_curve(plan, tmp_path, best, "sft")
    assert rl["r2_tiny_u13_tie1"] == (13, pytest.approx(0.55), 1e-3) and rl["full"][0] == 624_384
    study.write_report(tmp_path, [], best, None, 1.0, "full", {}, (1, 1.0), (rl, sft))
    report = (tmp_path / "report.md").read_text()
    assert "| TinyLoRA u=1, tie 1 | 1 | 0.530 (0.001) | 0.530 (0.001) |" in report
    assert "| LoRA-XS r=16 | 5,376 |" in report and "| full fine-tuning | 624,384 |" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "(0.001)" in line]
    assert len(rows) == 9  # 1, 13, 84, 273, 5,376, ranks 1, 4, 16 and full: every best LR is 1e-3 here
    study.figures(plan, tmp_path, {k: v for k, v in best.items() if not k.startswith("sft")}, tmp_path)
    assert (tmp_path / "params.png").stat().st_size > 10_000
