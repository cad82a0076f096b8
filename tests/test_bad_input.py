"""Every script, every bad value a new user tried: exit status 2, exactly one `error:` line that
names the flag or the file, no traceback, and nothing written that was not there before. The
scripts run in this process (a subprocess per case would import torch ~50 times); an uncaught
UserError is handed to the hook the script installed, as the interpreter does, and
test_hook_in_a_real_process checks that path end to end."""
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

import adapters
import lora
from model import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder)
                  for r, ds, fs in os.walk(folder) for f in fs + ds)


def run_script(name, argv, monkeypatch, capsys):
    """(exit status, stderr) of `python name argv` run in this process."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    try:
        try:
            runpy.run_path(os.path.join(ROOT, name), run_name="__main__")
        except ValueError as e:  # a UserError: what the installed hook does with it
            if not hasattr(sys.excepthook, "rank1"):
                raise
            sys.excepthook(type(e), e, e.__traceback__)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the cases point at: a toy model folder, configs with wrong values, an adapter with a
    wrong rank, an empty data file, runs of two shapes, and a plain file where a folder goes."""
    w = tmp_path_factory.mktemp("world")
    toy = w / "toy"
    shutil.copytree(os.path.join(ROOT, "toy_base"), toy)
    for name, change in (("str_hidden", {"hidden_size": "128"}), ("llama", {"model_type": "llama"})):
        shutil.copytree(toy, w / name)
        cfg = json.loads((toy / "config.json").read_text())
        (w / name / "config.json").write_text(json.dumps({**cfg, **change}))
    m = lora.apply_lora(load_model(str(toy), device="cpu", verbose=False), 1, 8, verbose=False)
    lora.save_adapter(m, w / "adapter", str(toy))
    cfg = json.loads((w / "adapter" / "adapter_config.json").read_text())
    shutil.copytree(w / "adapter", w / "adapter_r_one")
    (w / "adapter_r_one" / "adapter_config.json").write_text(json.dumps({**cfg, "r": "one"}))
    (w / "empty.jsonl").write_text("")
    (w / "a_file").write_text("not a folder")
    # two runs of different shapes: the toy's matrices and a half-width model's
    for run, hidden in (("wide", None), ("narrow", 64)):
        step = w / "shapes" / run / "step_000001"
        step.mkdir(parents=True)
        if hidden is None:
            shutil.copy(w / "adapter" / "adapter_model.safetensors", step)
            shutil.copy(w / "adapter" / "adapter_config.json", step)
        else:
            from model import Qwen2, Qwen2Config, TOY_CONFIG
            small = Qwen2(Qwen2Config(**{**TOY_CONFIG.__dict__, "hidden_size": 64, "head_dim": 0}))
            adapters.save(lora.apply_lora(small, 1, 8, verbose=False), step, str(toy))
    return w


