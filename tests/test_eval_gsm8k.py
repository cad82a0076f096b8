"""eval_gsm8k.py: extraction and reward, data loading and its errors, the prompt, the toy task, the evaluator."""
import hashlib
import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import eval_gsm8k as E
from conftest import assert_same_tokens
import gsm8k
import lora
import toy_task
from errors import UserError
from model import load_model, load_tokenizer, make_toy_checkpoint, toy_tokenizer
from sampler import generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not (GSM8K / "test.jsonl").exists(), reason="../shared/data/gsm8k absent")

# -----------------------------------------------------------------------------
# extraction and reward

@pytest.mark.parametrize("text, strict, flexible", [
    ("so 1,080 in all.\n#### 1,080", "1080", "1080"),              # thousands separator
    ("#### 1,234,567", "1234567", "1234567"),
    ("#### $18.00", "18", "18"),                                     # $ and decimals: 18.00 = 18
    ("#### 18.", "18", "18"),                                        # trailing period
    ("#### 0.50", "0.5", "0.5"),
    ("He lost 9 - 12 = -3 dollars.\n#### -3", "-3", "-3"),           # negative
    ("#### -$5", "-5", "-5"),
    ("#### 42 apples, and then 7 more", "42", "42"),                 # text continues after the answer
    ("#### 42\n\nQuestion: Ann has 7 pens.\n#### 7", "42", "42"),   # the first ####, not the last
    ("#### no number here, #### 9", None, "9"),                      # first #### has no number
    ("so \\boxed{3} wait, \\boxed{1,200}.", "1200", "1200"),         # the last \boxed{}
    ("The answer is \\boxed{ $-4.0 }", "-4", "-4"),
    ("The answer is 12, not 13.", None, "13"),                       # no marker: strict None
    ("I do not know.", None, None),                                  # no answer at all
    ("", None, None),
])
def test_extract_answer(text, strict, flexible):
    assert E.extract_answer(text) == strict
    assert E.extract_answer(text, flexible=True) == flexible


def test_normalize_compares_numbers():
    assert gsm8k.normalize("$1,080.00") == gsm8k.normalize("1080") == "1080"
    assert gsm8k.normalize("-0.0") == gsm8k.normalize("0") == "0"
    assert gsm8k.normalize("007") == "7" and gsm8k.normalize("-2.50") == "-2.5"
    assert gsm8k.normalize("100") == "100"  # trailing zeros of an integer stay


def test_reward():
    gold = "Half of 48 is 48/2=<<48/2=24>>24.\n#### 24"
    assert E.reward(" 48/2=24\n#### 24", gold) == 1.0
    assert E.reward(" 48/2=24\n#### 24.00", gold) == 1.0
    assert E.reward(" 48/2=24\n#### 25", gold) == 0.0
    assert E.reward(" it is 24", gold) == 0.0                      # right number, no format: strict
    assert E.reward("#### 1,080", "1080") == 1.0                   # a bare number as the gold answer
    assert E.reward("#### 1080", 1080) == 1.0
    assert E.reward("#### 7", "-7") == 0.0
    # blank lines stay: an answer written in paragraphs is read whole
    assert E.reward(" She has 7 eggs.\n\nSo she sells 7 * 2 = 14 dollars.\n#### 14", "14") == 1.0
    # what follows "Question:" is the model's next made-up question: cut, scored on the first answer
    assert E.reward("it is 24\n\nQuestion: ...\n#### 24", gold) == 0.0
    assert E.reward(" 24\n#### 24\n\nQuestion: Tom has 5 pens.\nAnswer: #### 5", gold) == 1.0
    assert E.reward(" 24\n\nQuestion: Tom has 24 pens.\nAnswer: 24\n#### 24", gold) == 0.0
    with pytest.raises(AssertionError, match="not a number"):
        E.reward("#### 3", "three")

