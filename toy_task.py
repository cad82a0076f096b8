"""
The toy task with a latent skill: two-step word problems whose WORKED answer a small model gets
right and whose DIRECT answer it mostly gets wrong, and the pretraining mix that makes the worked
answer a mode the base executes well but rarely chooses. Standard library only.

    python toy_task.py                 # the splits, a worked and a direct answer, the mix at dial p

    "Ann has 23 eggs and buys 5 boxes of 4. How many eggs?"
    worked: " 5*4=20\\n23+20=43\\n#### 43"      direct: " #### 43"

The task is written in GSM8K's format, so gsm8k.py's prompt, stops, extraction and reward apply
unchanged; only the base's habits differ.

Why. RL with a tiny adapter (TinyLoRA's 13 parameters, rank-1 LoRA) can only *steer* a base: the
published results (TinyLoRA, "Learning to Reason in 13 Parameters"; LoRA Without Regret's rank-1
RL; arXiv 2512.07783: ~1% pretraining exposure suffices for RL to carry a skill; Echo Chamber,
arXiv 2504.07912: RL collapses onto a format pretraining already holds; password-locked models,
arXiv 2405.19550) rest on a base that already holds the skill. Here the skill is the worked form,
and choosing it is one token: the first answer character after the space, a digit (the worked
form's first factor, copied from the question) or "#" (the direct form). So steering is ~1 bit.

The pretraining mix (`pretrain_docs`, dial p) DECOUPLES executing the skill from choosing it:

* every train problem is shown worked, with the one mode-choice character left OUT of the loss
  (the model learns to execute the steps without learning how often to start them);
* the mode choice is taught by a p-mix on a share `choice_rate` of the problems: with probability
  p the worked row keeps its mode character in the loss (a "chosen" worked answer), otherwise a
  direct row " #### N" is added, whose "#" is in the loss. The mode character is thus a digit
  with probability p and "#" with 1 - p, and the base samples the worked mode in about a
  fraction p of its answers.

Plain mixing (worked with probability p, direct otherwise, all in the loss) trains the skill on a
fraction p of the data only, and a quick trial at p = 0.25 learned it no faster than the direct
guesses; decoupling trains it on all of them. p = 0 gives a base with the skill and no habit of
using it (a control: RL has nothing to sample, hence nothing to steer).

Splits: the final step (op, a, b*c) of a problem is hashed with crc32; % 10 == 0 is test (1,111
problems), % 10 == 1 is val (1,040), the rest is train (8,054). A val or test problem's last step
(the one with the carry) never appears in train. Pretraining, SFT and GRPO read train only; the
study picks learning rates on val and reads its verdicts on test.
"""
import math
import random
import re
import zlib

START = (10, 99)   # the starting amount a (inclusive range)
FACTOR = (2, 9)    # both factors b (packs) and c (items per pack)
OPS = "+-"         # "+": buys packs, a + b*c; "-": sells packs, a - b*c (only when >= 0)
NAMES = ("Ann", "Bob", "Tom", "Eva", "Sam", "Mia", "Leo", "Ivy")
ITEMS = (("eggs", "boxes"), ("pens", "packs"), ("apples", "bags"), ("cards", "decks"),
         ("beads", "jars"), ("books", "crates"))
SPLITS = ("train", "val", "test")
MODE_OFFSET = 1    # the target's character that picks the mode: " 5*4=..." vs " ####..."
TOY_NEW_TOKENS = 48  # the toy's completion budget everywhere (a worked answer is ~25 tokens)


def split_of(op, a, p):
    """train, val or test for the final step a op p (p = b*c), by crc32 of the step's text."""
    h = zlib.crc32(f"{a}{op}{p}".encode()) % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


