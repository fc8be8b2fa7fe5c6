"""The step inside backward through the Tcl door (torch::optimizer_adafactor
-stepInBackward / -accumulateSteps, performed by torch::tensor_backward) and
the C++ door (tcltorch::Adafactor::set_step_in_backward, through
examples/cpp_step_in_backward).

The forward pass runs in Tcl on parameters shared with Python. Each run with
the step in backward is compared bit for bit with the usual backward +
torch::optimizer_step over the same parameters and batches, and, for the
torch variant, with torch.optim.Adafactor stepped inside backward by
PyTorch's own post-accumulate-grad hooks (the pattern of torch's
_apply_optimizer_in_backward), as an independent reference."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, gradient_twice_message, run_tclsh
from reference import rel_err
from tcltorch.tcl import TclError

STEPS = 6
DTYPES = [torch.float32, torch.float64, torch.bfloat16]

# w and b are used twice in the graph; w and v are factored, b is not.
FORWARD = """
proc loss_of {x y} {
    global w b v
    set h [torch::add [torch::matmul $x $w] $b]
    set h [torch::add [torch::matmul $h $w] $b]
    return [torch::mse_loss [torch::matmul $h $v] $y]
}
"""

OPTIONS = {
    # momentum and weight decay, the transformers variant (Tcl's default)
    "beta1_wd": "-lr 0.05 -beta1 0.9 -weightDecay 0.05",
    # torch.optim.Adafactor's numbers, with weight decay
    "torch": "-variant torch -lr 0.05 -weightDecay 0.1",
}


def problem(dtype, batches, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w": (5, 5), "b": (5,), "v": (5, 3)}
    params = {k: (torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
              for k, s in shapes.items()}
    data = [(torch.randn(8, 5, generator=gen, dtype=torch.float64).to(dtype),
             torch.randn(8, 3, generator=gen, dtype=torch.float64).to(dtype))
            for _ in range(batches)]
    return params, data


def lr_at(step):
    """A schedule: the lr falls by a tenth each step."""
    return 0.05 * (1 - 0.1 * step)


def setup_tcl(tcl, params0, data):
    params = {k: p.clone().requires_grad_() for k, p in params0.items()}
    for k, p in params.items():
        tcl.eval(f"set {k} {tcl.put_tensor(p)}")
    batches = [(tcl.put_tensor(x), tcl.put_tensor(y)) for x, y in data]
    tcl.eval(FORWARD)
    return params, batches


def run_tcl(tcl, dtype, options, in_backward, accumulate=1, checkpoint=None):
    """STEPS steps of `accumulate` backward passes each, the lr set before
    each step. `checkpoint(tcl, opt, step, micro)` may replace the optimizer
    between backward passes; it returns the handle to go on with."""
    params0, data = problem(dtype, STEPS * accumulate)
    params, batches = setup_tcl(tcl, params0, data)
    extra = f" -stepInBackward 1 -accumulateSteps {accumulate}" if in_backward else ""
    make = f"torch::optimizer_adafactor -parameters [list $w $b $v] {options}{extra}"
    opt = tcl.eval(make)
    for step in range(STEPS):
        tcl.eval(f"torch::optimizer_lr {opt} {lr_at(step)}")
        for micro in range(accumulate):
            if checkpoint:
                opt = checkpoint(tcl, opt, step, micro, make)
            x, y = batches[step * accumulate + micro]
            tcl.eval(f"torch::tensor_backward [loss_of {x} {y}]")
            if in_backward:
                stepped = micro == accumulate - 1
                # After the stepping pass no gradient is left; before it they add up.
                grads = [tcl.eval(f"torch::tensor_grad ${k}") for k in "wbv"]
                assert (grads == ["", "", ""]) == stepped, (step, micro, grads)
        if not in_backward:
            tcl.eval(f"torch::optimizer_step {opt}")
            tcl.eval(f"torch::optimizer_zero_grad {opt}")
        else:
            before = {k: p.detach().clone() for k, p in params.items()}
            tcl.eval(f"torch::optimizer_step {opt}")  # nothing left to do
            tcl.eval(f"torch::optimizer_zero_grad {opt}")  # harmless
            assert all(torch.equal(before[k], params[k].detach()) for k in params)
    moved = {k: not torch.equal(params[k].detach(), params0[k]) for k in params}
    assert all(moved.values()), moved
    return {k: p.detach().clone() for k, p in params.items()}


def assert_same_bits(a, b):
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_step_in_backward_is_the_usual_step_bit_for_bit(tcl, dtype, options):
    usual = run_tcl(tcl, dtype, OPTIONS[options], in_backward=False)
    inside = run_tcl(tcl, dtype, OPTIONS[options], in_backward=True)
    assert_same_bits(inside, usual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_accumulate_steps_is_the_usual_step_after_n_backwards(tcl, dtype):
    usual = run_tcl(tcl, dtype, OPTIONS["beta1_wd"], in_backward=False, accumulate=3)
    inside = run_tcl(tcl, dtype, OPTIONS["beta1_wd"], in_backward=True, accumulate=3)
    assert_same_bits(inside, usual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_step_in_backward_matches_torch_adafactor_stepped_in_backward(tcl, dtype):
    """torch.optim.Adafactor, one per parameter, stepped by PyTorch's
    register_post_accumulate_grad_hook, which then frees the gradient."""
    got = run_tcl(tcl, dtype, OPTIONS["torch"], in_backward=True)
    params0, data = problem(dtype, STEPS)
    params = {k: p.clone().requires_grad_() for k, p in params0.items()}
    optims = {k: torch.optim.Adafactor([p], lr=0.05, weight_decay=0.1, foreach=False)
              for k, p in params.items()}

    def hook(k):
        def step(p):
            optims[k].step()
            p.grad = None
        return step

    for k, p in params.items():
        p.register_post_accumulate_grad_hook(hook(k))
    for step, (x, y) in enumerate(data):
        for o in optims.values():
            o.param_groups[0]["lr"] = lr_at(step)
        h = x @ params["w"] + params["b"]
        h = h @ params["w"] + params["b"]
        torch.nn.functional.mse_loss(h @ params["v"], y).backward()
        assert all(p.grad is None for p in params.values())
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for k in params:
        assert rel_err(got[k], params[k].detach()) <= tol, k


def test_save_and_load_in_the_middle_continue_bit_for_bit(tcl, tmp_path):
    """optimizer_save halfway, then: load into the same handle in the middle
    of an accumulation (the count goes on), or delete the handle and load into
    a new optimizer stepping in backward."""
    path = tmp_path / "opt.pt"
    usual = run_tcl(tcl, torch.float32, OPTIONS["beta1_wd"], in_backward=False, accumulate=2)

    def same_handle(tcl, opt, step, micro, make):
        if (step, micro) == (STEPS // 2, 1):
            tcl.eval(f"torch::optimizer_save {opt} {path}")
            tcl.eval(f"torch::optimizer_load {opt} {path}")
        return opt

    def new_handle(tcl, opt, step, micro, make):
        if (step, micro) == (STEPS // 2, 0):
            tcl.eval(f"torch::optimizer_save {opt} {path}")
            tcl.eval(f"torch::delete {opt}")
            opt = tcl.eval(make)
            tcl.eval(f"torch::optimizer_load {opt} {path}")
            tcl.eval(f"torch::optimizer_lr {opt} {lr_at(step)}")
        return opt

    for checkpoint in (same_handle, new_handle):
        inside = run_tcl(tcl, torch.float32, OPTIONS["beta1_wd"], in_backward=True,
                         accumulate=2, checkpoint=checkpoint)
        assert_same_bits(inside, usual)


def params_of(tcl):
    tcl.eval("set w [torch::zeros -shape {4 3} -requiresGrad 1]; set b [torch::zeros -shape {3} -requiresGrad 1]")
    return "[list $w $b]"


def error_of(tcl, script):
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    return info.value.message, info.value.code


@pytest.mark.parametrize("spelling", ["-stepInBackward 1 -accumulateSteps 2",
                                      "-step_in_backward yes -accumulate_steps 2"])
def test_camel_and_snake_case(tcl, spelling):
    opt = tcl.eval(f"torch::optimizer_adafactor -parameters {params_of(tcl)} {spelling}")
    assert opt.startswith("optimizer")


@pytest.mark.parametrize("args, message, code", [
    ("-accumulateSteps 0 -stepInBackward 1",
     'bad value "0" for -accumulateSteps: must be >= 1 (the number of backward passes',
     ("TORCH", "VALUE", "-accumulateSteps", "0")),
    ("-accumulateSteps 2.5 -stepInBackward 1",
     'bad value "2.5" for -accumulateSteps: must be an integer >= 1 (the number of backward passes',
     ("TORCH", "VALUE", "-accumulateSteps", "2.5")),
    ("-stepInBackward maybe", 'bad value "maybe" for -stepInBackward: must be a boolean',
     ("TORCH", "VALUE", "-stepInBackward", "maybe")),
    ("-accumulateSteps 4", 'bad value "4" for -accumulateSteps: takes effect only with -stepInBackward 1',
     ("TORCH", "VALUE", "-accumulateSteps", "4")),
    ("-stepInBackward 1 -shardState 1",
     'bad value "1" for -stepInBackward: cannot be combined with -shardState 1: the step in '
     'backward does not compose with sharded optimizer state (ZeRO-1): the sharded step needs the '
     'gradients averaged over the ranks, which happens only after backward',
     ("TORCH", "VALUE", "-stepInBackward", "1")),
])
def test_bad_values_and_refused_combinations(tcl, args, message, code):
    params = params_of(tcl)
    before = tcl.handles()
    got, got_code = error_of(tcl, f"torch::optimizer_adafactor -parameters {params} {args}")
    assert got.startswith(message), got
    assert got_code == code
    assert tcl.handles() == before  # nothing was created


# The rule for accumulate_steps and its wording are the core's
# (step_in_backward.h); each door says it in its own form.
ACCUMULATE_STEPS = ">= 1 (the number of backward passes whose gradients one step uses)"


def test_a_bad_accumulate_steps_is_worded_once_for_every_door(tcl):
    import tcltorch

    make = f"torch::optimizer_adafactor -parameters {params_of(tcl)} -stepInBackward 1"
    assert error_of(tcl, f"{make} -accumulateSteps 0")[0] == \
        f'bad value "0" for -accumulateSteps: must be {ACCUMULATE_STEPS}'
    assert error_of(tcl, f"{make} -accumulateSteps 2.5")[0] == \
        f'bad value "2.5" for -accumulateSteps: must be an integer {ACCUMULATE_STEPS}'
    params = [torch.zeros(2, requires_grad=True)]
    for value, error, shown in [(0, ValueError, "0"), (-2**70, ValueError, str(-2**70)),
                                (1.5, TypeError, "1.5 (float)"), (True, TypeError, "True (bool)")]:
        with pytest.raises(error) as info:
            tcltorch.Adafactor(params, step_in_backward=True, accumulate_steps=value)
        assert str(info.value) == f"accumulate_steps must be an integer {ACCUMULATE_STEPS}, got {shown}"
    # The C++ door's message is checked in test_cpp_example_is_the_usual_step_bit_for_bit.


def test_one_optimizer_per_parameter_until_the_first_is_deleted(tcl):
    params = params_of(tcl)
    first = tcl.eval(f"torch::optimizer_adafactor -parameters {params} -stepInBackward 1")
    message, code = error_of(
        tcl, f"torch::optimizer_adafactor -parameters {params} -stepInBackward 1")
    assert message == ('bad value "1" for -stepInBackward: step in backward: a parameter of shape '
                       '[4, 3] already has a post-accumulate-grad hook (another optimizer steps '
                       'it in backward), and a tensor has one such hook: remove it first')
    assert code == ("TORCH", "VALUE", "-stepInBackward", "1")
    # the usual step is still possible beside it
    tcl.eval(f"torch::optimizer_adafactor -parameters {params}")
    tcl.eval(f"torch::delete {first}")
    tcl.eval(f"torch::optimizer_adafactor -parameters {params} -stepInBackward 1")


def backward_once(tcl):
    tcl.eval("set x [torch::ones {2 4}]")
    tcl.eval("torch::tensor_backward [torch::sum [torch::add [torch::matmul $x $w] $b]]")


def test_no_step_and_no_crash_after_the_handle_is_deleted(tcl):
    params = params_of(tcl)
    w = tcl.tensor(tcl.eval("set w"))
    opt = tcl.eval(f"torch::optimizer_adafactor -parameters {params} -stepInBackward 1 -lr 0.1")
    backward_once(tcl)
    assert tcl.eval("torch::tensor_grad $w") == ""
    stepped = w.detach().clone()
    assert not torch.equal(stepped, torch.zeros(4, 3))
    tcl.eval(f"torch::delete {opt}")
    backward_once(tcl)  # the hooks went with the handle
    assert torch.equal(w.detach(), stepped)
    assert tcl.eval("torch::tensor_grad $w") != ""


# ------------------------------------------- backward passes that overlap
# Tcl has no backward inside a backward; one comes from Python (a reentrant
# activation checkpoint) over parameters shared with Tcl, whose hooks are the
# core's.

def checkpointed_model(tcl, options):
    """inp and out outside a reentrant checkpoint, mid only inside it; the
    optimizer is the Tcl door's."""
    gen = torch.Generator().manual_seed(3)
    params = {k: (torch.randn(s, generator=gen) * 0.5).requires_grad_()
              for k, s in {"inp": (5, 5), "mid": (5, 5), "out": (5, 3)}.items()}
    handles = " ".join(tcl.put_tensor(p) for p in params.values())
    opt = tcl.eval(f"torch::optimizer_adafactor -parameters [list {handles}] -lr 0.05 {options}")
    return params, opt


