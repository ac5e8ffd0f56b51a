"""The same fine-tuning run with several seeds, reported as median and interquartile range.

One small fine-tuning run is noisy: on a few thousand examples, two seeds of the same recipe
differ by a point or two of accuracy. Comparing recipes on one seed each compares noise. So
``bertkit finetune --seeds 0,1,2`` runs the configuration once per seed and reports, for every
number of the final evaluation, the median and the interquartile range (IQR = Q3 - Q1, with
numpy's linear-interpolation percentiles) over the seeds.

The output folder holds one complete fine-tuned folder per seed (``seed-0/``, ``seed-1/`` ...),
``seeds.json`` (every seed's numbers and the summary) and ``seeds.txt`` (the table). It is one
output: written into ``OUT.partial`` and moved in when every seed has finished.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertkit.outputs import output_folder
from bertkit.tasks.evaluate import write_json
from bertkit.training.finetune import FinetuneConfig, FinetuneResult, run_finetuning
from bertkit.training.trainer import TrainingConfig

SEEDS_FILE = "seeds.json"
SEEDS_TABLE = "seeds.txt"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a ValueError for anything else (repeated seeds included)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") \
            from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {text!r}")
    return seeds


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (numpy's linear percentiles), IQR, min and max of ``values``."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(min(values)), "max": float(max(values))}


def summarize_seeds(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """``{split: {metric: spread}}`` over the seeds of ``per_seed`` ({seed: metrics.json
    content}), for every number every seed reports (tables and baselines left out)."""
    summary: dict[str, dict[str, dict]] = {}
    runs = list(per_seed.values())
    for split in runs[0]:
        names = [k for k, v in runs[0][split].items() if _is_number(v)
                 and all(_is_number(run.get(split, {}).get(k)) for run in runs)]
        summary[split] = {name: spread([run[split][name] for run in runs]) for name in names}
    return summary


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SeedsResult:
    """What :func:`run_seeds` returns: each seed's run and the summary over seeds."""

    out_dir: str
    runs: dict[int, FinetuneResult]
    summary: dict[str, dict[str, dict]]


def run_seeds(cfg: FinetuneConfig, training: TrainingConfig, seeds: Sequence[int],
              overwrite: bool = False) -> SeedsResult:
    """Fine-tune ``cfg`` once per seed into ``training.out_dir/seed-<s>`` and write the
    summary (module docstring). Returns the runs and ``{split: {metric: spread}}``."""
    if not seeds:
        raise ValueError("run_seeds needs at least one seed")
    inputs = {"--model": cfg.model, "--train": cfg.train, "--dev": cfg.dev, "--test": cfg.test}
    with output_folder(training.out_dir, inputs=inputs, overwrite=overwrite,
                       resumable=False) as staging:
        runs = {}
        for seed in seeds:
            print(f"\n=== seed {seed} ({len(runs) + 1} of {len(seeds)}) ===")
            seed_out = os.path.join(staging, f"seed-{seed}")
            runs[seed] = run_finetuning(cfg, dataclasses.replace(training, out_dir=seed_out,
                                                                 seed=seed))
        per_seed = {seed: run.metrics for seed, run in runs.items()}
        summary = summarize_seeds(per_seed)
        numbers = {seed: {split: {k: v for k, v in m.items() if _is_number(v)}
                          for split, m in metrics.items()} for seed, metrics in per_seed.items()}
        write_json(os.path.join(staging, SEEDS_FILE),
                   {"seeds": list(seeds), "per_seed": numbers, "summary": summary})
        table = seeds_table(summary, len(seeds))
        with open(os.path.join(staging, SEEDS_TABLE), "w", encoding="utf-8") as f:
            f.write(table + "\n")
    out = training.out_dir
    runs = {seed: dataclasses.replace(run, out_dir=os.path.join(out, f"seed-{seed}"))
            for seed, run in runs.items()}
    print("\n" + table)
    return SeedsResult(out, runs, summary)


def seeds_table(summary: dict[str, dict[str, dict]], n_seeds: int) -> str:
    """The summary as a text table: split, metric, median, IQR, min..max."""
    lines = [f"{n_seeds} seeds: median and interquartile range (Q3 - Q1)",
             f"{'split':<6} {'metric':<14} {'median':>9} {'IQR':>9}   min .. max"]
    for split, metrics in summary.items():
        for name, s in metrics.items():
            lines.append(f"{split:<6} {name:<14} {s['median']:>9.4f} {s['iqr']:>9.4f}   "
                         f"{s['min']:.4f} .. {s['max']:.4f}")
    return "\n".join(lines)