# completions as a base model writes them, to score as lm-evaluation-harness does
LM_EVAL_CASES = [
    (" 3 + 4 = 7\n#### 7", "#### 7"),
    (" so 1,080 in all.\n#### 1,080", "...\n#### 1080"),                  # commas
    (" it costs $18.\n#### $18", "#### 18"),                              # $
    (" #### 18.00", "#### 18"),                                           # decimals: no match there
    (" #### 18.", "#### 18"),                                             # a final "." goes
    (" #### 0.5", "#### 0.5"),
    (" He lost 3.\n#### -3", "#### -3"),                                  # negatives
    (" #### - 3", "#### -3"),
    (" #### 42 apples, and then 7 more", "#### 42"),                      # text after the answer
    (" The answer is 42.", "#### 42"),                                    # no "####": flexible only
    (" I do not know.", "#### 42"),                                       # missing answer
    ("", "#### 42"),
    (" 5 + 5 = 10\n#### 10\n\nQuestion: Tom has 3 pens.\nAnswer: #### 3", "#### 10"),  # cut at "Question:"
    (" #### 10</s>#### 11", "#### 11"),
    (" #### 7<|im_end|>", "#### 7"),
    (" So she sells 7 * 2 = 14 dollars.\n\nThe answer is $14.00", "#### 14"),
    (" #### 12,5 or 3,000.\n", "#### 3000"),
    (" #### 5\n#### 6", "...#### 2 ...\n#### 6"),                         # the last "#### " of the gold
    (" #### ABC 5", "#### 5"),
]


def test_lm_eval_score_equals_the_harness():
    """lm_eval_score against lm_eval 0.4.13 itself: its stop handling, RegexFilter (+ take_first)
    for both filters of the gsm8k yaml, and exact_match_hf_evaluate with the yaml's arguments."""
    pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.models.utils import postprocess_generated_text
    import lm_eval
    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    until = cfg["generation_kwargs"]["until"]
    metric = {k: v for k, v in cfg["metric_list"][0].items() if k not in ("metric", "aggregation", "higher_is_better")}
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    assert tuple(until) == gsm8k.LM_EVAL_UNTIL and tuple(metric["regexes_to_ignore"]) == gsm8k.LM_EVAL_IGNORE
    assert filters["strict-match"]["regex_pattern"] == gsm8k.LM_EVAL_STRICT and cfg["num_fewshot"] == gsm8k.LM_EVAL_SHOTS
    assert filters["flexible-extract"]["regex_pattern"] == gsm8k.LM_EVAL_FLEXIBLE
    assert cfg["doc_to_text"] == "Question: {{question}}\nAnswer:" and cfg["metadata"]["version"] == 3.0
    theirs = []
    for completion, gold in LM_EVAL_CASES:
        text = postprocess_generated_text(completion, until, None)
        scores = []
        for name in ("strict-match", "flexible-extract"):
            f = filters[name]
            pred = list(RegexFilter(f["regex_pattern"], f.get("group_select", 0)).apply([[text]], None))[0][0]
            scores.append(float(exact_match_hf_evaluate([pred], [gold], **metric)["exact_match"]))
        theirs.append(tuple(scores))
    ours = [gsm8k.lm_eval_score(c, g) for c, g in LM_EVAL_CASES]
    assert ours == theirs
    assert {s for s, _ in ours} == {0.0, 1.0} and {f for _, f in ours} == {0.0, 1.0}  # both outcomes occur
    assert gsm8k.lm_eval_score(" #### 18.00", "#### 18") == (0.0, 0.0)      # the harness's quirk, kept


