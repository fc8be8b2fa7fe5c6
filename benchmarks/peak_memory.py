"""Peak resident memory one optimizer step adds, for one implementation, in
this fresh process (benchmarks/run.py starts one per implementation; the C++
door is `bench_step peak SPEC`, which does the same in C++).

    python benchmarks/peak_memory.py IMPL SPEC

IMPL is a key of bench.impls.python_impl() (py_C, tcl, torch_loop, ...);
SPEC a parameter set (see bench/sets.py). Prints one JSON object.

The method of tests/tools/step_peak_memory.py, generalised: make the
parameters, their gradients and the optimizer, take a warm-up step (it creates
the state and warms threads and allocator), reset the peak RSS counter
(/proc/self/clear_refs "5", Linux), then read VmRSS, take one step and read
VmHWM. The difference is what the step adds on top of parameters, gradients
and state. run.py sets MALLOC_MMAP_THRESHOLD_ so that glibc returns freed
blocks to the system: otherwise a temporary freed by the warm-up step would
stay resident, be reused by the measured step, and not show.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench.impls import TclDoor, python_impl, state_bytes  # noqa: E402
from bench.sets import ParamSet  # noqa: E402
from bench.proc_memory import rss  # noqa: E402


def main() -> None:
    key, spec = sys.argv[1], sys.argv[2]
    params = ParamSet("peak", "peak", spec).make()
    if key == "tcl":
        opt = TclDoor(params)
    else:
        impl = python_impl(key)
        if not impl.available:
            raise SystemExit(f"{key}: not available ({impl.reason})")
        opt = impl.make(params)
    with torch.no_grad():
        opt.step()
        for p in params:
            p.grad.normal_()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss("VmRSS")
        opt.step()
        peak = rss("VmHWM")
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    # The Tcl door's state lives in the core, as the C++ door's: run.py
    # reports the C++ figure for it.
    sb = None if key == "tcl" else state_bytes(opt, params)
    print(json.dumps({"impl": key, "param_bytes": param_bytes, "state_bytes": sb,
                      "added": max(0, peak - before)}))


if __name__ == "__main__":
    main()
