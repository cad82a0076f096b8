"""
GSM8K itself: the data files, the prompt, where a completion stops, answer extraction and the
reward. Every script shares these rules; eval_gsm8k.py evaluates with them.

    python eval_gsm8k.py               # shows the prompt and the rule on examples

    {"question": "Natalia sold clips to 48 of her friends ...", "answer": "... #### 72"}

7,473 train and 1,319 test problems (openai/grade-school-math, MIT License); each answer ends in
"\\n#### <integer>" and carries calculator annotations like <<48/2=24>>. Downloads go to
~/.cache/rank1/gsm8k/, checked by sha256; a user's own JSONL file (any subset) is read as is.
The prompt, one for SFT, GRPO and evaluation, written for a base model (no chat template):

    Question: <question>
    Answer: <solution ending in "#### N">

k-shot prompts put k worked train examples first, each followed by a blank line. A completion
ends at eos or where the model starts a new "Question:" (STOP_STRINGS, checked by generate() on
the decoded text, since "Question:" is several tokens); blank lines inside a reasoning stay, so
an answer written in paragraphs is read whole (lm-evaluation-harness's gsm8k task stopped at the
first blank line up to its v1.0; a base model that reasons in paragraphs then scored 0). The
reward: 1 when the number right after the first "####" (else in the last \\boxed{}) equals the
gold one. The toy world's task (toy_task.py) is written in this format, so all of it applies.
"""
import hashlib
import json
import os
import random
import re
import urllib.request
from pathlib import Path

from errors import UserError
from toy_task import toy_problems

GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/master/"
             "grade_school_math/data/{split}.jsonl")
GSM8K_SHA256 = {  # the upstream files, byte for byte (MIT License, Copyright (c) 2021 OpenAI)
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",  # 7,473 problems
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",   # 1,319 problems
}
GSM8K_CACHE = Path("~/.cache/rank1/gsm8k")
STOP_STRINGS = ("Question:",)  # where a completion ends, besides eos: the next made-up question
SHOT_SEP = "\n\n"  # after each worked example of a k-shot prompt


# -----------------------------------------------------------------------------
# The files


def read_jsonl(path):
    """Problems from a JSONL file of {"question", "answer"} records; bad lines name file and
    line, and so does a gold answer whose final number cannot be read."""
    problems = []
    if not os.path.isfile(path):
        hint = " (a folder? --data takes a folder holding {split}.jsonl or a file)"
        raise UserError(f"{path}: no such file" + (hint if os.path.isdir(path) else ""))
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            for key in ("question", "answer"):
                if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                    raise UserError(f"{path}:{lineno}: record has no string '{key}'")
            if extract_answer(rec["answer"]) is None:
                raise UserError(f"{path}:{lineno}: answer has no final '#### N' (nor \\boxed{{N}})")
            problems.append({"question": rec["question"], "answer": rec["answer"]})
    return problems


def cached(split, cache_dir=GSM8K_CACHE):
    """The path of the upstream `split` in the cache folder, downloaded there once; its sha256
    is checked every time."""
    if split not in GSM8K_SHA256:
        raise UserError(f"unknown GSM8K split {split!r}, expected train or test")
    file = Path(cache_dir).expanduser() / f"{split}.jsonl"
    url, want = GSM8K_URL.format(split=split), GSM8K_SHA256[split]
    if not file.exists():
        print(f"downloading {url} -> {file}")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:  # URLError, timeouts and DNS failures are all OSErrors
            raise UserError(
                f"GSM8K {split} is not in {file} and could not be downloaded from {url} ({e}).\n"
                f"Put the upstream file there (sha256 {want}), or pass a local JSONL file "
                f"with --data FILE (load_gsm8k(split, path=FILE)).") from None
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise UserError(f"download of {url} has sha256 {got}, expected {want}; not saved")
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, file)  # atomic: a crash never leaves half a file under the real name
    got = hashlib.sha256(file.read_bytes()).hexdigest()
    if got != want:
        raise UserError(f"{file} has sha256 {got}, expected {want} (the upstream {split} split); "
                        f"delete it to download again, or pass your own file with --data")
    return file


