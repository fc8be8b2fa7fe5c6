"""Builds benchmarks/cpp against the installed tcltorch (as examples/cpp is
built) and drives the program: one long-lived process holds the C++ rows, so
that they are timed interleaved with the Python and Tcl rows."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


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
    """A `bench_step rows` process: holds parameter sets and optimizers by id
    and times batches of steps on request."""

    def __init__(self, program: Path):
        self.proc = subprocess.Popen([str(program), "rows"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.next_id = 0

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"bench_step exited ({self.proc.wait()}) on: {line}")
        return json.loads(answer)

    def open(self, kind: str, threads: int, spec: str) -> "CppRow":
        self.next_id += 1
        row = CppRow(self, f"r{self.next_id}")
        self.ask(f"open {row.id} {kind} {threads} {spec}")
        return row

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


class CppRow:
    """One row timed in the C++ process (the C++ door or the floor)."""

    process = "cpp"

    def __init__(self, runner: Runner, row_id: str):
        self.runner, self.id = runner, row_id

    def run_batch(self, k: int) -> float:
        return self.runner.ask(f"run {self.id} {k}")["s"]

    def close(self):
        self.runner.ask(f"close {self.id}")
