"""Numbers of the C++ core's momentum, factoring-rule and low-precision options
against a straightforward plain-torch reference written in this file.

`OptionsReference` extends the approach of tests/reference.py (one formula per
line, straight from docs/algorithm.md, no code shared with the core) with
  * the choice of the factored dimensions (`factored_dims`,
    `min_dim_size_to_factor`), reducing over any two dimensions;
  * bf16/fp16 parameters: per step p32 = p.float(), the step in float32 with
    the state kept in the state dtype (each statistic is updated in float32,
    stored, and read back as stored for the rest of the step), p = p32
    rounded to the parameter dtype (round to nearest). Nothing but the
    parameter and the state survives between steps: no fp32 master copy.
float32/float64 parameters are computed in float64 with the state kept in
the parameter dtype.

Rounding ties: the core and this reference compute in float32 in different
orders, so their float32 results may differ in the last bits. After rounding
to bf16/fp16 that is invisible unless the float32 value lies within a few
float32 ulps of the midpoint between two bf16/fp16 values; the low-precision
tests therefore compare one step at a time from the same start and accept a
difference only there (`assert_equal_but_ties`).
"""
from __future__ import annotations

import math

import pytest
import torch

from tcltorch import _C
from reference import ReferenceAdafactor, rel_err

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
LOW = (torch.bfloat16, torch.float16)


def reference_factored_dims(shape, rule="last_two", min_size=0):
    """(rows, columns) per docs/algorithm.md, or None when unfactored."""
    n = len(shape)
    if n < 2:
        return None
    if rule == "last_two":
        rows, cols = n - 2, n - 1
    else:
        # the two largest sizes; among equal sizes the later dimension wins
        by_size = sorted(range(n), key=lambda i: (shape[i], i), reverse=True)
        rows, cols = sorted(by_size[:2])
    if min_size > 0 and (shape[rows] < min_size or shape[cols] < min_size):
        return None
    return rows, cols


