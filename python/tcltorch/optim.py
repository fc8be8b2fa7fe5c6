"""tcltorch.Adafactor: a drop-in for torch.optim.Adafactor on the fused C++ core."""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from . import _C
from . import _in_backward
from . import _transformers_compat as _hf

__all__ = ["Adafactor", "from_transformers_state_dict"]

# The core's table of options (csrc/include/tcltorch/adafactor_options.h):
# one dict per option with its name, type, defaults per variant, rule, doc.
_OPTIONS: list[dict] = _C.adafactor_options()
_VARIANTS: tuple[str, ...] = tuple(
    next(o for o in _OPTIONS if o["name"] == "variant")["choices"])
# torch.optim.Adafactor's own arguments, named and defaulted in its signature;
# its group key "eps" packs (eps1, eps2).
_TORCH_ARGUMENTS = ("lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay", "maximize")
_PACKED = {"eps1": ("eps", 0), "eps2": ("eps", 1)}


# momentum_dtype: Python spells the core's names as torch dtypes.
_DTYPE_NAMES = {"none": None, "bfloat16": torch.bfloat16}


def _defaults_for(variant: str) -> dict[str, Any]:
    """Every option's default under `variant` (torch's for an unknown name,
    which validation then refuses)."""
    if variant not in _VARIANTS:
        variant = "torch"
    out = {o["name"]: o["defaults"][variant] for o in _OPTIONS}
    out["momentum_dtype"] = _DTYPE_NAMES[out["momentum_dtype"]]
    return out


def _enum_name(name: str, value) -> str:
    if name == "momentum_dtype":
        for text, dtype in _DTYPE_NAMES.items():
            if value is dtype or value == text:
                return text
        raise ValueError(f"momentum_dtype must be torch.bfloat16 or None, got {value!r}")
    return str(value)


class _VariantDefault:
    """The default of torch's arguments whose default depends on the variant
    (big_vision's lr and d)."""

    def __repr__(self) -> str:
        return "<the variant's default>"


_BY_VARIANT = _VariantDefault()


# Group keys beyond torch.optim.Adafactor's, with their defaults. A state dict
# saved by torch.optim.Adafactor lacks them; __setstate__ fills them in.
_EXTRA_DEFAULTS: dict[str, Any] = {
    name: value for name, value in _defaults_for("torch").items()
    if name not in _TORCH_ARGUMENTS}


def _number(name: str, value) -> float:
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


_CONVERT = {
    "double": _number,
    "optional_double": lambda name, v: None if v is None else _number(name, v),
    "bool": lambda name, v: bool(v),
    "int": lambda name, v: int(v),
    "enum": _enum_name,
}


def _group_value(group: dict, name: str):
    if name in _PACKED:
        key, index = _PACKED[name]
        return group[key][index]
    return group[name]


_TYPES = {o["name"]: o["type"] for o in _OPTIONS}


def _core_value(group: dict, name: str):
    """The core's value of option `name` in a parameter group."""
    return _CONVERT[_TYPES[name]](name, _group_value(group, name))


def _core_options(group: dict) -> dict:
    """The core's keyword options for a parameter group."""
    return {name: _core_value(group, name) for name in _TYPES}


def _validate(group: dict) -> None:
    # With variant="torch", torch.optim.Adafactor's own checks and messages
    # come first (d >= 1 among them).
    check = _C.validate_options_as_torch if group["variant"] == "torch" else _C.validate_options
    check(**_core_options(group))


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


# ------------------------------------------------------------------ the step
# _C.GroupStepper keeps each group's core options and, at every step, checks
# which group values are no longer the same objects (an LR scheduler's new lr,
# an edit of param_groups): only those are converted again, by _step_value.
# _WATCH names the group keys each option is read from.
_WATCH = {name: (_PACKED[name][0],) if name in _PACKED else (name,) for name in _TYPES}
_WATCH["lr"] = ("lr", "external_lr")  # transformers' lr=None: see core_group


def _step_value(group: dict, name: str):
    """The value of option `name` the step uses: as _core_value, with
    transformers' cap for a reporting lr (_hf.core_group)."""
    return _core_value(_hf.core_group(group) if name == "lr" else group, name)


def _record_rms(optimizer: "Adafactor", group: dict) -> None:
    _hf.before_step(optimizer._rms_before_step, group)


def _step_sharded(optimizer: "Adafactor", group: dict, params: list) -> None:
    with torch.no_grad():
        _Sharded.step(optimizer, params, _core_options(_hf.core_group(group)))


def _add_skipped(optimizer: "Adafactor", count: int) -> None:
    optimizer.skipped_updates += count


