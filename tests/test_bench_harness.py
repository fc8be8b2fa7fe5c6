"""The benchmark's timing protocol (benchmarks/bench/timing.py) and CPU
pinning (benchmarks/bench/affinity.py): what they do to rows and processes,
not how fast anything is."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import affinity  # noqa: E402
from bench.timing import Plan, batch_and_reps, measure_rows  # noqa: E402


class SleepRow:
    """A row whose steps sleep `step_s`; it records the batch sizes asked of it."""

    def __init__(self, process: str, step_s: float):
        self.process = process
        self.step_s = step_s
        self.calls: list[int] = []

    def run_batch(self, k: int) -> float:
        self.calls.append(k)
        t0 = time.perf_counter()
        for _ in range(k):
            time.sleep(self.step_s)
        return (time.perf_counter() - t0) / k


def test_each_sample_follows_untimed_warm_up_steps():
    plan = Plan(reps=3, min_reps=2, target_s=0.004, budget_s=1.0, settle_s=0, warm_s=0.002)
    rows = {"a": SleepRow("x", 0.001), "b": SleepRow("y", 0.001)}
    timings = measure_rows(rows, plan)
    for key, row in rows.items():
        k, reps, warm = batch_and_reps(row.step_s, plan)
        assert row.calls[:2] == [1, 1]  # the state, then the sizing step
        pairs = row.calls[2:]
        assert len(pairs) == 2 * len(timings[key].samples)
        # Warm-up batches are never samples: each timed batch follows one.
        assert all(w >= 1 for w in pairs[0::2])
        assert all(b == timings[key].batch for b in pairs[1::2])
        assert len(timings[key].samples) == reps


def test_batch_and_reps_counts_warm_up_in_the_budget():
    plan = Plan(reps=15, min_reps=5, target_s=0.05, budget_s=1.5, warm_s=0.008)
    k, reps, warm = batch_and_reps(0.2, plan)  # a slow row: one step a batch
    assert (k, warm) == (1, 1)
    assert reps == 5  # 1.5 s / (2 x 0.2 s) = 3, raised to min_reps
    k, reps, warm = batch_and_reps(0.001, plan)
    assert (k, warm, reps) == (50, 8, 15)


def test_pin_moves_every_thread_of_a_process_and_back():
    cpus = affinity.allowed()
    one = affinity.cpus_for(1, cpus)
    assert one == cpus[:1]
    assert affinity.cpus_for(len(cpus) + 3, cpus) == cpus
    # A real child with several threads, the way the C++ benchmark has OpenMP's.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import threading, time\n"
         "ts = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(3)]\n"
         "[t.start() for t in ts]\n"
         "print('up', flush=True)\n"
         "time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    worker = threading.Thread(target=time.sleep, args=(0.5,))
    worker.start()
    try:
        assert child.stdout.readline().strip() == "up"
        tasks = sorted(int(t) for t in os.listdir(f"/proc/{child.pid}/task"))
        assert len(tasks) >= 4
        affinity.pin([0, child.pid], one)
        for tid in tasks:
            assert sorted(os.sched_getaffinity(tid)) == one
        assert sorted(os.sched_getaffinity(worker.native_id)) == one
        affinity.pin([0, child.pid], cpus)
        for tid in tasks:
            assert sorted(os.sched_getaffinity(tid)) == cpus
        assert sorted(os.sched_getaffinity(0)) == cpus
    finally:
        affinity.pin([0], cpus)
        child.kill()
        child.wait()
        worker.join()