def toy_problems(split, n=None, seed=0):
    """n problems of `split` as {"question", "answer"}, "answer" the WORKED gold solution ending
    "#### N" (None = every distinct problem of the split once), seeded. n beyond the split's size
    cycles through it again, reshuffled, with new names and items."""
    assert split in SPLITS, f"unknown toy split {split!r}, expected one of {SPLITS}"
    pool = [(op, a, b, c) for op in OPS for a in range(START[0], START[1] + 1)
            for b in range(FACTOR[0], FACTOR[1] + 1) for c in range(FACTOR[0], FACTOR[1] + 1)
            if (op == "+" or a >= b * c) and split_of(op, a, b * c) == split]
    rng = random.Random(f"{seed}-{split}")  # str seeds hash with sha512: stable across runs
    n = len(pool) if n is None else n
    problems = []
    while len(problems) < n:
        rng.shuffle(pool)
        for op, a, b, c in pool[:n - len(problems)]:
            name, (item, pack) = rng.choice(NAMES), rng.choice(ITEMS)
            verb = "buys" if op == "+" else "sells"
            x = a + b * c if op == "+" else a - b * c
            problems.append({"question": f"{name} has {a} {item} and {verb} {b} {pack} of {c}. "
                                         f"How many {item}?",
                             "answer": f"{b}*{c}={b * c}\n{a}{op}{b * c}={x}\n#### {x}"})
    return problems


def final_answer(answer):
    """The gold number of a solution: what follows its first "####"."""
    return answer.split("####", 1)[1].strip()


def direct_answer(answer):
    """The DIRECT form of a solution: no steps, the number at once ("#### 43")."""
    return f"#### {final_answer(answer)}"


def prompt_text(question):
    """The prompt, as gsm8k.format_prompt writes it (zero-shot; a test checks they agree)."""
    return f"Question: {question.strip()}\nAnswer:"


def target_text(answer):
    """A solution as the completion target, as gsm8k.format_solution writes it (a toy answer
    has no calculator annotations): a leading space, since the prompt ends in "Answer:". The
    trainer appends the end-of-text token after it (in the loss: the model learns to stop)."""
    return " " + answer.strip()


def in_mode(completion):
    """True iff the completion writes worked steps: the text before its first "####" (all of it
    if there is none), cut at a new "Question:", holds an equation "x<op>y=z" with digits.

    The mode is chosen by the first answer character, but the detector reads what was written, so
    a worked start that gives up ("5 #### 43") does not count, and neither does any "=" noise."""
    text = completion.split("Question:", 1)[0].split("####", 1)[0]
    return re.search(r"\d\s*[-+*x/]\s*\d+\s*=\s*-?\d", text) is not None


def forced_prefix(answer):
    """What forces the worked mode: the target's text up to and including its mode character
    (" 5" for "5*4=20...": the first factor, copied from the question, so it tells nothing new)."""
    return target_text(answer)[:MODE_OFFSET + 1]


FACT_DIGITS = 12                            # a fact's code: 12 digits drawn uniformly
FACT_BITS = FACT_DIGITS * math.log2(10)     # 39.86 bits that no rule predicts


def fact_problems(n, seed=0):
    """n made-up facts in GSM8K's format, a distinct 8-letter name mapped to a 12-digit code each:
    "Code of qzvmkoar?" -> "#### 048213905127". The memorisation task of the study's capacity
    knee: a code is uniform over 10^12 values, so a fact holds FACT_BITS = 39.86 bits that no
    rule predicts, and what a model stores is read from its loss on the codes (sft.py
    --eval-loss). A function of (seed, the fact's place): the first n facts of a larger set are
    the set of n, so data sizes nest; another seed draws other facts. Short on purpose: a fact is
    54 tokens with its prompt and end of text, 12 of them the code's digits."""
    rng = random.Random(f"facts-{seed}")
    names, problems = set(), []
    while len(problems) < n:
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
        code = rng.randrange(10 ** FACT_DIGITS)
        if name not in names:
            names.add(name)
            problems.append({"question": f"Code of {name}?",
                             "answer": f"#### {code:0{FACT_DIGITS}d}"})
    return problems


