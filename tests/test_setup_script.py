"""scripts/setup.sh's checks and the first build's progress display, without
running a whole setup: its package detection (SETUP_PRINT_MISSING=1) and
scripts/build_progress.sh against a log that grows."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# A tclsh in which `package require Thread` fails, as on a machine without
# Debian's tcl-thread: the package's unknown handler never looks it up. It
# behaves like tclsh otherwise: a script file that fails exits 1; commands
# read from a pipe are each evaluated, errors printed, and the exit status at
# the end of input is 0.
HIDE_THREAD = r"""
package unknown [list apply {{orig name args} {
    if {$name eq "Thread"} return
    {*}$orig $name {*}$args
}} [package unknown]]
if {$argc > 0} {
    set argv0 [lindex $argv 0]
    set argv [lrange $argv 1 end]
    incr argc -1
    info script $argv0
    uplevel #0 [list source $argv0]
} else {
    set cmd ""
    while {[gets stdin line] >= 0} {
        append cmd $line \n
        if {[info complete $cmd]} {
            if {[catch {uplevel #0 $cmd} msg]} { puts stderr $msg }
            set cmd ""
        }
    }
}
"""


def _tclsh_without_thread(tmp_path: Path) -> Path:
    real = shutil.which("tclsh")
    assert real
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prelude = tmp_path / "hide_thread.tcl"
    prelude.write_text(HIDE_THREAD)
    fake = bindir / "tclsh"
    fake.write_text(f'#!/bin/sh\nexec {real} {prelude} "$@"\n')
    fake.chmod(0o755)
    return bindir


def _missing_packages(path: str) -> list[str]:
    env = dict(os.environ, PATH=path, SETUP_PRINT_MISSING="1")
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    return out.stdout.split()


def test_setup_detects_a_missing_thread_package(tmp_path):
    bindir = _tclsh_without_thread(tmp_path)
    # The simulation is faithful: stdin hides the failure (the old check),
    # a script file reports it.
    fake = str(bindir / "tclsh")
    piped = subprocess.run([fake], input="package require Thread\n", capture_output=True,
                           text=True)
    assert piped.returncode == 0 and "can't find package Thread" in piped.stderr
    (tmp_path / "req.tcl").write_text("package require Thread\n")
    assert subprocess.run([fake, str(tmp_path / "req.tcl")], capture_output=True).returncode == 1
    # The real tclsh behaves the same way on a package that does not exist.
    assert subprocess.run(["tclsh"], input="package require NoSuchPackage\n",
                          capture_output=True, text=True).returncode == 0

    assert "tcl-thread" in _missing_packages(f"{bindir}{os.pathsep}{os.environ['PATH']}")
    # With the real tclsh (tcl-thread is installed here) nothing is missing.
    assert "tcl-thread" not in _missing_packages(os.environ["PATH"])


def test_install_page_lists_tcl_thread():
    assert "`tcl-thread`" in (REPO / "docs" / "install.md").read_text()


STEPS = ["-- Configuring done", "[1/3] Building CXX object a.o", "noise",
         "[2/3] Building CXX object b.o", "[3/3] Linking CXX shared library libx.so",
         "*** Installing project into wheel..."]

WRITER = """
import sys, time
with open(sys.argv[1], "a") as f:
    for s in sys.argv[3:]:
        f.write(s + "\\n"); f.flush(); time.sleep(float(sys.argv[2]))
"""


def _like_setup(tmp_path: Path, pause: float, *interval: str) -> list[str]:
    """The way scripts/setup.sh runs it: the build in the background of a
    bash script, its log growing, the progress shown until it ends."""
    log = tmp_path / "build.log"
    log.write_text("")
    (tmp_path / "writer.py").write_text(WRITER)
    script = tmp_path / "build.sh"
    script.write_text(
        f'"{sys.executable}" "{tmp_path / "writer.py"}" "{log}" {pause} "$@" &\n'
        "pid=$!\n"
        f'bash "{REPO / "scripts" / "build_progress.sh"}" "{log}" "$pid" {" ".join(interval)}\n'
        'wait "$pid"\n')
    return ["bash", str(script), *STEPS]


def test_build_progress_without_a_terminal(tmp_path):
    out = subprocess.run(_like_setup(tmp_path, 0.4, "0"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Only the counter lines, in order, each once; the last one is always shown.
    assert lines and lines[-1] == "    [3/3] Linking CXX shared library libx.so", lines
    assert all(line.startswith("    [") for line in lines), lines
    assert len(lines) == len(set(lines)) <= 3


def test_build_progress_on_a_terminal_stays_on_one_line(tmp_path):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(_like_setup(tmp_path, 0.6), stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="60"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal's other side is closed: the script ended
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    text = b"".join(chunks).decode()
    assert "[2/3] Building CXX object b.o" in text
    assert "\r\x1b[K    [3/3] Linking CXX shared library libx.so" in text
    # Rewritten in place: one newline in all, at the end.
    assert text.replace("\r\n", "\n").count("\n") == 1 and text.endswith("\n"), repr(text)