def test_lm_eval_shots_are_the_harness_draw():
    """The few-shot draw of the harness's ContextSampler (seed 1234, one generator for the task, one
    rnd.sample per evaluated document in order) and its prompt layout."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.samplers import ContextSampler
    train = [{"question": f"q{i}", "answer": f"a{i}\n#### {i}"} for i in range(200)]
    sampler = ContextSampler(train, rnd=1234)
    theirs = [sampler.sample(5) for _ in range(4)]
    assert gsm8k.lm_eval_shots(train, 4) == theirs and theirs[0] != theirs[1]
    p = gsm8k.lm_eval_prompt(" Q? ", theirs[0][:2])
    assert p == "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in theirs[0][:2]) + \
        "Question:  Q? \nAnswer:"

# -----------------------------------------------------------------------------
# data: the real files, the cache, the checksum, bad input

@needs_gsm8k
def test_real_gsm8k():
    test = E.load_gsm8k("test", GSM8K / "test.jsonl")
    train = E.load_gsm8k("train", GSM8K / "train.jsonl")
    assert len(test) == 1319 and len(train) == 7473
    blank = [p for p in test + train if "\n\n" in p["answer"]]
    assert len(blank) == 6  # 2 test + 4 train solutions have a blank line: it ends nothing now
    for p in test + train:
        gold = E.extract_answer(p["answer"])
        assert gold is not None and re.fullmatch(r"-?\d+", gold), p["answer"]
        assert E.reward(p["answer"], p["answer"]) == 1.0                  # those six too
        assert gsm8k.lm_eval_score(p["answer"], p["answer"]) == (1.0, 1.0)
        target = gsm8k.format_solution(p["answer"])   # the SFT target also earns the reward...
        assert E.reward(target, p["answer"]) == 1.0, target
        assert "Question:" not in target and "<<" not in target  # ...and never contains the stop string
    assert sum("\n\n" in gsm8k.format_solution(p["answer"]) for p in blank) == 6


@needs_gsm8k
def test_cache_and_checksum(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    # an intact file in the cache is read without any download
    (tmp_path / "test.jsonl").write_bytes((GSM8K / "test.jsonl").read_bytes())
    assert len(E.load_gsm8k("test", cache_dir=tmp_path)) == 1319
    # a tampered one (one digit changed) is rejected, naming the file
    data = (GSM8K / "test.jsonl").read_bytes()
    (tmp_path / "test.jsonl").write_bytes(data.replace(b"#### 18", b"#### 19", 1))
    with pytest.raises(ValueError, match=r"test\.jsonl has sha256 .* expected 3730d312"):
        E.load_gsm8k("test", cache_dir=tmp_path)
    # missing and offline: the error says where to put the file and mentions --data
    with pytest.raises(UserError) as e:  # a ValueError: one line and exit 2 in a script
        E.load_gsm8k("train", cache_dir=tmp_path)
    assert str(tmp_path / "train.jsonl") in str(e.value) and "--data" in str(e.value)


@needs_gsm8k
def test_download_checked(tmp_path, monkeypatch):
    data = (GSM8K / "test.jsonl").read_bytes()
    served = {"bytes": data + b"\n"}  # one extra byte: a corrupted download
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served["bytes"]))
    with pytest.raises(ValueError, match="sha256"):
        E.load_gsm8k("test", cache_dir=tmp_path)
    assert not (tmp_path / "test.jsonl").exists()  # a bad download is never saved
    served["bytes"] = data
    assert len(E.load_gsm8k("test", cache_dir=tmp_path)) == 1319
    assert hashlib.sha256((tmp_path / "test.jsonl").read_bytes()).hexdigest() == gsm8k.GSM8K_SHA256["test"]


def test_bad_jsonl(tmp_path):
    good = json.dumps({"question": "2+2?", "answer": "2+2=4\n#### 4"})
    cases = {
        "corrupt": ([good, good, '{"question": "x", "answer": '], r"corrupt\.jsonl:3: not valid JSON"),
        "noanswer": ([good, json.dumps({"question": "x"})], r"noanswer\.jsonl:2: record has no string 'answer'"),
        "noquestion": ([json.dumps({"answer": "#### 1"})], r"noquestion\.jsonl:1: record has no string 'question'"),
        "nofinal": ([good, "", json.dumps({"question": "x", "answer": "4"})], r"nofinal\.jsonl:3: answer has no final"),
    }
    for name, (lines, msg) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=msg):
            E.load_gsm8k("test", path)
    path = tmp_path / "ok.jsonl"
    path.write_text(good + "\n\n" + good + "\n")  # blank lines are skipped
    assert E.load_gsm8k("test", path) == [{"question": "2+2?", "answer": "2+2=4\n#### 4"}] * 2

# -----------------------------------------------------------------------------
# the prompt and its stop tokens

def test_prompt():
    assert E.format_prompt("What is 2+2?") == "Question: What is 2+2?\nAnswer:"
    shot = ("Ann has 3 pens.", "She buys 2: 3+2=<<3+2=5>>5 pens.\n\n#### 5")
    assert gsm8k.format_solution(shot[1]) == " She buys 2: 3+2=5 pens.\n\n#### 5"  # a blank line stays
    assert E.reward(gsm8k.format_solution(shot[1]), shot[1]) == E.reward(shot[1], shot[1]) == 1.0
    p = E.format_prompt("Q2?", [shot, shot])
    assert p == ("Question: Ann has 3 pens.\nAnswer: She buys 2: 3+2=5 pens.\n\n#### 5\n\n") * 2 + "Question: Q2?\nAnswer:"
    assert E.truncate(" 3+2=5\n\n#### 5\n\nQuestion: more") == " 3+2=5\n\n#### 5\n\n"


def test_stop_ids():
    assert E.stop_ids(toy_tokenizer()) == [256]  # eos; "Question:" is text, found by generate()

# -----------------------------------------------------------------------------
# the toy task

def test_toy_problems():
    train, val, test = (toy_task.toy_problems(split) for split in ("train", "val", "test"))
    assert toy_task.toy_problems("test") == test and toy_task.toy_problems("test", seed=1) != test  # seeded
    assert len(set(p["question"] for p in test)) == len(test) > 1000  # each test problem once
    assert len(val) > 1000 and len(train) > 7 * len(test)

    def last_step(p):  # "5*4=20\n23+20=43\n#### 43" -> "23+20"
        return p["answer"].split("\n")[1].split("=")[0]
    steps = [{last_step(p) for p in split} for split in (train, val, test)]
    assert not steps[0] & steps[1] and not steps[0] & steps[2] and not steps[1] & steps[2]  # disjoint
    for p in train + val + test:
        assert E.reward(p["answer"], p["answer"]) == 1.0
        assert E.reward(gsm8k.format_solution(p["answer"]), p["answer"]) == 1.0
        assert len(p["question"]) <= 80 and eval(last_step(p)) >= 0, p  # short, no negatives
    more = toy_task.toy_problems("test", n=2 * len(test) + 3)  # beyond the pool: cycles, new wording
    assert len(more) == 2 * len(test) + 3 and {last_step(p) for p in more} == {last_step(p) for p in test}
    assert E.load_task("toy", "test") == test and E.load_task("toy", "val") == val
    p = test[0]  # the toy writes prompts and targets exactly as gsm8k.py does
    assert toy_task.prompt_text(p["question"]) == E.format_prompt(p["question"])
    assert toy_task.target_text(p["answer"]) == gsm8k.format_solution(p["answer"])


def test_toy_modes_and_the_pretraining_mix():
    """The latent mode: a completion is in it when it writes the steps; the pretraining mix shows
    every problem worked with the mode-choice character out of the loss, and the choice itself in
    the loss at the rate the dial sets."""
    p = toy_task.toy_problems("train", n=1)[0]
    worked, direct = toy_task.target_text(p["answer"]), toy_task.target_text(toy_task.direct_answer(p["answer"]))
    assert toy_task.in_mode(worked) and not toy_task.in_mode(direct) and E.reward(direct, p["answer"]) == 1.0
    assert not toy_task.in_mode(" 5 #### 43") and toy_task.in_mode(" 5*4=20\n#### 20")
    assert toy_task.forced_prefix(p["answer"]) == worked[:2] and worked[1].isdigit() and direct[1] == "#"
    for dial in (0.0, 0.3):
        docs = toy_task.pretrain_docs(dial, epoch=0)
        chosen = [t for _, t, ex in docs if t[1] != "#" and not ex]      # worked, mode char in the loss
        hidden = [t for _, t, ex in docs if ex == ((1, 2),)]             # worked, mode char out of it
        directs = [t for _, t, ex in docs if t[1] == "#"]
        assert len(chosen) + len(hidden) == len(toy_task.toy_problems("train"))  # every problem worked once
        share = len(chosen) / (len(chosen) + len(directs))
        assert abs(share - dial) < 0.03, (dial, share)                  # the choice at the dial's rate
    assert toy_task.pretrain_docs(0.1, 0) == toy_task.pretrain_docs(0.1, 0) != toy_task.pretrain_docs(0.1, 1)
    ids, target, flags = toy_task.encode_doc(lambda t: list(t.encode()), 256, "Q", " 5*4", ((1, 2),))
    assert ids == [81] and target == [32, 53, 42, 52, 256] and flags == [True, False, True, True, True]


def test_pass_at_k_and_the_sampled_evaluation(toy_dir):
    """pass@k by brute force over subsets, and evaluate_samples' counts against its own rows."""
    import itertools
    for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 0, 2), (4, 4, 4), (7, 3, 5)]:
        subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert abs(E.pass_at_k(n, c, k) - sum(any(s) for s in subsets) / len(subsets)) < 1e-12
    m, tok = load_model(toy_dir, device="cpu", verbose=False), load_tokenizer(toy_dir)
    problems = toy_task.toy_problems("test")[:6]
    summary, rows = E.evaluate_samples(m, tok, problems, 4, seed=3, max_new_tokens=8, in_mode=lambda t: "=" in t,
                                       progress=False)
    assert summary["k"] == 4 and len(rows) == 6 and all(0 <= r["correct"] <= 4 for r in rows)
    assert summary["pass1"] == sum(r["correct"] for r in rows) / 24
    assert summary["mode_share"] == sum(r["in_mode"] for r in rows) / 24
    again, _ = E.evaluate_samples(m, tok, problems, 4, seed=3, max_new_tokens=8, progress=False)
    assert again["pass1"] == summary["pass1"] and "mode_share" not in again   # keyed: the same samples

