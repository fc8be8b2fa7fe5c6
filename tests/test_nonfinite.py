"""Non-finite gradients: by default they flow into the update (as in
torch.optim.Adafactor); with skip_nan_updates / -skipNonFinite the step of
that parameter is skipped, state included, and counted."""
from __future__ import annotations

import math

import pytest
import torch

import tcltorch
from tcltorch import _C


def grads(shape, bad_steps, kind, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    out = []
    for step in range(6):
        g = torch.randn(shape, generator=gen).to(dtype)
        if step in bad_steps:
            g.view(-1)[3] = kind
        out.append(g)
    return out


@pytest.mark.parametrize("kind", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("shape, dtype", [((6, 5), torch.float32), ((7,), torch.float64),
                                          ((6, 5), torch.float16)])  # float16: ATen path
def test_skipped_steps_change_nothing_and_are_counted(kind, shape, dtype):
    good = [g for i, g in enumerate(grads(shape, {2, 4}, kind, dtype)) if i not in (2, 4)]
    p0 = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    skipping, clean = p0.clone(), p0.clone()
    opt = tcltorch.Adafactor([skipping], skip_nan_updates=True, beta1=0.9)
    ref = tcltorch.Adafactor([clean], beta1=0.9)
    for g in grads(shape, {2, 4}, kind, dtype):
        skipping.grad = g
        opt.step()
    for g in good:
        clean.grad = g
        ref.step()
    assert torch.equal(skipping, clean)
    for k in ref.state[clean]:
        assert torch.equal(opt.state[skipping][k], ref.state[clean][k]), k
    assert opt.skipped_updates == 2 and ref.skipped_updates == 0


def test_default_lets_non_finite_values_through_like_torch():
    ours, theirs = torch.ones(4, 4), torch.ones(4, 4)
    g = torch.ones(4, 4)
    g[0, 0] = math.nan
    ours.grad, theirs.grad = g.clone(), g.clone()
    tcltorch.Adafactor([ours]).step()
    torch.optim.Adafactor([theirs]).step()
    assert torch.isnan(ours).any() and torch.isnan(theirs).any()


def test_core_object_counts_skips():
    p = torch.zeros(3, 3)
    opt = _C.Adafactor([p], skip_nan_updates=True)
    p.grad = torch.full((3, 3), math.inf)
    opt.step()
    assert opt.skipped_updates == 1 and torch.equal(p, torch.zeros(3, 3))
    assert opt.state(p)["step"].item() == 0


def test_tcl_skip_non_finite_option(tcl):
    p = tcl.put_tensor(torch.ones(4, 3))
    tcl.eval(f"set opt [torch::optimizer_adafactor -parameters {p} -skipNonFinite 1]")
    t = tcl.tensor(p)
    g = torch.ones(4, 3)
    g[1, 1] = math.nan
    t.grad = g
    tcl.eval("torch::optimizer_step $opt")
    assert torch.equal(t, torch.ones(4, 3))
    state = tcl.eval("torch::optimizer_state $opt")
    assert tcl.eval(f"dict get {{{state}}} skipped_updates") == "1"
    t.grad = torch.ones(4, 3)
    tcl.eval("torch::optimizer_step $opt")
    assert not torch.equal(t, torch.ones(4, 3))
    # snake_case spelling
    assert tcl.eval(f"torch::optimizer_adafactor -parameters {p} -skip_non_finite true")
