"""Shared fixtures: Tcl interpreters through the harness, tclsh subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tcltorch
from tcltorch.tcl import Interp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def tcl():
    """A fresh Tcl interpreter with `package require torch` done."""
    interp = Interp()
    yield interp
    interp.close()


def tclsh_env() -> dict[str, str]:
    """The environment a Tcl user would have: TCLLIBPATH only, nothing on
    LD_LIBRARY_PATH."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["TCLLIBPATH"] = tcltorch.tcl_path()
    return env


# A Tcl proc reading this process's resident memory (VmRSS, KiB), for
# scripts that measure growth.
RSS_PROC = r"""
proc rss_kib {} {
    set f [open /proc/self/status]
    set status [read $f]
    close $f
    regexp {VmRSS:\s+(\d+)} $status -> kib
    return $kib
}
"""


def run_tclsh(script: str | None = None, *args: str, file: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a script in a plain tclsh process (a crash cannot take pytest down)."""
    cmd = ["tclsh", str(file) if file else "-", *args]
    return subprocess.run(cmd, input=script, capture_output=True, text=True,
                          env=tclsh_env(), timeout=timeout)


def gradient_twice_message(position: int, shape: str) -> str:
    """The step in backward's refusal of a second gradient in one pass, word
    for word (the Python and C++/Tcl doors say the same)."""
    return (f"step in backward: parameter {position} of group 1 "
            f"(counting from 1; shape {shape}) got a "
            "gradient a second time in one backward pass, after the step in backward had taken its "
            "first: a backward pass ran inside this one and both reach the parameter "
            "(torch.utils.checkpoint with use_reentrant=True runs the backward of its segment as a "
            "pass of its own, so a parameter used both inside and outside the segment, such as a "
            "tied embedding, gets its gradient in two parts), or two passes ran at the same time "
            "on different threads. A second step would make two steps with parts of its gradient "
            "instead of the usual one with their sum, so it is refused (the second part stays in "
            "its gradient): checkpoint with use_reentrant=False, or turn the step in backward off")
