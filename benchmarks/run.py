"""The Adafactor step, side by side, in one run: `make bench`, or

    .venv/bin/python benchmarks/run.py            # the full run, ~15 minutes
    .venv/bin/python benchmarks/run.py --smoke    # the same code paths, tiny sizes

Times one optimizer step of tcltorch through its three doors (C++, Python, Tcl),
of torch.optim.Adafactor (for-loop and foreach), transformers' and timm's
Adafactor, of torch.optim.AdamW(fused=True) as the speed reference, and of a
memory-bandwidth floor; on a transformer-like, a conv-like, a many-small-tensors
and a one-tiny-tensor set, with 2 and 1 threads, and over a size sweep 1M..64M.
Measures, in a fresh process per implementation, the peak memory a step adds.
Then a whole training step per optimizer (benchmarks/training_step.py: peak
memory and time of forward + backward + step of a transformer-like model) and
the char-LM training step from Tcl and Python (benchmarks/charlm.py).
Prints the tables and the targets, writes the results as JSON
(build/bench/results.json) and docs/performance.md with its plots
(docs/performance/*.png). See docs/performance.md for the method.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from bench import affinity, cpp, distributed, report, training  # noqa: E402
from bench.impls import Impl, python_impls  # noqa: E402
from bench.sets import FULL, FULL_SWEEP, SMOKE, SMOKE_SWEEP, clone  # noqa: E402
from bench.timing import Plan, measure_rows  # noqa: E402

MAIN_SETS = ["transformer", "conv", "small", "tiny"]
# Rows of the size sweep (the Tcl door runs the C++ door's code: it is timed
# on the other sets, where its call overhead shows).
SWEEP_IMPLS = ["cpp", "py_C", "py", "torch_loop", "torch_foreach", "transformers", "timm",
               "adamw_fused", "floor"]
# Peak memory is measured on these sets (the target is on the first).
PEAK_SETS = ["transformer", "conv"]
# --smoke measures only these (and the C++ door) on the first set, to stay quick.
SMOKE_PEAK_IMPLS = ["py_C", "tcl", "adamw_fused"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ machine
def cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWatch:
    """The share of the machine's CPU time that processes other than this one
    and its children (the live C++ benchmark process included) take between
    start() and share()."""

    def __init__(self, pids=()):
        self.pids = list(pids)
        self.start()

    def own(self) -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)  # children reaped so far
        return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
                + sum(process_cpu_seconds(p) for p in self.pids))

    def start(self) -> None:
        self.busy0, self.total0 = cpu_busy_jiffies()
        self.own0 = self.own()

    def share(self) -> float:
        busy, total = cpu_busy_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        capacity = (total - self.total0) / hz
        if capacity <= 0:
            return 0.0
        other = (busy - self.busy0) / hz - (self.own() - self.own0)
        return min(1.0, max(0.0, other / capacity))


class QuietGate:
    """Before each parameter set: waits until other processes take under 10%
    of the CPU (over half a second), spending at most `budget_s` in all."""

    def __init__(self, budget_s: float, pids=()):
        self.left = budget_s
        self.pids = list(pids)
        self.total = 0.0

    def wait(self) -> None:
        if self.left <= 0:
            return
        t0 = time.time()
        while True:
            watch = CpuWatch(self.pids)
            time.sleep(0.5)
            busy = watch.share()
            spent = time.time() - t0
            if busy < 0.1 or spent >= self.left:
                break
            log(f"  waiting for a quiet machine ({100 * busy:.0f} % busy; "
                f"{self.left - spent:.0f} s of waiting left)")
            time.sleep(min(2.0, self.left - spent))
        spent = time.time() - t0
        self.left = max(0.0, self.left - spent)
        self.total += spent


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    import tcltorch
    from tcltorch import _C

    info["torch"] = torch.__version__
    info["tcltorch"] = tcltorch.__version__
    info["tcltorch_cpu_capability"] = _C._cpu_capability()
    info["aten_parallel"] = torch.__config__.parallel_info().splitlines()[-1].strip()
    for mod in ("transformers", "numpy", "matplotlib"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    return info


# ------------------------------------------------------------------ runs
class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.sets = SMOKE if self.smoke else FULL
        self.sweep = SMOKE_SWEEP if self.smoke else FULL_SWEEP
        self.threads = [int(t) for t in args.threads.split(",")]
        self.plan = (Plan(reps=3, min_reps=2, target_s=0.002, budget_s=0.05) if self.smoke
                     else Plan(reps=args.reps, min_reps=min(5, args.reps)))
        self.times: list[dict] = []
        self.other_share: dict[str, float] = {}  # "set/threads" -> share
        self.gate = QuietGate(0)
        self.py = python_impls()
        self.runner = None

    def impls(self) -> list[Impl]:
        """All rows in table order: the C++ door, the Python rows, the floor."""
        built = self.runner is not None
        reason = "" if built else "C++ benchmark not built (--no-cpp)"
        return [Impl("cpp", "tcltorch::Adafactor::step (C++ door)", "ours", external=built,
                     reason=reason),
                *self.py,
                Impl("floor", "bandwidth floor (3 G reads + P read/write)", "floor",
                     external=built, reason=reason)]

    def time_set(self, pset, threads: int, keys=None):
        """Times the rows (all available, or those in `keys`) on one set."""
        base = pset.make()
        self.gate.wait()
        t0 = time.time()
        watch = CpuWatch(self.gate.pids)
        rows = {}
        for impl in self.impls():
            if not impl.available or (keys is not None and impl.key not in keys):
                continue
            if impl.external:
                kind = "time" if impl.key == "cpp" else "floor"
                rows[impl.key] = self.runner.open(kind, threads, pset.spec)
            else:
                rows[impl.key] = impl.open(clone(base))
        del base
        try:
            # One thread: no OpenMP workers spin, and a pause only idles the
            # core (the next steps then run slow for ~20 ms; see timing.py).
            plan = self.plan if threads > 1 else dataclasses.replace(self.plan, settle_s=0)
            timings = measure_rows(rows, plan)
        finally:
            for row in rows.values():
                row.close()
            del rows
            gc.collect()
        other = watch.share()
        self.other_share[f"{pset.key}/{threads}"] = round(other, 3)
        for key, t in timings.items():
            self.times.append({"set": pset.key, "threads": threads, "impl": key, **t.as_dict()})
        cells = "  ".join(f"{k} {report.fmt_time(t.median_s)}" for k, t in timings.items())
        log(f"  {pset.key:<12} threads={threads} ({time.time() - t0:.0f} s, others "
            f"{100 * other:.0f} % CPU): {cells}")

    def run_times(self):
        # --sets and --impls restrict a run to some rows (no size sweep).
        sets = self.args.sets.split(",") if self.args.sets else MAIN_SETS
        keys = set(self.args.impls.split(",")) if self.args.impls else None
        pids = [0] + ([self.runner.proc.pid] if self.runner is not None else [])
        cpus = affinity.allowed()
        try:
            for threads in self.threads:
                torch.set_num_threads(threads)
                affinity.pin(pids, affinity.cpus_for(threads, cpus))
                for key in sets:
                    self.time_set(self.sets[key], threads, keys)
                for pset in self.sweep if not self.args.sets else ():
                    self.time_set(pset, threads,
                                  [k for k in SWEEP_IMPLS if keys is None or k in keys])
        finally:
            affinity.pin(pids, cpus)
            torch.set_num_threads(self.threads[0])

    def run_peaks(self, program) -> list[dict]:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        jobs = []
        for set_key in PEAK_SETS[:1] if self.smoke else PEAK_SETS:
            spec = self.sets[set_key].spec
            if program is not None:
                jobs.append((set_key, "cpp", [str(program), "peak", spec]))
            for impl in self.py:
                if impl.available and (not self.smoke or impl.key in SMOKE_PEAK_IMPLS):
                    jobs.append((set_key, impl.key, [sys.executable,
                                                     str(HERE / "peak_memory.py"), impl.key,
                                                     spec]))

        def run(job):
            set_key, key, cmd = job
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"peak memory of {key} failed:\n{r.stderr[-3000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row.update(impl=key, set=set_key)
            log(f"  peak {set_key:<12} {key:<14} added {report.fmt_bytes(row['added'])}")
            return row

        # One process at a time, so that none disturbs another's figures; the
        # smoke run only checks the code path, two at a time.
        with ThreadPoolExecutor(max_workers=2 if self.smoke else 1) as pool:
            out = list(pool.map(run, jobs))
        for r in out:
            if r["impl"] == "tcl" and r["state_bytes"] is None:  # same core, same state
                r["state_bytes"] = next((c["state_bytes"] for c in out
                                         if c["impl"] == "cpp" and c["set"] == r["set"]), None)
        return out


def run_charlm(smoke: bool, threads: str, path: Path) -> dict:
    """benchmarks/charlm.py in its own process (its progress on stderr)."""
    cmd = [sys.executable, str(HERE / "charlm.py"), "--threads", threads, "--json", str(path)]
    subprocess.run(cmd + (["--smoke"] if smoke else []), stdout=subprocess.DEVNULL, check=True)
    return json.loads(path.read_text())


def python_name() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO))
    except ValueError:
        return str(exe)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and few samples: checks the code paths, not speed")
    ap.add_argument("--threads", default="2,1", help="thread counts (default 2,1)")
    ap.add_argument("--sets", default=None, metavar="A,B",
                    help=f"time only these sets (of {','.join(MAIN_SETS)}; no size sweep)")
    ap.add_argument("--impls", default=None, metavar="A,B",
                    help="time only these rows (keys as in the JSON, e.g. cpp,py)")
    ap.add_argument("--reps", type=int, default=15,
                    help="samples per row (slow rows: fewer, at least 5)")
    ap.add_argument("--json", type=Path, default=None,
                    help="results file (default build/bench/results.json, "
                         "build/bench-smoke/results.json with --smoke)")
    ap.add_argument("--docs", type=Path, default=None,
                    help="where to write performance.md and its plots "
                         "(default docs/; with --smoke, next to the JSON)")
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs")
    ap.add_argument("--no-cpp", action="store_true",
                    help="skip the C++ door and the floor (no C++ build)")
    ap.add_argument("--no-peak", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--no-distributed", action="store_true",
                    help="skip the sharded Adafactor at 1 and 2 ranks (torchrun)")
    ap.add_argument("--no-training", action="store_true",
                    help="skip the whole training step (benchmarks/training_step.py)")
    ap.add_argument("--no-charlm", action="store_true",
                    help="skip the char-LM training step from Tcl and Python")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                    help="before each parameter set, wait until other processes use under "
                         "10%% of the CPU, at most SECONDS in all (default 60, with --smoke 0)")
    ap.add_argument("--cpp-build-dir", type=Path, default=REPO / "build" / "bench-cpp")
    args = ap.parse_args(argv)
    if args.wait_quiet is None:
        args.wait_quiet = 0 if args.smoke else 60
    out_dir = REPO / "build" / ("bench-smoke" if args.smoke else "bench")
    json_path = args.json or out_dir / "results.json"
    docs_dir = args.docs or (json_path.parent if args.smoke else REPO / "docs")

    start = time.time()

    bench = Bench(args)
    program = None
    if not args.no_cpp:
        log("building the C++ benchmark ...")
        phase = time.time()
        program = cpp.build(args.cpp_build_dir, log=log)
        log(f"build took {time.time() - phase:.0f} s")
        bench.runner = cpp.Runner(program)
    pids = [bench.runner.proc.pid] if bench.runner is not None else []
    bench.gate = QuietGate(args.wait_quiet, pids)
    # The share of CPU time other processes take is watched from here on.
    watch = CpuWatch(pids)
    load0 = os.getloadavg()
    meta = machine_info()
    log(f"timing on {meta.get('cpu')} ({meta['cores']} cores), torch {meta['torch']}")
    phase = time.time()
    try:
        bench.run_times()
    finally:
        if bench.runner is not None:
            bench.runner.close()
    log(f"timings took {time.time() - phase:.0f} s")
    peaks = []
    if not args.no_peak:
        log("peak memory, one fresh process per implementation ...")
        phase = time.time()
        peaks = bench.run_peaks(program)
        log(f"peak memory took {time.time() - phase:.0f} s")

    dist_rows = []
    if not args.no_distributed:
        phase = time.time()
        dist_rows = distributed.run(bench.sets["transformer"], 5 if args.smoke else args.reps,
                                    log=log)
        log(f"sharded Adafactor took {time.time() - phase:.0f} s")

    training_result = None
    if not args.no_training:
        log("training step, one fresh process per figure ...")
        bench.gate.wait()
        phase, phase_watch = time.time(), CpuWatch()
        training_result = training.run(args.smoke, bench.threads[0], log=log)
        training_result["other_cpu_share"] = round(phase_watch.share(), 3)
        log(f"training step took {time.time() - phase:.0f} s")
    charlm_result = None
    if not args.no_charlm:
        log("char-LM training step, Tcl and Python ...")
        phase = time.time()
        charlm_result = run_charlm(args.smoke, args.threads, json_path.parent / "charlm.json")
        log(f"char-LM training step took {time.time() - phase:.0f} s")

    other = watch.share()
    elapsed = time.time() - start
    meta.update({
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join([python_name(), "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1),
        "waited_s": round(bench.gate.total, 1),
        "loadavg_start": [round(x, 2) for x in load0],
        "other_cpu_share": round(other, 3),
        "smoke": args.smoke,
    })
    sets = {k: {"title": s.title, "spec": s.spec, "numel": s.numel(), "tensors": len(s.shapes())}
            for k, s in {**bench.sets, **{p.key: p for p in bench.sweep}}.items()}
    results = {
        "meta": meta,
        "threads": bench.threads,
        "impls": [{"key": i.key, "label": i.label, "kind": i.kind, "available": i.available,
                   "reason": i.reason} for i in bench.impls()],
        "sets": sets,
        "main_sets": MAIN_SETS,
        "sweep": [p.key for p in bench.sweep],
        "peak_sets": [k for k in PEAK_SETS if any(p["set"] == k for p in peaks)],
        "times": bench.times,
        "other_cpu_share": bench.other_share,
        "peak": peaks,
        "distributed": dist_rows,
        "training": training_result,
        "charlm": charlm_result,
    }
    results["targets"] = report.targets(results)
    text = report.tables(results)
    print(text)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    log(f"results: {json_path}")
    if not args.no_docs:
        md = report.write_docs(results, docs_dir)
        log(f"docs: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
