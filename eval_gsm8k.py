r"""
GSM8K evaluation: greedy accuracy of a model, of one adapter or of many at once, and scoring as
lm-evaluation-harness scores. The task itself (data, prompt, stops, the rule) is gsm8k.py's.

    python eval_gsm8k.py                                    # the prompt, the rule, the toy task
    python eval_gsm8k.py --toy                              # the shipped toy base (toy_base/)
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --limit 200           # zero-shot, greedy
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --shots 4 --out runs/eval.jsonl
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --adapter runs/r1/step_000100
    python eval_gsm8k.py --toy --adapter runs/r1/step_*    # a whole run's curve, one batched pass
    python eval_gsm8k.py --model Qwen/Qwen2.5-3B --harness lm-eval      # as lm-eval scores it

Accuracy is strict (the number after the first "####", else the last \boxed{}), reported with
the flexible accuracy (the last number) and the format rate. Several adapters are scored side by
side, each batch row carrying its own adapter over stacked factors (factored.py), the base read
once per decode step for all. --harness lm-eval scores as lm-evaluation-harness's gsm8k task.
"""
import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import adapters
import factored
import gsm8k as H  # lm-evaluation-harness's rules (its LM_EVAL_* and lm_eval_*)
import toy_task
from data_parallel import reduce_eval
from errors import (COUNT, COUNT0, NONNEGATIVE, SEED, HelpFormatter, check_writable,
                    exit_on_user_error, stop_on_signals, user_exit, write_lines)
from gsm8k import (STOP_STRINGS, data_path, extract_answer, format_prompt, gold_answer, load_task,
                   reward, show_rules, stop_ids, truncate)
from gsm8k import load_gsm8k  # noqa: F401  the contract's eval_gsm8k.load_gsm8k, gsm8k.py's
from lora import merged
from model import TOY_BASE, load_model, load_tokenizer
from toy_task import TOY_NEW_TOKENS
from sampler import generate, sample_key

# -----------------------------------------------------------------------------
# Evaluation


def wilson(k, n, z=1.96):
    """95% Wilson score interval for k successes in n trials (sound near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, center - half), min(1.0, center + half))


def complete(model, tokenizer, prompts, max_new_tokens, batch_size, stop_ids, stop_strings,
             progress=True, weights=None):
    """Greedy completions (token ids) of the encoded prompts, in their order, and the seconds;
    weights (len(prompts), N): prompt i runs as the point Σ_j weights[i, j]·ΔW_j of the stacked
    adapters (factored.set_stacked). Longest first: less padding, an out of memory at once."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    completions = [None] * len(prompts)
    model.eval()
    t0 = time.time()
    with tqdm(total=len(prompts), desc="eval", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            points = weights is not None
            with factored.row_weights(model, weights[idx]) if points else nullcontext() as rows:
                per_row = dict(row_state=[rows]) if rows is not None else {}  # rows follow rows
                outs = generate(model, [prompts[i] for i in idx], max_new_tokens, temperature=0.0,
                                stop_ids=stop_ids, stop_strings=stop_strings, tokenizer=tokenizer,
                                **per_row)
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
                         correct_flexible=float(pred_flex == gold), tokens=len(ids),
                         truncated=not stopped and len(ids) >= max_new_tokens))
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    k_flex = sum(r["correct_flexible"] for r in rows)
    mean = lambda key: sum(r[key] for r in rows) / max(n, 1)
    summary = dict(n=n, accuracy=k / max(n, 1), accuracy_ci=wilson(k, n),
                   flexible_accuracy=k_flex / max(n, 1), flexible_ci=wilson(k_flex, n),
                   format_rate=sum(r["pred"] is not None for r in rows) / max(n, 1),
                   mean_tokens=mean("tokens"), truncated_rate=mean("truncated"),
                   shots=len(shots), seconds=seconds)
    return summary, rows