def data_path(data, split):
    """What --data means in every script: None = the cached download (None here); a folder = its
    {split}.jsonl; a file = that file, whatever the split (a script that reads two splits from
    one file says so)."""
    if data is None or not os.path.isdir(data):
        return data
    path = os.path.join(data, f"{split}.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"--data {data}: a folder, but it holds no {split}.jsonl")
    return path

def batch_indices(n, batch, step, seed):
    """The problems of step `step` (1-based): epoch e reads a permutation of the n problems seeded
    by (seed, e), so the data position is a function of the step, all that resuming needs."""
    lo, hi = (step - 1) * batch, step * batch                           # positions in the stream
    first = lo // n
    stream = []
    for epoch in range(first, (hi - 1) // n + 1):
        perm = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(perm)                  # str seed: stable in Python
        stream += perm
    return stream[lo - first * n:hi - first * n]

# -----------------------------------------------------------------------------
# The two tasks: GSM8K, read; the toy task, generated (toy_task.py)


def load_gsm8k(split, path=None, cache_dir=GSM8K_CACHE):
    """GSM8K `split` from `path` (the user's own file: any subset, no checksum), or from the
    cache folder, downloading it there once (checked)."""
    return read_jsonl(path if path is not None else cached(split, cache_dir))


def load_task(task, split, path=None):
    """The one entry point for sft/grpo/geometry: task "gsm8k" or "toy", split "train" or "test"
    (or the toy's "val", drawn from the generator apart from both)."""
    if task == "gsm8k":
        return load_gsm8k(split, path)
    if task != "toy":
        raise UserError(f"unknown task {task!r}, expected gsm8k or toy")
    if path is not None:
        raise UserError(f"the toy task is generated, not read: --data {path} is for --task gsm8k")
    return toy_problems(split)


def load_splits(task, data, eval_limit):
    """The training scripts' data: (train problems, the first eval_limit test problems; 0 = all)."""
    paths = {split: data_path(data, split) for split in ("train", "test")}
    if data and paths["train"] == paths["test"]:
        print(f"note: --data {data} is one file: training and evaluation both read it (a folder "
              f"with train.jsonl and test.jsonl holds the evaluation problems out)")
    train = load_task(task, "train", paths["train"])
    test = load_task(task, "test", paths["test"])[:eval_limit or None]
    for split, problems in (("train", train), ("test", test)):
        if not problems:
            raise UserError(f"{paths[split] or f'the {task} {split} split'}: no problems in it")
    return train, test

# -----------------------------------------------------------------------------
# The prompt


def format_solution(answer):
    """A gold solution as the completion target: calculator annotations <<48/2=24>> removed and a
    leading space, since the prompt ends in "Answer:". Blank lines stay (6 of 8,792 GSM8K
    solutions have one): they end nothing; no solution contains the stop string "Question:"."""
    return " " + re.sub(r"<<.*?>>", "", answer).strip()


def format_prompt(question, shots=()):
    """The prompt for `question`; `shots` are (question, answer) worked examples (from train)."""
    parts = [f"Question: {q.strip()}\nAnswer:{format_solution(a)}{SHOT_SEP}" for q, a in shots]
    return "".join(parts) + f"Question: {question.strip()}\nAnswer:"


def truncate(text, stop_strings=STOP_STRINGS):
    """A completion cut where its first stop string starts: what follows is the model's next
    made-up question (generate() stops after the token that completes the string)."""
    for s in stop_strings:
        text = text.split(s, 1)[0]
    return text


def stop_ids(tokenizer):
    """The token ids that end a completion: eos. (The stop strings are text, see STOP_STRINGS.)"""
    return [tokenizer.eos_id]

# -----------------------------------------------------------------------------
# Answer extraction and reward

# a number: an optional sign and $ (-5, $5, -$5, $-5), then 1,234 (thousands separators) or 1234,
# then optional decimals. A trailing "." ("it costs $18.") is left out.
NUMBER = r"(?:-\$?|\$-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"


def normalize(number):
    """'$1,080.00' -> '1080': no ',' or '$', one canonical form per value, so comparing the
    strings compares the numbers (18.00 == 18, 0.50 == .5, -0 == 0)."""
    s = re.sub(r"[,$]", "", number).rstrip(".")
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    return "0" if s == "0" else sign + ("0" + s if s.startswith(".") else s)


def extract_answer(text, flexible=False):
    """The number right after the first "####"; else the number in the last \\boxed{...}; else
    None. flexible=True falls back to the last number in the text. Returns it normalized."""
    m = re.search(r"####\s*(" + NUMBER + ")", text)
    if m and text.find("####") == m.start():  # the first ####, not a later one
        return normalize(m.group(1))
    boxed = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]
    if boxed:
        m = re.match(r"[^{}]*?(" + NUMBER + ")", text[boxed[-1]:])
        if m:
            return normalize(m.group(1))
    if flexible:
        numbers = re.findall(NUMBER, text)
        if numbers:
            return normalize(numbers[-1])
    return None


def gold_answer(answer):
    """The normalized gold number of a full gold solution (its "#### N") or of a bare number."""
    answer = str(answer).strip()
    gold = extract_answer(answer) or (normalize(answer) if re.fullmatch(NUMBER, answer) else None)
    assert gold is not None, f"gold answer {answer!r} has no '#### N' and is not a number"
    return gold


def reward(completion, answer):
    """1.0 if the completion's strict answer equals the gold one, else 0.0. The completion is cut
    at its first stop string, as in evaluation; `answer` as gold_answer() takes it."""
    return float(extract_answer(truncate(completion)) == gold_answer(answer))


# -----------------------------------------------------------------------------
# lm-evaluation-harness's gsm8k task, v3.0, re-implemented so that scores compare with published
# ones (lm_eval 0.4.13: tasks/gsm8k/gsm8k.yaml, the regex filter, exact_match, HFLM's
# generate_until); `eval_gsm8k.py --harness lm-eval` generates with these prompts and stops and
# scores with lm_eval_score, and tests/test_eval_gsm8k.py checks every rule against lm_eval.
# 5-shot from train (seed 1234), "Question: {q}\nAnswer:" with shots joined by "\n\n", greedy
# until "Question:", "</s>", "<|im_end|>"; strict-match = the first "#### (-?[0-9.,]+)",
# flexible-extract = the last match of "(-?[$0-9.,]{2,})|(-?[0-9]+)"; exact match after removing
# ",", "$", everything up to the last "#### " and a final ".", ignoring case. Its quirks too:
# "18.00" does not match 18 here, "#### 18 dollars" strict-matches.

LM_EVAL_UNTIL = ("Question:", "</s>", "<|im_end|>")    # generation_kwargs.until
LM_EVAL_STRICT = r"#### (\-?[0-9\.\,]+)"              # strict-match: the first match
LM_EVAL_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"      # flexible-extract: the last match
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # exact_match's regexes_to_ignore, in order
LM_EVAL_SEED = 1234                                    # the harness's fewshot_random_seed
LM_EVAL_SHOTS = 5                                      # num_fewshot
LM_EVAL_MAX_NEW_TOKENS = 256                           # HFLM's max_gen_toks (the yaml sets none)


def lm_eval_shots(train, n_docs, k=LM_EVAL_SHOTS, seed=LM_EVAL_SEED):
    """The harness's few-shot draw: one random.Random(seed) for the task, and for each evaluated
    document in order k train problems from rnd.sample(train, k) (its ContextSampler; the
    few-shot split is train, so no draw ever has to skip the document itself)."""
    rnd = random.Random(seed)
    return [rnd.sample(train, k) for _ in range(n_docs)]


def lm_eval_prompt(question, shots):
    """doc_to_text "Question: {{question}}\\nAnswer:", each shot followed by " " + its raw answer
    (calculator annotations and all) and "\\n\\n"; nothing is stripped."""
    return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots) + \
        f"Question: {question}\nAnswer:"


