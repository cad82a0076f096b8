r"""
GSM8K: the data, the prompt, answer extraction and reward, batched evaluation, and the toy task.

    python eval_gsm8k.py                                          # show the prompt, the rule, the toy task
    python eval_gsm8k.py --toy                                    # evaluate the shipped toy base (toy_base/)
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --limit 200      # zero-shot, greedy
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --shots 4 --out runs/eval.jsonl
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --adapter runs/r1/step_000100
    python eval_gsm8k.py --toy --adapter runs/r1/step_*          # a whole run's curve, one batched pass
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --harness lm-eval  # scored as lm-evaluation-harness does

The prompt, one for SFT, GRPO and evaluation, written for a base model (no chat template):

    Question: <question>
    Answer: <solution ending in "#### N">

k-shot prompts put k worked train examples first, each followed by a blank line. A completion
ends at eos or where the model starts a new "Question:" (STOP_STRINGS, checked by generate() on
the decoded text, since "Question:" is several tokens); blank lines inside a reasoning stay, so
an answer written in paragraphs is read whole. truncate() cuts the text at the stop string before
the answer is extracted. (rank1 used to stop at the first blank line, as lm-evaluation-harness's
gsm8k task did up to its v1.0; a base model that reasons in paragraphs then scored 0.)

SFT trains on format_prompt(q) + format_solution(a) + eos. The prompt ends in ":" and the target
starts with " ", a pre-tokenizer boundary, so encoding the two apart and concatenating the ids
equals encoding the whole text (checked on all 8,792 GSM8K problems with Qwen2.5's tokenizer).

Evaluation is greedy; strict accuracy reads the number after "####", else the last \boxed{}
(DESIGN.md). To compare with published numbers, --harness lm-eval evaluates exactly as
lm-evaluation-harness's gsm8k task (v3.0, lm_eval 0.4.13): its prompt, its 5 shots, its stops
and its two scores (lm_eval_score()), quirks included.
"""
import argparse
import hashlib
import json
import math
import os
import random
import re
import time
import urllib.request
import zlib
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

import lora
from model import TOY_BASE, UserError, exit_on_user_error, generate, load_model, load_tokenizer, user_exit

GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
GSM8K_SHA256 = {  # the upstream files, byte for byte (MIT License, Copyright (c) 2021 OpenAI)
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",  # 7,473 problems
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",   # 1,319 problems
}
GSM8K_CACHE = Path("~/.cache/rank1/gsm8k")
STOP_STRINGS = ("Question:",)  # where a completion ends, besides eos: the model's next made-up question
SHOT_SEP = "\n\n"  # after each worked example of a k-shot prompt

# -----------------------------------------------------------------------------
# Data

def read_jsonl(path):
    """Problems from a JSONL file of {"question", "answer"} records; bad lines name file and line."""
    problems = []
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file" + (" (a folder? --data takes a folder holding {split}.jsonl or "
                                                   "a file)" if os.path.isdir(path) else ""))
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
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


def load_gsm8k(split, path=None, cache_dir=GSM8K_CACHE):
    """GSM8K `split` from `path`, or from the cache folder, downloading it there once (checked)."""
    if path is not None:
        return read_jsonl(path)  # the user's own file: any subset is fine, so no checksum
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
        if hashlib.sha256(data).hexdigest() != want:
            raise UserError(f"download of {url} has sha256 {hashlib.sha256(data).hexdigest()}, "
                             f"expected {want}; not saved")
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, file)  # atomic: a crash never leaves half a file under the real name
    got = hashlib.sha256(file.read_bytes()).hexdigest()
    if got != want:
        raise UserError(f"{file} has sha256 {got}, expected {want} (the upstream {split} split); "
                         f"delete it to download again, or pass your own file with --data")
    return read_jsonl(file)


