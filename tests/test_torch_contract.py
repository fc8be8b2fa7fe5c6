"""PyTorch's own error contract for Adafactor, run against tcltorch.Adafactor.

The inputs and expected errors are torch's (`optim_error_inputs_func_adafactor`
in torch.testing._internal.common_optimizers, shipped in the wheel), run the
way torch's test/test_optim.py (TestOptimRenewed.test_errors) runs them. Each
input is also run against torch.optim.Adafactor itself, so that the harness is
checked against the reference; and for the options torch checks, our message
must equal torch's, word for word, on values on both sides of each rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    optim_error_inputs_func_adafactor,
)

import tcltorch

CLASSES = [torch.optim.Adafactor, tcltorch.Adafactor]
ERROR_INPUTS = optim_error_inputs_func_adafactor(device="cpu", dtype=torch.float32)


def run_error_input(optim_cls, error_input):
    """As test_errors in torch's test/test_optim.py."""
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        if issubclass(error_input.error_type, Warning):
            with pytest.warns(error_input.error_type, match=error_input.error_regex):
                optim_cls(params, **kwargs)
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                optim_cls(params, **kwargs)
    elif error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
        optim = optim_cls(params, **kwargs)
        if issubclass(error_input.error_type, Warning):
            with pytest.warns(error_input.error_type, match=error_input.error_regex):
                optim.step()
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                optim.step()
    else:
        raise NotImplementedError(error_input.error_on)


def test_torch_has_the_error_inputs_we_expect():
    descs = [e.optimizer_error_input.desc for e in ERROR_INPUTS]
    # The Adafactor-specific ones on top of those of every optimizer.
    assert {"epsilon1 should be >= 0", "invalid d", "invalid beta2_decay",
            "does not support complex parameters"} <= set(descs)


@pytest.mark.parametrize("optim_cls", CLASSES, ids=["torch", "tcltorch"])
@pytest.mark.parametrize("error_input", ERROR_INPUTS,
                         ids=[e.optimizer_error_input.desc for e in ERROR_INPUTS])
def test_error_inputs(optim_cls, error_input):
    run_error_input(optim_cls, error_input)


# (keyword arguments) for each check torch makes, on both sides of its rule.
CHECKED = [
    dict(lr=-1.0), dict(lr=-1e-300), dict(lr=float("nan")), dict(lr=0.0),
    dict(beta2_decay=0.8), dict(beta2_decay=1e-30), dict(beta2_decay=0.0),
    dict(eps=(-1e-30, 1e-3)), dict(eps=(-2.0, 1e-3)), dict(eps=(0.0, 1e-3)),
    dict(eps=(None, -1e-3)), dict(eps=(None, -0.5)), dict(eps=(None, 0.0)),
    dict(d=0.0), dict(d=0.5), dict(d=0.999999), dict(d=1.0), dict(d=-3.0), dict(d=12.5),
    dict(weight_decay=-0.1), dict(weight_decay=-1e20), dict(weight_decay=0.0),
    # numbers as Python prints them
    dict(d=1e-5), dict(d=0.1 + 0.2), dict(lr=-1e6), dict(lr=-1e16), dict(weight_decay=-1e-4),
    dict(weight_decay=-123456.5), dict(d=-0.0), dict(d=5e-324),
    dict(lr=-1.0, d=0.5),  # the first failing check wins, in torch's order
    dict(d=0.5, weight_decay=-1.0), dict(eps=(None, -1.0), d=0.5),
    dict(beta2_decay=0.5, eps=(-1.0, -1.0)),
]


def outcome(optim_cls, kwargs):
    try:
        optim_cls([torch.nn.Parameter(torch.randn(3, 2))], **kwargs)
    except Exception as e:  # noqa: BLE001 - the outcome is what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("kwargs", CHECKED, ids=[str(k) for k in CHECKED])
def test_messages_equal_torch(kwargs):
    ours = outcome(tcltorch.Adafactor, kwargs)
    theirs = outcome(torch.optim.Adafactor, kwargs)
    assert ours == theirs


def test_torch_rules_are_only_for_the_torch_variant():
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    with pytest.raises(ValueError, match=r"^Clipping threshold d should be >= 1 but is: 0\.5$"):
        tcltorch.Adafactor(params, d=0.5)
    # transformers' own clip threshold may be below 1, as in transformers.
    opt = tcltorch.Adafactor(params, d=0.5, variant="transformers")
    assert opt.param_groups[0]["d"] == 0.5
    # our messages (not torch's) for what torch does not check
    with pytest.raises(ValueError, match="d must be a finite number"):
        tcltorch.Adafactor(params, d=math.inf)
    with pytest.raises(ValueError, match=r"beta1 must be in \[0, 1\) or unset"):
        tcltorch.Adafactor(params, beta1=1.0)


def test_foreach_is_accepted_and_ignored():
    # Not a comparison with torch: foreach selects nothing in tcltorch, so
    # both runs are the same fused steps and must agree to the bit.
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 4, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    runs = []
    for foreach in (None, False, True):
        params = [p.clone().requires_grad_() for p in start]
        opt = tcltorch.Adafactor(params, foreach=foreach)
        assert opt.param_groups[0]["foreach"] is foreach
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        runs.append(params)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
