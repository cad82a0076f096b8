"""
Same behaviour, proven: run one fixed set of toy commands at two commits and compare what they
wrote, byte for byte where bytes are the contract.

    python tests/compare_commits.py 309867e HEAD          # the commit before a refactor, and after
    python tests/compare_commits.py HEAD~3 HEAD --keep /tmp/cmp   # keep both sides' run folders

Each commit is checked out into a temporary worktree (`git worktree add --detach`), and the same
commands run there, one thread each: GRPO at rank 1 (then resumed), rank 4, full fine-tuning,
LoRA-XS and TinyLoRA for a few steps; SFT LoRA for a few steps; geometry.py over the runs (with a
small plane and rank-1 truncation); eval_gsm8k.py --adapter over several checkpoints and over one.
Compared:
- every .safetensors file (adapters, full weights, trainer state): identical bytes;
- every other JSON file (adapter_config.json, trainer_state.json, config.json): identical content;
  args.json on the keys both sides have but the code's version (a flag added later is listed,
  not failed);
- metrics.jsonl: identical rows apart from timing fields; geometry.json: identical apart from
  timing fields; the evaluation tables that eval_gsm8k.py prints: identical lines apart from seconds.
Exit status 0 when everything matches, 1 otherwise (each difference is listed).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TIMING = {"t_sample", "t_train", "tokens_per_s", "seconds", "eval_seconds", "seconds_per_point"}
TOY = ["--toy", "--steps", "4", "--save-every", "2", "--eval-limit", "32", "--eval-batch-size", "32",
       "--micro-batch", "0"]  # the micro-batch pinned: a speed preset, it changes the sums' rounding
COMMANDS = [  # (name, script, arguments); R: the runs geometry.py reads, T: TinyLoRA's, apart
    ("grpo_r1", "grpo.py", [*TOY, "--rank", "1", "--out", "R/grpo_r1"]),
    ("grpo_r1 resumed", "grpo.py", [*TOY, "--rank", "1", "--steps", "6", "--resume", "--out", "R/grpo_r1"]),
    ("grpo_r4", "grpo.py", [*TOY, "--rank", "4", "--out", "R/grpo_r4"]),
    ("grpo_full", "grpo.py", [*TOY, "--rank", "0", "--out", "R/grpo_full"]),
    ("grpo_xs2", "grpo.py", [*TOY, "--adapter", "loraxs", "--rank", "2", "--lr", "1e-3", "--out", "R/grpo_xs2"]),
    ("grpo_tiny", "grpo.py", [*TOY, "--adapter", "tinylora", "--u", "13", "--tie", "1", "--lr", "1e-2",
                              "--out", "T/grpo_tiny"]),
    ("sft_r1", "sft.py", ["--toy", "--model", "toy_base", "--rank", "1", "--steps", "6", "--save-every", "3",
                          "--eval-limit", "32", "--micro-batch", "0", "--out", "R/sft_r1"]),
    ("geometry", "geometry.py", ["R", "--out", "G", "--plane", "--grid", "3", "--truncate", "1",
                                 "--eval-limit", "16", "--points-per-pass", "4"]),
    ("eval many", "eval_gsm8k.py", ["--toy", "--limit", "32", "--max-new-tokens", "48", "--out", "E/many.jsonl", "--adapter",
                                    "R/grpo_r1/step_000002", "R/grpo_r1/step_000006", "R/grpo_r4/step_000004",
                                    "T/grpo_tiny/step_000004"]),
    ("eval one", "eval_gsm8k.py", ["--toy", "--limit", "32", "--max-new-tokens", "48", "--out", "E/one.jsonl", "--adapter",
                                   "R/grpo_r4/step_000004"]),
]


def run_side(commit, root):
    """Check out `commit` into root/src and run every command there; returns {name: stdout}."""
    src = root / "src"
    subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(src), commit],
                   check=True, capture_output=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    outputs = {}
    try:
        for name, script, args in COMMANDS:
            args = [str(root / a) if a in ("R", "G") or a.startswith(("R/", "T/", "E/")) else a for a in args]
            print(f"  {commit}: {name}", flush=True)
            proc = subprocess.run([sys.executable, script, *args], cwd=src, env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{commit}: {script} {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            outputs[name] = proc.stdout.replace(str(root), "ROOT")
            (root / "E").mkdir(exist_ok=True)
            (root / "E" / f"{name.replace(' ', '_')}.stdout").write_text(outputs[name])
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(src)],
                       capture_output=True)
    return outputs


def drop_timing(value):
    """The value with every timing field removed, at any depth."""
    if isinstance(value, dict):
        return {k: drop_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [drop_timing(v) for v in value]
    return value


def eval_table(stdout):
    """The lines of eval_gsm8k.py's tables, seconds masked."""
    lines = [line for line in stdout.splitlines()
             if "|" in line or "accuracy" in line or "format rate" in line]
    return [" ".join(re.sub(r"\d+\.\d+ s\b", "_ s", line).split()) for line in lines]