def evaluate_lm_eval(model, tokenizer, problems, train, shots=H.LM_EVAL_SHOTS, batch_size=64,
                     max_new_tokens=H.LM_EVAL_MAX_NEW_TOKENS, progress=True):
    """lm-evaluation-harness's gsm8k task on `problems` (the test split, in its order), shots
    drawn from `train` as the harness draws them -> (summary, rows)."""
    draws = H.lm_eval_shots(train, len(problems), shots) if shots else [[]] * len(problems)
    texts = [H.lm_eval_prompt(p["question"], d) for p, d in zip(problems, draws)]
    prompts = [tokenizer.encode(t) for t in texts]
    completions, seconds = complete(model, tokenizer, prompts, max_new_tokens, batch_size,
                                    H.lm_eval_stop_ids(tokenizer), H.LM_EVAL_UNTIL, progress)
    rows = []
    for i, (p, ids) in enumerate(zip(problems, completions)):
        text = tokenizer.decode(ids)
        strict, flexible = H.lm_eval_score(text, p["answer"])
        rows.append(dict(i=i, prompt=texts[i], answer=p["answer"], completion=text,
                         strict_match=strict, flexible_extract=flexible, tokens=len(ids)))
    n = len(rows)
    k, k_flex = sum(r["strict_match"] for r in rows), sum(r["flexible_extract"] for r in rows)
    summary = dict(n=n, strict_match=k / max(n, 1), strict_ci=wilson(k, n),
                   flexible_extract=k_flex / max(n, 1), flexible_ci=wilson(k_flex, n),
                   mean_tokens=sum(r["tokens"] for r in rows) / max(n, 1), shots=shots,
                   seconds=seconds)
    return summary, rows


def eval_metrics(model, tokenizer, problems, stop, max_new_tokens, batch_size):
    """evaluate() as the metrics row fields the training scripts log; the model's train/eval
    mode is left as it was."""
    was_training = model.training
    s, rows = evaluate(model, tokenizer, problems, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, stop=stop, progress=False)
    model.train(was_training)
    return dict(eval_accuracy=s["accuracy"], eval_flexible_accuracy=s["flexible_accuracy"],
                eval_format_rate=s["format_rate"], eval_n=s["n"],
                eval_seconds=round(s["seconds"], 2),
                eval_correct="".join("1" if r["correct"] else "0" for r in rows))  # by problem

def add_eval_args(parser, every, limit, batch_size):
    """The trainers' evaluation flags, one meaning in every script; the strings are the defaults'
    wording (the presets fill them in)."""
    add = parser.add_argument
    add("--eval-every", type=COUNT0, default=None, help="evaluate every N steps (also at step 0 "
        f"and at the end); 0 = start and end only; default {every}")
    add("--eval-limit", type=COUNT0, default=None, help="held-out test problems to evaluate on; 0 "
        f"= the whole split; default {limit}")
    add("--eval-batch-size", type=COUNT, default=None, help="prompts per generate() call in "
        f"evaluation; default {batch_size}")
    add("--val-limit", type=COUNT0, default=0, help="toy: at the final evaluation also the first N "
        "val problems (where the study picks LRs); 0 = none")
    add("--eval-start", action=argparse.BooleanOptionalAction, default=True, help="evaluate "
        "the base at step 0 (default; --no-eval-start: skip it, the study measures each base once)")
    add("--eval-samples", type=COUNT0, default=0, help="at the final evaluation also K samples a "
        "problem: pass@1, pass@K, the toy's latent mode; 0 = greedy only")


def training_eval(model, tokenizer, problems, args, final=False, val=(), rank=0, world=1):
    """The metrics row of a training script's evaluation: greedy accuracy on the held-out
    problems, each process scoring its share and the counts summed (data_parallel.reduce_eval);
    at the final evaluation also, by rank 0, greedy accuracy on `val` (the toy's validation
    problems, where the study picks learning rates) and args.eval_samples completions a problem
    (pass@1, pass@k and on the toy task the latent mode's share)."""
    with merged(model):  # W + ΔW as one matrix (a float32 base; lora.merged)
        return _training_eval(model, tokenizer, problems, args, final, val, rank, world)


