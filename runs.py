"""
The run folder, read and written in one place: args.json, metrics.jsonl, atomic checkpoints, resume,
and finding the runs under a folder. sft.py and grpo.py write run folders, geometry.py and study.py
read them, all through here; docs/formats.md describes every file.

    python runs.py runs/             # every run under runs/: checkpoints, rows, last evaluation
    python runs.py --check           # self-check on a temporary run: torn line, cut save, resume

What a crash leaves behind, and what reading does with it. A checkpoint is written into
step_N.tmp/ and renamed in one step: a kill or a full disk during the write leaves only
step_N.tmp/, which nothing reads, and the previous checkpoint stays the newest. A metrics row is
one write of one line: a kill leaves a last line without its newline, which reading drops with a
note and --resume rewrites; any other bad line is damage a crash of ours cannot cause, and stops
with file:line. Every read names its file when it fails (errors.UserError): with 150 checkpoints,
the bad one. Under torchrun, rank 0 alone writes the run folder (data_parallel.py).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile

from safetensors.torch import save_file

import adapters
from errors import (UserError, check_writable, exit_on_user_error, fsync_dir, fsync_tree,
                    load_safetensors, open_safetensors, read_json, user_exit, write_json,
                    write_lines)
from model import save_model
from versions import code_version, same_model

STEP = re.compile(r"step_(\d+)")  # step_000010; written as step_{step:06d}

# -----------------------------------------------------------------------------
# args.json

def write_args(out, args):
    """args.json (vars(args) and "code": code_version()), the first file of a run; replaces the
    old one on --resume."""
    check_writable(out, folder=True)
    args = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    write_json(os.path.join(out, "args.json"), dict(args, code=code_version()))


def read_args(run) -> dict:
    """The arguments a run was started with, {"rank": 1, "lr": 5e-05, ...}."""
    path = os.path.join(run, "args.json")
    args = read_json(path)
    if not isinstance(args, dict):
        raise UserError(f"{path}: args.json holds one JSON object, got {type(args).__name__}")
    return args


def check_resume_args(run, args, free):
    """--resume must continue the run it resumes: every argument outside `free` (the step budget,
    device, logging) equals the saved one, or the resumed run is some other run. The model is
    compared by what it is: toy_base, ./toy_base and its absolute path are one model."""
    saved = read_args(run)
    changed = {k: (saved.get(k), v) for k, v in vars(args).items()
               if k not in free and k != "code" and saved.get(k) != v
               and not (k == "model" and same_model([saved.get(k), v]))}
    if changed:
        raise UserError(f"--resume of {run} with arguments that change training (saved, now): "
                        f"{changed}")

def start_run(args, free, rank=0):
    """The run folder of a training script, before anything trains: a folder that holds
    checkpoints is continued only with --resume, and only with the arguments that made it (all but
    `free`: the step budget, device, evaluation, logging); args.json is written (rank 0). Returns
    the newest complete checkpoint to resume from, or None."""
    if rank == 0:
        check_writable(args.out, folder=True)  # a read-only or file --out fails now, in one line
    ckpt = newest_checkpoint(args.out)
    if ckpt and not args.resume:
        raise user_exit(f"{args.out} already holds checkpoints ({os.path.basename(ckpt)}); pass "
                        f"--resume to continue it, or another --out")
    if args.resume and ckpt is None:
        print(f"--resume: no complete checkpoint in {args.out}, starting from step 0")
    if ckpt:
        check_resume_args(args.out, args, free)
        ckpt, damaged = resumable_checkpoint(args.out)
        if ckpt is None:
            raise UserError(f"{args.out}: no readable checkpoint to resume from; {damaged[-1]}")
        for note in damaged:
            print(f"note: {note}; resuming from {os.path.basename(ckpt)}")
    if rank == 0:
        write_args(args.out, args)
    return ckpt

def on_ctrl_c(out):
    """Ctrl-C ends a training script with one line, naming the newest checkpoint and the command
    that continues the run, and exit status 130 (128 + SIGINT), not a 40-line traceback."""
    def stop(signum, frame):
        ckpt = newest_checkpoint(out)
        argv = [a for a in sys.argv if a != "--resume"]
        command = " ".join(shlex.quote(a) for a in ["python", *argv, "--resume"])
        print(f"\ninterrupted: the newest checkpoint is {ckpt or 'none yet'}; continue with: "
              f"{command}", file=sys.stderr, flush=True)
        raise SystemExit(130)
    signal.signal(signal.SIGINT, stop)

# -----------------------------------------------------------------------------
# metrics.jsonl


def append_metrics(run, row):
    """One row, one line, one write: a kill can tear only the last line (read_metrics drops it)."""
    path = os.path.join(run, "metrics.jsonl")
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise UserError(f"{path}: cannot append a row ({e.strerror or e}); the rows before it "
                        f"are intact, and --resume continues from the newest checkpoint") from None


def jsonl_rows(path):
    """[(line number, row)] of a JSONL file of objects, blank lines skipped. A last line without its
    newline that does not parse is a write cut short: dropped, with a note on stderr. Any other line
    that is not a JSON object is a UserError naming file:line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # a torn line: mid-character
            lines = f.read().split("\n")                      # "" last when the file ends in "\n"
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # the last line, and no newline after it
                print(f"note: {path}:{n}: dropped a torn last line {line[:40]!r} (a write cut "
                      f"short, e.g. by a kill)", file=sys.stderr)
                break
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); the file is "
                            f"damaged: fix or delete that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: a {type(row).__name__}, not a JSON object")
        rows.append((n, row))
    return rows


