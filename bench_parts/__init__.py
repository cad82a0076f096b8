"""
The bench's parts (bench.py runs them):

    measure.py      timing, the physical floors, random models of a real shape, the peer's step
    acceptance.py   the one-shot GPU acceptance run
    compare.py      the toy world's commands side by side with an earlier commit
"""