def _training_eval(model, tokenizer, problems, args, final, val, rank, world):
    stop, was_training = stop_ids(tokenizer), model.training
    row = reduce_eval(eval_metrics(model, tokenizer, problems[rank::world], stop,
                                   args.max_new_tokens, args.eval_batch_size))
    if final and rank == 0 and val:
        v = eval_metrics(model, tokenizer, val, stop, args.max_new_tokens, args.eval_batch_size)
        row.update({"val" + k[len("eval"):]: x for k, x in v.items()})
    if final and rank == 0 and args.eval_samples:
        mode = toy_task.in_mode if args.task == "toy" else None
        sampled, _ = evaluate_samples(model, tokenizer, problems, args.eval_samples, args.seed,
                                      args.eval_batch_size, args.max_new_tokens, 1.0, mode, False)
        model.train(was_training)
        row.update({f"eval_{k}": x for k, x in sampled.items() if k not in ("n", "temperature")})
    return row

# -----------------------------------------------------------------------------
# Sampled: pass@k, and the toy task's latent mode


def pass_at_k(n, c, k):
    """Chen et al. 2021's unbiased estimator of pass@k from n samples of which c are right: the
    chance that k of them, drawn without replacement, hold a right one, 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def over_problems(values, weights=None, n_boot=1000, seed=0):
    """A mean (or, with weights, the ratio Σvalues / Σweights) over problems and its 95% interval
    by a bootstrap over problems: the samples of one problem are not independent, the problems
    are. nan when the weights sum to 0 (no sample in the latent mode, say)."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    if w.sum() == 0:
        return float("nan"), [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    boot = v[idx].sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    return float(v.sum() / w.sum()), np.quantile(boot, [0.025, 0.975]).tolist()


@torch.inference_mode()
def evaluate_samples(model, tokenizer, problems, k, seed=0, batch_size=64, max_new_tokens=512,
                     temperature=1.0, in_mode=None, progress=True):
    """k completions of each problem at `temperature`, sample j of problem i keyed by (seed, i, j)
    -> (summary, rows): pass@1 and pass@k over problems and, given in_mode (toy_task.in_mode: is a
    completion in the latent mode?), the mode's share of the samples and the accuracy within it
    and outside it. rows: each problem's counts."""
    stop = stop_ids(tokenizer)
    model.eval()
    rows, t0 = [], time.time()
    with tqdm(total=len(problems), desc=f"{k} samples", disable=not progress) as bar:
        for s in range(0, len(problems), batch_size):
            chunk = problems[s:s + batch_size]
            prompts = [tokenizer.encode(format_prompt(p["question"])) for p in chunk]
            keys = [sample_key(seed, s + i) for i in range(len(chunk))]
            outs = generate(model, prompts, max_new_tokens, temperature=temperature, n=k,
                            stop_ids=stop, stop_strings=STOP_STRINGS, tokenizer=tokenizer,
                            keys=keys)
            for i, p in enumerate(chunk):
                texts = [truncate(tokenizer.decode(c)) for c in outs[i * k:(i + 1) * k]]
                right = [reward(t, p["answer"]) == 1.0 for t in texts]
                modes = [bool(in_mode(t)) for t in texts] if in_mode else [False] * k
                rows.append(dict(i=s + i, gold=gold_answer(p["answer"]), samples=k,
                                 correct=sum(right), in_mode=sum(modes),
                                 correct_in_mode=sum(r and m for r, m in zip(right, modes))))
            bar.update(len(chunk))
    c, m, cm = ([r[key] for r in rows] for key in ("correct", "in_mode", "correct_in_mode"))
    summary = dict(n=len(rows), k=k, temperature=temperature, seconds=time.time() - t0)
    stats = [("pass1", [x / k for x in c], None), ("passk", [pass_at_k(k, x, k) for x in c], None)]
    if in_mode:  # the latent mode's share, and the accuracy within it and outside it
        stats += [("mode_share", m, [k] * len(rows)), ("acc_in_mode", cm, m),
                  ("acc_outside", [x - y for x, y in zip(c, cm)], [k - y for y in m])]
    for key, values, weights in stats:
        summary[key], summary[f"{key}_ci"] = over_problems(values, weights)
    return summary, rows


def print_samples(s, title):
    iv = lambda key: f"[{s[key][0]:.3f}, {s[key][1]:.3f}]"
    print(f"{title}  ({s['n']} problems x {s['k']} samples, temperature {s['temperature']:g}, "
          f"{s['seconds']:.1f} s)")
    print(f"pass@1 {s['pass1']:.3f} {iv('pass1_ci')}\npass@{s['k']} {s['passk']:.3f} "
          f"{iv('passk_ci')}")
    if "mode_share" in s:
        print(f"mode {s['mode_share']:.3f} {iv('mode_share_ci')}  (share of samples in the mode)")
        print(f"accuracy in mode {s['acc_in_mode']:.3f} {iv('acc_in_mode_ci')}, outside it "
              f"{s['acc_outside']:.3f} {iv('acc_outside_ci')}")

# -----------------------------------------------------------------------------
# Many adapters at once: K points of stacked factors side by side in every generate() call
# (factored.set_stacked and row_weights; geometry.py's plane, --adapter A B C)


def evaluate_points(model, tokenizer, problems, weights, shots=(), batch_size=64,
                    max_new_tokens=512, stop=None, progress=True):
    """evaluate() of K points in one go -> a (summary, rows) per point. The model carries N
    stacked adapters (factored.set_stacked) and point k is Σ_j weights[k, j]·ΔW_j (K, N): every
    problem is asked once per point, and a generate() call takes batch_size problems of every
    point (K·batch_size rows) over the same base weights. K = 1 is the same arithmetic: a
    point's greedy tokens do not depend on the others."""
    stop = sorted(stop_ids(tokenizer) if stop is None else stop)
    weights = torch.as_tensor(weights, dtype=torch.float32)               # (K, N)
    K, P = len(weights), len(problems)
    prompts = [tokenizer.encode(format_prompt(p["question"], shots)) for p in problems]
    completions, seconds = complete(model, tokenizer, prompts * K, max_new_tokens, batch_size * K,
                                    stop, STOP_STRINGS, progress,
                                    weights=weights.repeat_interleave(P, 0))
    # each point's summary carries its share of the pass's seconds
    return [score(tokenizer, problems, completions[k * P:(k + 1) * P], stop, max_new_tokens,
                  shots, seconds / K) for k in range(K)]


def print_summary(s, title):
    ci = lambda key: f"95% CI [{s[key][0]:.3f}, {s[key][1]:.3f}]"
    print(f"{title}  ({s['n']} problems, {s['shots']}-shot, greedy, {s['seconds']:.1f} s)")
    print(f"  {'strict accuracy':<18} {s['accuracy']:.3f}  {ci('accuracy_ci')}")
    print(f"  {'flexible accuracy':<18} {s['flexible_accuracy']:.3f}  {ci('flexible_ci')}")
    print(f"  {'format rate':<18} {s['format_rate']:.3f}  (strict extraction found a number)")
    print(f"  {'mean length':<18} {s['mean_tokens']:.1f} tokens, {s['truncated_rate']:.3f} hit "
          f"max_new_tokens")


def print_lm_eval_summary(s, title):
    ci = lambda key: f"95% CI [{s[key][0]:.3f}, {s[key][1]:.3f}]"
    print(f"{title}  ({s['n']} problems, lm-evaluation-harness gsm8k v3.0, {s['shots']}-shot, "
          f"greedy, {s['seconds']:.1f} s)")
    print(f"  {'strict-match':<18} {s['strict_match']:.3f}  {ci('strict_ci')}")
    print(f"  {'flexible-extract':<18} {s['flexible_extract']:.3f}  {ci('flexible_ci')}")
    print(f"  {'mean length':<18} {s['mean_tokens']:.1f} tokens")

# -----------------------------------------------------------------------------


def evaluate_adapters(model, tokenizer, problems, shots, args, max_new_tokens):
    """--adapter A B C: every adapter stacked once, scored side by side, K a pass."""
    factored.set_stacked(model, [adapters.load_factors(a, fits=model) for a in args.adapter])
    prompt_len = max(len(tokenizer.encode(format_prompt(p["question"], shots))) for p in problems)
    n = len(args.adapter)
    K = args.points_per_pass or factored.points_per_pass(model, min(args.batch_size, len(problems)),
                                                prompt_len, max_new_tokens)
    K = -(-n // -(-n // K))  # as many passes, evenly filled
    rank = max(m.rank for m in factored.lora_modules(model).values())
    print(f"{n} adapters stacked (stacked rank {rank}), {K} per pass of {args.batch_size} prompts "
          f"each")
    results, eye = [], torch.eye(n)
    for k in range(0, n, K):
        results += evaluate_points(model, tokenizer, problems, eye[k:k + K], shots,
                                   args.batch_size, max_new_tokens)
    seconds = sum(s["seconds"] for s, _ in results)
    print(f"{args.model} on {'toy' if args.toy else 'gsm8k'} {args.split} ({len(problems)} "
          f"problems, {len(shots)}-shot, greedy, {seconds:.1f} s in all)")
    print(f"{'adapter':<40} | {'accuracy':>8} | {'95% CI':>14} | {'flexible':>8} | {'format':>6}")
    for a, (s, _) in zip(args.adapter, results):
        lo, hi = s["accuracy_ci"]
        print(f"{a:<40} | {s['accuracy']:8.3f} | [{lo:.3f}, {hi:.3f}] | "
              f"{s['flexible_accuracy']:8.3f} | {s['format_rate']:6.3f}")
    return [dict(adapter=a, **r) for a, (_, rows) in zip(args.adapter, results) for r in rows]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    # what to evaluate
    add("--model", default=None, help="hub id or local folder (default with --toy: the shipped "
        "toy_base/)")
    add("--adapter", nargs="+", default=None, help="adapter folder(s) (PEFT format) to apply; "
        "several (runs/r1/step_*) are scored side by side in one batched pass, each its own "
        "accuracy; default none: the base model")
    add("--points-per-pass", type=COUNT0, default=0, help="with several adapters: how many share "
        "one generate() call (batch-size prompts each); 0 = as many as memory allows, 1 = one at "
        "a time")
    add("--toy", action="store_true", help="the toy task (and the toy base model unless --model)")
    # on which problems
    add("--data", default=None, help="GSM8K data: a folder holding {split}.jsonl (and train.jsonl "
        "for the shots), or the JSONL file of --split; default ~/.cache/rank1/gsm8k, downloaded "
        "once")
    add("--train-data", default=None, help="JSONL file of train, where the shots come from; "
        "default --data's train.jsonl when --data is a folder, else the cache")
    add("--split", default="test", choices=["train", "val", "test"], help="which split to "
        "evaluate (val: the toy task's validation split, apart from train and test)")
    add("--samples", type=COUNT0, default=0, help="also draw K completions a problem at "
        "--temperature: pass@1, pass@K and, on the toy task, the latent mode's share and the "
        "accuracy within it; 0 = greedy only")
    add("--temperature", type=NONNEGATIVE, default=1.0, help="--samples' temperature")
    add("--seed", type=SEED, default=0, help="--samples' seed: sample j of problem i is keyed "
        "by (seed, i, j)")
    add("--limit", type=COUNT0, default=0, help="first N problems only; 0 = all")
    add("--shots", type=COUNT0, default=None, help="worked examples from train before each "
        "question; default 0 (zero-shot), 5 with --harness lm-eval")
    # how
    add("--harness", default="rank1", choices=["rank1", "lm-eval"], help="rank1: this file's "
        "prompt and scoring; lm-eval: lm-evaluation-harness's gsm8k task exactly (its prompt, "
        "shots, stops and scores)")
    add("--batch-size", type=COUNT, default=None, help="prompts per generate() call; default "
        "64, 256 with --toy")
    add("--max-new-tokens", type=COUNT0, default=0, help="completion budget; 0 = 512 (GSM8K), 48 "
        "(--toy, as the trainers), 256 (--harness lm-eval, the harness's)")
    add("--out", default=None, help="write one JSON line per problem here; default none: no file")
    add("--device", default=None, help="cuda, mps or cpu; default the best available")
    args = parser.parse_args()
    exit_on_user_error(too_big="--batch-size (or --samples, --points-per-pass)")
    if args.model is None and not args.toy:
        show_rules()  # gsm8k.py's: the prompt and the rule on examples
        raise SystemExit

    stop_on_signals(": nothing written")  # --out is written at the end, in one go
    task = "toy" if args.toy else "gsm8k"
    args.batch_size = args.batch_size or (256 if args.toy else 64)
    args.model = args.model or TOY_BASE
    if args.toy and not Path(args.model).exists():
        raise user_exit(f"{args.model} not found: the toy base ships in toy_base/; rebuild one "
                        f"with `python sft.py --toy`")
    lm_eval = args.harness == "lm-eval"
    max_new_tokens = args.max_new_tokens or (TOY_NEW_TOKENS if args.toy else
                                             H.LM_EVAL_MAX_NEW_TOKENS if lm_eval else 512)
    n_shots = (H.LM_EVAL_SHOTS if lm_eval else 0) if args.shots is None else args.shots
    problems = load_task(task, args.split, data_path(args.data, args.split))
    problems = problems[:args.limit] if args.limit else problems
    if not problems:
        raise user_exit(f"{args.data or task}: no {args.split} problems to evaluate")
    if args.out:
        check_writable(args.out)  # before the evaluation, not after it
    if args.adapter:  # a shell glob (runs/r1/step_*) also matches a save cut short: step_N.tmp/
        cut = [a for a in args.adapter if a.rstrip("/").endswith(".tmp")]
        args.adapter = [a for a in args.adapter if a not in cut]
        for a in cut:
            print(f"note: {a} skipped: a save cut short, not a checkpoint")
        if not args.adapter:
            raise user_exit("--adapter: no adapter folders left after the .tmp ones")
    # shots come from train: --train-data, else a --data folder's train.jsonl; a --data file is
    # the evaluated split, never its shots
    folder = args.data and os.path.isdir(args.data)
    shots_from = args.train_data or (data_path(args.data, "train") if folder else None)
    if n_shots and args.data and shots_from is None:
        print(f"note: --data {args.data} is a file, the {args.split} split: the shots come from "
              f"the cached train split")
    train = load_task(task, "train", shots_from) if n_shots else []
    if n_shots > len(train):
        raise user_exit(f"--shots {n_shots}: the train split has {len(train)} problems")
    shots = [(p["question"], p["answer"]) for p in train[:n_shots]]

    model = load_model(args.model, device=args.device)
    tokenizer = load_tokenizer(args.model)
    if args.adapter and len(args.adapter) > 1:  # a whole run's checkpoints: stacked, one per row
        if lm_eval:
            raise user_exit("--harness lm-eval scores one adapter at a time; pass one --adapter")
        rows = evaluate_adapters(model, tokenizer, problems, shots, args, max_new_tokens)
    else:
        if args.adapter:
            adapters.load(model, args.adapter[0])
        title = f"{args.model}" + (f" + {args.adapter[0]}" if args.adapter else "") + \
            f" on {task} {args.split}"
        if lm_eval:
            summary, rows = evaluate_lm_eval(model, tokenizer, problems, train, n_shots,
                                             args.batch_size, max_new_tokens)
            print_lm_eval_summary(summary, title)
        else:
            summary, rows = evaluate(model, tokenizer, problems, shots, args.batch_size,
                                     max_new_tokens)
            print_summary(summary, title)
        if args.samples:
            mode = toy_task.in_mode if args.toy else None
            summary, counts = evaluate_samples(model, tokenizer, problems, args.samples,
                                               args.seed, args.batch_size, max_new_tokens,
                                               args.temperature, mode)
            print_samples(summary, title)
            rows = [dict(r, **{f"sampled_{k}": v for k, v in c.items() if k != "i"})
                    for r, c in zip(rows, counts)]
    if args.out:
        write_lines(args.out, [json.dumps(r) for r in rows])
        print(f"wrote {len(rows)} rows to {args.out}")
