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
from safetensors.torch import load_file, save_file

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
    captured = capsys.readouterr()
    run_script.out = captured.out  # for the tests that read what it printed
    return code, captured.err


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
    # configs out of range or with features model.py does not implement; a tokenizer past the vocab
    for name, change in (("neg_vocab", {"vocab_size": -5}), ("rope", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
                         ("sliding", {"use_sliding_window": True}), ("small_vocab", {"vocab_size": 100})):
        shutil.copytree(toy, w / name)
        cfg = json.loads((toy / "config.json").read_text())
        (w / name / "config.json").write_text(json.dumps({**cfg, **change}))
    shutil.copytree(w / "adapter", w / "nan_adapter")  # a diverged run's adapter
    tensors = load_file(w / "adapter" / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, w / "nan_adapter" / "adapter_model.safetensors")
    line = json.dumps({"question": "Ann has 2 eggs.", "answer": "#### 2"})
    (w / "bad_utf8.jsonl").write_bytes(line.encode() + b"\n" + line.encode()[:10] + b"\xff\xfe" + line.encode()[10:] + b"\n")
    shutil.copytree(w / "adapter", w / "foreign" / "step_000010")  # someone's adapters, no run
    (w / "sft_run").mkdir()  # a run folder sft.py wrote
    (w / "sft_run" / "args.json").write_text(json.dumps({"script": "sft.py", "rank": 1}))
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
    ("grpo.py", ["--toy", "--adapter", "loraxs", "--rank", "2", "--rslora", "--out", "T/r"], "--rslora"),
    ("sft.py", ["--toy", "--model", "W/toy", "--rank", "0", "--rslora", "--out", "T/r"], "--rslora"),
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
    # the run folder's edges: only a new, empty or own folder; every refusal before any write
    ("grpo.py", ["--toy", "--out", "W/toy"], "--out"),
    ("grpo.py", ["--toy", "--out", "W/foreign"], "step_000010"),
    ("grpo.py", ["--toy", "--out", "W/sft_run", "--resume"], "sft.py"),
    ("grpo.py", ["--toy", "--layers", "99", "--out", "T/r"], "99"),
    ("grpo.py", ["--toy", "--targets", "foo_proj", "--out", "T/r"], "foo_proj"),
    ("grpo.py", ["--toy", "--adapter", "loraxs", "--rank", "500", "--out", "T/r"], "--rank 500"),
    ("grpo.py", ["--toy", "--rank", "100", "--out", "T/r"], "--rank 100"),
    ("grpo.py", ["--toy", "--batch", "9000", "--out", "T/r"], "--batch 9000"),
    ("grpo.py", ["--toy", "--max-new-tokens", "500", "--out", "T/r"], "--max-new-tokens 500"),
    ("grpo.py", ["--toy", "--seed", str(2 ** 63), "--out", "T/r"], "--seed"),
    ("grpo.py", ["--toy", "--model", "W/neg_vocab", "--out", "T/r"], "vocab_size"),
    ("grpo.py", ["--toy", "--model", "W/rope", "--out", "T/r"], "rope_scaling"),
    ("grpo.py", ["--toy", "--model", "W/sliding", "--out", "T/r"], "use_sliding_window"),
    ("grpo.py", ["--toy", "--model", "W/small_vocab", "--out", "T/r"], "257 tokens"),
    ("grpo.py", ["--model", "W/toy", "--data", "W/bad_utf8.jsonl", "--out", "T/r"], "bad_utf8.jsonl:2"),
    ("sft.py", ["--toy", "--model", "W/toy", "--max-len", "5", "--out", "T/r"], "--max-len 5"),
    ("sft.py", ["--toy", "--model", "W/toy", "--layers", "first,7", "--out", "T/r"], "7"),
    ("eval_gsm8k.py", ["--toy", "--model", "W/toy", "--adapter", "W/nan_adapter"], "NaN"),
    ("eval_gsm8k.py", ["--toy", "--limit", "2", "--adapter", "W/shapes/wide/step_000001",
                       "W/shapes/narrow/step_000001"], "another model"),
    ("eval_gsm8k.py", ["--toy", "--seed", str(2 ** 64)], "--seed"),
    ("model.py", ["--toy", "--prompt", ""], "--prompt"),
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

# -----------------------------------------------------------------------------
# The run folder's edges, by behaviour: one writer, nothing changed by a refusal, signals

TINY = ["--toy", "--batch", "2", "--group", "4", "--max-new-tokens", "8", "--eval-limit", "2",
        "--eval-every", "0", "--save-every", "1", "--no-eval-start"]


def snapshot(folder):
    """{relative path: bytes} of every file under folder: a byte-for-byte picture."""
    return {os.path.relpath(os.path.join(r, f), folder): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(folder) for f in fs}


def grpo_in_process(monkeypatch, capsys, argv):
    """(exit status, stderr) of grpo.py in this process, with a reward a random model earns half
    the time; its lock is released as at the process's exit."""
    import gsm8k
    import runs
    monkeypatch.setattr(gsm8k, "reward", lambda completion, answer: float(len(completion) % 2))
    try:
        return run_script("grpo.py", argv, monkeypatch, capsys)
    finally:
        runs.release_locks()


def test_a_refused_resume_leaves_the_folder_byte_for_byte(world, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    args = [*TINY, "--model", str(world / "toy"), "--steps", "2", "--out", out]
    assert grpo_in_process(monkeypatch, capsys, args)[0] == 0
    before = snapshot(out)
    for extra, needle in ((["--lr", "0.5"], "change training"),
                          (["--steps", "1"], "--steps 1 is below the newest checkpoint")):
        code, err = grpo_in_process(monkeypatch, capsys, [*args, *extra, "--resume"])
        lines = [x for x in err.splitlines() if "error:" in x]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err[-1500:]
        assert snapshot(out) == before, f"{extra}: the refused resume changed the folder"
    code, _ = grpo_in_process(monkeypatch, capsys, [*args, "--resume"])  # already at step 2
    assert code == 0 and sorted(snapshot(out)) == sorted(before)


def test_one_writer_a_live_lock_refuses_a_stale_one_is_taken_over(world, tmp_path, monkeypatch,
                                                                     capsys):
    import socket
    out = tmp_path / "run"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps(dict(pid=alive.pid, host=socket.gethostname(),
                                                   command="grpo.py ...", started="now")))
        args = [*TINY, "--model", str(world / "toy"), "--steps", "1", "--out", str(out)]
        code, err = grpo_in_process(monkeypatch, capsys, args)
        assert code == 2 and f"being written by process {alive.pid}" in err, err[-1500:]
        assert sorted(os.listdir(out)) == [".lock"], "the refused run wrote something"
    finally:
        alive.kill()
        alive.wait()
    code, err = grpo_in_process(monkeypatch, capsys, args)  # its process is gone: stale
    assert code == 0 and "taking it over" in err
    assert "args.json" in os.listdir(out) and ".lock" not in os.listdir(out)


def test_a_checkpoint_missing_a_file_is_skipped(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--model", str(world / "toy"), "--steps", "2", "--out", str(out)]
    assert grpo_in_process(monkeypatch, capsys, args)[0] == 0
    os.remove(out / "step_000002" / "adapter_model.safetensors")
    code, err = grpo_in_process(monkeypatch, capsys, [*args, "--steps", "3", "--resume"])
    said = run_script.out + err
    assert code == 0 and "step_000002 is damaged" in said and "no adapter_model.safetensors" in said
    assert "resumed from" in said and "step_000001" in said


def test_a_full_disk_in_safetensors_is_one_line(world, tmp_path, monkeypatch, capsys):
    """safetensors raises its own SafetensorError on a full disk: the checkpoint is one line
    naming the newest complete one, not a traceback."""
    import runs
    from safetensors import SafetensorError

    def full(*a, **kw):
        raise SafetensorError("No space left on device (os error 28)")
    monkeypatch.setattr(runs, "save_file", full)
    out = tmp_path / "run"
    code, err = grpo_in_process(monkeypatch, capsys, [*TINY, "--model", str(world / "toy"),
                                                      "--steps", "1", "--out", str(out)])
    lines = [x for x in err.splitlines() if "error:" in x]
    assert code == 2 and len(lines) == 1 and "cannot write the checkpoint" in lines[0], err
    assert "No space left" in lines[0] and not any(p.endswith(".tmp") for p in os.listdir(out))


def test_out_of_memory_is_one_line_naming_the_flag(world, tmp_path):
    res = subprocess.run([sys.executable, "grpo.py", "--toy", "--group", "10000000", "--steps",
                          "1", "--no-eval-start", "--out", str(tmp_path / "r")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    lines = [x for x in res.stderr.splitlines() if "error:" in x]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and "out of memory" in lines[0] and "--group" in lines[0], lines


def signal_after(cmd, ready, signum, timeout=300):
    """Start cmd, wait until ready() holds, send signum -> (exit status, stderr)."""
    import signal
    import time
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    t0 = time.time()
    while not ready() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigterm_ends_a_trainer_as_ctrl_c_does(world, tmp_path):
    import signal
    out = tmp_path / "run"
    cmd = [sys.executable, "grpo.py", *TINY, "--model", str(world / "toy"), "--steps", "500",
           "--out", str(out)]
    code, err = signal_after(cmd, lambda: (out / "step_000002").exists(), signal.SIGTERM)
    last = err.strip().splitlines()[-1]
    assert code == 143 and "Traceback" not in err, err[-2000:]
    assert last.startswith("terminated: the newest checkpoint is ") and "--resume" in last, last
    assert not (out / ".lock").exists() and not any(p.endswith(".tmp") for p in os.listdir(out))


def test_a_signal_during_a_checkpoint_write_waits_until_it_is_on_disk(tmp_path, monkeypatch,
                                                                      capsys):
    """SIGTERM sent in the middle of save_checkpoint: the write finishes (no step_N.tmp/ left),
    then the run ends with 143, naming that checkpoint."""
    import signal
    import runs
    real = runs.save_file

    def interrupted_save(tensors, path):  # the signal arrives half way through the checkpoint
        os.kill(os.getpid(), signal.SIGTERM)
        real(tensors, path)

    def save_adapter(model, out, **kw):
        os.makedirs(out)
        save_file({"w": torch.zeros(1)}, os.path.join(out, "adapter_model.safetensors"))
    monkeypatch.setattr(runs, "save_file", interrupted_save)
    monkeypatch.setattr(runs.adapters, "save", save_adapter)
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([p])
    p.grad = torch.ones(2)
    optimizer.step()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runs.on_signals(str(tmp_path))
        with pytest.raises(SystemExit) as stopped:
            runs.save_checkpoint(str(tmp_path / "step_000001"), None, optimizer, [("p", p)],
                                 dict(step=1))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert stopped.value.code == 143 and os.listdir(tmp_path) == ["step_000001"]
    assert sorted(os.listdir(tmp_path / "step_000001")) == [
        "adapter_model.safetensors", "trainer_state.json", "trainer_state.safetensors"]
    err = capsys.readouterr().err
    assert f"terminated: the newest checkpoint is {tmp_path / 'step_000001'}; continue" in err


def test_interrupted_evaluation_and_geometry_write_nothing(world, tmp_path):
    import signal
    rows = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "eval_gsm8k.py", "--toy", "--batch-size", "16", "--out", str(rows)]
    code, err = signal_after(cmd, lambda: False, signal.SIGTERM, timeout=8)
    assert code == 143 and "Traceback" not in err and "\nterminated: nothing written\n" in err, err
    assert not rows.exists()
    geo = tmp_path / "geo"
    cmd = [sys.executable, "geometry.py", str(world / "shapes" / "wide"), "--out", str(geo),
           "--plane", "--grid", "9", "--eval-limit", "64"]
    code, err = signal_after(cmd, lambda: (geo / ".staging").exists(), signal.SIGINT)
    assert code == 130 and "Traceback" not in err and "is as it was" in err, err[-2000:]
    assert not geo.exists() or not any(geo.iterdir()), "a staging folder or output was left"


def test_runs_py_lists_every_readable_run_and_names_the_damaged(world, tmp_path):
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text("{}")
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 0, "eval_accuracy": 0.5}\n')
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    res = subprocess.run([sys.executable, "runs.py", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "good" in res.stdout and "0.500 at step 0" in res.stdout
    assert "damaged: bad:" in res.stderr and "metrics.jsonl:2" in res.stderr, res.stderr
