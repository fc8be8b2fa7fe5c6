"""Command line: ``python -m tcltorch tcl-path | cmake-prefix | version``."""
from __future__ import annotations

import sys

from ._paths import cmake_prefix, tcl_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["tcl-path"]:
        # The common case, in shells' $(...): no argparse, no torch.
        print(tcl_path())
        return 0
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tcltorch")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("tcl-path", help="directory for TCLLIBPATH / auto_path")
    sub.add_parser("cmake-prefix", help="CMAKE_PREFIX_PATH entry for find_package(tcltorch)")
    sub.add_parser("version", help="tcltorch and torch versions")
    args = parser.parse_args(argv)
    if args.what == "tcl-path":
        print(tcl_path())
    elif args.what == "cmake-prefix":
        import torch

        print(f"{cmake_prefix()};{torch.utils.cmake_prefix_path}")
    else:
        import torch

        from . import __version__

        print(f"tcltorch {__version__} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
