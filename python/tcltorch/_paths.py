"""Where the installed pieces of tcltorch live. (os.path, not pathlib: this
module is all that `python -m tcltorch tcl-path` imports, and it should
answer at once.)"""
from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.realpath(__file__))


def tcl_path() -> str:
    """The directory to put on TCLLIBPATH (or auto_path) so that
    ``package require torch`` finds the Tcl package."""
    return os.path.join(_HERE, "tcllib")


def cmake_prefix() -> str:
    """A CMAKE_PREFIX_PATH entry under which ``find_package(tcltorch)`` works."""
    return _HERE
