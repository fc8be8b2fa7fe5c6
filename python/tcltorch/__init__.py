"""tcltorch: a LibTorch Adafactor optimizer for Tcl, Python and C++.

The C++ core lives in the shared library next to this file; ``tcltorch._C``
exposes it to Python, the Tcl package ``torch`` (see :func:`tcl_path`) to Tcl.
"""
from __future__ import annotations

import torch as _torch

from . import _build_info
from ._paths import cmake_prefix, tcl_path

__version__ = _build_info.version


def _check_torch() -> None:
    # The compiled parts use LibTorch's C++ API, which has no stable ABI:
    # they only work with the torch they were built against.
    built, running = _build_info.torch_version, _torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        raise ImportError(
            f"tcltorch was built against torch {built} but torch {running} is "
            "installed; rebuild tcltorch (pip install --no-build-isolation .)"
        )


_check_torch()

from . import _C  # noqa: E402  (needs torch's libraries loaded first)
from .optim import Adafactor, from_transformers_state_dict  # noqa: E402

__all__ = ["Adafactor", "from_transformers_state_dict", "__version__", "cmake_prefix",
           "tcl_path", "_C"]
