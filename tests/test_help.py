"""Every file answers --help with its usage and runs nothing; every flag that takes a value says
its default; a flag name means one thing across the scripts."""
import os
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p.name for p in ROOT.glob("*.py"))
MODULES = ["study_parts.plan", "study_parts.stats"]  # python -m ... (they import their package)


def help_text(target, monkeypatch, capsys):
    """(exit status, stdout) of `python target --help`, run in this process."""
    monkeypatch.setattr(sys, "argv", [target, "--help"])
    with pytest.raises(SystemExit) as stop:
        if target.endswith(".py"):
            runpy.run_path(str(ROOT / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__")
    return stop.value.code, capsys.readouterr().out


def option_blocks(text):
    """{"--flag METAVAR": its help text} from an argparse --help."""
    blocks, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)(?: ([A-Z_{},\[\] .]+?))?(  +(.*))?$", line)
        if m:
            name = f"{m.group(2)} {m.group(3) or ''}".strip()
            blocks[name] = m.group(5) or ""
        elif name and line.startswith("      "):
            blocks[name] += " " + line.strip()
        elif not line.strip():
            name = None
    return blocks


@pytest.mark.parametrize("target", FILES + MODULES)
def test_help_prints_the_usage_and_runs_nothing(target, monkeypatch, capsys):
    code, out = help_text(target, monkeypatch, capsys)
    assert code in (0, None) and out.startswith("usage: "), out[:300]
    for flag, text in option_blocks(out).items():
        takes_value = " " in flag
        assert not takes_value or "default" in text, f"{target} {flag}: no default in {text!r}"


def test_a_flag_means_one_thing(monkeypatch, capsys):
    """--batch is prompts per step wherever GRPO's step is meant (grpo.py, bench.py, flops.py);
    --samples is completions a problem (eval_gsm8k.py only); --out is a path everywhere."""
    texts = {f: help_text(f, monkeypatch, capsys)[1] for f in ("grpo.py", "bench.py", "flops.py",
                                                              "eval_gsm8k.py", "geometry.py")}
    blocks = {f: option_blocks(t) for f, t in texts.items()}
    for f in ("grpo.py", "bench.py", "flops.py"):
        assert "prompts" in blocks[f]["--batch BATCH"], f
        assert "--group GROUP" in blocks[f] and "--max-new-tokens MAX_NEW_TOKENS" in blocks[f], f
    assert "--samples SAMPLES" in blocks["eval_gsm8k.py"]
    assert not any(k.startswith("--samples") for f, b in blocks.items() if f != "eval_gsm8k.py"
                   for k in b)
    assert "--out OUT" in blocks["bench.py"] and "--json" in blocks["flops.py"]
    assert not any(k.startswith("--json ") for b in blocks.values() for k in b), "--json is a switch"
