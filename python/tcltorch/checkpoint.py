"""Optimizer files of the Tcl and C++ doors as Python state dicts, and back.

``torch::optimizer_save`` (Tcl), ``tcltorch::save_optimizer`` (C++) and the
collective save of a sharded optimizer (``-shardState 1``: one consolidated
file) write one LibTorch archive. :func:`load_optimizer_file` reads it into
the state dict of ``torch.optim.Adafactor``'s layout (state by parameter
index, ``param_groups`` with the group keys) that
``tcltorch.Adafactor.load_state_dict`` takes; :func:`save_optimizer_file`
writes such a state dict as that archive, which ``torch::optimizer_load``
loads. The file is read and written by the core (csrc/checkpoint.cpp).
"""
from __future__ import annotations

import os

import torch

from . import _C
from . import _transformers_compat as _hf
from .optim import _DTYPE_NAMES, _core_options

__all__ = ["load_optimizer_file", "save_optimizer_file"]


def _group(options: dict, first: int, size: int) -> dict:
    # The core's options as tcltorch.Adafactor's group keys: torch's packed
    # eps, momentum_dtype as a torch dtype, torch's foreach (ignored).
    group = {k: v for k, v in options.items() if k not in ("eps1", "eps2")}
    group["eps"] = (options["eps1"], options["eps2"])
    group["momentum_dtype"] = _DTYPE_NAMES[options["momentum_dtype"]]
    group["foreach"] = None
    # The file's lr is the one its steps used (Tcl and C++ have no lr=None).
    group["external_lr"] = True
    group["params"] = list(range(first, first + size))
    return group


def load_optimizer_file(path: str | os.PathLike) -> dict:
    """The state dict of the Adafactor checkpoint at ``path``, for
    ``tcltorch.Adafactor.load_state_dict`` over the same parameters in the
    same order (and groups): every option of each group comes from the file."""
    groups, state = _C.read_adafactor_checkpoint(os.fspath(path))
    param_groups, first = [], 0
    for size, options in groups:
        param_groups.append(_group(options, first, size))
        first += size
    return {"state": state, "param_groups": param_groups}


def save_optimizer_file(state_dict: dict, path: str | os.PathLike) -> None:
    """Writes ``state_dict`` (of ``tcltorch.Adafactor`` or
    ``torch.optim.Adafactor``) as the archive that ``torch::optimizer_load``
    and ``tcltorch::load_optimizer`` read, atomically. The groups keep their
    options as the step reads them (transformers' ``lr=None`` becomes the cap
    of its relative step)."""
    groups, positions = [], {}
    for group in state_dict["param_groups"]:
        # torch numbers parameters over the groups in order; these are the
        # positions the file keeps.
        for index in group["params"]:
            positions[index] = len(positions)
        groups.append((len(group["params"]), _core_options(_hf.core_group(group))))
    state = {}
    for index, s in state_dict["state"].items():
        if index not in positions:
            raise ValueError(f"state for parameter {index}, which no parameter group holds")
        state[positions[index]] = {k: v.detach().cpu() if torch.is_tensor(v) else
                                   torch.tensor(float(v), dtype=torch.float32)
                                   for k, v in s.items()}
    _C.write_adafactor_checkpoint(os.fspath(path), groups, state)
