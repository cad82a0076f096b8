"""runs.py and the reads every script shares: torn and corrupt metrics, truncated files named by path
(exit 2, no traceback), a checkpoint write that fails half way, --data as a folder or a file."""
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import errors
import toy_task
import eval_gsm8k
import gsm8k
import lora
import model as M
import runs
import versions
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = ["--toy", "--batch", "2", "--group", "4", "--max-new-tokens", "8", "--eval-limit", "2",
            "--micro-batch", "0", "--eval-every", "0"]


def grpo(monkeypatch, argv):
    """grpo.py as __main__ in this process, with a reward a random model earns half the time."""
    monkeypatch.setattr(gsm8k, "reward", lambda completion, answer: float(len(completion) % 2))
    script(monkeypatch, "grpo.py", argv)


def script(monkeypatch, name, argv):
    """A script as __main__ in this process; its run-folder lock goes when it ends, as at exit."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    try:
        runpy.run_path(os.path.join(ROOT, name), run_name="__main__")
    finally:
        runs.release_locks()


def truncate_file(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])

# -----------------------------------------------------------------------------
# metrics.jsonl


def test_torn_last_line_is_dropped_and_a_bad_middle_line_named(tmp_path, capsys):
    good = [{"step": 0, "eval_accuracy": 0.5}, {"step": 1, "reward": 0.25}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 2, "rew')    # killed mid-write
    assert runs.read_metrics(tmp_path) == good
    assert 'metrics.jsonl:3: dropped a torn last line \'{"step": 2, "rew\'' in capsys.readouterr().err
    runs.trim_metrics(tmp_path, 1)
    assert (tmp_path / "metrics.jsonl").read_text() == text                 # rewritten without it
    runs.append_metrics(tmp_path, {"step": 2})
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [0, 1, 2]
    # damage in the middle is not a torn write: it names file:line and stops
    (tmp_path / "metrics.jsonl").write_text(text.replace('"reward"', 'reward') + json.dumps({"step": 2}) + "\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: not valid JSON"):
        runs.read_metrics(tmp_path)
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: not valid JSON"):
        runs.trim_metrics(tmp_path, 5)
    # a bad last line that ends in a newline was written whole: damage too
    (tmp_path / "metrics.jsonl").write_text(text + "{oops\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl:3"):
        runs.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(text + '{"loss": 1.0}\n')
    with pytest.raises(UserError, match=r'metrics\.jsonl:3: a metrics row needs an integer "step"'):
        runs.read_metrics(tmp_path)


def test_failed_save_and_torn_line_then_resume_equals_an_uninterrupted_run(toy_dir, tmp_path, monkeypatch, capsys):
    """A run whose step-2 checkpoint write dies half way (disk full), with a torn metrics line after
    it: one line naming the checkpoint and the newest complete one, the partial save removed (the
    disk is full), step_000001 stays the newest checkpoint, --resume continues from it, one row per
    step, and the run ends bit-identical to one never interrupted."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*TINY_RUN, "--model", toy_dir, "--steps", "2", "--save-every", "1"]
    grpo(monkeypatch, [*args, "--out", str(a)])
    real_save = runs.save_file

    def disk_full(tensors, path, *rest, **kw):  # writes half of the file, then fails as a full disk does
        real_save(tensors, path, *rest, **kw)
        if "step_000002" in path:
            truncate_file(path)
            raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(runs, "save_file", disk_full)
    with pytest.raises(UserError, match=r"step_000002: cannot write the checkpoint \(No space left on "
                       r"device\); the newest complete one is .*step_000001: free space, then --resume"):
        grpo(monkeypatch, [*args, "--out", str(b)])
    monkeypatch.setattr(runs, "save_file", real_save)
    assert runs.newest_checkpoint(b) == str(b / "step_000001")
    assert not (b / "step_000002.tmp").exists() and not (b / "step_000002").exists()
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')                                          # and a kill mid-row
    grpo(monkeypatch, [*args, "--out", str(b), "--resume"])
    assert "dropped a torn last line" in capsys.readouterr().err
    ra, rb = runs.read_metrics(a), runs.read_metrics(b)
    assert [r["step"] for r in rb if "reward" in r] == [1, 2]                 # one row per step
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == [0, 1, 2, 2]
    assert [r.get("reward") for r in rb] == [r.get("reward") for r in ra]
    for name in ("adapter_model.safetensors", "trainer_state.safetensors"):
        ta, tb = load_file(a / "step_000002" / name), load_file(b / "step_000002" / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert not (b / "step_000002.tmp").exists()


def test_checkpoint_saved_again_replaces_the_old_one(toy_dir, tmp_path):
    m = lora.apply_lora(M.load_model(toy_dir, device="cpu", verbose=False), 1, 8, verbose=False)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam([p for _, p in named])
    m(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    path = str(tmp_path / "step_000001")
    runs.save_checkpoint(path, m, opt, named, {"step": 1})
    runs.save_checkpoint(path, m, opt, named, {"step": 1, "again": True})
    assert runs.checkpoints(tmp_path) == [path] and sorted(os.listdir(tmp_path)) == ["step_000001"]
    assert runs.load_trainer_state(path, opt, named)[0]["again"]

# -----------------------------------------------------------------------------
# Bad files name their path; scripts turn that into one line and exit 2


def test_truncated_files_name_their_path(toy_dir, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(toy_dir, shards)
    state = load_file(shards / "model.safetensors")
    keys = sorted(state)
    from safetensors.torch import save_file
    os.remove(shards / "model.safetensors")
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: state[k] for k in part}, shards / f"model-0000{i + 1}-of-00002.safetensors")
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f"model-0000{1 + (k in keys[len(keys) // 2:])}-of-00002.safetensors" for k in keys}}))
    M.load_model(str(shards), device="cpu", verbose=False)                    # intact: loads
    truncate_file(shards / "model-00002-of-00002.safetensors")
    with pytest.raises(UserError, match=r"model-00002-of-00002\.safetensors: not a readable safetensors file"):
        M.load_model(str(shards), device="cpu", verbose=False)
    (shards / "model.safetensors.index.json").write_text('{"weight_map": {')
    with pytest.raises(UserError, match=r"model\.safetensors\.index\.json: not valid JSON"):
        M.load_model(str(shards), device="cpu", verbose=False)
    # an adapter: its tensors, then its config
    m = lora.apply_lora(M.load_model(toy_dir, device="cpu", verbose=False), 1, 8, verbose=False)
    lora.save_adapter(m, tmp_path / "adapter")
    truncate_file(tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: not a readable safetensors file"):
        lora.load_adapter(M.load_model(toy_dir, device="cpu", verbose=False), tmp_path / "adapter")
    truncate_file(tmp_path / "adapter" / "adapter_config.json")
    with pytest.raises(UserError, match=r"adapter_config\.json: not valid JSON"):
        lora.load_adapter(M.load_model(toy_dir, device="cpu", verbose=False), tmp_path / "adapter")
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "config.json").write_text('{"hidden_size": 64, ')
    with pytest.raises(UserError, match=r"bad_config/config\.json: not valid JSON"):
        M.load_model(str(tmp_path / "bad_config"), device="cpu")