def read_metrics(run) -> list:
    """The rows of run/metrics.jsonl in order, [{"step": 0, "eval_accuracy": 0.4, ...}, {"step": 1,
    ...}]; every good row, a torn last line dropped (jsonl_rows). A missing file is a UserError."""
    path = os.path.join(run, "metrics.jsonl")
    rows = jsonl_rows(path)
    for n, row in rows:
        if not isinstance(row.get("step"), int):
            raise UserError(f"{path}:{n}: a metrics row needs an integer \"step\", got "
                            f"{row.get('step')!r}")
    return [row for _, row in rows]


def trim_metrics(run, step):
    """--resume from `step`: keep the rows up to it, drop what the interrupted run wrote after its
    last checkpoint (those steps run again) and a torn last line; rewritten under a temporary
    name."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return
    rows = [row for row in read_metrics(run) if row["step"] <= step]
    write_lines(path, [json.dumps(row) for row in rows])

# -----------------------------------------------------------------------------
# Checkpoints: step_NNNNNN/ = the weights (adapter or full) + trainer_state.{safetensors,json}


def checkpoints(run) -> list:
    """The checkpoints --resume can continue from, oldest first: step_NNNNNN/ folders (a save cut
    short is still step_NNNNNN.tmp/) that hold trainer_state.json."""
    found = [d for d in os.listdir(run) if STEP.fullmatch(d)] if os.path.isdir(run) else []
    found = [os.path.join(run, d) for d in sorted(found, key=lambda d: int(STEP.fullmatch(d)[1]))]
    return [d for d in found if os.path.isfile(os.path.join(d, "trainer_state.json"))]


def newest_checkpoint(run):
    """The newest complete checkpoint of a run, or None."""
    found = checkpoints(run)
    return found[-1] if found else None


def resumable_checkpoint(run):
    """(the newest checkpoint whose files all read, notes on the newer ones that do not): a disk
    fault or a copy cut short can damage a checkpoint after its rename; --resume then continues
    from the previous good one, and says so."""
    notes = []
    for ckpt in reversed(checkpoints(run)):
        try:
            state = read_json(os.path.join(ckpt, "trainer_state.json"))
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise UserError(f"{ckpt}/trainer_state.json: no integer \"step\"")
            for name in os.listdir(ckpt):
                if name.endswith(".safetensors"):
                    open_safetensors(os.path.join(ckpt, name))
                elif name.endswith(".json"):
                    read_json(os.path.join(ckpt, name))
            return ckpt, notes
        except UserError as e:
            notes.append(f"{os.path.basename(ckpt)} is damaged: {e}")
    return None, notes


def save_checkpoint(path, model, optimizer, named, state, full=False, tokenizer=None,
                    base_name=None, extra=None):
    """Weights (full: config + safetensors + tokenizer.json; else the PEFT adapter), Adam's
    moments by name and `extra` tensors (RNG states) as safetensors, `state` as JSON; no pickle.
    Written into path.tmp, then one rename: a crash never leaves half a checkpoint."""
    tmp = path + ".tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # what an earlier save cut short left
        if full:
            save_model(model, tmp)
            if tokenizer is not None:
                tokenizer.tok.save(os.path.join(tmp, "tokenizer.json"))
        else:
            adapters.save(model, tmp, base_model_name_or_path=base_name)
        tensors = dict(extra or {})
        for name, p in named:
            for key, value in optimizer.state.get(p, {}).items():   # step, exp_avg, exp_avg_sq
                tensors[f"adam.{name}.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, os.path.join(tmp, "trainer_state.safetensors"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=2)
        fsync_tree(tmp)  # every byte on disk before the rename publishes the checkpoint
        if os.path.exists(path):  # the same step saved again: swap, never a moment with neither
            os.rename(path, path + ".old")
            os.rename(tmp, path)
            shutil.rmtree(path + ".old")
        else:
            os.rename(tmp, path)
        fsync_dir(os.path.dirname(path))
    except (OSError, UserError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # free what it took: the disk may be full
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        previous = newest_checkpoint(os.path.dirname(path))
        raise UserError(f"{path}: cannot write the checkpoint ({reason}); the newest complete "
                        f"one is {previous or 'none'}: free space, then --resume") from None


def load_trainer_state(path, optimizer, named):
    """Restore Adam's moments; return (trainer_state.json, every saved tensor, e.g. RNG states)."""
    file = os.path.join(path, "trainer_state.safetensors")
    tensors = load_safetensors(file)
    for name, p in named:
        keys = [f"adam.{name}.{k}" for k in ("step", "exp_avg", "exp_avg_sq")]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise UserError(f"{file}: no {missing[0]} ({len(missing)} missing; saved with other "
                            f"--rank/--targets/--layers?)")
        if tensors[keys[1]].shape != p.shape:
            raise UserError(f"{file}: {keys[1]} has shape {tuple(tensors[keys[1]].shape)}, the "
                            f"parameter {tuple(p.shape)}")
        # Adam keeps `step` on the CPU (non-capturable path) and the moments beside the parameter
        optimizer.state[p] = {"step": tensors[keys[0]], "exp_avg": tensors[keys[1]].to(p.device),
                              "exp_avg_sq": tensors[keys[2]].to(p.device)}
    state = read_json(os.path.join(path, "trainer_state.json"))
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise UserError(f"{os.path.join(path, 'trainer_state.json')}: no integer \"step\"")
    return state, tensors