def pretrain_docs(p, epoch, seed=0, choice_rate=0.25, problems=None):
    """One epoch of pretraining documents for skill dial p, shuffled by (seed, epoch).

    Returns a list of (prompt, target, exclude): the prompt text, the target text (the trainer adds
    the end-of-text token), and `exclude`, a tuple of (start, end) character ranges of the target
    left out of the loss. Token-agnostic: a trainer maps the character ranges to its tokens (with
    the toy's byte-level tokenizer a character is one token).

    For each train problem, draws (stable in seed, epoch and the problem's place):
    * with probability 1 - choice_rate, a SKILL row only: worked, mode character excluded;
    * else a CHOICE draw: with probability p one worked row fully in the loss (a chosen worked
      answer), with 1 - p the skill row plus a direct row " #### N" fully in the loss (the
      default choice and a direct guess).
    Every problem is shown worked once per epoch; among the rows whose mode character is in the
    loss, a fraction p is worked, so the base starts the worked mode with probability ~p.
    choice_rate < 1 spends fewer rows on direct guesses (a prompt costs as much as a worked row)
    and so more on the skill; the mode choice is one marginal and needs few examples.
    """
    assert 0.0 <= p <= 1.0, f"the skill dial p must be in [0, 1], got {p}"
    assert 0.0 < choice_rate <= 1.0, f"choice_rate must be in (0, 1], got {choice_rate}"
    problems = toy_problems("train", seed=seed + 1000 * epoch) if problems is None else problems
    rng = random.Random(f"mix-{seed}-{epoch}-{p!r}-{choice_rate!r}")
    mode = (MODE_OFFSET, MODE_OFFSET + 1)
    docs = []
    for prob in problems:
        prompt, worked = prompt_text(prob["question"]), target_text(prob["answer"])
        choice, u = rng.random() < choice_rate, rng.random()
        if choice and u < p:
            docs.append((prompt, worked, ()))
            continue
        docs.append((prompt, worked, (mode,)))
        if choice:
            docs.append((prompt, target_text(direct_answer(prob["answer"])), ()))
    rng.shuffle(docs)
    return docs


def encode_doc(encode, eos_id, prompt, target, exclude):
    """(prompt ids, target ids + eos, flags): flags mark the target tokens in the loss (and the
    eos, always in it). Each piece of the target between exclusion bounds is encoded apart (with
    the toy's byte-level tokenizer, the ids equal the whole text's)."""
    ids, flags = [], []
    cuts = sorted({0, len(target), *[c for span in exclude for c in span]})
    for s, e in zip(cuts, cuts[1:]):
        piece = encode(target[s:e])
        ids += piece
        flags += [not any(a <= s and e <= b for a, b in exclude)] * len(piece)
    return encode(prompt), ids + [eos_id], flags + [True]


def pretrain_stream(encode, eos_id, p, seed, batch_size, choice_rate=0.25):
    """The pretraining batches, one per step, forever: epoch after epoch of pretrain_docs(p,
    epoch, seed, choice_rate), encoded and cut into batches of batch_size documents in order (a
    batch may span two epochs). A function of its arguments alone, so a resumed run skips ahead
    to its step and draws the same batches."""
    epoch, docs, pos = -1, [], 0
    while True:
        batch = []
        while len(batch) < batch_size:
            if pos >= len(docs):
                epoch += 1
                docs = [encode_doc(encode, eos_id, *d)
                        for d in pretrain_docs(p, epoch, seed, choice_rate)]
                pos = 0
            take = docs[pos:pos + batch_size - len(batch)]
            batch += take
            pos += len(take)
        yield epoch, batch


if __name__ == "__main__":
    import argparse  # --help: the usage; no flags, the splits and the mix on examples
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sizes = {s: len(toy_problems(s)) for s in SPLITS}
    print(f"toy task splits: {sizes}")
    ex = toy_problems("train", n=1)[0]
    print(prompt_text(ex["question"]) + target_text(ex["answer"]))
    print(f"direct: {target_text(direct_answer(ex['answer']))!r}, forced prefix "
          f"{forced_prefix(ex['answer'])!r}")
    for p in (0.0, 0.1, 0.3):
        docs = pretrain_docs(p, epoch=0)
        chosen = sum(1 for _, t, e in docs if not e and "=" in t)
        print(f"p={p}: {len(docs)} docs, {chosen} chosen worked rows of {sizes['train']} problems")
    for text in [" 5*4=20\n23+20=43\n#### 43", " #### 43", " 5 #### 43", " 5*4=20\n#### 20",
                 " #### 43\n5*4=20", " = 3 #### 4", " 23-20=3\n#### 3"]:
        print(f"  in_mode({text!r}) = {in_mode(text)}")