def test_the_hook_turns_a_user_error_into_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    errors.exit_on_user_error()
    try:
        errors.read_json("/nowhere/args.json")
    except UserError as e:
        err = e
    with pytest.raises(SystemExit) as stop:
        sys.excepthook(type(err), err, err.__traceback__)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: /nowhere/args.json: no such file\n"
    bug = ZeroDivisionError("a bug")
    sys.excepthook(ZeroDivisionError, bug, None)                              # a bug keeps its traceback
    assert "ZeroDivisionError: a bug" in capsys.readouterr().err


def run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=900)


def assert_one_line_exit_2(res, *needles):
    assert res.returncode == 2, res.stdout[-1500:] + res.stderr[-1500:]
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), res.stderr


def exits_2(monkeypatch, capsys, name, argv, *needles):
    """Run a script in-process until its UserError, then hand that to the hook the script installed,
    as the interpreter does with an uncaught exception: one line naming the file, status 2."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    with pytest.raises(UserError) as e:
        script(monkeypatch, name, argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        sys.excepthook(e.type, e.value, e.tb)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert all(n in err for n in needles), err


def test_scripts_exit_2_naming_the_truncated_file(toy_dir, tmp_path, monkeypatch, capsys):
    # --resume of a run whose trainer state is truncated: a real process, as a user types it
    out = tmp_path / "runs" / "r1"
    args = [*TINY_RUN, "--model", toy_dir, "--steps", "1", "--save-every", "1", "--out", str(out)]
    grpo(monkeypatch, args)
    state = out / "step_000001" / "trainer_state.safetensors"
    shutil.copy(state, tmp_path / "state")
    truncate_file(state)
    res = subprocess.run([sys.executable, "grpo.py", *args, "--steps", "2", "--resume"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stdout[-1500:] + res.stderr[-1500:]
    assert res.stderr.strip().splitlines()[-1] == f"error: {out}: no readable checkpoint to resume from; " \
        f"step_000001 is damaged: {state}: not a readable safetensors file (Error while " \
        f"deserializing header: incomplete metadata, file not fully covered); truncated or corrupt?"
    monkeypatch.setattr(gsm8k, "reward", lambda completion, answer: 0.0)
    exits_2(monkeypatch, capsys, "grpo.py", [*args, "--resume"], str(state))
    # geometry.py over a folder of runs, one adapter truncated; eval_gsm8k.py --adapter (load_adapter)
    shutil.copy(tmp_path / "state", state)
    adapter = out / "step_000001" / "adapter_model.safetensors"
    truncate_file(adapter)
    exits_2(monkeypatch, capsys, "geometry.py", [str(tmp_path / "runs"), "--out", str(tmp_path / "geo")], str(adapter))
    exits_2(monkeypatch, capsys, "eval_gsm8k.py", ["--toy", "--model", toy_dir, "--adapter", str(out / "step_000001"),
                                                   "--limit", "1", "--device", "cpu"], str(adapter))
    # load_model: a truncated weights file
    shutil.copytree(toy_dir, tmp_path / "base")
    truncate_file(tmp_path / "base" / "model.safetensors")
    exits_2(monkeypatch, capsys, "eval_gsm8k.py", ["--toy", "--model", str(tmp_path / "base"), "--limit", "1"],
            str(tmp_path / "base" / "model.safetensors"))


def test_flag_errors_exit_2_in_one_line(toy_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        grpo(monkeypatch, [*TINY_RUN, "--model", toy_dir, "--rank", "-1", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "argument --rank: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(UserError, match="LoRA rank must be an integer >= 1"):
        lora.apply_lora(M.load_model(toy_dir, device="cpu", verbose=False), 0, 8)
    with pytest.raises(SystemExit) as e:
        script(monkeypatch, "sft.py", ["--toy", "--model", toy_dir, "--rank", "-2", "--out", str(tmp_path / "y")])
    assert e.value.code == 2 and "argument --rank: must be >= 0, got -2" in capsys.readouterr().err

# -----------------------------------------------------------------------------
# --data: a folder holding {split}.jsonl, or a file, in every script


def write_data(folder):
    folder.mkdir()
    for split, n in (("train", 8), ("test", 3)):
        rows = toy_task.toy_problems(split)[:n]  # GSM8K's format: question, answer ending in "#### N"
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_data_path():
    assert eval_gsm8k.data_path(None, "train") is None
    assert eval_gsm8k.data_path("x.jsonl", "test") == "x.jsonl"


def test_data_is_a_folder_or_a_file_in_every_script(toy_dir, tmp_path, monkeypatch, capsys):
    data = write_data(tmp_path / "data")
    assert eval_gsm8k.data_path(str(data), "test") == str(data / "test.jsonl")
    os.remove(data / "test.jsonl")
    with pytest.raises(UserError, match="a folder, but it holds no test.jsonl"):
        eval_gsm8k.data_path(str(data), "test")
    data = write_data(tmp_path / "data2")
    file = str(data / "train.jsonl")
    common = ["--model", toy_dir, "--task", "gsm8k", "--steps", "1", "--max-new-tokens", "4", "--eval-limit", "0"]
    for d, counts in ((str(data), "8 train problems, 3 held out"), (file, "8 train problems, 8 held out")):
        out = tmp_path / "runs" / f"grpo{len(d)}"
        grpo(monkeypatch, [*TINY_RUN, *common, "--data", d, "--save-every", "1", "--out", str(out)])
        assert counts in capsys.readouterr().out
    for d, counts in ((str(data), "8 train examples (0 longer than 1024 dropped), 0.50 epochs, 3 held out"),
                      (file, "8 train examples (0 longer than 1024 dropped), 0.50 epochs, 8 held out")):
        script(monkeypatch, "sft.py", ["--toy", *common, "--rank", "1", "--batch-size", "4", "--data", d,
                                       "--out", str(tmp_path / f"sft{len(d)}"), "--device", "cpu"])
        printed = capsys.readouterr().out
        assert counts in printed and (("is one file" in printed) == (d == file))
    for d, n in ((str(data), 3), (file, 8)):
        script(monkeypatch, "eval_gsm8k.py", ["--model", toy_dir, "--data", d, "--max-new-tokens", "4", "--device", "cpu"])
        assert f"({n} problems, 0-shot" in capsys.readouterr().out
    for d, n in ((str(data), 3), (str(data / "test.jsonl"), 3)):  # geometry reads the test split
        script(monkeypatch, "geometry.py", [str(tmp_path / "runs"), "--truncate", "1", "--data", d, "--eval-limit", "10",
                                            "--max-new-tokens", "4", "--out", str(tmp_path / "geo")])
        assert f"evaluating on {n} gsm8k test problems" in capsys.readouterr().out


def test_ctrl_c_resume_by_content_and_a_damaged_newest_checkpoint(toy_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C: exit 130 and one line naming the newest checkpoint and the command that continues.
    --resume: the same model named another way is the same model, a changed --eval-limit is refused,
    and a damaged newest checkpoint falls back to the one before; the run then ends as one never
    interrupted."""
    import sampler
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*TINY_RUN, "--steps", "3", "--save-every", "1"]
    grpo(monkeypatch, [*args, "--model", toy_dir, "--out", str(a)])
    real, calls = sampler.generate, []

    def interrupted(*x, **k):  # the third rollout is interrupted by Ctrl-C
        calls.append(1)
        if len(calls) == 3:  # rollouts 1, 2, 3 (evaluation reads eval_gsm8k's own import)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*x, **k)
    monkeypatch.setattr(sampler, "generate", interrupted)
    with pytest.raises(SystemExit) as e:
        grpo(monkeypatch, [*args, "--model", toy_dir, "--out", str(b)])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(sampler, "generate", real)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err[-1].startswith(f"interrupted: the newest checkpoint is {b / 'step_000002'}")
    assert err[-1].endswith("--resume") and "Traceback" not in "\n".join(err)
    with pytest.raises(UserError, match="eval_limit"):
        grpo(monkeypatch, [*args, "--model", toy_dir, "--out", str(b), "--resume", "--eval-limit", "3"])
    truncate_file(b / "step_000002" / "adapter_model.safetensors")          # damaged after its rename
    here = os.path.relpath(toy_dir, ROOT)
    monkeypatch.chdir(ROOT)                                                   # a relative --model path
    grpo(monkeypatch, [*args, "--model", here, "--out", str(b), "--resume"])
    out = capsys.readouterr().out
    assert "step_000002 is damaged" in out and f"resuming from step_000001" in out
    for name in ("adapter_model.safetensors", "trainer_state.safetensors"):
        ta, tb = load_file(a / "step_000003" / name), load_file(b / "step_000003" / name)
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_code_version_hashes_the_script_and_what_it_imports(tmp_path):
    """A run's code hash covers its script, the repository modules it imports (transitively) and
    toy_base/, and nothing else: editing the study or a README does not make old runs stale."""
    (tmp_path / "toy_base").mkdir()
    (tmp_path / "toy_base" / "config.json").write_text("{}")
    (tmp_path / "train.py").write_text("import helper\nfrom os import path\n")
    (tmp_path / "helper.py").write_text("from deep import f\n")
    (tmp_path / "deep.py").write_text("def f(): return 1\n")
    (tmp_path / "study.py").write_text("import train\n")
    assert [p.name for p in versions.local_sources(tmp_path / "train.py", tmp_path)] == [
        "deep.py", "helper.py", "train.py"]
    h = lambda: versions.code_version(tmp_path / "train.py", tmp_path)["hash"]
    first = h()
    (tmp_path / "study.py").write_text("import train  # edited\n")
    assert h() == first, "a file the run does not import"
    (tmp_path / "helper.py").write_text('"""A docstring."""\nfrom deep import f  # a comment\n')
    assert h() == first, "docstrings and comments are not code"
    (tmp_path / "toy_base" / "README.md").write_text("about the base")
    assert h() == first, "nor is the base's README"
    (tmp_path / "deep.py").write_text("def f(): return 2\n")
    assert h() != first, "a module imported two levels down"
    second = h()
    (tmp_path / "toy_base" / "config.json").write_text('{"a": 1}')
    assert h() != second, "the shipped base"
    version = versions.code_version(tmp_path / "train.py", tmp_path)
    assert version["commit"] is None and version["dirty"] is False  # not a git checkout