# (script, arguments, what the error line must name); W/ is the world folder, T/ the case's own
CASES = [
    ("grpo.py", ["--toy", "--lr", "nan"], "--lr"),
    ("grpo.py", ["--toy", "--lr", "inf"], "--lr"),
    ("grpo.py", ["--toy", "--alpha", "0"], "--alpha"),
    ("grpo.py", ["--toy", "--steps", "0"], "--steps"),
    ("grpo.py", ["--toy", "--steps=-5"], "--steps"),
    ("grpo.py", ["--toy", "--eval-limit=-3"], "--eval-limit"),
    ("grpo.py", ["--toy", "--batch", "0"], "--batch"),
    ("grpo.py", ["--toy", "--group", "1"], "--group"),
    ("grpo.py", ["--toy", "--temperature", "0"], "--temperature"),
    ("grpo.py", ["--toy", "--max-new-tokens=-1"], "--max-new-tokens"),
    ("grpo.py", ["--toy", "--tie", "1.5"], "--tie"),
    ("grpo.py", ["--toy", "--kl", "-1"], "--kl"),
    ("grpo.py", ["--toy", "--dtype", "flaot32", "--out", "T/r"], "--dtype"),
    ("grpo.py", ["--toy", "--out", "W/a_file"], "a_file"),
    ("grpo.py", ["--toy", "--out", "W/a_file/run"], "a_file"),
    ("grpo.py", ["--toy", "--model", "W/str_hidden", "--out", "T/r"], "config.json"),
    ("grpo.py", ["--toy", "--model", "W/llama", "--out", "T/r"], "model_type"),
    ("grpo.py", ["--model", "W/toy", "--data", "W/empty.jsonl", "--out", "T/r"], "empty.jsonl"),
    ("sft.py", ["--toy", "--model", "W/toy", "--lr", "nan"], "--lr"),
    ("sft.py", ["--toy", "--model", "W/toy", "--steps", "0"], "--steps"),
    ("sft.py", ["--toy", "--model", "W/toy", "--batch-size", "0"], "--batch-size"),
    ("sft.py", ["--toy", "--model", "W/toy", "--target-acc", "2"], "--target-acc"),
    ("sft.py", ["--toy", "--model", "W/toy", "--max-len", "0"], "--max-len"),
    ("eval_gsm8k.py", ["--toy", "--limit=-5"], "--limit"),
    ("eval_gsm8k.py", ["--toy", "--points-per-pass=-1"], "--points-per-pass"),
    ("eval_gsm8k.py", ["--toy", "--shots=-1"], "--shots"),
    ("eval_gsm8k.py", ["--toy", "--batch-size", "0"], "--batch-size"),
    ("eval_gsm8k.py", ["--toy", "--max-new-tokens=-1"], "--max-new-tokens"),
    ("eval_gsm8k.py", ["--toy", "--shots", "100000"], "--shots"),
    ("eval_gsm8k.py", ["--toy", "--limit", "1", "--out", "W/a_file/rows.jsonl"], "a_file"),
    ("eval_gsm8k.py", ["--toy", "--model", "W/toy", "--adapter", "W/adapter_r_one"], '"r"'),
    ("geometry.py", ["W/shapes", "--grid", "0"], "--grid"),
    ("geometry.py", ["W/shapes", "--grid", "1"], "--grid"),
    ("geometry.py", ["W/shapes", "--eval-limit", "0"], "--eval-limit"),
    ("geometry.py", ["W/shapes", "--out", "T/geo"], "shapes"),
    ("geometry.py", ["T/no_such_runs"], "no_such_runs"),
    ("model.py", ["--toy", "--temperature", "-1"], "--temperature"),
    ("model.py", ["--toy", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("model.py", ["--model", "W/str_hidden"], "hidden_size"),
    ("sampler.py", ["--toy", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("flops.py", ["--rank", "0"], "--rank"),
    ("flops.py", ["--batch", "0"], "--batch"),
    ("flops.py", ["--tie", "2"], "--tie"),
    ("bench.py", ["--toy", "--batch", "0"], "--batch"),
    ("bench.py", ["--toy", "--reps", "0"], "--reps"),
    ("lora.py", ["--ranks", "1,0"], "--ranks"),
    ("runs.py", ["T/NO_SUCH_DIR"], "NO_SUCH_DIR"),
    ("study.py", ["--jobs", "0"], "--jobs"),
]


@pytest.mark.parametrize("script,argv,needle", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_value_is_one_line(world, tmp_path, monkeypatch, capsys, script, argv, needle):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has the device")
    monkeypatch.chdir(tmp_path)  # a default output (runs/...) would land here, and be seen
    argv = [str(world / a[2:]) if a.startswith("W/") else str(tmp_path / a[2:]) if a.startswith("T/")
            else a for a in argv]
    before_world, before = tree(world), tree(tmp_path)
    code, err = run_script(script, argv, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert needle in lines[0], lines[0]
    assert tree(tmp_path) == before and tree(world) == before_world, "something was written"


def test_device_that_is_not_here(world, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    code, err = run_script("grpo.py", ["--toy", "--device", "cuda", "--out", str(tmp_path / "r")],
                           monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --device cuda") and err.count("\n") == 1, err
    assert tree(tmp_path) == []


def test_hook_in_a_real_process(world, tmp_path):
    """The path the in-process cases emulate: a UserError deep in a real process is one line on
    stderr and status 2; a bad flag is argparse's one error line, status 2."""
    for argv, needle in ((["--toy", "--model", str(world / "str_hidden")], '"hidden_size": \'128\''),
                         (["--toy", "--temperature", "nan"], "--temperature")):
        res = subprocess.run([sys.executable, "model.py", *argv], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        lines = [line for line in res.stderr.splitlines() if "error:" in line]
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(lines) == 1 and needle in lines[0], res.stderr