# -----------------------------------------------------------------------------
# the evaluator

def test_evaluate_counts(monkeypatch):
    """Canned completions with known outcomes: the summary must count exactly these."""
    tok = toy_tokenizer()
    # questions of different lengths, so evaluate's longest-first order differs from this one
    problems = [{"question": "." * i + f" problem {i}", "answer": f"#### {i}"} for i in range(6)]
    canned = {0: " #### 0",                 # strict right
              1: " so 1.00\n#### 1.00",     # strict right (normalized)
              2: " #### 3",                 # strict wrong, formatted
              3: " it is 3",                # flexible right only, no format
              4: " no idea",                # nothing
              5: " #### 9\n\nQuestion: 5?\n#### 5"}  # wrong: the answer after "Question:" is ignored

    def fake_generate(model, prompts, max_new_tokens, temperature, stop_ids, stop_strings, tokenizer):
        assert temperature == 0.0 and stop_ids == [256] and stop_strings == ("Question:",) and len(prompts) <= 4
        ids = [int(re.search(r"problem (\d+)\nAnswer:$", tok.decode(p)).group(1)) for p in prompts]
        return [tok.encode(canned[i]) for i in ids]
    monkeypatch.setattr(E, "generate", fake_generate)
    summary, rows = E.evaluate(_Eval(), tok, problems, batch_size=4, max_new_tokens=64, progress=False)
    assert [r["correct"] for r in rows] == [1, 1, 0, 0, 0, 0]
    assert [r["correct_flexible"] for r in rows] == [1, 1, 0, 1, 0, 0]
    assert [r["pred"] for r in rows] == ["0", "1", "3", None, None, "9"]
    assert summary["n"] == 6 and summary["accuracy"] == 2 / 6 and summary["flexible_accuracy"] == 3 / 6
    assert summary["format_rate"] == 4 / 6
    # bare-number gold answers: a completion without any number is wrong under both rules
    bare = [dict(p, answer=str(i)) for i, p in enumerate(problems)]
    _, rows = E.evaluate(_Eval(), tok, bare, batch_size=4, max_new_tokens=64, progress=False)
    assert [r["correct_flexible"] for r in rows] == [1, 1, 0, 1, 0, 0]
    lo, hi = summary["accuracy_ci"]
    assert 0.05 < lo < 2 / 6 < hi < 0.75