def data_path(data, split):
    """What --data means in every script: None = the cached download (None here); a folder = its
    {split}.jsonl; a file = that file, whatever the split (a script that reads two splits from one
    file says so)."""
    if data is None or not os.path.isdir(data):
        return data
    path = os.path.join(data, f"{split}.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"--data {data}: a folder, but it holds no {split}.jsonl")
    return path


def load_task(task, split, path=None):
    """The one entry point for sft/grpo/geometry: task "gsm8k" or "toy", split "train" or "test"."""
    if task == "gsm8k":
        return load_gsm8k(split, path)
    if task != "toy":
        raise UserError(f"unknown task {task!r}, expected gsm8k or toy")
    if path is not None:
        raise UserError(f"the toy task is generated, not read: --data {path} is for --task gsm8k")
    return toy_problems(split)

# -----------------------------------------------------------------------------
# The prompt

def format_solution(answer):
    """A gold solution as the completion target: calculator annotations <<48/2=24>> removed and a
    leading space, since the prompt ends in "Answer:". Blank lines stay (6 of 8,792 GSM8K solutions
    have one): they end nothing; no solution contains the stop string "Question:"."""
    return " " + re.sub(r"<<.*?>>", "", answer).strip()


def format_prompt(question, shots=()):
    """The prompt for `question`; `shots` are (question, answer) worked examples, e.g. from train."""
    parts = [f"Question: {q.strip()}\nAnswer:{format_solution(a)}{SHOT_SEP}" for q, a in shots]
    return "".join(parts) + f"Question: {question.strip()}\nAnswer:"


def truncate(text, stop_strings=STOP_STRINGS):
    """A completion cut where its first stop string starts: what follows is the model's next made-up
    question (generate() stops after the token that completes the string, which may hold more)."""
    for s in stop_strings:
        text = text.split(s, 1)[0]
    return text


def stop_ids(tokenizer):
    """The token ids that end a completion: eos. (The stop strings are text, see STOP_STRINGS.)"""
    return [tokenizer.eos_id]

# -----------------------------------------------------------------------------
# Answer extraction and reward (DESIGN.md, "GSM8K")

# a number: an optional sign and $ (-5, $5, -$5, $-5), then 1,234 (thousands separators) or 1234,
# then optional decimals. A trailing "." ("it costs $18.") is left out.
NUMBER = r"(?:-\$?|\$-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"


def normalize(number):
    """'$1,080.00' -> '1080': no ',' or '$', one canonical form per value, so comparing the strings
    compares the numbers (18.00 == 18, 0.50 == .5, -0 == 0)."""
    s = re.sub(r"[,$]", "", number).rstrip(".")
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    return "0" if s == "0" else sign + ("0" + s if s.startswith(".") else s)


def extract_answer(text, flexible=False):
    """The number right after the first "####"; else the number in the last \\boxed{...}; else None.
    flexible=True falls back to the last number in the text. Returns the normalized number."""
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
# lm-evaluation-harness's gsm8k task, v3.0 (lm_eval 0.4.13: tasks/gsm8k/gsm8k.yaml, the regex filter,
# exact_match, HFLM's generate_until), re-implemented so that scores compare with published ones

LM_EVAL_UNTIL = ("Question:", "</s>", "<|im_end|>")    # generation_kwargs.until
LM_EVAL_STRICT = r"#### (\-?[0-9\.\,]+)"              # strict-match: the first match
LM_EVAL_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"      # flexible-extract: the last match
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # exact_match's regexes_to_ignore, in this order
LM_EVAL_SEED = 1234                                    # the harness's fewshot_random_seed
LM_EVAL_SHOTS = 5                                      # num_fewshot
LM_EVAL_MAX_NEW_TOKENS = 256                           # HFLM's max_gen_toks (the yaml sets none)


def lm_eval_shots(train, n_docs, k=LM_EVAL_SHOTS, seed=LM_EVAL_SEED):
    """The harness's few-shot draw: one random.Random(seed) for the task, and for each evaluated
    document in order k train problems from rnd.sample(train, k) (its ContextSampler; the few-shot
    split is train, so no draw ever has to skip the document itself)."""
    rnd = random.Random(seed)
    return [rnd.sample(train, k) for _ in range(n_docs)]


def lm_eval_prompt(question, shots):
    """doc_to_text "Question: {{question}}\nAnswer:", each shot followed by " " + its raw answer
    (calculator annotations and all) and "\n\n"; nothing is stripped."""
    return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots) + \
        f"Question: {question}\nAnswer:"


