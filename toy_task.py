"""
The toy world's task: two-step word problems in GSM8K's format, short enough for a byte-level
model, generated rather than read.

    python eval_gsm8k.py               # shows a toy prompt and its target

"Ann has 23 eggs and buys 5 boxes of 4. How many eggs?" -> " 5*4=20\\n23+20=43\\n#### 43".
The same prompt, extraction and reward as GSM8K apply (eval_gsm8k.py). Difficulty knobs: the
operand ranges and the operations. The product is a 64-fact table, the second step is two-digit
addition or subtraction with carries, so accuracy grows fact by fact.
"""
import random
import zlib

TOY_START = (10, 99)  # the starting amount a (inclusive range)
TOY_FACTOR = (2, 9)   # both factors b (packs) and c (items per pack)
TOY_OPS = "+-"        # "+": buys packs, a + b*c; "-": sells packs, a - b*c (only when >= 0)
TOY_TEST_EVERY = 10   # 1 in 10 of the final steps (op, a, b*c) is held out for test
TOY_NAMES = ("Ann", "Bob", "Tom", "Eva", "Sam", "Mia", "Leo", "Ivy")
TOY_ITEMS = (("eggs", "boxes"), ("pens", "packs"), ("apples", "bags"), ("cards", "decks"),
             ("beads", "jars"), ("books", "crates"))


def toy_split(op, a, p, test_every=TOY_TEST_EVERY):
    """train or test for the final step a op p: a stable hash (crc32), so splits never overlap
    and a test problem's last step (the one that needs the carry) never appears in train."""
    return "test" if zlib.crc32(f"{a}{op}{p}".encode()) % test_every == 0 else "train"


def toy_problems(split, n=None, seed=0, start=TOY_START, factor=TOY_FACTOR, ops=TOY_OPS):
    """n toy problems of `split` (None = every distinct problem of the split once), seeded. n
    beyond the split's size cycles through it again, reshuffled, with new names and items."""
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
            problems.append({
                "question": f"{name} has {a} {item} and {verb} {b} {pack} of {c}. How many {item}?",
                "answer": f"{b}*{c}={b * c}\n{a}{op}{b * c}={x}\n#### {x}"})
    return problems