class OptionsReference:
    def __init__(self, params, *, variant="torch", lr=1e-2, beta2_decay=-0.8, eps1=None,
                 eps2=1e-3, d=1.0, weight_decay=0.0, beta1=None, relative_step=True,
                 scale_parameter=True, warmup_init=False, maximize=False,
                 factored_dims="last_two", min_dim_size_to_factor=0, fp32_state=False):
        self.params = list(params)
        self.o = dict(variant=variant, lr=lr, beta2_decay=beta2_decay, eps1=eps1, eps2=eps2,
                      d=d, weight_decay=weight_decay, beta1=beta1,
                      relative_step=relative_step, scale_parameter=scale_parameter,
                      warmup_init=warmup_init, maximize=maximize,
                      factored_dims=factored_dims,
                      min_dim_size_to_factor=min_dim_size_to_factor, fp32_state=fp32_state)
        self.state: dict[int, dict] = {}
        self.unrounded: dict[int, torch.Tensor] = {}  # last step's result before rounding
        # the size of the terms that made up the unrounded result (for sums
        # that cancel, float32 noise scales with the terms, not the result)
        self.magnitude: dict[int, torch.Tensor] = {}
        # observe(param, name, unrounded, stored, magnitude) -> the stored value
        # to go on with; a hook for the tests, called whenever state is written.
        self.observe = None

    def _store(self, p, name, value, sdt, magnitude=None):
        """Keeps `value` in the state dtype; returns it as stored, in value's dtype."""
        stored = value.to(sdt)
        if self.observe is not None:
            stored = self.observe(p, name, value, stored,
                                  value.abs() if magnitude is None else magnitude)
        self.state[id(p)][name] = stored
        return stored.to(value.dtype)

    @staticmethod
    def _rms(x: torch.Tensor) -> float:
        return x.double().pow(2).mean().sqrt().item()

    @torch.no_grad()
    def step(self) -> None:
        o = self.o
        for p in self.params:
            if p.grad is None:
                continue
            low = p.dtype in LOW
            cdt = torch.float32 if low else torch.float64          # compute dtype
            sdt = torch.float32 if (low and o["fp32_state"]) else p.dtype  # state dtype
            dims = reference_factored_dims(tuple(p.shape), o["factored_dims"],
                                           o["min_dim_size_to_factor"])
            st = self.state.get(id(p))
            if st is None:
                st = self.state[id(p)] = {"t": 0}
                if dims:
                    rows, cols = dims
                    st["row_var"] = torch.zeros([1 if i == cols else s
                                                 for i, s in enumerate(p.shape)], dtype=sdt)
                    st["col_var"] = torch.zeros([1 if i == rows else s
                                                 for i, s in enumerate(p.shape)], dtype=sdt)
                else:
                    st["variance"] = torch.zeros(p.shape, dtype=sdt)
                if o["beta1"] is not None:
                    st["exp_avg"] = torch.zeros(p.shape, dtype=sdt)

            x = p.to(cdt)
            g = p.grad.to(cdt)
            if o["maximize"]:
                g = -g
            st["t"] += 1
            t = st["t"]
            eps1 = o["eps1"]
            if eps1 is None:
                eps1 = torch.finfo(p.dtype).eps if o["variant"] == "torch" else 1e-30
            if o["relative_step"]:
                rho = min(1e-6 * t if o["warmup_init"] else o["lr"], t ** -0.5)
            else:
                rho = o["lr"]
            alpha = rho * (max(o["eps2"], self._rms(x)) if o["scale_parameter"] else 1.0)

            if dims:
                rows, cols = dims
                r = st["row_var"].to(cdt)
                c = st["col_var"].to(cdt)
            else:
                v = st["variance"].to(cdt)
            if o["variant"] == "torch":
                w = t ** o["beta2_decay"]
                g2 = g * g
                if dims:
                    r = r + w * (g2.mean(cols, keepdim=True) - r)
                    c = c + w * (g2.mean(rows, keepdim=True) - c)
                    r = self._store(p, "row_var", r, sdt)
                    c = self._store(p, "col_var", c, sdt)
                    V = r * c / r.mean(rows, keepdim=True).clamp(min=eps1)
                else:
                    V = v = self._store(p, "variance", v + w * (g2 - v), sdt)
                U = g / V.clamp(min=eps1 * eps1).sqrt()
            else:
                beta2 = 1.0 - t ** o["beta2_decay"]
                q = g * g + eps1
                if dims:
                    r = beta2 * r + (1 - beta2) * q.mean(cols, keepdim=True)
                    c = beta2 * c + (1 - beta2) * q.mean(rows, keepdim=True)
                    r = self._store(p, "row_var", r, sdt)
                    c = self._store(p, "col_var", c, sdt)
                    V = r * c / r.mean(rows, keepdim=True)
                else:
                    V = v = self._store(p, "variance", beta2 * v + (1 - beta2) * q, sdt)
                U = g / V.sqrt()

            U = alpha * (U / max(1.0, self._rms(U) / o["d"]))
            if o["beta1"] is not None:
                m_old = st["exp_avg"].to(cdt)
                U = self._store(p, "exp_avg", o["beta1"] * m_old + (1 - o["beta1"]) * U, sdt,
                                magnitude=o["beta1"] * m_old.abs() + (1 - o["beta1"]) * U.abs())
            if o["weight_decay"]:
                decay = (o["lr"] * o["weight_decay"] if o["variant"] == "torch"
                         else o["weight_decay"] * alpha)
                x = x * (1 - decay)
            self.magnitude[id(p)] = x.abs() + U.abs()
            x = x - U
            self.unrounded[id(p)] = x
            p.copy_(x)  # to the parameter dtype: round to nearest


def make_grads(shape, dtype, steps, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
            for _ in range(steps)]


