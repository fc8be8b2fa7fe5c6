"""Where the installed pieces of tcltorch live."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def tcl_path() -> str:
    """The directory to put on TCLLIBPATH (or auto_path) so that
    ``package require torch`` finds the Tcl package."""
    return str(_HERE / "tcllib")


def cmake_prefix() -> str:
    """A CMAKE_PREFIX_PATH entry under which ``find_package(tcltorch)`` works."""
    return str(_HERE)
