"""The fused kernel's 3x3 small-group path (eight groups a vector lane) and
the sum of param^2 it keeps from one step's last pass for the next, against
torch.optim.Adafactor: tiny trailing dims, outside writes to the parameter
between steps, bf16 and fp64 parameters."""
from __future__ import annotations

import pytest
import torch

from tcltorch import _C
from reference import ReferenceAdafactor, rel_err

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
# 3x3 conv weights: group counts that are and are not multiples of eight
# (the leftovers take the per-batch arrays), one and several blocks.
CONV_SHAPES = [(13, 7, 3, 3), (64, 32, 3, 3), (256, 160, 3, 3), (5, 3, 3)]


def steps(shape, dtype, n, seed=0, outside=None, zero_rows=False, ours_kw=None, torch_kw=None):
    """Ours (the C++ core) and torch.optim.Adafactor side by side for n steps;
    `outside(step, tensor)` writes to both parameters between steps."""
    gen = torch.Generator().manual_seed(seed)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    a, b = p0.clone(), p0.clone()
    ours = _C.Adafactor([a], **(ours_kw or {}))
    ref = torch.optim.Adafactor([b], foreach=False, **(torch_kw or {}))
    for k in range(n):
        g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if k == 1:
            g.zero_()
        if zero_rows:
            g[..., 0, :] = 0
            g[..., :, 0] = 0
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        if outside is not None:
            with torch.no_grad():
                outside(k, a)
                outside(k, b)
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_3x3_groups_match_torch_adafactor(shape, dtype):
    a, b = steps(shape, dtype, 10)
    assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("shape", [(13, 7, 3, 3), (64, 32, 3, 3)])
@pytest.mark.parametrize("maximize", [False, True])
def test_3x3_groups_where_the_floor_bites(shape, maximize):
    # Whole rows and columns of zero gradient: torch floors V at eps1^2 in
    # those groups, which then take U element by element, with the sign of
    # maximize.
    kw = {"maximize": maximize, "weight_decay": 0.1, "lr": 0.05}
    a, b = steps(shape, torch.float32, 8, zero_rows=True, ours_kw=kw, torch_kw=kw)
    assert torch.isfinite(a).all()
    assert rel_err(a, b) <= 1e-6


def scale_then_shift(step, t):
    t.mul_(0.5 if step % 2 == 0 else 1.5)
    t.add_(0.25)


@pytest.mark.parametrize("shape", [(300, 520), (64, 32, 3, 3), (5000,), (40, 3, 50, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outside_writes_between_steps_are_seen(shape, dtype):
    # The kept sum of param^2 must not outlive a write to the parameter:
    # in place (version counter), through a view, and by swapping its data.
    def outside(step, t):
        if step % 3 == 0:
            scale_then_shift(step, t)
        elif step % 3 == 1:
            t.view(-1)[::7].mul_(3.0)
        else:
            t.data = t.data * 0.75  # new storage, same tensor
    a, b = steps(shape, dtype, 9, outside=outside)
    assert rel_err(a, b) <= TOL[dtype]


def run_ours(shape, dtype, n, invalidate, **options):
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    opt = _C.Adafactor([p], **options)
    for _ in range(n):
        p.grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
        if invalidate:
            with torch.no_grad():
                p.mul_(1.0)  # the same values, a new version
    return p


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 520), (64, 32, 3, 3), (13, 7, 3, 3), (5000,), (20, 3, 45, 50),
                                   (2, 301, 1003)])
@pytest.mark.parametrize("options", [{}, {"beta1": 0.9, "weight_decay": 0.01},
                                     {"variant": "transformers"}, {"d": 0.05},
                                     {"variant": "transformers", "d": 0.05}],
                         ids=["torch", "momentum", "transformers", "clipped", "transformers-clipped"])
def test_kept_sum_gives_the_same_bits_as_recomputing(shape, dtype, options):
    # Every step of one run takes the kept sum, every step of the other sums
    # the parameter afresh: the kernel sums in one order, so the bits agree.
    kept = run_ours(shape, dtype, 6, False, **options)
    fresh = run_ours(shape, dtype, 6, True, **options)
    assert torch.equal(kept, fresh)


@pytest.mark.parametrize("shape", [(256, 96), (64, 32, 3, 3)])
def test_bf16_params_close_to_torch_adafactor(shape):
    a, b = steps(shape, torch.bfloat16, 6, outside=lambda k, t: t.mul_(0.9) if k == 2 else None)
    assert a.dtype == torch.bfloat16
    assert rel_err(a, b) <= 1e-2
    # torch computes in bf16 where the core computes in fp32: most values agree.
    assert (a == b).float().mean() > 0.8


def test_inference_tensors_step_without_a_kept_sum():
    # Tensors made under inference_mode have no version counter: nothing is
    # kept, and the step still matches torch.
    with torch.inference_mode():
        a = torch.randn(64, 48)
        b = a.clone()
        ours = _C.Adafactor([a])
        ref = torch.optim.Adafactor([b], foreach=False)
        gen = torch.Generator().manual_seed(5)
        for _ in range(4):
            g = torch.randn(64, 48, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
            ours.step()
            ref.step()
    assert rel_err(a, b) <= 1e-6


def updates_against_reference(shape, dtype, n, zero_rows=False, **options):
    """The total update (p_n - p_0) of ours and of the plain-ops reference
    after n steps on gradients whose columns differ in scale."""
    gen = torch.Generator().manual_seed(11)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()
    a, b = p0.to(dtype, copy=True), p0.clone()
    ours = _C.Adafactor([a], **options)
    ref = ReferenceAdafactor([b], **options)
    scale = torch.linspace(0.1, 3.0, shape[-1], dtype=torch.float64)
    for _ in range(n):
        g = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        if zero_rows:
            g[..., 0, :] = 0
        a.grad, b.grad = g.to(dtype), g.clone()
        ours.step()
        ref.step()
    return a.double() - p0, b - p0


# Matrices take two passes over the gradient: the sum of U^2 that the
# threshold d needs comes from the first pass's column sums weighted by the
# new row statistics. A small d makes every step's update depend on it.
@pytest.mark.parametrize("shape", [(600, 700), (2, 301, 1003), (40, 3000)])
@pytest.mark.parametrize("variant", ["torch", "transformers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipped_matrices_match_plain_reference(shape, variant, dtype):
    ours, ref = updates_against_reference(shape, dtype, 6, d=0.05, variant=variant)
    # fp32: each step's new parameter is rounded to fp32 (eps 6e-8 of |p| ~ 1,
    # against updates of ~1e-3).
    assert rel_err(ours, ref) <= (1e-12 if dtype == torch.float64 else 2e-4)
    # The clipping did bite: without it the update is more than twice as large.
    free, _ = updates_against_reference(shape, dtype, 6, d=1e6, variant=variant)
    assert free.norm() > 2 * ours.norm()


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_clipped_matrices_with_zero_rows_match_plain_reference(variant):
    # A row of zero gradient: torch floors V there, and the sum of U^2 is then
    # taken element by element.
    ours, ref = updates_against_reference((600, 700), torch.float64, 6, zero_rows=True,
                                          d=0.05, variant=variant)
    assert rel_err(ours, ref) <= 1e-12