def make_start(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def run_pair(shape, dtype, steps, kw, seed=0, grad_scale=1.0, start=None):
    p0 = make_start(shape, dtype, seed + 1) if start is None else start
    a, b = p0.clone(), p0.clone()
    ours = _C.Adafactor([a], **kw)
    ref = OptionsReference([b], **kw)
    for g in make_grads(shape, dtype, steps, seed + 2, grad_scale):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert not torch.equal(a, p0), "the parameter did not move"
    return a, b, ours.state(a), ref.state[id(b)]


STATE_NAMES = ("row_var", "col_var", "variance", "exp_avg")


def assert_state_close(mine, theirs, tol):
    assert {k for k in mine if k != "step"} == {k for k in theirs if k != "t"}
    for name in STATE_NAMES:
        if name in theirs:
            assert mine[name].shape == theirs[name].shape, name
            assert mine[name].dtype == theirs[name].dtype, name
            assert rel_err(mine[name], theirs[name]) <= tol, name


# (a) momentum ----------------------------------------------------------------

@pytest.mark.parametrize("variant", ["torch", "transformers"])
@pytest.mark.parametrize("shape", [(13,), (6, 9), (1, 7), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("extra", [
    {},
    {"weight_decay": 0.05},
    {"relative_step": False, "lr": 0.02, "scale_parameter": False},
    {"warmup_init": True, "d": 0.5},
], ids=["plain", "weight_decay", "fixed_lr", "warmup_clip"])
def test_beta1_momentum(variant, shape, extra):
    kw = dict(variant=variant, beta1=0.9, **extra)
    a, b, mine, theirs = run_pair(shape, torch.float64, 30, kw)
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)
    assert mine["exp_avg"].abs().sum() > 0


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_beta1_momentum_float32(variant):
    a, b, mine, theirs = run_pair((6, 9), torch.float32, 30,
                                  dict(variant=variant, beta1=0.7, weight_decay=0.01))
    assert rel_err(a, b) <= 1e-6
    assert_state_close(mine, theirs, 1e-6)


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_no_exp_avg_without_beta1(variant):
    p = torch.randn(4, 5, dtype=torch.float64)
    opt = _C.Adafactor([p], variant=variant)
    p.grad = torch.randn(4, 5, dtype=torch.float64)
    opt.step()
    assert "exp_avg" not in opt.state(p)


# (b) factored_dims = "largest_two" -------------------------------------------

# shape -> (row_var shape, col_var shape), written out from the rule: the two
# largest dimensions, ties to the later one; rows = the earlier of the two.
LARGEST_TWO = {
    (64, 3, 32): ((64, 3, 1), (1, 3, 32)),
    (5, 40, 2, 30): ((5, 40, 2, 1), (5, 1, 2, 30)),
    (8, 16): ((8, 1), (1, 16)),
    (16, 8): ((16, 1), (1, 8)),
    (30, 10, 10): ((30, 10, 1), (1, 10, 10)),    # tie for second place: the later dim
    (6, 6, 6): ((6, 6, 1), (6, 1, 6)),           # three-way tie: the last two
    (9, 4, 9, 9): ((9, 4, 9, 1), (9, 4, 1, 9)),
    (1, 7, 1): ((1, 7, 1), (1, 1, 1)),           # 7 and the later 1
}


@pytest.mark.parametrize("variant", ["torch", "transformers"])
@pytest.mark.parametrize("shape", list(LARGEST_TWO), ids=str)
def test_largest_two_state_shapes_and_numbers(variant, shape):
    kw = dict(variant=variant, factored_dims="largest_two", beta1=0.5, weight_decay=0.01)
    row_shape, col_shape = LARGEST_TWO[shape]
    a, b, mine, theirs = run_pair(shape, torch.float64, 20, kw)
    assert set(mine) == {"step", "row_var", "col_var", "exp_avg"}
    assert tuple(mine["row_var"].shape) == row_shape
    assert tuple(mine["col_var"].shape) == col_shape
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_largest_two_differs_from_last_two(variant):
    # The reference is sensitive to the choice: factoring the last two dims of
    # (64, 3, 32) gives different numbers.
    shape = (64, 3, 32)
    a, _, _, _ = run_pair(shape, torch.float64, 10,
                          dict(variant=variant, factored_dims="largest_two"))
    b, _, _, _ = run_pair(shape, torch.float64, 10,
                          dict(variant=variant, factored_dims="last_two"))
    assert rel_err(a, b) > 1e-6


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_largest_two_float32(variant):
    a, b, mine, theirs = run_pair((5, 40, 2, 30), torch.float32, 20,
                                  dict(variant=variant, factored_dims="largest_two"))
    assert rel_err(a, b) <= 1e-6
    assert_state_close(mine, theirs, 1e-6)


def test_last_two_reference_agrees_with_reference_py():
    # OptionsReference with the default rule is the algorithm of tests/reference.py.
    shape = (3, 5, 7)
    kw = dict(variant="transformers", beta1=0.9, weight_decay=0.01)
    p0 = make_start(shape, torch.float64, 5)
    a, b = p0.clone(), p0.clone()
    r1, r2 = OptionsReference([a], **kw), ReferenceAdafactor([b], **kw)
    for g in make_grads(shape, torch.float64, 10, 6):
        a.grad, b.grad = g.clone(), g.clone()
        r1.step()
        r2.step()
    assert rel_err(a, b) <= 1e-14


# (c) min_dim_size_to_factor -----------------------------------------------------

@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_min_dim_size_keeps_small_params_unfactored(variant):
    shape = (4, 200)
    kw = dict(variant=variant, min_dim_size_to_factor=128)
    a, b, mine, theirs = run_pair(shape, torch.float64, 20, kw)
    assert set(mine) == {"step", "variance"}
    assert tuple(mine["variance"].shape) == shape
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)
    # the same numbers as the 1-D update of the flattened tensor (tests/reference.py)
    p0 = make_start(shape, torch.float64, 1)
    flat = p0.flatten().clone()
    ref = ReferenceAdafactor([flat], variant=variant)
    for g in make_grads(shape, torch.float64, 20, 2):
        flat.grad = g.flatten().clone()
        ref.step()
    assert rel_err(a, flat.view(shape)) <= 1e-12
    assert rel_err(mine["variance"].flatten(), ref.state[id(flat)]["v"]) <= 1e-12


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_min_dim_size_factors_large_params(variant):
    shape = (200, 300)
    kw = dict(variant=variant, min_dim_size_to_factor=128)
    a, b, mine, theirs = run_pair(shape, torch.float64, 10, kw)
    assert set(mine) == {"step", "row_var", "col_var"}
    assert tuple(mine["row_var"].shape) == (200, 1)
    assert tuple(mine["col_var"].shape) == (1, 300)
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)
    # the same numbers as the plain last-two factoring of tests/reference.py
    c = make_start(shape, torch.float64, 1)
    ref = ReferenceAdafactor([c], variant=variant)
    for g in make_grads(shape, torch.float64, 10, 2):
        c.grad = g.clone()
        ref.step()
    assert rel_err(a, c) <= 1e-12


