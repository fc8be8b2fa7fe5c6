"""tcltorch: a LibTorch Adafactor optimizer for Tcl, Python and C++.

The C++ core lives in the shared library next to this file; ``tcltorch._C``
exposes it to Python, the Tcl package ``torch`` (see :func:`tcl_path`) to Tcl.

``import tcltorch`` alone does not import torch, so that ``python -m tcltorch
tcl-path`` answers at once: the compiled parts (``Adafactor``,
``from_transformers_state_dict``, ``load_optimizer_file``, ``save_optimizer_file``,
``_C``, and ``tcltorch.tcl``) are loaded on
first use, after checking that the installed torch is the one tcltorch was
built against.
"""
from __future__ import annotations

import importlib

from . import _build_info
from ._paths import cmake_prefix, tcl_path

__version__ = _build_info.version

_COMPILED = ("Adafactor", "from_transformers_state_dict", "_C")
# The optimizer files of the Tcl and C++ doors (tcltorch/checkpoint.py).
_CHECKPOINT = ("load_optimizer_file", "save_optimizer_file")


def _check_torch(torch) -> None:
    # The compiled parts use LibTorch's C++ API, which has no stable ABI:
    # they only work with the torch they were built against.
    built, running = _build_info.torch_version, torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        raise ImportError(
            f"tcltorch was built against torch {built} but torch {running} is "
            "installed; rebuild tcltorch (pip install --no-build-isolation .)"
        )


def _compiled():
    if "_C" not in globals():
        import torch

        _check_torch(torch)
        # _C needs torch's libraries loaded first (the import above).
        globals()["_C"] = importlib.import_module("._C", __name__)
    return globals()["_C"]


def __getattr__(name: str):
    if name == "_C":
        return _compiled()
    if name in _COMPILED:
        optim = importlib.import_module(".optim", __name__)  # loads _C through the above
        return getattr(optim, name)
    if name in _CHECKPOINT:
        return getattr(importlib.import_module(".checkpoint", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_COMPILED) | set(_CHECKPOINT))


__all__ = ["Adafactor", "from_transformers_state_dict", "load_optimizer_file",
           "save_optimizer_file", "__version__", "cmake_prefix", "tcl_path", "_C"]