def checkpointed_loss(params, batch, use_reentrant=True, fail=False):
    from torch.utils.checkpoint import checkpoint

    class FailInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            return h.clone()

        @staticmethod
        def backward(ctx, g):
            raise ArithmeticError("a failing backward")

    gen = torch.Generator().manual_seed(10 + batch)
    x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
    h = torch.tanh(x @ params["inp"])
    h = checkpoint(lambda h: torch.tanh(h @ params["mid"]), h, use_reentrant=use_reentrant)
    if fail:
        h = FailInBackward.apply(h)
    return torch.nn.functional.mse_loss(h @ params["out"], y)


def test_accumulate_steps_refuses_a_backward_inside_a_backward(tcl):
    params, _opt = checkpointed_model(tcl, "-stepInBackward 1 -accumulateSteps 2")
    with pytest.raises(RuntimeError) as info:
        checkpointed_loss(params, 0).backward()
    message = str(info.value)
    assert ("accumulate_steps counts backward passes, and this backward pass began while another "
            "was still running (inside its backward, as torch.utils.checkpoint with "
            "use_reentrant=True does, or on another thread), so it would count as a pass of its "
            "own: checkpoint with use_reentrant=False, run one backward at a time, or use "
            "accumulate_steps 1 (accumulate_steps is 2)") in message, message


