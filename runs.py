"""
The run folder, read and written in one place: args.json, metrics.jsonl, atomic checkpoints, resume,
and finding the runs under a folder. sft.py and grpo.py write run folders, geometry.py and study.py
read them, all through here; docs/formats.md describes every file.

    python runs.py runs/             # every run under runs/: checkpoints, rows, last evaluation

What a crash leaves behind, and what reading does with it. A checkpoint is written into
step_N.tmp/ and renamed in one step; Ctrl-C or SIGTERM waits for the rename, and a SIGKILL or a
full disk during the write leaves only step_N.tmp/, which nothing reads, and the previous
checkpoint stays the newest. A metrics row is
one write of one line: a kill leaves a last line without its newline, which reading drops with a
note and --resume rewrites; any other bad line is damage a crash of ours cannot cause, and stops
with file:line. Every read names its file when it fails (errors.UserError): with 150 checkpoints,
the bad one. Under torchrun, rank 0 alone writes the run folder (data_parallel.py).
"""
import argparse
import atexit
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time

from safetensors import SafetensorError
from safetensors.torch import save_file

import adapters
from errors import (HelpFormatter, UserError, check_writable, exit_on_user_error, fsync_dir,
                    fsync_tree, jsonl_rows, load_safetensors, open_safetensors, read_json,
                    signals_deferred, stop_on_signals, user_exit, write_json, write_lines)
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

# -----------------------------------------------------------------------------
# Opening a run folder: one writer, and nothing written before every check has passed

LOCK = ".lock"  # out/.lock: {"pid", "host", "command", "started"} of the process writing the run


def open_run(args, free, script, rank=0):
    """The run folder of a training script, checked before a byte of the run is written: --out
    is a new or empty folder, or a run of `script` (args.json), which is continued only with
    --resume, only with the arguments that made it (all but `free`: the step budget, device,
    evaluation, logging), and from its newest readable checkpoint. Rank 0 takes the folder's lock
    (take_lock), so a refusal after this leaves the folder as it was. Returns the checkpoint to
    resume from, or None; begin_run() then writes args.json."""
    out = args.out
    if rank == 0:
        check_run_folder(out, script)
        take_lock(out)
    ckpt = newest_checkpoint(out)
    if ckpt and not args.resume:
        raise user_exit(f"{out} already holds checkpoints ({os.path.basename(ckpt)}); pass "
                        f"--resume to continue it, or another --out")
    if args.resume and ckpt is None:
        print(f"--resume: no complete checkpoint in {out}, starting from step 0")
    if not ckpt:
        return None
    check_resume_args(out, args, free)
    ckpt, damaged = resumable_checkpoint(out)
    if ckpt is None:
        raise UserError(f"{out}: no readable checkpoint to resume from; {damaged[-1]}")
    for note in damaged:
        print(f"note: {note}; resuming from {os.path.basename(ckpt)}")
    step = int(STEP.fullmatch(os.path.basename(ckpt))[1])
    if args.steps < step:
        raise user_exit(f"--steps {args.steps} is below the newest checkpoint of {out} (step "
                        f"{step}): a resumed run continues it; pass --steps {step} or more")
    return ckpt


def begin_run(args, script, start, rank=0):
    """args.json (written anew on --resume, with the new step budget) and metrics.jsonl cut to
    the rows up to `start`, the step resumed from (a fresh run: no rows). Rank 0 writes."""
    if rank == 0:
        write_args(args.out, dict(vars(args), script=script))
        path = os.path.join(args.out, "metrics.jsonl")
        if start:
            trim_metrics(args.out, start)
        elif os.path.exists(path):
            os.remove(path)


