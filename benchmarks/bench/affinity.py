"""Which CPUs the timed processes may run on.

With fewer threads than cores, the rows of a thread count run on the first
`threads` CPUs, the Python process and the C++ benchmark process alike, every
thread of both (a process's affinity is per thread on Linux, and threads made
later inherit it). Left free, the scheduler moves a process that waited on
the other one's pipe to whichever core is idle: measured on the many-small set
at 1 thread (2026-12-03), the C++ door's samples spread over 1.2-2.4 ms and
their median over 1.24-1.74 ms from run to run; pinned, 1.21-1.44 ms and
1.24-1.25 ms.
"""
from __future__ import annotations

import os
from pathlib import Path


def allowed() -> list[int]:
    """The CPUs this process may use now, in order."""
    return sorted(os.sched_getaffinity(0))


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return [pid]


def pin(pids, cpus) -> None:
    """Every thread of the processes `pids` (0: this one) to `cpus`."""
    cpus = set(cpus)
    for pid in pids:
        for tid in _tasks(os.getpid() if pid == 0 else pid):
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # the thread has just ended
                pass


def cpus_for(threads: int, cpus: list[int]) -> list[int]:
    """The first `threads` of `cpus` (all of them if there are no more)."""
    return cpus[:threads] if 0 < threads < len(cpus) else list(cpus)
