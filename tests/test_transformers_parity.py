"""variant="transformers" of the C++ core (tcltorch._C) against Hugging Face
transformers.optimization.Adafactor, the implementation it claims to match.

Option names map as follows (docs/algorithm.md, "Options across implementations"):

    transformers                      tcltorch._C
    eps=(eps1, eps2)                  eps1=, eps2=
    clip_threshold                    d
    decay_rate                        beta2_decay
    lr=None, relative_step=True       lr=1e-2 (the cap of the relative step), relative_step=True
    lr=x, relative_step=False         lr=x, relative_step=False

Both optimizers see the same start and the same gradients (fixed-seed
torch.Generator); after 50 steps the parameters and the second-moment (and
momentum) state must agree to 1e-12 relative error in float64 and 1e-6 in
float32.
"""
from __future__ import annotations

import pytest
import torch

from tcltorch import _C
from reference import rel_err

hf_optimization = pytest.importorskip("transformers.optimization")
HFAdafactor = hf_optimization.Adafactor

STEPS = 50
SHAPES = [(13,), (1, 17), (17, 1), (6, 9), (3, 5, 7), (4, 3, 3, 3)]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}

# name -> (our keyword arguments besides variant, transformers keyword arguments)
OPTION_SETS = {
    "defaults": ({}, dict(lr=None)),
    "fixed_lr": (dict(relative_step=False, lr=1e-3), dict(relative_step=False, lr=1e-3)),
    "no_scale_parameter": (dict(scale_parameter=False), dict(lr=None, scale_parameter=False)),
    "warmup_init": (dict(warmup_init=True), dict(lr=None, warmup_init=True)),
    "beta1": (dict(beta1=0.9), dict(lr=None, beta1=0.9)),
    # A large eps1 and eps2: eps1 enters the statistics (Q = G^2 + eps1), not as
    # a floor on V as in the torch variant; with the default 1e-30 the two
    # placements agree to rounding and this would go untested.
    "eps": (dict(eps1=0.1, eps2=0.5), dict(lr=None, eps=(0.1, 0.5))),
    "clip_threshold": (dict(d=0.5), dict(lr=None, clip_threshold=0.5)),
    "weight_decay": (dict(weight_decay=0.01), dict(lr=None, weight_decay=0.01)),
    "combination": (
        dict(relative_step=False, lr=3e-3, beta1=0.8, weight_decay=0.02, d=0.7,
             beta2_decay=-0.6, eps1=1e-3, eps2=1e-2),
        dict(relative_step=False, lr=3e-3, beta1=0.8, weight_decay=0.02, clip_threshold=0.7,
             decay_rate=-0.6, eps=(1e-3, 1e-2)),
    ),
    "combination_relative": (
        dict(warmup_init=True, scale_parameter=False, beta1=0.5, weight_decay=0.1, d=2.0),
        dict(lr=None, warmup_init=True, scale_parameter=False, beta1=0.5, weight_decay=0.1,
             clip_threshold=2.0),
    ),
}


def make_grads(shape, dtype, steps, seed, zero_steps=()):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(steps):
        g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if i in zero_steps:
            g.zero_()
        out.append(g)
    return out