def check_run_folder(out, script):
    """--out must be a new folder, an empty one, or a run folder that `script` wrote (args.json,
    with step_*/, metrics.jsonl beside it): a model folder, someone else's adapters or another
    script's run are refused, untouched."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: a file, not a folder")
    if not os.path.exists(out):
        parent = os.path.dirname(os.path.abspath(out))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            why = "a file, not a folder" if not os.path.isdir(parent) else "not writable"
            raise UserError(f"--out {out}: cannot make it ({parent} is {why})")
        return
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable")
    entries = sorted(os.listdir(out))
    if not entries or entries == [LOCK]:
        return
    if "args.json" not in entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(f"--out {out} holds files that no run of {script} wrote ({shown}); a run "
                        f"writes only into a new or empty folder or its own: pass another --out")
    made_by = read_args(out).get("script")
    if made_by not in (None, script):
        raise UserError(f"--out {out} is a run of {made_by}, not of {script}: pass another --out "
                        f"(or python {made_by} ... --resume to continue it)")


def take_lock(out):
    """One writer per run folder: out/.lock, created atomically (O_EXCL) and naming this process,
    removed at exit (with the folder, if this process made it and it stayed empty). A lock whose
    process is gone (this host, no such pid) is stale and taken over; a live one refuses."""
    made = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK)
    me = dict(pid=os.getpid(), host=socket.gethostname(), command=" ".join(sys.argv),
              started=time.strftime("%Y-%m-%d %H:%M:%S"))
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                owner = read_json(path)
            except UserError:
                owner = {}  # a lock cut short as it was written: its writer died then
            if lock_alive(owner):
                raise UserError(f"--out {out} is being written by process {owner['pid']} on "
                                f"{owner['host']} (since {owner.get('started')}: "
                                f"{owner.get('command')}); wait for it, or pass another --out")
            print(f"note: {path} was left by a process that is gone "
                  f"({owner.get('pid', '?')}); taking it over", file=sys.stderr)
            os.remove(path)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    HELD[path] = made


HELD = {}  # the locks this process holds: {lock path: whether it made the run folder}


@atexit.register
def release_locks():
    """Remove this process's locks, and a run folder it made that stayed empty (a refused run
    leaves nothing). At exit; tests that run scripts in this process call it after each."""
    for path, made in list(HELD.items()):
        if os.path.exists(path) and read_json(path).get("pid") == os.getpid():
            os.remove(path)
            folder = os.path.dirname(path)
            if made and not os.listdir(folder):
                os.rmdir(folder)
        del HELD[path]


def lock_alive(owner):
    """Is the process that wrote this lock still running? On this host: is its pid alive. On
    another host (a shared disk) there is no telling: alive, so nothing is overwritten."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    if owner["pid"] == os.getpid():  # this process's own, from a run it finished (tests run
        return False                 # scripts in-process, one after the other)
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def on_signals(out):
    """Ctrl-C (SIGINT) or SIGTERM (what `kill` and schedulers send) ends a training script with
    one line, naming the newest checkpoint and the command that continues the run, and exit
    status 128 + the signal (130, 143), not a traceback; the lock goes at exit. A signal during
    a checkpoint's write takes effect once the checkpoint is on disk (save_checkpoint)."""
    def after():
        argv = [a for a in sys.argv if a != "--resume"]
        command = " ".join(shlex.quote(a) for a in ["python", *argv, "--resume"])
        return f": the newest checkpoint is {newest_checkpoint(out) or 'none yet'}; continue " \
               f"with: {command}"
    stop_on_signals(after)

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
            weights = ["adapter_config.json", "adapter_model.safetensors"] if os.path.exists(
                os.path.join(ckpt, "adapter_config.json")) else ["config.json", "model.safetensors"]
            for name in ["trainer_state.safetensors", *weights]:
                if not os.path.isfile(os.path.join(ckpt, name)):
                    raise UserError(f"{ckpt}: no {name}")
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
    Written into path.tmp, then one rename: a crash never leaves half a checkpoint, and a signal
    never cuts the write short (errors.signals_deferred)."""
    tmp = path + ".tmp"
    with signals_deferred():  # Ctrl-C or SIGTERM waits until the checkpoint is on disk
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
        except (OSError, UserError, SafetensorError) as e:  # SafetensorError: a full disk, too
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
# python runs.py RUNS_DIR: what is there


def describe(run):
    """One row of the listing: (checkpoints, newest, metrics rows, last evaluation), or a
    UserError naming what is damaged."""
    rows = read_metrics(run) if os.path.exists(os.path.join(run, "metrics.jsonl")) else []
    evals = [r for r in rows if "eval_accuracy" in r]
    newest = newest_checkpoint(run)
    last = f"{evals[-1]['eval_accuracy']:.3f} at step {evals[-1]['step']}" if evals else "-"
    return len(checkpoints(run)), os.path.basename(newest) if newest else "-", len(rows), last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders")
    args = parser.parse_args()
    exit_on_user_error()
    if not os.path.isdir(args.runs_dir):
        raise user_exit(f"{args.runs_dir}: no such folder (train a run first: python grpo.py "
                        f"--toy --rank 1)")
    found, notes = find_runs(args.runs_dir)
    print("".join(f"note: {n}\n" for n in notes), end="")
    print(f"{'run':24} | {'checkpoints':>11} | {'newest':>11} | {'rows':>5} | last evaluation")
    damaged = []
    for name in found:
        try:
            print("{:24} | {:>11} | {:>11} | {:>5} | {}".format(
                name, *describe(os.path.join(args.runs_dir, name))))
        except UserError as e:  # the others are still listed; this one is named below
            damaged.append(f"{name}: {e}")
    for d in damaged:
        print(f"damaged: {d}", file=sys.stderr)
    if damaged:
        raise SystemExit(1)
