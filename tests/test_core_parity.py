"""The C++ core, driven through tcltorch._C, against torch.optim.Adafactor
and the plain-torch reference."""
from __future__ import annotations

import pytest
import torch

from tcltorch import _C
from reference import ReferenceAdafactor, rel_err

SHAPES = [(13,), (6, 9), (1, 7), (7, 1), (2, 3, 4, 5)]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def grads(shape, dtype, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(steps)]
    out[2].zero_()  # an all-zero gradient on the way
    return out


def run_pair(shape, dtype, steps, ours_kwargs, ref_factory, start=None, seed=0):
    gen = torch.Generator().manual_seed(seed + 1)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) if start is None else start
    a, b = p0.clone(), p0.clone()
    ours = _C.Adafactor([a], **ours_kwargs)
    ref = ref_factory([b])
    for g in grads(shape, dtype, steps, seed):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    return a, b, ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_default_matches_torch_adafactor(shape, dtype):
    a, b, _ = run_pair(shape, dtype, 20, {}, lambda ps: torch.optim.Adafactor(ps, foreach=False))
    assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 9), (13,), (2, 3, 4, 5)])
def test_options_match_torch_adafactor(shape, dtype):
    kw = dict(lr=0.05, beta2_decay=-0.5, eps1=1e-20, eps2=1e-2, d=2.0, weight_decay=0.1,
              maximize=True)
    a, b, _ = run_pair(
        shape, dtype, 20,
        kw,
        lambda ps: torch.optim.Adafactor(ps, lr=0.05, beta2_decay=-0.5, eps=(1e-20, 1e-2),
                                         d=2.0, weight_decay=0.1, maximize=True,
                                         foreach=False))
    assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("shape", [(6, 9), (13,)])
def test_parameters_starting_at_zero(shape):
    start = torch.zeros(shape, dtype=torch.float64)
    a, b, _ = run_pair(shape, torch.float64, 20, {},
                       lambda ps: torch.optim.Adafactor(ps, foreach=False), start=start)
    assert rel_err(a, b) <= 1e-12


def test_default_eps1_is_resolved_per_parameter():
    # torch.optim.Adafactor takes eps1 from the first parameter of a group;
    # a bf16 first parameter then shrinks the fp32 parameter's updates. Ours
    # resolves it per parameter: the fp32 parameter moves exactly as it would
    # alone in its own group.
    torch.manual_seed(0)
    low = torch.randn(8, 8, dtype=torch.bfloat16)
    p0 = torch.randn(8, 8)
    mine, alone = p0.clone(), p0.clone()
    ours = _C.Adafactor([low, mine])
    ref = torch.optim.Adafactor([alone], foreach=False)
    for _ in range(10):
        g = torch.randn(8, 8) * 1e-4
        low.grad = torch.randn(8, 8).to(torch.bfloat16)
        mine.grad, alone.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert rel_err(mine, alone) <= 1e-6


@pytest.mark.parametrize("shape", [(6, 9), (13,), (2, 3, 4, 5)])
def test_torch_variant_matches_plain_reference(shape):
    kw = dict(lr=0.3, weight_decay=0.05, beta1=0.9)
    a, b, _ = run_pair(shape, torch.float64, 20, kw,
                       lambda ps: ReferenceAdafactor(ps, **kw))
    assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("shape", [(6, 9), (13,), (2, 3, 4, 5)])
@pytest.mark.parametrize("extra", [{}, {"beta1": 0.9, "weight_decay": 0.01},
                                   {"relative_step": False, "lr": 1e-3},
                                   {"warmup_init": True}, {"scale_parameter": False}])
def test_transformers_variant_matches_plain_reference(shape, extra):
    kw = dict(variant="transformers", eps1=1e-30, **extra)
    ref_kw = {k: v for k, v in kw.items()}
    a, b, _ = run_pair(shape, torch.float64, 20, kw, lambda ps: ReferenceAdafactor(ps, **ref_kw))
    assert rel_err(a, b) <= 1e-12


def test_state_mirrors_torch_names_and_shapes():
    shapes = [(5, 4), (7,), (2, 3, 4)]
    ps_ours = [torch.randn(s) for s in shapes]
    ps_ref = [p.clone() for p in ps_ours]
    ours = _C.Adafactor(ps_ours)
    ref = torch.optim.Adafactor(ps_ref)
    for p, q in zip(ps_ours, ps_ref):
        g = torch.randn(p.shape)
        p.grad, q.grad = g.clone(), g.clone()
    ours.step()
    ref.step()
    for p, q in zip(ps_ours, ps_ref):
        mine, theirs = ours.state(p), ref.state[q]
        assert set(mine) == set(theirs)
        for name in theirs:
            assert mine[name].shape == theirs[name].shape, name
            assert mine[name].dtype == theirs[name].dtype, name
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=0)


def test_save_load_continues_bit_identically(tmp_path):
    torch.manual_seed(3)
    p0 = [torch.randn(6, 5), torch.randn(4)]
    gs = [[torch.randn(p.shape) for p in p0] for _ in range(10)]

    straight = [p.clone() for p in p0]
    opt = _C.Adafactor(straight, beta1=0.8, weight_decay=0.01)
    for step in gs:
        for p, g in zip(straight, step):
            p.grad = g.clone()
        opt.step()

    resumed = [p.clone() for p in p0]
    opt = _C.Adafactor(resumed, beta1=0.8, weight_decay=0.01)
    for step in gs[:5]:
        for p, g in zip(resumed, step):
            p.grad = g.clone()
        opt.step()
    opt.save(str(tmp_path / "opt.pt"))
    opt = _C.Adafactor(resumed, beta1=0.8, weight_decay=0.01)
    opt.load(str(tmp_path / "opt.pt"))
    for step in gs[5:]:
        for p, g in zip(resumed, step):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, word", [
    ({"lr": -1.0}, "lr"), ({"beta2_decay": 0.5}, "beta2_decay"), ({"d": 0.0}, "d"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"beta1": 1.0}, "beta1"),
    ({"eps1": -1.0}, "eps1"), ({"eps2": float("nan")}, "eps2"),
    ({"variant": "keras"}, "variant"), ({"factored_dims": "first_two"}, "factored_dims"),
    ({"warmup_init": True, "relative_step": False}, "warmup_init"),
    ({"min_dim_size_to_factor": -3}, "min_dim_size_to_factor"),
])
def test_invalid_options_raise_value_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        _C.Adafactor([torch.zeros(3)], **kwargs)


def test_bad_keywords_raise_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        _C.Adafactor([torch.zeros(3)], learning_rate=0.1)
    with pytest.raises(TypeError, match="lr must be a number"):
        _C.Adafactor([torch.zeros(3)], lr="fast")


def test_sparse_and_complex_are_refused():
    p = torch.zeros(4, 4)
    opt = _C.Adafactor([p])
    p.grad = torch.eye(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    c = torch.zeros(3, dtype=torch.complex64)
    opt = _C.Adafactor([c])
    c.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()
