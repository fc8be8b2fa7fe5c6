"""The Tcl side's own test suite (tests/tcl/*.test, run by tests/tcl/all.tcl
with plain tclsh and tcltest, as Tcl users run an extension's tests), one
pytest test per file: a failing, erroring or skipped tcltest case fails it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, tclsh_env

TCL_TESTS = REPO / "tests" / "tcl"
FILES = sorted(p.name for p in TCL_TESTS.glob("*.test"))
SUMMARY = re.compile(r"^all\.tcl:\s+Total\s+(\d+)\s+Passed\s+(\d+)\s+Skipped\s+(\d+)\s+"
                     r"Failed\s+(\d+)", re.M)


def test_suite_has_files():
    assert {"adafactor.test", "commands.test", "training.test"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_tcltest_file(name, tmp_path):
    proc = subprocess.run(
        ["tclsh", str(TCL_TESTS / "all.tcl"), "-file", name, "-tmpdir", str(tmp_path)],
        capture_output=True, text=True, env=tclsh_env(), cwd=tmp_path, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    m = SUMMARY.search(proc.stdout)
    assert m, f"no tcltest summary\n{report}"
    total, passed, skipped, failed = map(int, m.groups())
    assert "Test file error" not in proc.stdout, report
    assert failed == 0 and skipped == 0 and total == passed > 0, report
    assert proc.returncode == 0, report