def read_json(path, side):
    """A JSON file's content with the side's own folder (absolute paths in args.json and
    adapter_config.json) written as ROOT."""
    return json.loads(path.read_text().replace(str(side), "ROOT"))


def compare(a, b, out_a, out_b):
    """Differences between the two sides' files and tables, as lines."""
    diffs = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    for f in sorted(files_a ^ files_b):
        diffs.append(f"only on {'the first' if f in files_a else 'the second'} side: {f}")
    for f in sorted(files_a & files_b):
        pa, pb = a / f, b / f
        if f.suffix in (".png", ".stdout") or f.parts[0] == "src":
            continue  # figures hold timestamps in their metadata; src is the checkout
        if f.suffix == ".safetensors":
            if pa.read_bytes() != pb.read_bytes():
                diffs.append(f"{f}: bytes differ")
        elif f.name == "args.json":
            ja, jb = read_json(pa, a), read_json(pb, b)
            only = sorted(ja.keys() ^ jb.keys())
            if only:
                print(f"note: {f}: keys on one side only {only}")
            differ = [k for k in ja.keys() & jb.keys() - {"code"} if ja[k] != jb[k]]
            if differ:  # "code", the code's version, differs between two commits by design
                diffs.append(f"{f}: differs on {differ}")
        elif f.suffix == ".jsonl":
            ra = [drop_timing(json.loads(line)) for line in pa.read_text().splitlines() if line.strip()]
            rb = [drop_timing(json.loads(line)) for line in pb.read_text().splitlines() if line.strip()]
            if f.parts[0] == "E":  # eval rows name their adapter by path
                ra = [json.loads(json.dumps(r).replace(str(a), "ROOT")) for r in ra]
                rb = [json.loads(json.dumps(r).replace(str(b), "ROOT")) for r in rb]
            if ra != rb:
                bad = next(i for i, (x, y) in enumerate(zip(ra + [None], rb + [None])) if x != y)
                diffs.append(f"{f}: row {bad + 1} differs: {ra[bad] if bad < len(ra) else None} vs "
                             f"{rb[bad] if bad < len(rb) else None}")
        elif f.suffix == ".json":
            if drop_timing(read_json(pa, a)) != drop_timing(read_json(pb, b)):
                diffs.append(f"{f}: content differs")
    for name in ("eval many", "eval one"):
        ta, tb = eval_table(out_a[name]), eval_table(out_b[name])
        if ta != tb:
            diffs.append(f"{name}: table differs:\n  " + "\n  ".join(ta) + "\n vs\n  " + "\n  ".join(tb))
    return diffs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="a commit (hash, tag, HEAD~1, ...)")
    parser.add_argument("second", help="another commit")
    parser.add_argument("--keep", default=None, help="keep both sides' outputs in this folder")
    parser.add_argument("--ignore", default="", help="comma-separated metrics fields left out of "
                        "the comparison too (a field whose definition changed on purpose)")
    args = parser.parse_args()
    TIMING.update(f for f in args.ignore.split(",") if f)
    top = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rank1_compare_"))
    sides = [top / "first", top / "second"]
    for side in sides:
        shutil.rmtree(side, ignore_errors=True)
        side.mkdir(parents=True)
    stdout = [run_side(commit, side) for commit, side in zip((args.first, args.second), sides)]
    diffs = compare(*sides, *stdout)
    n = sum(1 for p in sides[0].rglob("*") if p.is_file())
    print("\n".join(diffs) if diffs else f"identical: {n} files (safetensors byte for byte, JSON and "
          f"metrics rows apart from timing fields) and the evaluation tables, {args.first} vs {args.second}")
    if not args.keep:
        shutil.rmtree(top, ignore_errors=True)
    raise SystemExit(1 if diffs else 0)
