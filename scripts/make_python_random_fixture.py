#!/usr/bin/env python3
"""Test vectors for editbench's CPython-compatible random generator (datasets::rng::PythonRandom).

Python standard library only. Writes crates/datasets/tests/fixtures/python_random.json:
  words:    the first 8 outputs of getrandbits(32) for several seeds
  shuffles: random.Random(seed).shuffle(list(range(n))), first 50 entries (all when n <= 50),
            including the reference's FixedRandomSubsetSampler case (seed 1, the 10,033 paragraphs)

    python3 scripts/make_python_random_fixture.py
"""
import json
import pathlib
import random
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/datasets/tests/fixtures/python_random.json"

words = []
for seed in [0, 1, 42, 19650218, 2**32 + 7]:
    r = random.Random(seed)
    words.append({"seed": seed, "words": [r.getrandbits(32) for _ in range(8)]})
shuffles = []
for seed, n in [(1, 10033), (1, 2000), (0, 17), (7, 1), (3, 2), (123, 100000), (2**33 + 1, 50)]:
    items = list(range(n))
    random.Random(seed).shuffle(items)
    shuffles.append({"seed": seed, "n": n, "first": items[:50]})
OUT.write_text(json.dumps({"python": sys.version.split()[0], "words": words, "shuffles": shuffles}, indent=1) + "\n")
print(f"wrote {OUT}")
