"""The step inside backward for ``tcltorch.Adafactor(..., step_in_backward=True)``.

Each parameter's Adafactor update depends only on its own gradient and state,
so it can run the moment autograd has accumulated that gradient
(``Tensor.register_post_accumulate_grad_hook``); the gradient is then freed.
A training step then holds about one gradient at a time instead of all of them:
small gradients wait in a batch (max(1 MiB, 1/8 of the largest parameter)) so
that they take one call into the core (``step_parameters``) per group.

With ``accumulate_steps=N`` the gradients of N backward passes accumulate as
usual and the step runs inside the N-th one: each parameter in its hook, and at
the end of that pass every parameter that holds a gradient from an earlier pass
of the window but got none in this one (what the usual step would update).

A backward pass run inside another (torch.utils.checkpoint with
use_reentrant=True) steps what it accumulated; a parameter that both passes
reach (used inside and outside the checkpoint) would be stepped twice with
parts of its gradient, and is refused at its second hook, before that step.

The hooks and the objects they reach hold the optimizer only weakly: an
optimizer that is garbage collected removes its hooks.

Under DistributedDataParallel the optimizer takes part in torch's protocol for
optimizers in backward (``param._in_backward_optimizers``, filled by
``torch.distributed.optim._apply_optimizer_in_backward``): DDP removes our hooks
and runs the step after its all-reduce. FSDP2 calls the hooks itself after its
reduce-scatter. ZeroRedundancyOptimizer is refused (see ``refuse_zero``).
"""
from __future__ import annotations

import gc
import sys
import weakref

import torch
from torch import Tensor

from . import _C


def _check_accumulate_steps(value) -> None:
    # The rule and the message are the core's (every door's); only the type
    # is Python's to check (a bool is an int to Python, not a count).
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(_C.accumulate_steps_error(f"{value!r} ({type(value).__name__})"))
    _C.check_accumulate_steps(value)


def check_arguments(step_in_backward, accumulate_steps) -> None:
    """Clear errors for the two optimizer-level keyword arguments."""
    if not isinstance(step_in_backward, bool):
        raise TypeError(
            f"step_in_backward must be True or False, got {step_in_backward!r} "
            f"({type(step_in_backward).__name__})")
    _check_accumulate_steps(accumulate_steps)
    if accumulate_steps != 1 and not step_in_backward:
        raise ValueError(
            f"accumulate_steps={accumulate_steps} requires step_in_backward=True; with "
            "the usual step, accumulate by calling step() after every "
            f"{accumulate_steps} backward passes")


def step_parameters(optimizer, group: dict, params: list) -> None:
    """The step of some parameters of one group, with the group's options as
    they are now (LR schedulers and param_groups edits take effect): the one
    call into the core, through the same stepper as step()."""
    optimizer._step_params(group, params)


def _zero_class():
    # Only when torch.distributed's ZeRO has been imported: it is then what
    # may be constructing us.
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return getattr(module, "ZeroRedundancyOptimizer", None)


def refuse_zero() -> None:
    """ZeroRedundancyOptimizer builds its inner optimizer with the wrapper's
    keyword arguments; refuse there, at construction."""
    zero = _zero_class()
    if zero is None:
        return
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return
        if isinstance(frame.f_locals.get("self"), zero):
            raise RuntimeError(
                "tcltorch.Adafactor(step_in_backward=True) cannot run inside "
                "ZeroRedundancyOptimizer: ZeRO copies its param_groups (the lr an LR "
                "scheduler sets) into the inner optimizer only inside its own step(), "
                "after the backward pass in which the inner steps already ran, so every "
                "change would take effect one step late. Use step_in_backward=False "
                "under ZeroRedundancyOptimizer, or step_in_backward=True with "
                "DistributedDataParallel alone")
        frame = frame.f_back


# Gradients of small parameters wait until they add up to this many bytes, or to
# 1/_BATCH_FRACTION of the largest parameter, before one call into the core.
_MIN_BATCH_BYTES = 1 << 20
_BATCH_FRACTION = 8


