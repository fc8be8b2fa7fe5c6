"""What a new user meets in the first hour: the commands the docs give, and
mistakes that must say something."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import tcltorch
from conftest import REPO
from tcltorch.tcl import Interp


def test_tcl_path_answers_without_importing_torch():
    # -X importtime lists every module the command imports, on stderr.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tcltorch", "tcl-path"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert Path(proc.stdout.strip()) == Path(tcltorch.tcl_path())
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "tcltorch" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, \
        sorted(m for m in imported if m.startswith("torch"))


def test_compiled_parts_load_on_first_use():
    code = ("import sys, tcltorch\n"
            "assert 'torch' not in sys.modules\n"
            "assert tcltorch.Adafactor.__module__ == 'tcltorch.optim'\n"
            "assert 'torch' in sys.modules and tcltorch._C.Adafactor\n"
            "from tcltorch import _C, from_transformers_state_dict\n"
            "assert 'Adafactor' in dir(tcltorch)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tcltorch.nope  # noqa: B018


def test_docs_name_the_virtualenvs_python():
    # A bare `python -m tcltorch` fails outside the virtualenv: every command
    # line the docs and examples give names .venv/bin/python (the pages say
    # that `python` works once the virtualenv is activated).
    texts = {p: p.read_text() for p in [*REPO.glob("docs/**/*.md"), REPO / "README.md",
                                          *REPO.glob("examples/**/*.tcl"),
                                          *REPO.glob("examples/**/CMakeLists.txt")]}
    bare = [f"{p.relative_to(REPO)}: {m.group(0)}" for p, t in texts.items()
            for m in re.finditer(r"(?<![/\w])python -m tcltorch [\w-]+", t)
            if "activated" not in t]
    assert not bare, bare
    assert "activated" in (REPO / "docs" / "install.md").read_text()


def test_the_cpp_example_builds_in_an_ignored_directory():
    text = (REPO / "docs" / "install.md").read_text()
    dirs = set(re.findall(r"cmake -S examples/cpp -B (\S+)", text))
    assert dirs, "install.md builds the C++ example"
    for d in dirs | {"build-example"}:
        probe = f"{d}/CMakeCache.txt"
        rc = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO).returncode
        assert rc == 0, f"{probe} would be left untracked"


def test_interp_after_close_says_so():
    tcl = Interp()
    assert tcl.eval("torch::zeros 2") == "tensor1" and not tcl.closed
    tcl.close()
    assert tcl.closed
    for use in (lambda: tcl.eval("set x 1"), lambda: tcl.call("set", "x", 1),
                lambda: tcl.tensor("tensor1"), lambda: tcl.handles(), lambda: tcl.tk):
        with pytest.raises(RuntimeError, match=r"Interp is closed \(close\(\) was called"):
            use()
    tcl.close()  # again: nothing happens
