"""tcltorch.Adafactor: a drop-in for torch.optim.Adafactor on the fused C++ core."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _C

__all__ = ["Adafactor", "from_transformers_state_dict"]

# Group keys beyond torch.optim.Adafactor's, with their defaults. A state dict
# saved by torch.optim.Adafactor lacks them; __setstate__ fills them in.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "beta1": None,
    "relative_step": True,
    "scale_parameter": True,
    "warmup_init": False,
    "variant": "torch",
    "factored_dims": "last_two",
    "min_dim_size_to_factor": 0,
    "fp32_state": False,
    "stochastic_rounding": False,
    "skip_nan_updates": False,
    "beta2_cap": 1.0,
    "decay_offset": 0,
    "caution": False,
    "weight_decay_mode": None,
    "max_lr": None,
    "momentum_dtype": None,
    "momentum_stochastic_rounding": False,
}


class _VariantDefault:
    """The default of an argument whose default depends on the variant
    (big_vision's differ; see docs/python.md)."""

    def __repr__(self) -> str:
        return "<the variant's default>"


_BY_VARIANT = _VariantDefault()


def _momentum_dtype_name(value) -> str | None:
    if value is None:
        return None
    if value == torch.bfloat16 or value == "bfloat16":
        return "bfloat16"
    raise ValueError(f"momentum_dtype must be torch.bfloat16 or None, got {value!r}")


def _number(name: str, value) -> float:
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _core_options(group: dict) -> dict:
    """The core's keyword options for a parameter group, read at step time so
    that LR schedulers and wrappers that edit param_groups take effect."""
    eps1, eps2 = group["eps"]
    return {
        "lr": _number("lr", group["lr"]),
        "beta2_decay": _number("beta2_decay", group["beta2_decay"]),
        "eps1": None if eps1 is None else _number("eps1", eps1),
        "eps2": _number("eps2", eps2),
        "d": None if group["d"] is None else _number("d", group["d"]),
        "weight_decay": _number("weight_decay", group["weight_decay"]),
        "maximize": bool(group["maximize"]),
        "beta1": None if group["beta1"] is None else _number("beta1", group["beta1"]),
        "relative_step": bool(group["relative_step"]),
        "scale_parameter": bool(group["scale_parameter"]),
        "warmup_init": bool(group["warmup_init"]),
        "variant": str(group["variant"]),
        "factored_dims": str(group["factored_dims"]),
        "min_dim_size_to_factor": int(group["min_dim_size_to_factor"]),
        "fp32_state": bool(group["fp32_state"]),
        "stochastic_rounding": bool(group["stochastic_rounding"]),
        "skip_nan_updates": bool(group["skip_nan_updates"]),
        "beta2_cap": _number("beta2_cap", group["beta2_cap"]),
        "decay_offset": group["decay_offset"],
        "caution": bool(group["caution"]),
        "weight_decay_mode": group["weight_decay_mode"],
        "max_lr": None if group["max_lr"] is None else _number("max_lr", group["max_lr"]),
        "momentum_dtype": _momentum_dtype_name(group["momentum_dtype"]),
        "momentum_stochastic_rounding": bool(group["momentum_stochastic_rounding"]),
    }


def _check_parameter(p: Tensor) -> None:
    # FSDP1 marks its flat parameters, and with use_orig_params the 1-D views
    # it hands out instead of the original parameters, as "_fsdp_flattened".
    if type(p).__name__ == "FlatParameter" or getattr(p, "_fsdp_flattened", False):
        raise RuntimeError(
            "tcltorch.Adafactor cannot run on FSDP1 flat parameters: they are flattened "
            "to 1-D, which leaves nothing to factor and makes the RMS statistics per "
            "shard. Shard the model with FSDP2 (torch.distributed.fsdp.fully_shard) "
            "instead.")
    if _is_dtensor(p):
        from torch.distributed.tensor import Shard

        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise NotImplementedError(
                "tcltorch.Adafactor supports DTensor parameters sharded along dim 0 "
                f"on a 1-D mesh (FSDP2's layout); got placements {tuple(p.placements)} "
                f"on a {p.device_mesh.ndim}-D mesh")


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor"


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= d
    return tuple(reversed(stride))


class _Sharded:
    """What a step needs for the DTensor parameters of one group (FSDP2): local
    shards, their state, and a reducer over the mesh's process group."""

    @staticmethod
    def wrap_state(p, local_state: dict, options: dict) -> dict:
        # State as DTensors, so that state_dict() and distributed checkpoints
        # see whole tensors of torch.optim.Adafactor's shapes.
        from torch.distributed.tensor import DTensor, Replicate, Shard

        shape = tuple(p.shape)
        dims = _C.adafactor_factored_dims(list(shape), **options)
        out = {}
        for key, t in local_state.items():
            if key == "step":
                out[key] = t
                continue
            global_shape = list(shape)
            placement = Shard(0)
            if key == "row_var":
                global_shape[dims[1]] = 1
            elif key == "col_var":
                global_shape[dims[0]] = 1
                if dims[0] == 0:  # rows are split: the column statistic is whole everywhere
                    placement = Replicate()
            out[key] = DTensor.from_local(t, p.device_mesh, [placement], run_check=False,
                                          shape=torch.Size(global_shape),
                                          stride=_contiguous_stride(global_shape))
        return out

    @staticmethod
    def step(optimizer, params, options: dict) -> None:
        import torch.distributed as dist

        group = params[0].device_mesh.get_group()

        def reducer(values: Tensor) -> None:
            dist.all_reduce(values, group=group)

        locals_, grads, states, shapes = [], [], [], []
        for p in params:
            state = optimizer.state[p]
            local = p.to_local()
            if len(state) == 0:
                state.update(_Sharded.wrap_state(
                    p, _C.adafactor_init_state_sharded(local, list(p.shape), **options), options))
            grad = p.grad
            if tuple(grad.placements) != tuple(p.placements):
                grad = grad.redistribute(placements=p.placements)
            locals_.append(local)
            grads.append(grad.to_local())
            states.append({k: (v.to_local() if _is_dtensor(v) else v) for k, v in state.items()})
            shapes.append(list(p.shape))
        optimizer.skipped_updates += _C.adafactor_step_sharded(
            locals_, grads, states, shapes, reducer, **options)
        for p, local_state in zip(params, states):
            state = optimizer.state[p]
            if "exp_avg" in local_state and "exp_avg" not in state:
                state.update(_Sharded.wrap_state(p, {"exp_avg": local_state["exp_avg"]}, options))


class Adafactor(Optimizer):
    """Adafactor with the signature, defaults, numbers and state layout of
    ``torch.optim.Adafactor``, computed by tcltorch's fused C++ kernel.

    Every further option of the core is a keyword argument (``beta1``,
    ``relative_step``, ``scale_parameter``, ``warmup_init``, ``variant``,
    ``factored_dims``, ``min_dim_size_to_factor``, ``fp32_state``,
    ``stochastic_rounding``, ``beta2_cap``, ``decay_offset``, ``caution``,
    ``weight_decay_mode``, ``momentum_dtype``, ...); see docs/python.md.
    Arguments left at the variant's default take torch's defaults, or with
    ``variant="big_vision"`` big_vision's (docs/algorithm.md lists them).
    ``foreach`` is accepted for compatibility and ignored: every step is fused.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = _BY_VARIANT,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float | None = _BY_VARIANT,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        beta1: float | None = _BY_VARIANT,
        relative_step: bool = _BY_VARIANT,
        scale_parameter: bool = _BY_VARIANT,
        warmup_init: bool = False,
        variant: str = "torch",
        factored_dims: str = _BY_VARIANT,
        min_dim_size_to_factor: int = _BY_VARIANT,
        fp32_state: bool = False,
        stochastic_rounding: bool = False,
        skip_nan_updates: bool = False,
        beta2_cap: float = _BY_VARIANT,
        decay_offset: int = 0,
        caution: bool = False,
        weight_decay_mode: str | None = None,
        momentum_dtype: torch.dtype | None = _BY_VARIANT,
        momentum_stochastic_rounding: bool = False,
    ) -> None:
        given = dict(lr=lr, d=d, beta1=beta1, relative_step=relative_step,
                     scale_parameter=scale_parameter, factored_dims=factored_dims,
                     min_dim_size_to_factor=min_dim_size_to_factor, beta2_cap=beta2_cap,
                     momentum_dtype=momentum_dtype)
        if any(v is _BY_VARIANT for v in given.values()):
            base = _C.variant_defaults(variant if isinstance(variant, str) else "")
            if base["momentum_dtype"] == "bfloat16":
                base["momentum_dtype"] = torch.bfloat16
            given = {k: base[k] if v is _BY_VARIANT else v for k, v in given.items()}
        lr, d, beta1 = given["lr"], given["d"], given["beta1"]
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        defaults = {
            "lr": lr,
            "beta2_decay": beta2_decay,
            "eps": tuple(eps),
            "d": d,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "beta1": beta1,
            "relative_step": given["relative_step"],
            "scale_parameter": given["scale_parameter"],
            "warmup_init": warmup_init,
            "variant": variant,
            "factored_dims": given["factored_dims"],
            "min_dim_size_to_factor": given["min_dim_size_to_factor"],
            "fp32_state": fp32_state,
            "stochastic_rounding": stochastic_rounding,
            "skip_nan_updates": skip_nan_updates,
            "beta2_cap": given["beta2_cap"],
            "decay_offset": decay_offset,
            "caution": caution,
            "weight_decay_mode": weight_decay_mode,
            "max_lr": None,
            "momentum_dtype": given["momentum_dtype"],
            "momentum_stochastic_rounding": momentum_stochastic_rounding,
        }
        # Parameter updates skipped by skip_nan_updates (not in state_dict).
        self.skipped_updates = 0
        _C.validate_options(**_core_options(defaults))
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["eps"] = tuple(group["eps"])
        if (group["max_lr"] is None and group["weight_decay_mode"] == "corrected"
                and _number("lr", group["lr"]) > 0):
            # Corrected weight decay divides by the lr given here, which
            # schedules overwrite later.
            group["max_lr"] = _number("lr", group["lr"])
        _C.validate_options(**_core_options(group))
        for p in group["params"]:
            _check_parameter(p)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_updates", 0)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            for key, value in _EXTRA_DEFAULTS.items():
                group.setdefault(key, value)
            group["eps"] = tuple(group["eps"])
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)
                # load_state_dict casts state to the parameter's dtype; the
                # momentum keeps its own.
                if (_momentum_dtype_name(group["momentum_dtype"]) and "exp_avg" in p_state
                        and p_state["exp_avg"].dtype != torch.bfloat16):
                    p_state["exp_avg"] = p_state["exp_avg"].to(torch.bfloat16)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            options = _core_options(group)
            params, grads, states, sharded = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if _is_dtensor(p):
                    sharded.append(p)
                    continue
                state = self.state[p]
                if len(state) == 0:
                    # Created lazily, as torch does: wrappers (ZeroRedundancyOptimizer,
                    # distributed checkpoints) rely on it.
                    state.update(_C.adafactor_init_state(p, **options))
                params.append(p)
                grads.append(p.grad)
                states.append(state)
            if params:
                self.skipped_updates += _C.adafactor_step(params, grads, states, **options)
            if sharded:
                _Sharded.step(self, sharded, options)
        return loss


def from_transformers_state_dict(state_dict: dict) -> dict:
    """Converts the state dict of ``transformers.optimization.Adafactor`` (or
    fairseq's) into one that ``tcltorch.Adafactor.load_state_dict`` takes, with
    ``variant="transformers"`` so that training continues with the same
    algorithm."""
    state = {}
    for index, old in state_dict["state"].items():
        # Copies: the result must not share tensors with a live optimizer.
        new = {"step": torch.tensor(float(old["step"]), dtype=torch.float32)}
        if "exp_avg_sq_row" in old:
            new["row_var"] = old["exp_avg_sq_row"].unsqueeze(-1).clone()
            new["col_var"] = old["exp_avg_sq_col"].unsqueeze(-2).clone()
        else:
            new["variance"] = old["exp_avg_sq"].clone()
        if "exp_avg" in old:
            new["exp_avg"] = old["exp_avg"].clone()
        state[index] = new
    groups = []
    for old in state_dict["param_groups"]:
        lr = old.get("lr")
        groups.append({
            "params": list(old["params"]),
            # transformers caps the relative step at 1e-2 when lr is None.
            "lr": 1e-2 if lr is None else lr,
            "beta2_decay": old.get("decay_rate", -0.8),
            "eps": tuple(old.get("eps", (1e-30, 1e-3))),
            "d": old.get("clip_threshold", 1.0),
            "weight_decay": old.get("weight_decay", 0.0),
            "foreach": None,
            "maximize": False,
            "beta1": old.get("beta1"),
            "relative_step": old.get("relative_step", True),
            "scale_parameter": old.get("scale_parameter", True),
            "warmup_init": old.get("warmup_init", False),
            "variant": "transformers",
            "factored_dims": "last_two",
            "min_dim_size_to_factor": 0,
            # transformers keeps fp32 state for bf16/fp16 parameters.
            "fp32_state": True,
            "stochastic_rounding": False,
            "skip_nan_updates": False,
        })
    return {"state": state, "param_groups": groups}
