"""What code written for ``transformers.optimization.Adafactor`` relies on
beyond its constructor, for ``tcltorch.Adafactor``:

- ``lr=None`` (with ``relative_step=True``): the step size is the relative
  step alone, as in transformers. ``group["lr"]`` then does not enter the step
  and only reports; the group says so with its key ``external_lr=False``.
- ``_get_lr(group, state)``, which ``transformers.optimization.AdafactorSchedule``
  calls after every step and writes into ``group["lr"]``.
- checkpoints of transformers' optimizer (Trainer's ``optim="adafactor"``),
  converted by ``tcltorch.from_transformers_state_dict`` when loaded.
"""
from __future__ import annotations

import math

import torch

# transformers' fixed cap of the relative step when lr is None (the paper's).
RELATIVE_STEP_CAP = 1e-2

# The group keys a state dict needs for a step; a group without them comes
# from another optimizer.
_REQUIRED_GROUP_KEYS = ("lr", "beta2_decay", "eps", "d", "weight_decay")


def check_lr(lr, relative_step) -> None:
    if lr is None and not relative_step:
        raise ValueError(
            "lr=None (the relative step alone sets the step size, as in transformers) "
            "requires relative_step=True; got relative_step=False")


def init_group(group: dict) -> None:
    """Completes and checks a new or loaded group: whether its lr is one the step
    uses (a number given by the caller) or transformers' lr=None."""
    group.setdefault("external_lr", group["lr"] is not None)
    if not group["external_lr"]:
        check_lr(None, group["relative_step"])
    elif group["lr"] is None:
        raise ValueError("lr=None requires external_lr=False in its parameter group")


def core_group(group: dict) -> dict:
    """The group as the core reads it: transformers' cap stands in for a
    reporting lr (which AdafactorSchedule may overwrite at every step)."""
    if group.get("external_lr", group["lr"] is not None):
        return group
    return {**group, "lr": RELATIVE_STEP_CAP}


def _lr_reports(group: dict) -> bool:
    # True where the step ignores group["lr"], so that AdafactorSchedule may
    # write into it: transformers' lr=None, or warmup_init (its own cap).
    return not group["external_lr"] or (group["relative_step"] and group["warmup_init"])


def _rms(p: torch.Tensor) -> float:
    if type(p).__name__ == "DTensor":
        p = p.full_tensor()
    p = p.detach()
    if p.dtype in (torch.float16, torch.bfloat16):  # as transformers: in float32
        p = p.float()
    return float(torch.linalg.vector_norm(p) / math.sqrt(max(p.numel(), 1)))


# The group keys records_rms reads.
RMS_RECORD_KEYS = ("scale_parameter", "external_lr", "relative_step", "warmup_init")


def records_rms(group: dict) -> bool:
    """Whether before_step records anything for this group: reporting groups
    with parameter scaling."""
    return bool(group["scale_parameter"]) and _lr_reports(group)


def before_step(rms_by_param: dict, group: dict) -> None:
    """Records RMS(param) of the group's first parameter before the step, for
    ``reported_lr`` (as transformers keeps ``state["RMS"]``); only where it is
    needed (records_rms)."""
    first = group["params"][0] if group["params"] else None
    if first is not None and first.grad is not None and records_rms(group):
        rms_by_param[first] = _rms(first)


def reported_lr(rms_by_param: dict, group: dict, state: dict) -> float:
    """transformers' ``Adafactor._get_lr``: the step size of the last step of
    the group's first parameter (relative step times parameter scale)."""
    if not _lr_reports(group):
        raise RuntimeError(
            "AdafactorSchedule writes the step size it reports into group['lr'], which "
            "this group uses as its learning rate (the cap of the relative step, or the "
            "fixed lr): construct tcltorch.Adafactor with lr=None and relative_step=True, "
            "as transformers' Adafactor is constructed for AdafactorSchedule")
    t = float(state["step"])
    cap = 1e-6 * t if group["warmup_init"] else RELATIVE_STEP_CAP
    rho = min(cap, 1.0 / math.sqrt(t))
    if not group["scale_parameter"]:
        return rho
    first = group["params"][0]
    rms = rms_by_param[first] if first in rms_by_param else _rms(first)
    return max(group["eps"][1], rms) * rho


def is_transformers_state_dict(state_dict: dict) -> bool:
    """A state dict of transformers' (or fairseq's) Adafactor: its groups name
    transformers' options and lack ours."""
    return any(("decay_rate" in g or "clip_threshold" in g) and "beta2_decay" not in g
               for g in state_dict.get("param_groups", ()))


def on_load(state_dict: dict, convert) -> dict:
    """The state dict to load: transformers' converted by ``convert``
    (``from_transformers_state_dict``); one of another optimizer refused before
    it is loaded, rather than at the first step."""
    if is_transformers_state_dict(state_dict):
        return convert(state_dict)
    for index, group in enumerate(state_dict.get("param_groups", ())):
        missing = [k for k in _REQUIRED_GROUP_KEYS if k not in group]
        if missing:
            raise ValueError(
                f"loaded state dict is not one of Adafactor's: parameter group {index} "
                f"lacks {', '.join(missing)} (a state dict of "
                "transformers.optimization.Adafactor converts with "
                "tcltorch.from_transformers_state_dict)")
    return state_dict