def make_start(shape, dtype, seed, zeros=False):
    if zeros:
        return torch.zeros(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def run_both(starts, ours_kw, hf_kw, grad_lists):
    """Runs ours and transformers side by side on copies of `starts`."""
    mine = [s.clone() for s in starts]
    theirs = [s.clone() for s in starts]
    ours = _C.Adafactor(mine, variant="transformers", **ours_kw)
    ref = HFAdafactor(theirs, **hf_kw)
    for step_grads in zip(*grad_lists):
        for a, b, g in zip(mine, theirs, step_grads):
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    return ours, ref, mine, theirs


def check_state(ours, ref, a, b, tol):
    """Our keep-dim state against transformers' squeezed state of the same parameter."""
    mine, theirs = ours.state(a), ref.state[b]
    assert int(mine["step"].item()) == theirs["step"] == STEPS
    if "exp_avg_sq_row" in theirs:
        assert set(mine) >= {"row_var", "col_var"} and "variance" not in mine
        assert mine["row_var"].shape == a.shape[:-1] + (1,)
        assert mine["col_var"].shape == a.shape[:-2] + (1, a.shape[-1])
        assert rel_err(mine["row_var"].squeeze(-1), theirs["exp_avg_sq_row"]) <= tol
        assert rel_err(mine["col_var"].squeeze(-2), theirs["exp_avg_sq_col"]) <= tol
    else:
        assert "variance" in mine and "row_var" not in mine
        assert rel_err(mine["variance"], theirs["exp_avg_sq"]) <= tol
    if "exp_avg" in theirs:
        assert rel_err(mine["exp_avg"], theirs["exp_avg"]) <= tol
    else:
        assert "exp_avg" not in mine


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_transformers(shape, dtype, option_set):
    ours_kw, hf_kw = OPTION_SETS[option_set]
    start = make_start(shape, dtype, seed=11)
    grads = make_grads(shape, dtype, STEPS, seed=12)
    ours, ref, (a,), (b,) = run_both([start], ours_kw, hf_kw, [grads])
    assert not torch.equal(a, start), "the parameter did not move"
    assert rel_err(a, b) <= TOL[dtype]
    check_state(ours, ref, a, b, TOL[dtype])


@pytest.mark.parametrize("option_set", ["defaults", "fixed_lr", "combination"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parameter_starting_at_zero(shape, dtype, option_set):
    # RMS(param) = 0 at the first step: the parameter scale is the eps2 floor.
    ours_kw, hf_kw = OPTION_SETS[option_set]
    start = make_start(shape, dtype, seed=0, zeros=True)
    grads = make_grads(shape, dtype, STEPS, seed=21)
    ours, ref, (a,), (b,) = run_both([start], ours_kw, hf_kw, [grads])
    assert a.abs().sum() > 0
    assert rel_err(a, b) <= TOL[dtype]
    check_state(ours, ref, a, b, TOL[dtype])


@pytest.mark.parametrize("option_set", ["defaults", "beta1", "combination"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_all_zero_gradients_on_some_steps(shape, dtype, option_set):
    # Zero gradients at the very first step (state = eps1 only), in runs of two,
    # and late; the statistics keep decaying, the update is 0 (or momentum only).
    ours_kw, hf_kw = OPTION_SETS[option_set]
    start = make_start(shape, dtype, seed=31)
    grads = make_grads(shape, dtype, STEPS, seed=32, zero_steps={0, 5, 6, 20, 49})
    ours, ref, (a,), (b,) = run_both([start], ours_kw, hf_kw, [grads])
    assert torch.isfinite(a).all()
    assert rel_err(a, b) <= TOL[dtype]
    check_state(ours, ref, a, b, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_start_and_zero_gradients_together(dtype):
    shape = (6, 9)
    start = make_start(shape, dtype, seed=0, zeros=True)
    grads = make_grads(shape, dtype, STEPS, seed=41, zero_steps={0, 1, 2, 30})
    ours_kw, hf_kw = OPTION_SETS["defaults"]
    ours, ref, (a,), (b,) = run_both([start], ours_kw, hf_kw, [grads])
    assert rel_err(a, b) <= TOL[dtype]
    check_state(ours, ref, a, b, TOL[dtype])


@pytest.mark.parametrize("option_set", ["fixed_lr", "combination", "combination_relative"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_several_parameters_in_one_optimizer(dtype, option_set):
    # Neither implementation may carry anything from one parameter to the next
    # (fairseq's defect wrote the per-parameter step size back into the lr).
    ours_kw, hf_kw = OPTION_SETS[option_set]
    starts = [make_start(s, dtype, seed=50 + i) for i, s in enumerate(SHAPES)]
    grad_lists = [make_grads(s, dtype, STEPS, seed=60 + i) for i, s in enumerate(SHAPES)]
    ours, ref, mine, theirs = run_both(starts, ours_kw, hf_kw, grad_lists)
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) <= TOL[dtype]
        check_state(ours, ref, a, b, TOL[dtype])