class _Hook:
    """The post-accumulate-grad hook of one parameter (holds its optimizer weakly)."""

    __slots__ = ("owner",)

    def __init__(self, owner: "InBackward") -> None:
        self.owner = owner

    def __call__(self, p: Tensor) -> None:
        self.owner.on_accumulated(p)


class _DDPStep:
    """What DDP's optimizer-in-backward comm hook calls, for one parameter:
    ``step()`` after the all-reduce has put the averaged gradient in ``p.grad``."""

    def __init__(self, owner: "InBackward", p: Tensor) -> None:
        self._owner = owner
        self._param = weakref.ref(p)

    def step(self, closure=None) -> None:
        p = self._param()
        optimizer = self._owner.optimizer()
        if p is None or optimizer is None or p.grad is None:
            return
        if self._owner.accumulate_steps != 1:
            raise RuntimeError(
                "tcltorch.Adafactor(accumulate_steps="
                f"{self._owner.accumulate_steps}) cannot run under "
                "DistributedDataParallel: DDP steps optimizers in backward after every "
                "all-reduce and then sets the gradients to None, so nothing "
                "accumulates. Use accumulate_steps=1 and DDP's no_sync() for the first "
                "N-1 micro-batches")
        if not torch.accelerator.is_available():
            _keep_ddp_from_queueing_its_stream_callback(sys._getframe(1))
        # The gradient is a view of DDP's bucket, which lives on anyway:
        # batching the steps costs no memory here.
        self._owner.on_accumulated(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def __reduce__(self):
        # A pickled or deep-copied parameter (torch.save(model), copy.deepcopy)
        # does not take its optimizer along.
        return (_Orphan, ())


class _Orphan:
    """Stands, in a copied parameter's ``_in_backward_optimizers``, for the
    optimizer of the original; DDP must not take the copy for one stepped in
    backward (it would set its gradients to None after every backward)."""

    def step(self, closure=None) -> None:
        raise RuntimeError(
            "this parameter is a copy (pickle or deepcopy) of one that "
            "tcltorch.Adafactor(step_in_backward=True) steps in backward, and its "
            "_in_backward_optimizers entry has no optimizer: construct the optimizer "
            "for the copy (which replaces the entry), or delete "
            "param._in_backward_optimizers before wrapping the model in "
            "DistributedDataParallel")

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


class _Running:
    """Alive while one backward pass runs: held by the callback queued on that
    pass, dropped when the callback runs at its end or when autograd drops a
    pass that failed (weak references to it then die)."""

    __slots__ = ("__weakref__",)


class InBackward:
    """The hooks of one optimizer and its count of backward passes."""

    def __init__(self, optimizer, accumulate_steps: int) -> None:
        self.optimizer = weakref.ref(optimizer)
        self.accumulate_steps = accumulate_steps
        # Per parameter (by id, the parameter being held by the optimizer):
        # (parameter, handle, DDP step object).
        self._hooked: dict[int, tuple] = {}
        self._passes = 0          # backward passes seen in this window
        self._pass_task = None    # autograd graph task of the current pass
        self._stepped: set[int] = set()  # parameters stepped in this pass
        self._pass_running = None  # weak reference to the _Running of the current pass
        # Per parameter (by id): (graph task, weak _Running) of the pass whose
        # hook took its gradient last, to refuse a second one within that pass.
        self._taken_in: dict[int, tuple] = {}
        self._groups_key = None
        self._group_by_param: dict[int, dict] = {}
        # Gradients waiting for one call into the core, by group.
        self._pending: dict[int, tuple] = {}
        self._pending_bytes = 0
        self._batch_bytes = _MIN_BATCH_BYTES
        # No hook may outlive the optimizer (the hooks dict lives on the
        # parameter, which usually does).
        self._finalizer = weakref.finalize(optimizer, InBackward._remove_all, self._hooked)

    # Registration -------------------------------------------------------
    def attach(self, params) -> None:
        params = list(params)
        _refuse_ddp_already_running(params)
        for p in params:
            if id(p) in self._hooked:
                continue
            # The batch stays a small fraction of the largest parameter.
            self._batch_bytes = max(self._batch_bytes,
                                    p.numel() * p.element_size() // _BATCH_FRACTION)
            if not p.requires_grad:
                # Frozen: no hook (autograd refuses one). Should it get a
                # gradient later, the end of a stepping pass updates it.
                continue
            self._refuse_a_second_optimizer(p)
            handle = p.register_post_accumulate_grad_hook(_Hook(self))
            ddp_step = _DDPStep(self, p)
            _offer_to_ddp(p, handle, ddp_step)
            self._hooked[id(p)] = (p, handle, ddp_step)

    def _refuse_a_second_optimizer(self, p: Tensor) -> None:
        def others():
            return [o for o in getattr(p, "_in_backward_optimizers", ())
                    if isinstance(o, _DDPStep) and o._owner is not self
                    and o._owner.optimizer() is not None]

        if others():
            gc.collect()  # one no longer referenced, in a cycle not yet collected
            if others():
                raise ValueError(
                    "a parameter is already stepped in backward by another "
                    "tcltorch.Adafactor(step_in_backward=True): both would update it in "
                    "every backward pass; call remove_step_in_backward() on the other "
                    "optimizer first")

    def remove(self) -> None:
        taken = [p for p, handle, _ in self._hooked.values()
                 if handle.id not in (p._post_accumulate_grad_hooks or {})]
        if taken:
            raise RuntimeError(
                "remove_step_in_backward(): DistributedDataParallel has taken over the "
                "steps in backward of this optimizer's parameters and keeps that mode "
                "for the life of the DDP module (it no longer copies the all-reduced "
                "gradients into .grad for a usual step)")
        InBackward._remove_all(self._hooked)

    @staticmethod
    def _remove_all(hooked: dict) -> None:
        torch_handles = _torch_handle_map()
        for p, handle, ddp_step in hooked.values():
            handle.remove()
            listed = torch_handles.get(p) if torch_handles is not None else None
            if listed is not None:
                listed[:] = [h for h in listed if h is not handle]
            optimizers = getattr(p, "_in_backward_optimizers", None)
            if optimizers is not None:
                optimizers[:] = [o for o in optimizers if o is not ddp_step]
                if not optimizers:
                    for name in ("_in_backward_optimizers", "_optimizer_classes",
                                 "_optimizer_kwargs"):
                        if hasattr(p, name):
                            delattr(p, name)
        hooked.clear()

    # The step -----------------------------------------------------------
    def group_of(self, p: Tensor):
        """The group of p now (read once per pass: load_state_dict and
        param_groups edits between passes replace group dicts)."""
        if self._pass_task is None or self._groups_key is None:
            self._map_groups()
        return self._group_by_param.get(id(p))

    def _map_groups(self) -> None:
        groups = self.optimizer().param_groups
        key = tuple((id(g), id(g["params"]), len(g["params"])) for g in groups)
        if key != self._groups_key:
            self._group_by_param = {id(q): g for g in groups for q in g["params"]}
            self._groups_key = key

    def _begin_pass_if_new(self) -> None:
        task = torch._C._current_graph_task_id()
        if task == self._pass_task:
            return
        if self.accumulate_steps > 1 and _nested_backward():
            raise RuntimeError(
                f"tcltorch.Adafactor(accumulate_steps={self.accumulate_steps}) counts "
                "backward passes, and this is a backward pass run inside another one "
                "(torch.utils.checkpoint with use_reentrant=True does that), which would "
                "count as a pass of its own: checkpoint with use_reentrant=False, or use "
                "accumulate_steps=1")
        self._pass_task = task
        self._map_groups()
        self._passes += 1
        self._stepped.clear()
        # Left by a pass that raised (its end never came): their gradients
        # stay and accumulate, as with the usual step.
        self._pending.clear()
        self._pending_bytes = 0
        owner = weakref.ref(self)
        running = [_Running()]
        self._pass_running = weakref.ref(running[0])

        def end_of_pass() -> None:
            running.clear()
            me = owner()
            if me is not None:
                me._end_pass()

        torch.autograd.Variable._execution_engine.queue_callback(end_of_pass)

    def _stepping_pass(self) -> bool:
        return self._passes % self.accumulate_steps == 0

    def on_accumulated(self, p: Tensor) -> None:
        """A parameter's gradient is complete for this pass."""
        optimizer = self.optimizer()
        if optimizer is None:
            return
        self._begin_pass_if_new()
        if not self._stepping_pass() or p.grad is None:
            return
        group = self.group_of(p)
        if group is None:  # removed from param_groups by hand
            return
        self._refuse_a_second_gradient_in_one_pass(optimizer, p)
        self._stepped.add(id(p))
        self._enqueue(group, p)

    def _refuse_a_second_gradient_in_one_pass(self, optimizer, p: Tensor) -> None:
        """Refuses, before its second step, a parameter whose gradient was
        already taken within the time of this pass: by a pass that began after
        it (one inside it: graph task ids grow) or by one still running (this
        pass then runs inside it), as with a parameter used both inside and
        outside torch.utils.checkpoint(..., use_reentrant=True)."""
        task = self._pass_task
        if task is None or task < 0:  # not inside a backward pass (DDP, FSDP2)
            return
        taken = self._taken_in.get(id(p))
        self._taken_in[id(p)] = (task, self._pass_running)
        if taken is None:
            return
        task_then, running_then = taken
        if task_then < task and running_then() is None:
            return
        self._taken_in[id(p)] = taken
        group, position = next((g, i) for g, entry in enumerate(optimizer.param_groups)
                               for i, q in enumerate(entry["params"]) if q is p)
        raise RuntimeError(_C.gradient_twice_in_one_pass_error(
            group, position, str(list(p.shape))))

    def _enqueue(self, group: dict, p: Tensor) -> None:
        # Gradients wait in a small batch, so that many small parameters
        # (biases, norms) take one call into the core; a large one goes at once.
        # Sizes are whole-parameter ones, the same on every rank (FSDP2's
        # steps all-reduce, so every rank must batch alike).
        entry = self._pending.get(id(group))
        if entry is None:
            entry = self._pending[id(group)] = (group, [])
        entry[1].append(p)
        self._pending_bytes += p.numel() * p.element_size()
        if self._pending_bytes >= self._batch_bytes:
            self._flush()

    def _flush(self) -> None:
        optimizer = self.optimizer()
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        if optimizer is None:
            return
        with torch.no_grad():
            for group, params in pending.values():
                step_parameters(optimizer, group, params)
                for p in params:
                    p.grad = None

    def _taken_by_ddp(self, p: Tensor) -> bool:
        entry = self._hooked.get(id(p))
        return entry is not None and entry[1].id not in (p._post_accumulate_grad_hooks or {})

    def _end_pass(self) -> None:
        self._pass_task = None
        optimizer = self.optimizer()
        if optimizer is None or not self._stepping_pass():
            return
        self._passes = 0
        # The usual step updates every parameter that holds a gradient: here
        # also those that got one only in earlier passes of the window.
        for group in optimizer.param_groups:
            for p in group["params"]:
                if (p.grad is not None and id(p) not in self._stepped
                        and not self._taken_by_ddp(p)):
                    self._stepped.add(id(p))
                    self._enqueue(group, p)
        self._flush()
        self._stepped.clear()


def _offer_to_ddp(p: Tensor, handle, ddp_step: _DDPStep) -> None:
    """Takes part in torch's protocol for optimizers in backward, which
    DistributedDataParallel reads before its first forward: it removes the hooks
    listed in ``param_to_optim_hook_handle_map`` and calls ``step()`` of each of
    ``p._in_backward_optimizers`` once the all-reduced gradient is in place."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.optim import apply_optimizer_in_backward as torch_in_backward

    _drop_orphans(p)
    if not hasattr(p, "_in_backward_optimizers"):
        p._in_backward_optimizers = []
        p._optimizer_classes = []
        p._optimizer_kwargs = []
    p._in_backward_optimizers.append(ddp_step)
    p._optimizer_classes.append(type(ddp_step))
    p._optimizer_kwargs.append({})
    handles = torch_in_backward.param_to_optim_hook_handle_map
    if p not in handles:
        handles[p] = []
    handles[p].append(handle)


def _drop_orphans(p: Tensor) -> None:
    optimizers = getattr(p, "_in_backward_optimizers", None)
    if optimizers is None or not any(isinstance(o, _Orphan) for o in optimizers):
        return
    keep = [i for i, o in enumerate(optimizers) if not isinstance(o, _Orphan)]
    for name in ("_in_backward_optimizers", "_optimizer_classes", "_optimizer_kwargs"):
        values = getattr(p, name, [])
        setattr(p, name, [values[i] for i in keep if i < len(values)])
    if not keep:
        for name in ("_in_backward_optimizers", "_optimizer_classes", "_optimizer_kwargs"):
            delattr(p, name)


def _refuse_ddp_already_running(params) -> None:
    """DDP reads ``_in_backward_optimizers`` once, before its first forward;
    after that our hooks would step the local gradients before its all-reduce."""
    ddp_module = sys.modules.get("torch.nn.parallel.distributed")
    if (ddp_module is None or not torch.distributed.is_available()
            or not torch.distributed.is_initialized()):
        return
    ids = {id(p) for p in params}
    for obj in gc.get_objects():
        if (isinstance(obj, ddp_module.DistributedDataParallel)
                and getattr(obj, "_lazy_init_ran", False)
                and any(id(p) in ids for p in obj._module_parameters)):
            raise RuntimeError(
                "tcltorch.Adafactor(step_in_backward=True) must be constructed before the "
                "first forward pass of the DistributedDataParallel module that holds its "
                "parameters: DDP looks for optimizers in backward only then, and "
                "otherwise the steps would use each rank's own gradients before the "
                "all-reduce")


def _keep_ddp_from_queueing_its_stream_callback(frame) -> None:
    """torch's DDP comm hook for optimizers in backward queues, once per
    backward pass, a callback that waits for its optimizer stream and sets the
    gradients to None; without an accelerator ``torch.accelerator.current_stream()``
    raises there (torch 2.13), after the steps. The callback is queued only
    while the hook's state says it is not yet: we say it is, and set each
    gradient to None after its step instead (the stream wait has nothing to
    wait for on the CPU)."""
    state = frame.f_locals.get("optim_stream_state") if frame is not None else None
    if state is None or not hasattr(state, "wait_for_optim_stream_enqueued"):
        raise RuntimeError(
            "tcltorch.Adafactor(step_in_backward=True) under DistributedDataParallel "
            "without an accelerator relies on DDP's comm hook for optimizers in backward "
            "(torch.distributed.algorithms.ddp_comm_hooks.optimizer_overlap_hooks) as "
            "torch 2.13 has it; this torch's differs. Use step_in_backward=False under DDP")
    state.wait_for_optim_stream_enqueued = True


def _nested_backward() -> bool:
    """Whether this thread runs a backward pass inside another one (a
    reentrant backward): two calls into autograd's engine on its stack."""
    from torch.autograd import graph

    code = graph._engine_run_backward.__code__
    frame, calls = sys._getframe(1), 0
    while frame is not None:
        if frame.f_code is code:
            calls += 1
            if calls > 1:
                return True
        frame = frame.f_back
    return False


def _torch_handle_map():
    """torch's map of the hooks DDP removes (see _offer_to_ddp), if loaded."""
    module = sys.modules.get("torch.distributed.optim.apply_optimizer_in_backward")
    return getattr(module, "param_to_optim_hook_handle_map", None)