def test_accumulate_steps_goes_on_after_a_failed_backward(tcl):
    """A pass that fails (after it reached a parameter, so it counts) never
    reaches its end; the next pass does not overlap it."""
    params, _opt = checkpointed_model(tcl, "-stepInBackward 1 -accumulateSteps 2")
    usual, usual_opt = checkpointed_model(tcl, "")
    with pytest.raises(ArithmeticError):
        checkpointed_loss(params, 0, use_reentrant=False, fail=True).backward()
    assert params["out"].grad is not None and params["inp"].grad is None
    for p in params.values():
        p.grad = None
    # The failed pass was the first of two: the next one steps.
    for steps in ([1], [2, 3]):
        for batch in steps:
            checkpointed_loss(params, batch, use_reentrant=False).backward()
            checkpointed_loss(usual, batch, use_reentrant=False).backward()
        tcl.eval(f"torch::optimizer_step {usual_opt}; torch::optimizer_zero_grad {usual_opt}")
        for k in params:
            assert params[k].grad is None
            assert torch.equal(params[k].detach(), usual[k].detach()), (steps, k)


def test_one_step_per_pass_with_a_reentrant_checkpoint_is_the_usual_step(tcl):
    params, _opt = checkpointed_model(tcl, "-stepInBackward 1")
    usual, usual_opt = checkpointed_model(tcl, "")
    for batch in range(3):
        checkpointed_loss(params, batch).backward()
        checkpointed_loss(usual, batch).backward()
        tcl.eval(f"torch::optimizer_step {usual_opt}; torch::optimizer_zero_grad {usual_opt}")
    for k in params:
        assert torch.equal(params[k].detach(), usual[k].detach()), k