# -----------------------------------------------------------------------------
# Finding runs


def is_run(folder):
    """A run folder: it holds args.json or step_*/ checkpoints."""
    return os.path.isdir(folder) and (os.path.exists(os.path.join(folder, "args.json")) or
                                      any(STEP.fullmatch(d) for d in os.listdir(folder)))


def find_runs(root, adapters_only=False):
    """({run: [(step, checkpoint folder), ...]}, notes) for the run folders (args.json or step_N/
    folders with weights; never a cut save's step_N.tmp/) directly under root, sorted.
    adapters_only (geometry.py): full fine-tuning runs are skipped with a note."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such folder")
    runs, notes = {}, []
    for name in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        run = os.path.join(root, name)
        steps = sorted((int(m[1]), os.path.join(run, d)) for d in os.listdir(run)
                       if (m := STEP.fullmatch(d)) and os.path.isdir(os.path.join(run, d)))
        adapters = [(s, d) for s, d in steps
                    if os.path.exists(os.path.join(d, "adapter_model.safetensors"))]
        if os.path.exists(os.path.join(run, "geometry.json")):
            continue  # geometry.py's output folder, beside the runs it read
        if not steps and not os.path.exists(os.path.join(run, "args.json")):
            notes.append(f"{name}: no args.json nor step_* checkpoints, not a run")
        elif not adapters_only:
            runs[name] = [(s, d) for s, d in steps if (s, d) in adapters
                          or os.path.exists(os.path.join(d, "model.safetensors"))]
        elif not steps:
            notes.append(f"{name}: no step_* checkpoints yet, skipped")
        elif not adapters:
            notes.append(f"{name}: full fine-tuning (no adapter), skipped: its update is dense")
        else:
            runs[name] = adapters
            if len(adapters) < len(steps):
                notes.append(f"{name}: {len(steps) - len(adapters)} step folders without an "
                             f"adapter ignored")
    return runs, notes

# -----------------------------------------------------------------------------
# python runs.py RUNS_DIR: what is there. --check: the crash cases on a temporary run


def self_check():
    import torch
    from model import TOY_CONFIG, Qwen2
    from lora import apply_lora
    with tempfile.TemporaryDirectory() as run:
        torch.manual_seed(0)
        model = apply_lora(Qwen2(TOY_CONFIG), 1, 32, verbose=False)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        opt = torch.optim.Adam([p for _, p in named])
        write_args(run, {"rank": 1})
        for step in (1, 2):
            model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
            opt.step()
            append_metrics(run, {"step": step, "loss": 1.0 / step})
            folder = os.path.join(run, f"step_{step:06d}")
            save_checkpoint(folder, model, opt, named, {"step": step})
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            f.write('{"step": 3, "los')                                    # killed mid-write
        os.makedirs(os.path.join(run, "step_000003.tmp"))                  # killed mid-save
        assert [r["step"] for r in read_metrics(run)] == [1, 2]
        assert newest_checkpoint(run) == os.path.join(run, "step_000002")
        state, _ = load_trainer_state(newest_checkpoint(run), opt, named)
        trim_metrics(run, state["step"])
        append_metrics(run, {"step": 3, "loss": 0.3})
        assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
        print("torn last line dropped with a note, step_000003.tmp ignored, resumed at step 2: "
              "rows 1, 2, 3")
    print("runs.py: all checks passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", nargs="?", default=None,
                        help="folder of run folders; default runs/ (the self-check if absent)")
    parser.add_argument("--check", action="store_true",
                        help="self-check the crash cases on a temporary run instead")
    args = parser.parse_args()
    exit_on_user_error()
    if args.check or (args.runs_dir is None and not os.path.isdir("runs")):
        self_check()
        raise SystemExit
    args.runs_dir = args.runs_dir or "runs"
    if not os.path.isdir(args.runs_dir):
        raise user_exit(f"{args.runs_dir}: no such folder (train a run first: python grpo.py "
                        f"--toy --rank 1; or python runs.py --check, the self-check)")
    found, notes = find_runs(args.runs_dir)
    print("".join(f"note: {n}\n" for n in notes), end="")
    print(f"{'run':24} | {'checkpoints':>11} | {'newest':>11} | {'rows':>5} | last evaluation")
    for name, steps in found.items():
        run = os.path.join(args.runs_dir, name)
        rows = read_metrics(run) if os.path.exists(os.path.join(run, "metrics.jsonl")) else []
        evals = [r for r in rows if "eval_accuracy" in r]
        newest = newest_checkpoint(run)
        last = f"{evals[-1]['eval_accuracy']:.3f} at step {evals[-1]['step']}" if evals else "-"
        newest = os.path.basename(newest) if newest else "-"
        print(f"{name:24} | {len(steps):>11} | {newest:>11} | {len(rows):>5} | {last}")
