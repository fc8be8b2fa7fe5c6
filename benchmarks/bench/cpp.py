"""Builds benchmarks/cpp against the installed tcltorch (as examples/cpp is
built) and drives the program: one long-lived process answers timing jobs,
so that C++ rows are timed interleaved with the Python rows."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .timing import Plan, Timing

BENCH = Path(__file__).resolve().parents[1]
SOURCE = BENCH / "cpp"


def cmake_prefix() -> str:
    return subprocess.run([sys.executable, "-m", "tcltorch", "cmake-prefix"], check=True,
                          capture_output=True, text=True).stdout.strip()


def build(build_dir: Path, log=print) -> Path:
    """Configures (once per tcltorch prefix) and builds; returns the program."""
    prefix = cmake_prefix()
    stamp = build_dir / "tcltorch-prefix.txt"
    if build_dir.exists() and (not stamp.exists() or stamp.read_text() != prefix):
        shutil.rmtree(build_dir)  # built against another install: start over
    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmd = ["cmake", "-S", str(SOURCE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_PREFIX_PATH={prefix}"]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        cmd += ["-G", "Ninja"]
    steps = [["cmake", "--build", str(build_dir)]]
    if not (build_dir / "CMakeCache.txt").exists():
        steps.insert(0, cmd)  # later builds re-run CMake themselves when needed
    for step in steps:
        r = subprocess.run(step, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
            raise RuntimeError(f"building the C++ benchmark failed: {' '.join(step)}")
    stamp.write_text(prefix)
    program = build_dir / "bench_step"
    log(f"C++ benchmark: {program}")
    return program


class Runner:
    """A bench_step process reading jobs on stdin, one JSON line per job."""

    def __init__(self, program: Path):
        self.proc = subprocess.Popen([str(program), "jobs"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def job(self, kind: str, label: str, threads: int, plan: Plan, spec: str) -> dict:
        self.proc.stdin.write(f"{kind} {label} {threads} {plan.reps} {plan.min_reps} "
                              f"{plan.target_s * 1e3:.6g} {plan.budget_s * 1e3:.6g} {spec}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_step exited ({self.proc.wait()}) on {kind} {spec}")
        return json.loads(line)

    def time(self, kind: str, label: str, threads: int, plan: Plan, spec: str) -> Timing:
        r = self.job(kind, label, threads, plan, spec)
        return Timing(r["median_s"], r["batch"], r["samples"])

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