def tied_loss(params, batch, where, use_reentrant=True, detach=None):
    """mid used inside a checkpoint and outside it, `where` ("before" or
    "after" the checkpoint), as a tied embedding is; `detach` ("inside" or
    "outside") cuts the gradient of one use, for a reference (without a
    reentrant backward)."""
    from torch.utils.checkpoint import checkpoint

    gen = torch.Generator().manual_seed(10 + batch)
    x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
    inside = params["mid"].detach() if detach == "inside" else params["mid"]
    outside = params["mid"].detach() if detach == "outside" else params["mid"]
    h = torch.tanh(x @ params["inp"])
    if where == "before":  # an embedding, whose backward does not need the weight
        h = h + torch.nn.functional.embedding(torch.arange(8) % 5, outside)
    h = checkpoint(lambda h: torch.tanh(h @ inside), h,
                   use_reentrant=use_reentrant and detach is None)
    if where == "after":
        h = torch.tanh(h @ outside)
    return torch.nn.functional.mse_loss(h @ params["out"], y)


TWICE = gradient_twice_message(2, "[5, 5]")


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_parameter_inside_and_outside_a_reentrant_checkpoint_is_refused(tcl, where):
    """The refusal comes before the second step. Backward reaches `out`
    first (stepped as usual), then mid through one use, the one after the
    checkpoint in the forward pass (stepped with that part of its gradient),
    then mid again (refused, that part left in .grad), and never inp. Then
    training goes on as the usual step: without a reentrant backward, a
    parameter inside and outside a checkpoint is fine."""
    params, opt = checkpointed_model(tcl, "-stepInBackward 1")
    usual, usual_opt = checkpointed_model(tcl, "")
    with pytest.raises(RuntimeError) as info:
        tied_loss(params, 0, where).backward()
    assert TWICE in str(info.value), str(info.value)
    first, second = ("inside", "outside") if where == "before" else ("outside", "inside")
    if where == "before":
        # The second part (after, the checkpoint's recomputation ran with the
        # mid stepped by the first part, so no usual run has that part).
        tied_loss(usual, 0, where, detach=first).backward()
        assert torch.equal(params["mid"].grad, usual["mid"].grad)
        tcl.eval(f"torch::optimizer_zero_grad {usual_opt}")
    assert params["mid"].grad is not None
    tied_loss(usual, 0, where, detach=second).backward()
    usual["inp"].grad = None
    tcl.eval(f"torch::optimizer_step {usual_opt}; torch::optimizer_zero_grad {usual_opt}")
    for k in params:
        assert torch.equal(params[k].detach(), usual[k].detach()), k
    assert params["inp"].grad is None and params["out"].grad is None
    params["mid"].grad = None
    for batch in (1, 2):
        tied_loss(params, batch, where, use_reentrant=False).backward()
        tied_loss(usual, batch, where, use_reentrant=False).backward()
        tcl.eval(f"torch::optimizer_step {usual_opt}; torch::optimizer_zero_grad {usual_opt}")
        for k in params:
            assert params[k].grad is None
            assert torch.equal(params[k].detach(), usual[k].detach()), (batch, k)