# (shape, factored_dims, expected row_var and col_var shapes or None when
# unfactored): optax/t5x's rule (largest two, min 128) and the edges
@pytest.mark.parametrize("shape,rule,factored", [
    ((128, 128), "last_two", ((128, 1), (1, 128))),   # exactly the minimum: factored
    ((127, 300), "last_two", None),
    ((300, 127), "last_two", None),
    ((3, 200, 150), "largest_two", ((3, 200, 1), (3, 1, 150))),
    ((200, 3, 100), "largest_two", None),            # second largest 100 < 128
    ((256, 2, 128), "largest_two", ((256, 2, 1), (1, 2, 128))),
    ((256, 2, 128), "last_two", None),               # last two (2, 128): 2 < 128
], ids=str)
def test_min_dim_size_rule(shape, rule, factored):
    kw = dict(variant="transformers", factored_dims=rule, min_dim_size_to_factor=128)
    a, b, mine, theirs = run_pair(shape, torch.float64, 3, kw)
    if factored:
        assert set(mine) == {"step", "row_var", "col_var"}
        assert (tuple(mine["row_var"].shape), tuple(mine["col_var"].shape)) == factored
    else:
        assert set(mine) == {"step", "variance"}
        assert tuple(mine["variance"].shape) == shape
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)


# (d) bf16 / fp16 parameters: fp32 math, rounded back to nearest ------------------

def neighbours(x32: torch.Tensor, dtype):
    """The `dtype` values just below (or at) and just above (or at) each float32 value."""
    near = x32.to(dtype)
    lo = torch.where(near.float() <= x32, near,
                     torch.nextafter(near, torch.full_like(near, float("-inf"))))
    hi = torch.where(near.float() >= x32, near,
                     torch.nextafter(near, torch.full_like(near, float("inf"))))
    return lo, hi


TIE_REL = 4e-6  # float32 op-order noise: about 64 float32 ulps of the terms summed


