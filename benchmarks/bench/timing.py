"""One timing method for every row (benchmarks/cpp/bench_step.cpp does the
same in C++):

1. one warm-up step: it creates the optimizer state;
2. one timed step, which sizes the batch: K steps take about `target_s`;
3. samples of K steps each: `reps` of them, or fewer for slow rows (as many as
   fit in `budget_s`, but at least `min_reps`).

A sample is the mean time of one step in its batch; the result is the median
of the samples."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Plan:
    reps: int = 15          # samples, at most
    min_reps: int = 5       # samples, at least
    target_s: float = 0.01  # duration of one sample (a batch of K steps)
    budget_s: float = 1.5   # time for all samples of a slow row


@dataclass
class Timing:
    median_s: float
    batch: int
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "batch": self.batch, "samples": self.samples}


def batch_and_reps(one_step_s: float, plan: Plan) -> tuple[int, int]:
    one = max(one_step_s, 1e-9)
    k = max(1, min(1_000_000, round(plan.target_s / one)))
    reps = max(plan.min_reps, min(plan.reps, int(plan.budget_s / (k * one))))
    return k, reps


def measure_batched(run_batch: Callable[[int], float], plan: Plan) -> Timing:
    """`run_batch(k)` does k steps and returns the mean seconds per step."""
    run_batch(1)
    k, reps = batch_and_reps(run_batch(1), plan)
    samples = [run_batch(k) for _ in range(reps)]
    return Timing(statistics.median(samples), k, samples)


def measure(step: Callable[[], object], plan: Plan) -> Timing:
    """Times `step()` from Python."""

    def run_batch(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        return (time.perf_counter() - t0) / k

    return measure_batched(run_batch, plan)