# ------------------------------------------- the post-accumulate-grad slot
# A tensor has one post-accumulate-grad hook. Python's
# register_post_accumulate_grad_hook takes the slot the first time it is
# called on a tensor (replacing the core's hook) and keeps it after its
# handles are removed.

PYTHON_HOOK_NOTE = ("Python's register_post_accumulate_grad_hook takes the slot the first time "
                    "it is called on a tensor, and its hook object keeps it after every handle "
                    "is removed")


def lost_hook(position, shape):
    return (f"step in backward: parameter {position} of group 1 (counting from 1; shape {shape}) "
            "no longer holds this optimizer's post-accumulate-grad hook, so backward does not "
            "step it: a tensor has one such hook, and a Python hook replaced it "
            f"({PYTHON_HOOK_NOTE}); step that parameter with an optimizer that does not step "
            "in backward")


def test_a_hook_that_replaced_ours_is_an_error_naming_the_parameter(tcl):
    params, opt = checkpointed_model(tcl, "-stepInBackward 1")
    before = {k: p.detach().clone() for k, p in params.items()}
    handle = params["mid"].register_post_accumulate_grad_hook(lambda p: None)
    # At the next backward pass, before anything is stepped.
    with pytest.raises(RuntimeError) as info:
        checkpointed_loss(params, 0, use_reentrant=False).backward()
    assert lost_hook(2, "[5, 5]") in str(info.value), str(info.value)
    assert all(torch.equal(before[k], params[k].detach()) for k in params)
    # The emptied Python hook object still holds the slot; optimizer_step says so too.
    handle.remove()
    message, code = error_of(tcl, f"torch::optimizer_step {opt}")
    assert message == f"torch::optimizer_step: {lost_hook(2, '[5, 5]')}"
    assert code == ("TORCH", "LIBTORCH")


def test_a_lost_hook_is_an_error_of_optimizer_step_when_no_hook_is_left(tcl):
    """With every hook replaced, backward only accumulates: the step says why."""
    w = torch.zeros(4, 3, requires_grad=True)
    opt = tcl.eval(f"torch::optimizer_adafactor -parameters {tcl.put_tensor(w)} "
                   "-stepInBackward 1 -lr 0.1")
    w.register_post_accumulate_grad_hook(lambda p: None)
    (torch.ones(2, 4) @ w).sum().backward()
    assert w.grad is not None
    message, _ = error_of(tcl, f"torch::optimizer_step {opt}")
    assert message == f"torch::optimizer_step: {lost_hook(1, '[4, 3]')}"


