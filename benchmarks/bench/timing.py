"""One timing method for every row, whichever door it goes through.

A row is anything with `run_batch(k)`: it takes k optimizer steps and returns
the mean seconds per step, timed where the steps run (Python's perf_counter
around a loop of `opt.step()`, Tcl's `time` command, std::chrono in
benchmarks/cpp/bench_step.cpp). The rows of one parameter set are timed
together, round-robin:

1. each row takes one warm-up step (it creates the optimizer state) and one
   timed step, which sizes its batch: K steps take about `target_s`;
2. then rounds: in each round every row takes one sample, a batch of K steps;
   a row takes `reps` samples, or fewer if it is slow (as many as fit in
   `budget_s`, but at least `min_reps`). Before each sample the row takes
   untimed warm-up steps (about `warm_s`, at least one): after anything else
   has run for a while, here even 20 ms of sleep or of a busy loop, the
   first few steps of a row are slow (many-small set at 1 thread: 2.3, 1.9,
   1.4 ms, then 1.25 ms), and that penalty would fall on whichever rows
   follow a process switch rather than on the step itself.

A sample is the mean time of one step in its batch; a row's result is the
median of its samples. Where the next batch runs in another process than the
last one (the C++ rows run in their own), the run first pauses `settle_s`:
OpenMP's idle threads spin for several milliseconds after a parallel region
before they sleep, and the spinning threads of one process would take the
cores from the next process's first steps (measured here: the floor at 2
threads 14.9 ms right after a Python row, 7.9 ms after a 10 ms pause). Interleaving the rows spreads any disturbance from
other processes over all of them, instead of hitting whichever row ran at the
time; and samples of the same round are paired, so that the difference of two
rows (the Tcl door's call overhead over the C++ door's) is the median of
per-round differences.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Protocol


class Row(Protocol):
    process: str  # which process runs the steps

    def run_batch(self, k: int) -> float: ...


@dataclass(frozen=True)
class Plan:
    reps: int = 15          # samples, at most
    min_reps: int = 5       # samples, at least
    # Duration of one sample (a batch of K steps). Long enough to hold several
    # steps of the many-small set: its steps come in two modes here (about 4
    # and 7 ms at 1 thread, as the other rows' data leave the cache), and a
    # sample of two steps fell in one mode or the other, moving its median
    # by a third between runs of the same build.
    target_s: float = 0.05
    budget_s: float = 1.5   # time for all samples of a slow row
    settle_s: float = 0.02  # pause before a batch in another process
    warm_s: float = 0.008   # untimed steps before each sample


@dataclass
class Timing:
    median_s: float
    batch: int
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "batch": self.batch, "samples": self.samples}


def batch_and_reps(one_step_s: float, plan: Plan) -> tuple[int, int, int]:
    """Steps per sample, samples, warm-up steps before each sample."""
    one = max(one_step_s, 1e-9)
    k = max(1, min(1_000_000, round(plan.target_s / one)))
    warm = max(1, min(1_000_000, round(plan.warm_s / one)))
    reps = max(plan.min_reps, min(plan.reps, int(plan.budget_s / ((k + warm) * one))))
    return k, reps, warm


def measure_rows(rows: dict[str, Row], plan: Plan) -> dict[str, Timing]:
    """Times the rows round-robin; returns a Timing per row."""
    last = [None]

    def run(row: Row, k: int) -> float:
        if last[0] is not None and last[0] != row.process:
            time.sleep(plan.settle_s)
        last[0] = row.process
        return row.run_batch(k)

    sizes = {}
    for key, row in rows.items():
        run(row, 1)  # creates the state
        sizes[key] = batch_and_reps(run(row, 1), plan)
    samples: dict[str, list[float]] = {key: [] for key in rows}
    for r in range(max((reps for _, reps, _ in sizes.values()), default=0)):
        for key, row in rows.items():
            k, reps, warm = sizes[key]
            if r < reps:
                run(row, warm)
                samples[key].append(run(row, k))
    return {key: Timing(statistics.median(s), sizes[key][0], s) for key, s in samples.items()}
