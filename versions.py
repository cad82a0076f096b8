"""
What made a run, so that a run is compared with another only when they are the same: the code
version (a hash of the syntax tree of the script and the modules of this repository it imports,
and of the toy base's files) and a model's identity by content. runs.py writes the code version
into args.json; study.py reuses a run only under the same one; --resume and geometry.py compare
models with same_model.

    python versions.py                 # the code versions of the training and evaluation scripts
"""
import argparse
import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from errors import HelpFormatter

HERE = Path(__file__).resolve().parent


def local_sources(script, root=HERE):
    """The script and every module of this repository it imports, transitively (by its import
    statements, read with ast): the files that decide what a run computes."""
    todo, seen = [Path(script).resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            todo += [root / f"{n.split('.')[0]}.py" for n in names]
    return sorted(seen)


def code_text(path):
    """A module as its syntax tree without docstrings, so that comments, docstrings and layout
    do not change what counts as its code."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_version(script=None, root=HERE):
    """What made a run: {"hash": sha256 of the code (code_text) of the script (default: the one
    running; outside this folder, every .py here) and the modules it imports, and the toy base's
    files; "commit": git HEAD or None; "dirty": tracked files changed}. study.py reuses on it."""
    script = Path(script or sys.argv[0]).resolve()
    files = local_sources(script, root) if script.parent == root else sorted(root.glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + code_text(f).encode())
    for f in sorted((root / "toy_base").glob("*")):
        if f.suffix != ".md":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True)
    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
        commit = head.stdout.strip() if head.returncode == 0 else None
    except OSError:  # no git on this machine
        commit, status = None, None
    return {"hash": h.hexdigest()[:16], "commit": commit,
            "dirty": bool(status and status.returncode == 0 and status.stdout.strip())}


def same_model(paths):
    """Do these models (hub ids or folders) name one model? The same id or folder; or folders
    whose config and weights are byte-identical (a run folder copied from another checkout names
    its base there)."""
    if not all(isinstance(p, str) for p in paths):
        return False
    names = {os.path.realpath(p) if os.path.isdir(p) else p for p in paths}
    if len(names) <= 1:
        return True
    if not all(os.path.isdir(p) for p in names):
        return False

    def fingerprint(folder):
        h = hashlib.sha256()
        for f in sorted(Path(folder).glob("*.safetensors")) + [Path(folder) / "config.json"]:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()
    return len({fingerprint(p) for p in names}) == 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("scripts", nargs="*", default=["grpo.py", "sft.py", "eval_gsm8k.py"],
                        help="scripts of this folder to version")
    for name in parser.parse_args().scripts:
        v = code_version(HERE / name)
        files = ", ".join(p.name for p in local_sources(HERE / name))
        print(f"{name}: {v['hash']} (commit {v['commit']}, {'dirty' if v['dirty'] else 'clean'})"
              f" from {files}")