def test_an_emptied_python_hook_still_holds_the_slot(tcl):
    w = torch.zeros(4, 3, requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda p: None).remove()
    w._post_accumulate_grad_hooks = None  # does not free the slot either
    message, code = error_of(tcl, f"torch::optimizer_adafactor -parameters {tcl.put_tensor(w)} "
                                  "-stepInBackward 1")
    assert message == ('bad value "1" for -stepInBackward: step in backward: a parameter of shape '
                       f'[4, 3] already has a post-accumulate-grad hook (a Python one: '
                       f'{PYTHON_HOOK_NOTE}), and a tensor has one such hook: step it with an optimizer '
                       'that does not step in backward')
    assert code == ("TORCH", "VALUE", "-stepInBackward", "1")


def test_no_crash_after_the_interpreter_is_deleted(tcl):
    w = torch.zeros(4, 3, requires_grad=True)
    tcl.eval(f"set w {tcl.put_tensor(w)}")
    tcl.eval("torch::optimizer_adafactor -parameters $w -stepInBackward 1 -lr 0.1")
    tcl.close()
    (torch.ones(2, 4) @ w).sum().backward()
    assert torch.equal(w.detach(), torch.zeros(4, 3))
    assert w.grad is not None


def test_optimizer_step_does_not_warn_in_tclsh():
    run = run_tclsh("""
package require torch
set w [torch::zeros -shape {4 3} -requiresGrad 1]
set opt [torch::optimizer_adafactor -parameters $w -stepInBackward 1]
torch::tensor_backward [torch::sum [torch::matmul [torch::ones {2 4}] $w]]
torch::optimizer_step $opt
puts [dict get [torch::optimizer_state $opt] parameters $w step]
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1"]
    assert "warning" not in run.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_is_refused_in_either_order():
    run = run_tclsh(f"""
package require torch
torch::distributed_init -rank 0 -worldSize 1 -masterAddr 127.0.0.1 -masterPort {free_port()} -timeout 60
set model [torch::linear 4 3]
set ddp [torch::distributed_data_parallel $model]
catch {{torch::optimizer_adafactor -parameters $ddp -stepInBackward 1}} msg opts
puts $msg
puts [dict get $opts -errorcode]
set other [torch::linear 4 3]
set opt [torch::optimizer_adafactor -parameters $other -stepInBackward 1]
catch {{torch::distributed_data_parallel $other}} msg opts
puts $msg
puts [dict get $opts -errorcode]
torch::distributed_destroy
""", timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    why = ("the step in backward does not compose with data parallel training: the gradients are "
           "averaged over the ranks only after backward, so a step inside backward would use "
           "this rank's local gradient")
    assert lines[0] == f'bad value "1" for -stepInBackward: {why}'
    assert lines[1] == "TORCH VALUE -stepInBackward 1"
    assert lines[2] == f"torch::distributed_data_parallel: data parallel: {why}"
    assert lines[3] == "TORCH DISTRIBUTED VALUE"


# ---------------------------------------------------------------- C++

def test_cpp_example_is_the_usual_step_bit_for_bit():
    """examples/cpp_step_in_backward, built against the installed CMake
    package (kept in build/ between runs, like the docs' C++ examples)."""
    prefix = subprocess.run([sys.executable, "-m", "tcltorch", "cmake-prefix"],
                            capture_output=True, text=True, check=True).stdout.strip()
    build = REPO / "build" / "step-in-backward-example"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    for cmd in (["cmake", "-S", str(REPO / "examples" / "cpp_step_in_backward"), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = subprocess.run([str(build / "step_in_backward")], capture_output=True, text=True,
                         env=env, timeout=300, cwd=build)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for dtype in ("float32", "float64", "bfloat16"):
        for n in (1, 3):
            assert f"{dtype}, accumulate_steps {n}: the same bits" in out
    assert re.search(r"^an error inside backward: lr must be a finite number", out, re.M)
    assert "refused: step in backward: a parameter of shape [8, 8] already has a " \
           "post-accumulate-grad hook (another optimizer steps it in backward)" in out
    assert f"refused: accumulate_steps must be an integer {ACCUMULATE_STEPS}, got 0\n" in out
    assert "after the optimizer is gone, backward only accumulates gradients" in out