def _new_stepper():
    # Module-level callbacks only: the stepper (not tracked by Python's cycle
    # collector) must hold no reference to its optimizer.
    return _C.GroupStepper(watch=_WATCH, convert=_step_value, flag_keys=_hf.RMS_RECORD_KEYS,
                           flag=_hf.records_rms, before_step=_record_rms,
                           sharded_step=_step_sharded, add_skipped=_add_skipped)


_profiler_enabled = torch._C._autograd._profiler_enabled


def _hook_step(step):
    """torch.optim.Optimizer wraps step in profile_hook_step: a profiler range
    ("Optimizer.step#Adafactor.step") and the loops over the step pre and post
    hooks, which together cost more than a small step. This wrapper calls
    torch's when a hook is registered (globally or on this optimizer) or a
    profiler is on, and else only the step and _optimizer_step_code."""
    with_hooks = Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or _profiler_enabled()):
            return with_hooks(self, *args, **kwargs)
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()
        return out

    return wrapper


class Adafactor(Optimizer):
    """Adafactor with the signature, defaults, numbers and state layout of
    ``torch.optim.Adafactor``, computed by tcltorch's fused C++ kernel.

    Every further option of the core is a keyword argument (``beta1``,
    ``relative_step``, ``scale_parameter``, ``warmup_init``, ``variant``,
    ``factored_dims``, ...: the group keys of ``_EXTRA_DEFAULTS``); those not
    given take the default of the chosen ``variant``. See docs/python.md.
    ``foreach`` is accepted for compatibility and ignored: every step is fused.
    ``lr=None`` (with ``relative_step=True``) is transformers' call: the relative
    step alone sets the step size, and ``AdafactorSchedule`` works (see
    _transformers_compat).

    ``step_in_backward=True`` steps each parameter inside ``loss.backward()`` as
    soon as its gradient is accumulated, then frees that gradient; ``step()``
    then only runs its closure. With ``accumulate_steps=N`` the step runs inside
    every N-th backward pass, on the gradients of the last N. Neither is a group
    key nor in the state dict (see _in_backward and docs/python.md).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor | None = _BY_VARIANT,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float | None = _BY_VARIANT,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        step_in_backward: bool = False,
        accumulate_steps: int = 1,
        **options,
    ) -> None:
        _in_backward.check_arguments(step_in_backward, accumulate_steps)
        if step_in_backward:
            _in_backward.refuse_zero()
        for name in options:
            if name not in _EXTRA_DEFAULTS:
                raise TypeError(
                    f"Adafactor.__init__() got an unexpected keyword argument '{name}'")
        variant_defaults = _defaults_for(options.get("variant", _EXTRA_DEFAULTS["variant"]))
        if lr is _BY_VARIANT:
            lr = variant_defaults["lr"]
        if d is _BY_VARIANT:
            d = variant_defaults["d"]
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
        }
        for name in _EXTRA_DEFAULTS:
            defaults[name] = options.get(name, variant_defaults[name])
        # Parameter updates skipped by skip_nan_updates (not in state_dict).
        self.skipped_updates = 0
        # RMS(param) before the last step, for _get_lr (not in state_dict).
        self._rms_before_step: dict = {}
        self._stepper = _new_stepper()
        _hf.check_lr(lr, defaults["relative_step"])
        _validate(_hf.core_group(defaults))
        self._in_backward = (_in_backward.InBackward(self, accumulate_steps)
                             if step_in_backward else None)
        super().__init__(params, defaults)

    @property
    def step_in_backward(self) -> bool:
        """Whether the steps run inside backward (see remove_step_in_backward)."""
        return self._in_backward is not None

    @property
    def accumulate_steps(self) -> int:
        return self._in_backward.accumulate_steps if self._in_backward is not None else 1

    def remove_step_in_backward(self) -> None:
        """Removes the hooks of step_in_backward=True: from then on step() is the
        usual step (and updates gradients still accumulating, if any)."""
        if self._in_backward is not None:
            self._in_backward.remove()
            self._in_backward = None

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["eps"] = tuple(group["eps"])
        _hf.init_group(group)
        if (group["max_lr"] is None and group["weight_decay_mode"] == "corrected"
                and group["lr"] is not None and _number("lr", group["lr"]) > 0):
            # Corrected weight decay divides by the lr given here, which
            # schedules overwrite later.
            group["max_lr"] = _number("lr", group["lr"])
        _validate(_hf.core_group(group))
        for p in group["params"]:
            _check_parameter(p)
        if self.__dict__.get("_in_backward") is not None:
            self._in_backward.attach(group["params"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; with step_in_backward=True it does nothing (the gradients
        are already None, or accumulating for the next step)."""
        if self.__dict__.get("_in_backward") is not None:
            return
        if not set_to_none or _profiler_enabled():
            super().zero_grad(set_to_none)  # with torch's profiler range
            return
        # As torch's, without the profiler range, which costs more than this.
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's; a state dict of transformers' Adafactor (a Trainer
        checkpoint of ``optim="adafactor"``) is converted with
        :func:`from_transformers_state_dict` first."""
        super().load_state_dict(_hf.on_load(state_dict, from_transformers_state_dict))

    def _get_lr(self, param_group: dict, param_state: dict) -> float:
        """transformers' ``Adafactor._get_lr``, for
        ``transformers.optimization.AdafactorSchedule``: the step size of the
        group's first parameter at its last step (groups with ``lr=None``)."""
        return _hf.reported_lr(self._rms_before_step, param_group, param_state)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["accumulate_steps"] = (
            self._in_backward.accumulate_steps if self._in_backward is not None else None)
        return state

    def __setstate__(self, state: dict) -> None:
        # From a pickle (our __getstate__): hooks on the unpickled parameters.
        # From load_state_dict: the optimizer keeps its own (no key).
        accumulate_steps = state.pop("accumulate_steps", None)
        super().__setstate__(state)
        self.__dict__.setdefault("skipped_updates", 0)
        self.__dict__.setdefault("_rms_before_step", {})
        # What the stepper kept of the groups and states this replaces.
        self.__dict__.setdefault("_stepper", _new_stepper()).clear()
        self.__dict__.setdefault("_in_backward", None)
        if accumulate_steps is not None and self._in_backward is None:
            self._in_backward = _in_backward.InBackward(self, accumulate_steps)
            for group in self.param_groups:
                self._in_backward.attach(group["params"])
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            variant = group.setdefault("variant", _EXTRA_DEFAULTS["variant"])
            for key, value in _defaults_for(variant).items():
                if key in _EXTRA_DEFAULTS:
                    group.setdefault(key, value)
            group["eps"] = tuple(group["eps"])
            _hf.init_group(group)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)
                # load_state_dict casts state to the parameter's dtype; the
                # momentum keeps its own.
                if (_enum_name("momentum_dtype", group["momentum_dtype"]) == "bfloat16"
                        and "exp_avg" in p_state and p_state["exp_avg"].dtype != torch.bfloat16):
                    p_state["exp_avg"] = p_state["exp_avg"].to(torch.bfloat16)

    def _patch_step_function(self) -> None:
        # As torch's, with _hook_step in place of profile_hook_step.
        self._zero_grad_profile_name = (
            f"Optimizer.zero_grad#{self.__class__.__name__}.zero_grad")
        cls = self.__class__
        if not getattr(cls.step, "hooked", None):
            cls.step = _hook_step(cls.step)
            cls.step.hooked = True

    def step(self, closure=None):
        """Performs one optimization step; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._in_backward is not None:
            return loss  # the steps ran inside backward
        # Every group in one call, with the GIL released for the math.
        self._stepper.step(self, self.param_groups, self.state)
        return loss

    def _step_params(self, group: dict, params) -> None:
        """Steps `params` (a tensor, or a list of tensors, of ``group["params"]``)
        that have a gradient, with the group's options as the next ``step()``
        would use them; without the step hooks. For steps taken one parameter
        at a time (during backward)."""
        self._stepper.step_params(self, group, params, self.state)


_TRANSFORMERS_GROUP_KEYS = {"params", "lr", "eps", "clip_threshold", "decay_rate", "beta1",
                            "weight_decay", "scale_parameter", "relative_step", "warmup_init"}


def _init_signature():
    """Adafactor.__init__ as help() and inspect should show it: torch's
    arguments, then every further option of the table with its default."""
    import inspect

    sig = inspect.signature(Adafactor.__init__)
    torch_defaults = _defaults_for("torch")
    params = [p.replace(default=torch_defaults[p.name]) if p.default is _BY_VARIANT else p
              for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
               for name, value in _EXTRA_DEFAULTS.items()]
    return sig.replace(parameters=params)


Adafactor.__init__.__signature__ = _init_signature()


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
        relative_step = old.get("relative_step", True)
        groups.append({
            # Keys transformers' optimizer does not read, kept as they are: those
            # of LR schedulers (initial_lr) and of param_names.
            **{k: v for k, v in old.items() if k not in _TRANSFORMERS_GROUP_KEYS},
            "params": list(old["params"]),
            # With relative_step transformers ignores lr (None, or what
            # AdafactorSchedule last wrote): so do we (external_lr=False).
            "lr": old.get("lr"),
            "external_lr": not relative_step,
            "beta2_decay": old.get("decay_rate", -0.8),
            "eps": tuple(old.get("eps", (1e-30, 1e-3))),
            "d": old.get("clip_threshold", 1.0),
            "weight_decay": old.get("weight_decay", 0.0),
            "foreach": None,
            "maximize": False,
            "beta1": old.get("beta1"),
            "relative_step": relative_step,
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
