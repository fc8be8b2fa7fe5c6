"""The installed layout: Tcl path, plain tclsh, the C++ CMake package."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tcltorch
from conftest import REPO, run_tclsh, tclsh_env


def test_tcl_path_command_prints_the_package_directory():
    out = subprocess.run([sys.executable, "-m", "tcltorch", "tcl-path"],
                         capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert (path / "torch" / "pkgIndex.tcl").is_file()
    assert path == Path(tcltorch.tcl_path())


def test_package_require_in_plain_tclsh():
    out = run_tclsh("puts [package require torch]\nputs [info commands torch::optimizer_*]\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == tcltorch.__version__
    assert "torch::optimizer_adafactor" in lines[1]


def test_cpp_example_builds_against_installed_package(tmp_path):
    prefix = subprocess.run([sys.executable, "-m", "tcltorch", "cmake-prefix"],
                            capture_output=True, text=True, check=True).stdout.strip()
    build = tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build),
                    f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True, env=env)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, env=env)
    out = subprocess.run([str(build / "train_adafactor")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "last loss" in out.stdout
