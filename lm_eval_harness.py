"""
lm-evaluation-harness's gsm8k task, v3.0, re-implemented so that scores compare with published
ones (lm_eval 0.4.13: tasks/gsm8k/gsm8k.yaml, the regex filter, exact_match, HFLM's
generate_until). eval_gsm8k.py's --harness lm-eval generates with these prompts and stops and
scores with lm_eval_score; tests/test_eval_gsm8k.py checks every rule against lm_eval itself.

    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --harness lm-eval

5-shot from train (seed 1234), "Question: {q}\\nAnswer:" with shots joined by "\\n\\n", greedy
until "Question:", "</s>", "<|im_end|>"; strict-match = the first "#### (-?[0-9.,]+)",
flexible-extract = the last match of "(-?[$0-9.,]{2,})|(-?[0-9]+)"; exact match after removing
",", "$", everything up to the last "#### " and a final ".", ignoring case. Its quirks too:
"18.00" does not match 18 here, "#### 18 dollars" strict-matches.
"""
import random
import re

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