def assert_equal_but_ties(core, ref, unrounded, magnitude, what):
    """core == ref exactly, except at elements where the core's value is the
    correct rounding of a float32 value within float32 noise of the reference's
    unrounded value `x`: |core - x| <= noise + half the spacing at core, with
    noise = TIE_REL times the magnitude of the terms `x` was summed from. Away
    from cancellation that only lets a rounding tie go either way. Returns the
    number of such elements."""
    assert core.dtype == ref.dtype and core.shape == ref.shape, what
    diff = core != ref
    if not diff.any():
        return 0
    x = unrounded[diff].double()
    c = core[diff]
    up = torch.nextafter(c, torch.full_like(c, float("inf"))).double()
    down = torch.nextafter(c, torch.full_like(c, float("-inf"))).double()
    cd = c.double()
    half_spacing = torch.maximum(up - cd, cd - down) / 2
    noise = TIE_REL * magnitude[diff].double()
    ok = (cd - x).abs() <= noise + half_spacing
    assert ok.all(), (f"{what}: {int((~ok).sum())} of {core.numel()} elements differ "
                      f"beyond a rounding tie; core {c[~ok][:5].tolist()}, "
                      f"reference {ref[diff][~ok][:5].tolist()}, "
                      f"unrounded {x[~ok][:5].tolist()}")
    return int(diff.sum())


def run_low_precision_steps(dtype, shape, kw, steps=20, seed=0, reference=OptionsReference,
                            core_kw=None):
    """Each step, the reference starts from the core's current parameter and
    state and does one step (float32 math, state in the state dtype, result
    rounded to nearest); the core's new parameter and state must equal it up to
    rounding ties. Returns the number of ties met."""
    p0 = make_start(shape, dtype, seed + 1)
    a, b = p0.clone(), p0.clone()
    ours = _C.Adafactor([a], **kw, **(core_kw or {}))
    ref = reference([b], **kw)
    state_dtype = torch.float32 if kw.get("fp32_state") else dtype
    ties = 0
    for step, g in enumerate(make_grads(shape, dtype, steps, seed + 2)):
        if step:
            b.copy_(a)
            for name, value in ours.state(a).items():
                if name in STATE_NAMES:
                    ref.state[id(b)][name] = value.clone()
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        after = ours.state(a)

        def observe(p, name, unrounded, stored, magnitude, step=step):
            nonlocal ties
            assert after[name].dtype == state_dtype, name
            if state_dtype == torch.float32:  # no rounding: float32 op-order noise only
                assert rel_err(after[name], stored) <= 1e-6, (name, step + 1)
            else:
                ties += assert_equal_but_ties(after[name], stored, unrounded, magnitude,
                                              f"{name} at step {step + 1}")
            return after[name].clone()  # go on from the core's state

        ref.observe = observe
        ref.step()
        assert a.dtype == dtype
        ties += assert_equal_but_ties(a, b, ref.unrounded[id(b)], ref.magnitude[id(b)],
                                      f"param at step {step + 1}")
    assert {k for k in after if k != "step"} == {k for k in ref.state[id(b)] if k != "t"}
    assert not torch.equal(a, p0)
    return ties


LOW_CASES = {
    "torch": dict(variant="torch"),
    "transformers": dict(variant="transformers"),
    "torch_beta1_wd": dict(variant="torch", beta1=0.9, weight_decay=0.1, lr=0.05),
    "transformers_beta1_wd": dict(variant="transformers", beta1=0.9, weight_decay=0.1),
    "transformers_fixed_lr": dict(variant="transformers", relative_step=False, lr=3e-3,
                                  scale_parameter=False),
    "largest_two_beta1": dict(variant="transformers", factored_dims="largest_two", beta1=0.8),
}