class _Eval:  # stands in for a model where generate() is faked
    def eval(self):
        return self


def test_evaluate_toy_model(tmp_path):
    """A random toy model through the real loader and sampler: the summary equals a hand count of
    rewards over completions generated one prompt at a time."""
    make_toy_checkpoint(tmp_path)
    model, tok = load_model(str(tmp_path), device="cpu", verbose=False), load_tokenizer(str(tmp_path))
    problems = toy_task.toy_problems("test", n=4)
    summary, rows = E.evaluate(model, tok, problems, batch_size=3, max_new_tokens=10, progress=False)
    hand = []
    for p, r in zip(problems, rows):
        ids = generate(model, [tok.encode(E.format_prompt(p["question"]))], 10, temperature=0.0,
                       stop_ids=[tok.eos_id])[0]
        assert tok.decode(ids) == r["completion"] and len(ids) == r["tokens"]  # batch-independent, in order
        hand.append(E.reward(tok.decode(ids), p["answer"]))
    assert summary["accuracy"] == sum(hand) / 4
    assert summary["mean_tokens"] == sum(r["tokens"] for r in rows) / 4


def test_cli(tmp_path, monkeypatch, capsys):
    import runpy
    def main(*argv):  # the script in-process: a subprocess would import torch again
        monkeypatch.setattr(sys, "argv", ["eval_gsm8k.py", *argv])
        runpy.run_path(str(ROOT / "eval_gsm8k.py"), run_name="__main__")
    with pytest.raises(SystemExit) as e:
        main()  # no arguments: the demo
    assert e.value.code is None and "strict 1080" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="python sft.py --toy"):
        main("--toy", "--model", str(tmp_path / "none"))
    # one real run as a user types it
    make_toy_checkpoint(tmp_path / "toy")
    cmd = [sys.executable, "eval_gsm8k.py", "--toy", "--model", str(tmp_path / "toy"), "--limit", "4",
           "--max-new-tokens", "8", "--shots", "1", "--device", "cpu", "--out", str(tmp_path / "rows.jsonl")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "strict accuracy" in out.stdout, out.stderr
    rows = [json.loads(l) for l in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["tokens"] <= 8 for r in rows)
    # --adapter: a nonzero rank-1 adapter, applied through lora.load_adapter, changes the answers
    net = load_model(str(tmp_path / "toy"), device="cpu", verbose=False)
    lora.apply_lora(net, rank=1, alpha=32, verbose=False)
    with torch.no_grad():
        for m in lora.lora_modules(net).values():
            m.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    lora.save_adapter(net, tmp_path / "adapter")
    main("--toy", "--model", str(tmp_path / "toy"), "--adapter", str(tmp_path / "adapter"), "--limit", "4",
         "--max-new-tokens", "8", "--shots", "1", "--device", "cpu", "--out", str(tmp_path / "rows2.jsonl"))
    assert f"+ {tmp_path / 'adapter'} on toy test" in capsys.readouterr().out
    rows2 = [json.loads(l) for l in (tmp_path / "rows2.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows2] != [r["completion"] for r in rows]


def test_several_adapters_each_get_their_own_accuracy(tmp_path, monkeypatch, capsys):
    """eval_gsm8k.py --adapter A B C: one batched pass over the stacked adapters, and each adapter's
    accuracy and completions equal those of evaluating it alone (lora.load_adapter)."""
    import runpy
    from model import TOY_BASE
    dirs = []
    for k, std in enumerate([0.0, 0.1, 0.3]):  # the base itself, a nudge, a shove
        torch.manual_seed(k)                       # A's init: the same adapters whatever ran before
        net = lora.apply_lora(load_model(TOY_BASE, device="cpu", verbose=False), rank=2, alpha=4, verbose=False)
        with torch.no_grad():
            for m in lora.lora_modules(net).values():
                m.lora_B.normal_(0, std, generator=torch.Generator().manual_seed(k)) if std else None
        lora.save_adapter(net, tmp_path / f"step_{k:06d}")
        dirs.append(str(tmp_path / f"step_{k:06d}"))
    monkeypatch.setattr(sys, "argv", ["eval_gsm8k.py", "--toy", "--adapter", *dirs, "--limit", "16", "--batch-size", "16",
                                      "--max-new-tokens", "32", "--device", "cpu", "--out", str(tmp_path / "rows.jsonl")])
    runpy.run_path(str(ROOT / "eval_gsm8k.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "3 adapters stacked" in out and "3 per pass" in out, out
    rows = [json.loads(l) for l in (tmp_path / "rows.jsonl").read_text().splitlines()]
    tok, problems = load_tokenizer(TOY_BASE), toy_task.toy_problems("test")[:16]
    accs = []
    for d in dirs:
        mine = [r for r in rows if r["adapter"] == d]
        net = lora.load_adapter(load_model(TOY_BASE, device="cpu", verbose=False), d, verbose=False)
        summary, alone = E.evaluate(net, tok, problems, batch_size=16, max_new_tokens=32, progress=False)
        a, b = ([tok.encode(r["completion"]) for r in rs] for rs in (mine, alone))
        prompts = [tok.encode(E.format_prompt(p["question"])) for p in problems]
        with torch.no_grad():  # the stacked rows' tokens are the adapter's alone, to a rounding tie
            assert_same_tokens(a, b, lambda i, prefix: net(torch.tensor([prompts[i] + prefix]))[0, -1])
        acc = sum(r["correct"] for r in mine) / len(mine)
        assert abs(acc - summary["accuracy"]) <= sum(x != y for x, y in zip(a, b)) / len(a)
        accs.append(acc)
        assert f"{d:<40} | {acc:8.3f}" in out, (d, out)
    assert len(set(accs)) > 1, accs                                    # the adapters differ: the test means something