def _lm_eval_filter(pattern, text, select):
    """RegexFilter: re.findall, the match `select`, its first nonempty group, stripped; "[invalid]"."""
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
    """(strict-match, flexible-extract) for one completion, each 1.0 or 0.0, as the harness scores
    it: the text cut at the first of each `until` string, a regex filter, then exact match against
    the gold solution `answer` after removing ",", "$", everything up to the last "#### " and a final
    ".". Its quirks too: "18.00" does not match 18, "#### 18 dollars" strict-matches."""
    for stop in LM_EVAL_UNTIL:
        completion = completion.split(stop)[0]
    gold = _lm_eval_clean(answer)
    strict = _lm_eval_clean(_lm_eval_filter(LM_EVAL_STRICT, completion, 0))
    flexible = _lm_eval_clean(_lm_eval_filter(LM_EVAL_FLEXIBLE, completion, -1))
    return float(strict == gold), float(flexible == gold)

# -----------------------------------------------------------------------------
# Evaluation

def wilson(k, n, z=1.96):
    """95% Wilson score interval for k successes in n trials (sound near 0 and 1, unlike p ± 2se)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, center - half), min(1.0, center + half))


def complete(model, tokenizer, prompts, max_new_tokens, batch_size, stop_ids, stop_strings, progress=True,
             weights=None):
    """Greedy completions (token ids) of the encoded prompts, in their order, and the seconds taken.
    weights (len(prompts), N): prompt i runs as the point Σ_j weights[i, j]·ΔW_j of the model's
    stacked adapters (lora.set_stacked); None = the model as it is."""
    # longest first: similar lengths share a batch (less padding), and an out-of-memory comes
    # at once. Safe because greedy output never depends on the rest of the batch (DESIGN.md).
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    completions = [None] * len(prompts)
    model.eval()
    t0 = time.time()
    with tqdm(total=len(prompts), desc="eval", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            with lora.row_weights(model, weights[idx]) if weights is not None else nullcontext() as rows:
                per_row = dict(row_state=[rows]) if rows is not None else {}  # each row's point follows it
                outs = generate(model, [prompts[i] for i in idx], max_new_tokens, temperature=0.0,
                                stop_ids=stop_ids, stop_strings=stop_strings, tokenizer=tokenizer, **per_row)
            for i, ids in zip(idx, outs):
                completions[i] = ids
            bar.update(len(idx))
    return completions, time.time() - t0


def evaluate(model, tokenizer, problems, shots=(), batch_size=64, max_new_tokens=512,
             stop=None, progress=True):
    """Greedy answers to `problems` -> (summary, rows). `stop`: the stop token ids (stop_ids())."""
    stop = sorted(stop_ids(tokenizer) if stop is None else stop)
    prompts = [tokenizer.encode(format_prompt(p["question"], shots)) for p in problems]
    completions, seconds = complete(model, tokenizer, prompts, max_new_tokens, batch_size, stop,
                                    STOP_STRINGS, progress)
    return score(tokenizer, problems, completions, stop, max_new_tokens, shots, seconds)


def score(tokenizer, problems, completions, stop, max_new_tokens, shots=(), seconds=0.0):
    """(summary, rows) of greedy completions (token ids) of `problems`, in order."""
    rows = []
    for i, (p, ids) in enumerate(zip(problems, completions)):
        text = tokenizer.decode(ids)
        cut = truncate(text)
        stopped = (len(ids) > 0 and ids[-1] in stop) or cut != text
        pred, pred_flex = extract_answer(cut), extract_answer(cut, flexible=True)
        gold = gold_answer(p["answer"])
        rows.append(dict(i=i, question=p["question"], gold=gold, completion=text, pred=pred,
                         pred_flexible=pred_flex, correct=reward(text, p["answer"]),
                         correct_flexible=float(pred_flex == gold),
                         tokens=len(ids), truncated=not stopped and len(ids) >= max_new_tokens))
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    k_flex = sum(r["correct_flexible"] for r in rows)
    summary = dict(n=n, accuracy=k / max(n, 1), accuracy_ci=wilson(k, n),
                   flexible_accuracy=k_flex / max(n, 1), flexible_ci=wilson(k_flex, n),
                   format_rate=sum(r["pred"] is not None for r in rows) / max(n, 1),
                   mean_tokens=sum(r["tokens"] for r in rows) / max(n, 1),
                   truncated_rate=sum(r["truncated"] for r in rows) / max(n, 1),
                   shots=len(shots), seconds=seconds)
    return summary, rows


def evaluate_lm_eval(model, tokenizer, problems, train, shots=LM_EVAL_SHOTS, batch_size=64,
                     max_new_tokens=LM_EVAL_MAX_NEW_TOKENS, progress=True):
    """lm-evaluation-harness's gsm8k task on `problems` (the test split, in its order), shots drawn
    from `train` as the harness draws them -> (summary, rows)."""
    draws = lm_eval_shots(train, len(problems), shots) if shots else [[]] * len(problems)
    texts = [lm_eval_prompt(p["question"], d) for p, d in zip(problems, draws)]
    prompts = [tokenizer.encode(t) for t in texts]
    # the until strings are text; one that is a single special token (Qwen's <|im_end|>) would be
    # dropped from the decoded text, so it stops as a token id too
    stop = sorted({tokenizer.eos_id} | {i for i in map(tokenizer.token_to_id, LM_EVAL_UNTIL) if i is not None})
    completions, seconds = complete(model, tokenizer, prompts, max_new_tokens, batch_size, stop,
                                    LM_EVAL_UNTIL, progress)
    rows = []
    for i, (p, ids) in enumerate(zip(problems, completions)):
        text = tokenizer.decode(ids)
        strict, flexible = lm_eval_score(text, p["answer"])
        rows.append(dict(i=i, prompt=texts[i], answer=p["answer"], completion=text,
                         strict_match=strict, flexible_extract=flexible, tokens=len(ids)))
    n = len(rows)
    k, k_flex = sum(r["strict_match"] for r in rows), sum(r["flexible_extract"] for r in rows)
    summary = dict(n=n, strict_match=k / max(n, 1), strict_ci=wilson(k, n),
                   flexible_extract=k_flex / max(n, 1), flexible_ci=wilson(k_flex, n),
                   mean_tokens=sum(r["tokens"] for r in rows) / max(n, 1), shots=shots, seconds=seconds)
    return summary, rows


def eval_metrics(model, tokenizer, problems, stop, max_new_tokens, batch_size):
    """evaluate() as the metrics row fields the training scripts log; the model's train/eval mode is
    left as it was."""
    was_training = model.training
    s, _ = evaluate(model, tokenizer, problems, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    stop=stop, progress=False)
    model.train(was_training)
    return dict(eval_accuracy=s["accuracy"], eval_flexible_accuracy=s["flexible_accuracy"],
                eval_format_rate=s["format_rate"], eval_n=s["n"], eval_seconds=round(s["seconds"], 2))


# -----------------------------------------------------------------------------
# Many adapters at once: K points of stacked factors side by side in every generate() call
# (lora.set_stacked, lora.row_weights; geometry.py's plane, --adapter A B C)

def evaluate_points(model, tokenizer, problems, weights, shots=(), batch_size=64, max_new_tokens=512,
                    stop=None, progress=True):
    """evaluate() of K points in one go -> a (summary, rows) per point. The model carries N stacked
    adapters (lora.set_stacked) and point k is Σ_j weights[k, j]·ΔW_j (K, N): every problem is asked
    once per point, and a generate() call takes batch_size problems of every point (K·batch_size
    rows) over the same base weights. K = 1 is the one-point path, the same arithmetic: a point's
    greedy tokens do not depend on the others (batch-independent greedy decoding, DESIGN.md)."""
    stop = sorted(stop_ids(tokenizer) if stop is None else stop)
    weights = torch.as_tensor(weights, dtype=torch.float32)               # (K, N)
    K, P = len(weights), len(problems)
    prompts = [tokenizer.encode(format_prompt(p["question"], shots)) for p in problems]
    completions, seconds = complete(model, tokenizer, prompts * K, max_new_tokens, batch_size * K, stop,
                                    STOP_STRINGS, progress, weights=weights.repeat_interleave(P, 0))
    # each point's summary carries its share of the pass's seconds
    return [score(tokenizer, problems, completions[k * P:(k + 1) * P], stop, max_new_tokens, shots, seconds / K)
            for k in range(K)]


def points_per_pass(model, n_prompts, prompt_len, max_new_tokens, fraction=0.5, cpu_cap=4 * 2**30):
    """How many points fit one pass of n_prompts rows each: per row, the KV cache of the whole
    sequence and the prefill's activations (the larger of the MLP's and the attention scores'),
    against `fraction` of the free memory (the GPU's, or MemAvailable up to cpu_cap on a CPU)."""
    c, device = model.config, model.lm_head.weight.device
    el, S = model.lm_head.weight.element_size(), prompt_len + max_new_tokens
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * S * el
    act = prompt_len * max(4 * c.intermediate_size * el, c.num_attention_heads * prompt_len * 4) + 2 * c.vocab_size * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        meminfo = dict(l.split(":", 1) for l in open("/proc/meminfo")) if os.path.exists("/proc/meminfo") else {}
        free = min(int(meminfo.get("MemAvailable", "0 kB").split()[0]) * 1024 or cpu_cap, cpu_cap)
    return max(1, int(fraction * free // ((kv + act) * n_prompts)))


def print_summary(summary, title):
    s = summary
    print(f"{title}  ({s['n']} problems, {s['shots']}-shot, greedy, {s['seconds']:.1f} s)")
    print(f"  {'strict accuracy':<18} {s['accuracy']:.3f}  95% CI [{s['accuracy_ci'][0]:.3f}, {s['accuracy_ci'][1]:.3f}]")
    print(f"  {'flexible accuracy':<18} {s['flexible_accuracy']:.3f}  95% CI [{s['flexible_ci'][0]:.3f}, {s['flexible_ci'][1]:.3f}]")
    print(f"  {'format rate':<18} {s['format_rate']:.3f}  (strict extraction found a number)")
    print(f"  {'mean length':<18} {s['mean_tokens']:.1f} tokens, {s['truncated_rate']:.3f} hit max_new_tokens")


def print_lm_eval_summary(summary, title):
    s = summary
    print(f"{title}  ({s['n']} problems, lm-evaluation-harness gsm8k v3.0, {s['shots']}-shot, greedy, {s['seconds']:.1f} s)")
    print(f"  {'strict-match':<18} {s['strict_match']:.3f}  95% CI [{s['strict_ci'][0]:.3f}, {s['strict_ci'][1]:.3f}]")
    print(f"  {'flexible-extract':<18} {s['flexible_extract']:.3f}  95% CI [{s['flexible_ci'][0]:.3f}, {s['flexible_ci'][1]:.3f}]")
    print(f"  {'mean length':<18} {s['mean_tokens']:.1f} tokens")

# -----------------------------------------------------------------------------
# The toy task: two-step word problems in GSM8K's format, short enough for a char-level model.
# "Ann has 23 eggs and buys 5 boxes of 4. How many eggs?" -> " 5*4=20\n23+20=43\n#### 43".
# Difficulty knobs: the operand ranges and the operations. The product is a 64-fact table, the
# second step is two-digit addition or subtraction with carries, so accuracy grows fact by fact.

TOY_START = (10, 99)  # the starting amount a (inclusive range)
TOY_FACTOR = (2, 9)   # both factors b (packs) and c (items per pack)
TOY_OPS = "+-"        # "+": buys packs, a + b*c; "-": sells packs, a - b*c (only when >= 0)
TOY_TEST_EVERY = 10   # 1 in 10 of the final steps (op, a, b*c) is held out for test
TOY_NAMES = ("Ann", "Bob", "Tom", "Eva", "Sam", "Mia", "Leo", "Ivy")
TOY_ITEMS = (("eggs", "boxes"), ("pens", "packs"), ("apples", "bags"), ("cards", "decks"),
             ("beads", "jars"), ("books", "crates"))


def toy_split(op, a, p, test_every=TOY_TEST_EVERY):
    """train or test for the final step a op p: a stable hash (crc32), so splits never overlap and
    a test problem's last step (the one that needs the carry) never appears in train."""
    return "test" if zlib.crc32(f"{a}{op}{p}".encode()) % test_every == 0 else "train"


def toy_problems(split, n=None, seed=0, start=TOY_START, factor=TOY_FACTOR, ops=TOY_OPS):
    """n toy problems of `split` (None = every distinct problem of the split once), seeded. n beyond
    the split's size cycles through it again, reshuffled, with new names and items."""
    assert split in ("train", "test"), f"unknown toy split {split!r}"
    pool = [(op, a, b, c) for op in ops for a in range(start[0], start[1] + 1)
            for b in range(factor[0], factor[1] + 1) for c in range(factor[0], factor[1] + 1)
            if (op == "+" or a >= b * c) and toy_split(op, a, b * c) == split]
    assert pool, f"no {split} problems for start={start} factor={factor} ops={ops!r}"
    rng = random.Random(f"{seed}-{split}")  # str seeds hash with sha512: stable across runs
    n = len(pool) if n is None else n
    problems = []
    while len(problems) < n:
        rng.shuffle(pool)
        for op, a, b, c in pool[:n - len(problems)]:
            name, (item, pack) = rng.choice(TOY_NAMES), rng.choice(TOY_ITEMS)
            verb = "buys" if op == "+" else "sells"
            x = a + b * c if op == "+" else a - b * c
            problems.append({"question": f"{name} has {a} {item} and {verb} {b} {pack} of {c}. How many {item}?",
                             "answer": f"{b}*{c}={b * c}\n{a}{op}{b * c}={x}\n#### {x}"})
    return problems

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to evaluate
    parser.add_argument("--model", default=None, help="hub id or local folder (default with --toy: the shipped toy_base/)")
    parser.add_argument("--adapter", nargs="+", default=None, help="adapter folder(s) (PEFT format) to apply; several "
                        "(runs/r1/step_*) are scored side by side in one batched pass, each its own accuracy; none = the base model")
    parser.add_argument("--points-per-pass", type=int, default=0, help="with several adapters: how many share one "
                        "generate() call (batch-size prompts each); 0 = as many as memory allows, 1 = one at a time")
    parser.add_argument("--toy", action="store_true", help="the toy task (and the toy base model unless --model)")
    # on which problems
    parser.add_argument("--data", default=None, help="GSM8K data: a folder holding {split}.jsonl (and train.jsonl for the shots), or the JSONL file of --split; none = ~/.cache/rank1/gsm8k, downloaded once")
    parser.add_argument("--train-data", default=None, help="JSONL file of train, where the shots come from; none = --data's train.jsonl when --data is a folder, else the cache")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="which split to evaluate")
    parser.add_argument("--limit", type=int, default=0, help="first N problems only; 0 = all")
    parser.add_argument("--shots", type=int, default=None, help="worked examples from train before each question; default 0 (zero-shot), 5 with --harness lm-eval")
    # how
    parser.add_argument("--harness", default="rank1", choices=["rank1", "lm-eval"], help="rank1: this file's prompt and scoring; lm-eval: lm-evaluation-harness's gsm8k task exactly (its prompt, shots, stops and scores)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="completion budget; 0 = 512 (GSM8K), 64 (--toy), 256 (--harness lm-eval, the harness's)")
    parser.add_argument("--out", default=None, help="write one JSON line per problem here; none = no file")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu; none = the best available")
    args = parser.parse_args()
    exit_on_user_error()

    if args.model is None and not args.toy:  # no model: show what this file does, check the rule
        toy = toy_problems("train", n=3)
        print(f"toy task: {len(toy_problems('train'))} train, {len(toy_problems('test'))} test problems")
        print("a 2-shot toy prompt and its target:\n" + "-" * 40)
        print(format_prompt(toy[2]["question"], [(p["question"], p["answer"]) for p in toy[:2]])
              + format_solution(toy[2]["answer"]) + "\n" + "-" * 40)
        for text in ["#### 1,080", "so $18.00.\n#### $18.00.", "#### -5\n\nQuestion: #### 7",
                     "The answer is \\boxed{42}.", "it is 12 or 13", "no answer"]:
            print(f"  extract {text!r:36} strict {extract_answer(text)!s:5} "
                  f"flexible {extract_answer(text, flexible=True)}")
        text = " She has 7 eggs.\n\nSo she sells 7 * 2 = 14 dollars.\n#### 14\n\nQuestion: Tom has 3 pens.\n#### 3"
        print(f"  reward of {text!r} against 14: {reward(text, '14')} (cut at 'Question:'; blank lines stay)")
        assert all(reward(p["answer"], p["answer"]) == 1.0 for p in toy_problems("test"))
        print("every toy test gold answer earns reward 1 against itself. Evaluate with --toy or --model.")
        raise SystemExit

    task = "toy" if args.toy else "gsm8k"
    args.model = args.model or TOY_BASE
    if args.toy and not Path(args.model).exists():
        raise user_exit(f"{args.model} not found: the toy base ships in toy_base/; rebuild one with `python sft.py --toy`")
    lm_eval = args.harness == "lm-eval"
    max_new_tokens = args.max_new_tokens or (64 if args.toy else LM_EVAL_MAX_NEW_TOKENS if lm_eval else 512)
    n_shots = (LM_EVAL_SHOTS if lm_eval else 0) if args.shots is None else args.shots
    problems = load_task(task, args.split, data_path(args.data, args.split))
    problems = problems[:args.limit] if args.limit else problems
    # shots come from train: --train-data, else a --data folder's train.jsonl; a --data file is the evaluated split, never its shots
    shots_from = args.train_data or (data_path(args.data, "train") if args.data and os.path.isdir(args.data) else None)
    if n_shots and args.data and shots_from is None:
        print(f"note: --data {args.data} is a file, the {args.split} split: the shots come from the cached train split")
    train = load_task(task, "train", shots_from) if n_shots else []
    shots = [(p["question"], p["answer"]) for p in train[:n_shots]]

    model = load_model(args.model, device=args.device)
    tokenizer = load_tokenizer(args.model)
    if args.adapter and len(args.adapter) > 1:  # a whole run's checkpoints: stacked, one per batch row
        if lm_eval:
            raise user_exit("--harness lm-eval scores one adapter at a time; pass one --adapter")
        factor_sets = [lora.load_factors(a) for a in args.adapter]
        lora.set_stacked(model, factor_sets)
        prompt_len = max(len(tokenizer.encode(format_prompt(p["question"], shots))) for p in problems)
        K = args.points_per_pass or points_per_pass(model, min(args.batch_size, len(problems)), prompt_len, max_new_tokens)
        K = -(-len(args.adapter) // -(-len(args.adapter) // K))  # as many passes, evenly filled
        print(f"{len(args.adapter)} adapters stacked (stacked rank {max(m.rank for m in lora.lora_modules(model).values())}), "
              f"{K} per pass of {args.batch_size} prompts each")
        results, eye = [], torch.eye(len(args.adapter))
        for k in range(0, len(args.adapter), K):
            results += evaluate_points(model, tokenizer, problems, eye[k:k + K], shots, args.batch_size, max_new_tokens)
        print(f"{args.model} on {task} {args.split} ({len(problems)} problems, {len(shots)}-shot, greedy, "
              f"{sum(s['seconds'] for s, _ in results):.1f} s in all)")
        print(f"{'adapter':<40} | {'accuracy':>8} | {'95% CI':>14} | {'flexible':>8} | {'format':>6}")
        for a, (s, _) in zip(args.adapter, results):
            print(f"{a:<40} | {s['accuracy']:8.3f} | [{s['accuracy_ci'][0]:.3f}, {s['accuracy_ci'][1]:.3f}] | "
                  f"{s['flexible_accuracy']:8.3f} | {s['format_rate']:6.3f}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "w") as f:
                for a, (_, rows) in zip(args.adapter, results):
                    for r in rows:
                        f.write(json.dumps(dict(adapter=a, **r)) + "\n")
            print(f"wrote {len(problems) * len(results)} rows to {args.out}")
        raise SystemExit
    if args.adapter:
        lora.load_adapter(model, args.adapter[0])
    title = f"{args.model}" + (f" + {args.adapter[0]}" if args.adapter else "") + f" on {task} {args.split}"
    if lm_eval:
        summary, rows = evaluate_lm_eval(model, tokenizer, problems, train, n_shots, args.batch_size, max_new_tokens)
        print_lm_eval_summary(summary, title)
    else:
        summary, rows = evaluate(model, tokenizer, problems, shots, args.batch_size, max_new_tokens)
        print_summary(summary, title)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {len(rows)} rows to {args.out}")
