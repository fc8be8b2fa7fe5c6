"""One timing method for every row (benchmarks/cpp/bench_step.cpp does the
same in C++): two warm-up steps (the first creates the state), a batch size K
such that K steps take about `target_s`, then `reps` samples of K steps. A
sample is the mean time of one step in its batch; the result is the median of
the samples."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timing:
    median_s: float
    batch: int
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "batch": self.batch, "samples": self.samples}


def batch_size(one_step_s: float, target_s: float) -> int:
    return max(1, min(1_000_000, round(target_s / max(one_step_s, 1e-9))))


def measure(step: Callable[[], object], reps: int, target_s: float) -> Timing:
    """Times `step()` from Python."""
    step()
    step()
    t0 = time.perf_counter()
    step()
    k = batch_size(time.perf_counter() - t0, target_s)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        samples.append((time.perf_counter() - t0) / k)
    return Timing(statistics.median(samples), k, samples)


def measure_batched(run_batch: Callable[[int], float], reps: int, target_s: float) -> Timing:
    """Times with a runner that does k steps itself and returns the mean
    seconds per step (Tcl's `time` command)."""
    run_batch(1)
    run_batch(1)
    k = batch_size(run_batch(1), target_s)
    samples = [run_batch(k) for _ in range(reps)]
    return Timing(statistics.median(samples), k, samples)
