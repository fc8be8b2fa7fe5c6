"""The benchmark's code paths (benchmarks/run.py --smoke): every door, the
reference optimizers, the bandwidth floor, the peak-memory processes, the
tables, the JSON and the docs, on tiny sizes (the training-step and char-LM
phases: tests/test_training_bench_smoke.py). No timing is asserted: the
figures are benchmark results (make bench), not tests.

The C++ benchmark program is built in build/bench-cpp, shared with `make
bench`: about 30 s the first time (or after tcltorch is reinstalled), a
no-op after."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is needed to build the C++ door")
def test_benchmark_smoke(tmp_path):
    results = tmp_path / "results.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--json", str(results),
         "--docs", str(tmp_path), "--no-training", "--no-charlm"],  # their own smoke tests
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    # The printed table: every section, every row.
    out = r.stdout
    for heading in ("Step time, 2 thread(s)", "Step time, 1 thread(s)", "Size sweep, 2 thread(s)",
                    "Memory, transformer", "Targets"):
        assert heading in out, out
    for label in ("tcltorch::Adafactor::step (C++ door)", "tcltorch._C.Adafactor (Python door)",
                  "torch::optimizer_step (Tcl door)", "torch.optim.Adafactor (for-loop)",
                  "torch.optim.Adafactor (foreach)", "torch.optim.AdamW(fused=True)",
                  "bandwidth floor", "timm.optim.Adafactor"):
        assert label in out, out

    # The JSON: a time for every available row on every set and thread count.
    res = json.loads(results.read_text())
    available = {i["key"] for i in res["impls"] if i["available"]}
    assert {"cpp", "py_C", "tcl", "torch_loop", "torch_foreach", "adamw_fused",
            "floor"} <= available
    if importlib.util.find_spec("timm") is not None:
        # Installed without torchvision (setup.sh's test dependencies): the
        # bench loads its optimizer module on its own, and the row must time.
        assert "timm" in available, [i for i in res["impls"] if i["key"] == "timm"]
    times = {(t["set"], t["threads"], t["impl"]): t for t in res["times"]}
    for threads in (2, 1):
        for key in res["main_sets"]:
            for impl in available:
                t = times[(key, threads, impl)]
                assert t["median_s"] > 0 and t["samples"], (key, threads, impl)
        for key in res["sweep"]:
            assert (key, threads, "cpp") in times and (key, threads, "floor") in times
    peaks = {p["impl"]: p for p in res["peak"] if p["set"] == "transformer"}
    assert {"cpp", "py_C", "tcl", "adamw_fused"} <= set(peaks)
    for p in peaks.values():
        assert p["added"] >= 0 and p["param_bytes"] > 0 and p["state_bytes"] > 0
    # Adafactor's factored state is far smaller than AdamW's two moments.
    assert peaks["py_C"]["state_bytes"] < peaks["adamw_fused"]["state_bytes"] / 10
    # The sharded Adafactor at 1 and 2 ranks (torchrun): each of 2 ranks holds
    # part of the state that 1 rank holds.
    dist = {(d["world"], d["rank"]): d for d in res["distributed"]}
    assert set(dist) == {(1, 0), (2, 0), (2, 1)}
    assert all(d["step_s"] > 0 for d in dist.values())
    assert dist[(2, 0)]["state_bytes"] + dist[(2, 1)]["state_bytes"] == dist[(1, 0)]["state_bytes"]
    assert "Sharded Adafactor" in out
    ids = {t["id"] for t in res["targets"]}
    assert {"vs_torch", "vs_adamw", "vs_floor", "small_vs_torch", "tcl_overhead", "peak",
            "py_vs_cpp", "py_overhead"} <= ids
    assert all(t["value"] is not None for t in res["targets"])

    # The docs page, and its plots when matplotlib is there.
    page = (tmp_path / "performance.md").read_text()
    assert "## Targets" in page and "## Size sweep" in page and "## Memory" in page
    assert "## Sharded Adafactor on 2 ranks" in page
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for png in ("step_time.png", "scaling.png", "peak_memory.png"):
        assert (tmp_path / "performance" / png).stat().st_size > 1000
