"""benchmarks/charlm.py --smoke: the char-LM benchmark row's code paths (the
Tcl example's step in tclsh, the same model in Python) run and report. Its
figures are benchmark results (make bench), not tests."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_charlm_benchmark_smoke(tmp_path):
    out = tmp_path / "charlm.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "charlm.py"), "--smoke",
                        "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["threads"] == 1
    assert row["tcl_s_per_step"] > 0 and row["python_s_per_step"] > 0
    # One round: the median of the rounds' ratios is that round's ratio.
    assert row["tcl_rounds"] == [row["tcl_s_per_step"]]
    assert row["ratio"] == row["tcl_s_per_step"] / row["python_s_per_step"]
    assert "| 1 |" in r.stdout and "Tcl/Python" in r.stdout