def lm_eval_stop_ids(tokenizer):
    """The until strings are text; one that is a single special token (Qwen's <|im_end|>) would
    be dropped from the decoded text, so it stops as a token id too (beside eos)."""
    ids = {tokenizer.token_to_id(s) for s in LM_EVAL_UNTIL}
    return sorted({tokenizer.eos_id} | {i for i in ids if i is not None})


def _lm_eval_filter(pattern, text, select):
    """RegexFilter: re.findall, the match `select`, its first nonempty group, stripped;
    "[invalid]" when nothing matches."""
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    m = found[select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), "[invalid]")
    return m.strip()


def _lm_eval_clean(text):
    for pattern in LM_EVAL_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()  # ignore_case; ignore_punctuation is false


def lm_eval_score(completion, answer):
    """(strict-match, flexible-extract) for one completion, each 1.0 or 0.0, as the harness
    scores it: the text cut at the first of each `until` string, a regex filter, then exact match
    against the gold solution `answer` after removing ",", "$", everything up to the last "#### "
    and a final "."."""
    for stop in LM_EVAL_UNTIL:
        completion = completion.split(stop)[0]
    gold = _lm_eval_clean(answer)
    strict = _lm_eval_clean(_lm_eval_filter(LM_EVAL_STRICT, completion, 0))
    flexible = _lm_eval_clean(_lm_eval_filter(LM_EVAL_FLEXIBLE, completion, -1))
    return float(strict == gold), float(flexible == gold)

# -----------------------------------------------------------------------------
# python gsm8k.py (or eval_gsm8k.py without a model): the prompt and the rule on examples


def show_rules():
    """No model: what this file does, on examples; and the toy task's gold answers checked."""
    toy = toy_problems("train", n=3)
    n_train, n_test = len(toy_problems("train")), len(toy_problems("test"))
    print(f"toy task: {n_train} train, {n_test} test problems")
    print("a 2-shot toy prompt and its target:\n" + "-" * 40)
    print(format_prompt(toy[2]["question"], [(p["question"], p["answer"]) for p in toy[:2]])
          + format_solution(toy[2]["answer"]) + "\n" + "-" * 40)
    for text in ["#### 1,080", "so $18.00.\n#### $18.00.", "#### -5\n\nQuestion: #### 7",
                 "The answer is \\boxed{42}.", "it is 12 or 13", "no answer"]:
        print(f"  extract {text!r:36} strict {extract_answer(text)!s:5} "
              f"flexible {extract_answer(text, flexible=True)}")
    text = (" She has 7 eggs.\n\nSo she sells 7 * 2 = 14 dollars.\n#### 14\n\nQuestion: Tom has "
            "3 pens.\n#### 3")
    print(f"  reward of {text!r} against 14: {reward(text, '14')} (cut at 'Question:'; blank "
          f"lines stay)")
    assert all(reward(p["answer"], p["answer"]) == 1.0 for p in toy_problems("test"))
    print("every toy test gold answer earns reward 1 against itself. Evaluate with --toy or "
          "--model.")


if __name__ == "__main__":
    from errors import no_flags
    no_flags(__doc__)
    show_rules()