@pytest.mark.parametrize("fp32_state", [False, True])
@pytest.mark.parametrize("case", list(LOW_CASES))
@pytest.mark.parametrize("shape", [(13,), (16, 24), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_is_fp32_step_rounded_to_nearest(dtype, shape, case, fp32_state):
    kw = dict(LOW_CASES[case], fp32_state=fp32_state)
    ties = run_low_precision_steps(dtype, shape, kw)
    n = math.prod(shape) * 20
    assert ties <= max(2, n // 1000), f"{ties} rounding ties in {n} element-steps"


@pytest.mark.parametrize("fp32_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_state_dtype(dtype, fp32_state):
    p = torch.randn(6, 5).to(dtype)
    v = torch.randn(7).to(dtype)
    opt = _C.Adafactor([p, v], beta1=0.9, fp32_state=fp32_state)
    p.grad, v.grad = torch.randn(6, 5).to(dtype), torch.randn(7).to(dtype)
    opt.step()
    want = torch.float32 if fp32_state else dtype
    for t, names in ((p, ("row_var", "col_var", "exp_avg")), (v, ("variance", "exp_avg"))):
        st = opt.state(t)
        for name in names:
            assert st[name].dtype == want, name
        assert t.dtype == dtype


def test_fp32_state_leaves_float32_params_alone():
    p = torch.randn(6, 5)
    opt = _C.Adafactor([p], fp32_state=True, beta1=0.9)
    p.grad = torch.randn(6, 5)
    opt.step()
    assert all(v.dtype == torch.float32 for k, v in opt.state(p).items() if k != "step")
    q = torch.randn(6, 5, dtype=torch.float64)
    opt = _C.Adafactor([q], fp32_state=True)
    q.grad = torch.randn(6, 5, dtype=torch.float64)
    opt.step()
    assert opt.state(q)["row_var"].dtype == torch.float64


class UnroundedStateReference(OptionsReference):
    """Wrong on purpose: goes on with the float32 statistics, not with the state
    as stored in bf16."""

    def _store(self, p, name, value, sdt, magnitude=None):
        super()._store(p, name, value, sdt, magnitude)
        return value


def test_low_precision_check_sees_another_rounding_mode():
    # The comparison above is strict enough to tell round-to-nearest from the
    # core's own stochastic rounding.
    kw = dict(variant="transformers", beta1=0.9)
    with torch.random.fork_rng(), \
            pytest.raises(AssertionError, match="beyond a rounding tie"):
        torch.manual_seed(0)
        run_low_precision_steps(torch.bfloat16, (16, 24), kw,
                                core_kw=dict(stochastic_rounding=True))


def test_low_precision_check_sees_unrounded_statistics():
    # ... and whether the step goes on with the statistics as stored in bf16.
    kw = dict(variant="transformers", beta1=0.9)
    with pytest.raises(AssertionError, match="beyond a rounding tie"):
        run_low_precision_steps(torch.bfloat16, (16, 24), kw,
                                reference=UnroundedStateReference)


# (e) stochastic rounding of bf16 --------------------------------------------------

def one_tiny_step(start_value, n, stochastic, seed=0, lr=1e-3):
    """All n entries equal; a constant gradient; the update is lr exactly
    (transformers variant, fixed lr, no parameter scale: U = G/sqrt(G^2) = 1)."""
    kw = dict(variant="transformers", relative_step=False, lr=lr, scale_parameter=False)
    p = torch.full((n,), start_value, dtype=torch.bfloat16)
    q = p.clone()
    opt = _C.Adafactor([p], stochastic_rounding=stochastic, **kw)
    ref = OptionsReference([q], **kw)
    p.grad = torch.ones(n, dtype=torch.bfloat16)
    q.grad = p.grad.clone()
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the core's noise comes from torch's default generator
        opt.step()
    ref.step()
    return p, ref.unrounded[id(q)]


@pytest.mark.parametrize("start", [1.0, -3.0, 0.3])
def test_stochastic_rounding_is_unbiased(start):
    n = 100_000
    rounded, x32 = one_tiny_step(start, n, stochastic=True)
    nearest, _ = one_tiny_step(start, n, stochastic=False)
    x = x32[0].item()
    assert torch.all(x32 == x)
    lo, hi = (t[0].item() for t in neighbours(x32[:1], torch.bfloat16))
    assert lo < x < hi, "the fp32 result must lie strictly between two bf16 values"
    # every result is one of the two neighbours, and both occur
    values = rounded.float()
    assert torch.all((values == lo) | (values == hi))
    frac_hi = (x - lo) / (hi - lo)
    se = (hi - lo) * math.sqrt(frac_hi * (1 - frac_hi) / n)
    mean = values.double().mean().item()
    assert abs(mean - x) <= 5 * se, (mean, x, se)
    assert (values == lo).any() and (values == hi).any()
    # round to nearest gives one value for all, biased by far more than that
    assert torch.all(nearest == nearest[0])
    assert nearest[0].item() in (lo, hi)
    assert abs(nearest.double().mean().item() - x) > 50 * se


def test_stochastic_rounding_keeps_representable_results_exact():
    # lr = 2^-8: 1 - 2^-8 is a bf16 value; no noise may move it.
    rounded, x32 = one_tiny_step(1.0, 10_000, stochastic=True, lr=2.0 ** -8)
    assert torch.all(x32 == 1 - 2.0 ** -8)
    assert torch.all(rounded == 1 - 2.0 ** -8)


@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_stochastic_rounding_random_tensor(variant):
    # Mixed magnitudes and signs: each result is a neighbour of the fp32 result
    # of the same step, and the rounding error averages out.
    n = 100_000
    gen = torch.Generator().manual_seed(7)
    p0 = (torch.randn(n, generator=gen) * torch.rand(n, generator=gen).mul(4).exp2()) \
        .to(torch.bfloat16)
    grad = torch.randn(n, generator=gen).to(torch.bfloat16)
    kw = dict(variant=variant, relative_step=False, lr=1e-3, scale_parameter=False)
    p, q = p0.clone(), p0.clone()
    opt = _C.Adafactor([p], stochastic_rounding=True, **kw)
    ref = OptionsReference([q], **kw)
    p.grad, q.grad = grad.clone(), grad.clone()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        opt.step()
    ref.step()
    x32 = ref.unrounded[id(q)]
    lo, hi = neighbours(x32, torch.bfloat16)
    values = p.float()
    assert torch.all((p == lo) | (p == hi))
    moved = hi != lo
    spacing = (hi.float() - lo.float())[moved].double()
    frac = ((x32[moved] - lo.float()[moved]).double() / spacing)
    err = (values[moved].double() - x32[moved].double()) / spacing  # in units of the spacing
    se = (frac * (1 - frac)).sum().sqrt().item() / moved.sum().item()
    assert abs(err.mean().item()) <= 5 * se
    # not round to nearest: a good share of the results are the farther neighbour
    nearest = x32.to(torch.bfloat16)
    assert (p != nearest).float().mean().item() > 0.1


def test_stochastic_rounding_leaves_other_dtypes_alone():
    # fp16 parameters are rounded to nearest, fp32/fp64 are not rounded at all.
    for dtype in (torch.float16, torch.float32, torch.float64):
        p0 = make_start((16, 24), dtype, 3)
        grads = make_grads((16, 24), dtype, 5, 4)
        a, b = p0.clone(), p0.clone()
        sr = _C.Adafactor([a], stochastic_rounding=True)
        rn = _C.Adafactor([b])
        for g in grads:
            a.grad, b.grad = g.clone(), g.clone()
            sr.step()
            rn.step()
        assert torch.equal(a, b), dtype


# (f) maximize, transformers variant -------------------------------------------------

@pytest.mark.parametrize("shape", [(13,), (6, 9), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("extra", [{}, {"beta1": 0.9, "weight_decay": 0.01},
                                   {"relative_step": False, "lr": 1e-3}],
                         ids=["plain", "beta1_wd", "fixed_lr"])
def test_maximize_transformers(shape, extra):
    kw = dict(variant="transformers", maximize=True, **extra)
    a, b, mine, theirs = run_pair(shape, torch.float64, 30, kw)
    assert rel_err(a, b) <= 1e-12
    assert_state_close(mine, theirs, 1e-12)
    # and it is not the minimising trajectory
    c, _, _, _ = run_pair(shape, torch.float64, 30, dict(kw, maximize=False))
    assert rel_err(a, c) > 1e-3


@pytest.mark.parametrize("shape", [(13,), (6, 9)], ids=str)
def test_maximize_transformers_matches_hf_on_negated_gradients(shape):
    hf = pytest.importorskip("transformers.optimization")
    p0 = make_start(shape, torch.float64, 1)
    a, b = p0.clone(), p0.clone()
    ours = _C.Adafactor([a], variant="transformers", maximize=True, beta1=0.9)
    theirs = hf.Adafactor([b], lr=None, beta1=0.9)
    for g in make_grads(shape, torch.float64, 30, 2):
        a.grad, b.grad = g.clone(), -g
        ours.step()
        theirs.step()
    assert rel_err(a, b) <= 1e-12


def test_maximize_transformers_ascends():
    # f(p) = <c, p> has the constant gradient c: maximising must increase f.
    c = make_start((6, 9), torch.float64, 9)
    p = torch.zeros(6, 9, dtype=torch.float64)
    opt = _C.Adafactor([p], variant="transformers", maximize=True)
    values = []
    for _ in range(10):
        p.grad = c.clone()
        opt.step()
        values.append((c * p).sum().item())
    assert all(y > x for x, y in zip([0.0] + values, values))
