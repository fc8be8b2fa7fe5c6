"""The options that came with the other Adafactors (beta2_cap, decay_offset,
caution, weight_decay_mode, momentum_dtype, factored_dims="leading_two",
variant="big_vision", d=None): the fused kernel against the ATen-op path,
sharded steps against whole-parameter steps, and the three doors' checks of
their values. Their numbers against the other Adafactors themselves are in
test_anchor_parity.py."""
from __future__ import annotations

import threading

import pytest
import torch

import tcltorch
from tcltorch import _C
from reference import rel_err
from test_fused_kernel import run

# One of each form of the kernel (see test_fused_kernel.SHAPES): unfactored,
# large-matrix passes, small groups (3 x 3 and other), lines (L > 1), blocks that own
# their columns.
SHAPES = [(257,), (33, 65), (16, 8, 3, 3), (3, 40, 50), (40, 3, 50, 2), (4, 3, 45, 50)]
STEPS = 6

CONFIGS = [
    {"variant": "big_vision"},
    {"variant": "big_vision", "momentum_dtype": "none", "caution": True, "weight_decay": 0.1,
     "d": 1.0},
    {"variant": "big_vision", "momentum_dtype": "none", "beta1": None, "weight_decay": 0.1,
     "weight_decay_mode": "unscaled"},
    {"variant": "torch", "beta2_cap": 0.6, "decay_offset": 3, "d": None},
    {"variant": "transformers", "beta2_cap": 0.6, "decay_offset": 3},
    {"variant": "torch", "beta1": 0.9, "caution": True, "weight_decay": 0.05},
    {"variant": "transformers", "beta1": 0.9, "caution": True, "maximize": True},
    {"variant": "transformers", "beta1": 0.9, "momentum_dtype": "bfloat16"},
    {"variant": "torch", "beta1": 0.9, "momentum_dtype": "bfloat16", "caution": True},
    {"factored_dims": "leading_two", "min_dim_size_to_factor": 3},
    {"weight_decay": 0.1, "weight_decay_mode": "lr_t"},
    {"variant": "transformers", "weight_decay": 0.1, "weight_decay_mode": "lr"},
    {"weight_decay": 0.1, "weight_decay_mode": "corrected", "lr": 0.02, "max_lr": 0.05},
    {"weight_decay": 0.1, "weight_decay_mode": "coupled", "beta1": 0.5, "maximize": True},
    {"variant": "transformers", "weight_decay": 0.1, "weight_decay_mode": "coupled",
     "caution": True, "beta1": 0.9},
]


def _id(options):
    return ",".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("options", CONFIGS, ids=_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_aten_path(options, dtype):
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    if options.get("momentum_dtype") == "bfloat16" or options.get("variant") == "big_vision" \
            and "momentum_dtype" not in options:
        # bf16 momentum: both round the same values; a value on a rounding
        # boundary may round apart after float differences of the order of tol.
        tol = 1e-3
    for shape in SHAPES:
        a, sa = run(shape, dtype, STEPS, True, **options)
        b, sb = run(shape, dtype, STEPS, False, **options)
        assert rel_err(a, b) <= tol, shape
        assert set(sa) == set(sb)
        for name in sa:
            assert sa[name].dtype == sb[name].dtype, name
            assert rel_err(sa[name].double(), sb[name].double()) <= max(tol, 1e-6 if
                                                                       sa[name].dtype == torch.float32 else tol), (shape, name)


@pytest.mark.parametrize("options", [
    {"variant": "big_vision", "weight_decay": 0.1},
    {"variant": "transformers", "beta1": 0.9, "caution": True, "fp32_state": True},
    {"beta1": 0.9, "momentum_dtype": "bfloat16", "beta2_cap": 0.7},
], ids=_id)
def test_fused_equals_aten_path_bf16_parameters(options):
    for shape in [(257,), (33, 65), (16, 8, 3, 3), (150, 520)]:
        a, _ = run(shape, torch.bfloat16, 8, True, **options)
        b, _ = run(shape, torch.bfloat16, 8, False, **options)
        # One bf16 rounding apart at most, on a few elements.
        assert rel_err(a.double(), b.double()) <= 2e-2, shape


def test_momentum_dtype_keeps_exp_avg_in_bf16():
    p = torch.randn(20, 30, dtype=torch.float64)
    opt = _C.Adafactor([p], beta1=0.9, momentum_dtype="bfloat16")
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state(p)["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
def test_momentum_stochastic_rounding_is_unbiased(fused):
    # The first step's update of an unfactored parameter is exactly 1 (G / |G|),
    # so the new momentum is lerp(0, 1, 0.7) = 0.7 in float32 everywhere, which
    # bfloat16 cannot hold: rounded to nearest it is always 0.69921875,
    # stochastically it averages to 0.7.
    torch.manual_seed(0)
    means = {}
    _C._set_fused_enabled(fused)
    try:
        for sr in (False, True):
            p = torch.zeros(20000, dtype=torch.float32)
            opt = _C.Adafactor([p], beta1=0.3, momentum_dtype="bfloat16", relative_step=False,
                               lr=1.0, scale_parameter=False, d=None, variant="transformers",
                               momentum_stochastic_rounding=sr, eps1=0.0)
            p.grad = torch.full_like(p, 3.0)
            opt.step()
            means[sr] = opt.state(p)["exp_avg"].double().mean().item()
    finally:
        _C._set_fused_enabled(True)
    assert means[False] == 0.69921875
    assert abs(means[True] - 0.7) < 5e-4


# ------------------------------------------------------------ sharded steps

def _sharded_step_in_threads(whole_shape, shards, options, steps, seed=0):
    """Runs the sharded step of each shard in its own thread, the reducer
    summing across the threads, against one whole-parameter step."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(whole_shape, generator=gen, dtype=torch.float32)
    grads = [torch.randn(whole_shape, generator=gen, dtype=torch.float32) for _ in range(steps)]
    whole = p.clone()
    opt = _C.Adafactor([whole], **options)
    for g in grads:
        whole.grad = g.clone()
        opt.step()

    pieces = list(torch.split(p.clone(), shards))
    n = len(pieces)
    barrier = threading.Barrier(n)
    slots: list = [None] * n
    errors = []

    def worker(rank):
        local = pieces[rank].contiguous()
        state = _C.adafactor_init_state_sharded(local, list(whole_shape), **options)
        start = sum(shards[:rank])

        def reducer(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(s for s in slots)
            barrier.wait()
            t.copy_(total)

        try:
            for g in grads:
                local_grad = g[start:start + shards[rank]].contiguous()
                _C.adafactor_step_sharded([local], [local_grad], [state], [list(whole_shape)],
                                          reducer, **options)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()
        pieces[rank] = local

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return whole, torch.cat(pieces)


@pytest.mark.parametrize("options", [
    {"variant": "big_vision", "weight_decay": 0.1},
    {"variant": "transformers", "beta1": 0.9, "caution": True, "beta2_cap": 0.8,
     "decay_offset": 2},
    {"beta1": 0.9, "caution": True, "weight_decay": 0.1, "weight_decay_mode": "coupled",
     "momentum_dtype": "bfloat16", "d": None},
    {"factored_dims": "leading_two", "weight_decay": 0.1, "weight_decay_mode": "unscaled"},
], ids=_id)
@pytest.mark.parametrize("shape,shards", [((40, 30), [13, 27]), ((12, 10, 3, 3), [5, 7])])
def test_sharded_steps_equal_whole_parameter_steps(options, shape, shards):
    whole, joined = _sharded_step_in_threads(shape, shards, options, steps=6)
    tol = 1e-3 if "bfloat16" in str(options) or options.get("variant") == "big_vision" else 1e-5
    assert rel_err(whole, joined) <= tol


def test_sharded_step_refuses_coupled_decay_on_bf16():
    p = torch.randn(8, 6, dtype=torch.bfloat16)
    options = {"weight_decay": 0.1, "weight_decay_mode": "coupled"}
    state = _C.adafactor_init_state_sharded(p, [8, 6], **options)
    with pytest.raises(RuntimeError, match="coupled"):
        _C.adafactor_step_sharded([p], [torch.ones_like(p)], [state], [[8, 6]],
                                  lambda t: None, **options)


# ------------------------------------------------------------ the doors' checks

BAD_PYTHON = [
    ({"beta2_cap": 1.0}, "beta2_cap must be in \\[0, 1\\) or unset, got 1"),
    ({"beta2_cap": -0.5}, "beta2_cap must be in \\[0, 1\\) or unset, got -0.5"),
    ({"max_lr": 0.0}, "max_lr must be > 0 or unset, got 0"),
    ({"decay_offset": -1}, "decay_offset must be >= 0, got -1"),
    ({"weight_decay_mode": "l2"}, 'weight_decay_mode must be "lr", "lr_t", "unscaled", '
                                  '"corrected" or "coupled", got "l2"'),
    ({"momentum_dtype": torch.float16}, "momentum_dtype must be torch.bfloat16 or None"),
    ({"variant": "bigvision"}, 'variant must be "torch", "transformers" or "big_vision", '
                               'got "bigvision"'),
    ({"factored_dims": "first_two"}, 'factored_dims must be "last_two", "largest_two" or '
                                     '"leading_two", got "first_two"'),
    ({"d": 0.0, "variant": "transformers"}, "d must be > 0 or unset, got 0"),
    ({"d": 0.0, "variant": "big_vision"}, "d must be > 0 or unset, got 0"),
]


@pytest.mark.parametrize("kwargs,message", BAD_PYTHON, ids=[str(k) for k, _ in BAD_PYTHON])
def test_python_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tcltorch.Adafactor([torch.zeros(3, requires_grad=True)], **kwargs)


def test_python_type_errors():
    with pytest.raises(TypeError, match="decay_offset must be an int"):
        _C.Adafactor([torch.zeros(3)], decay_offset=1.5)
    with pytest.raises(TypeError, match="caution must be True or False"):
        _C.Adafactor([torch.zeros(3)], caution=1)
    with pytest.raises(TypeError, match="beta2_cap must be a number"):
        tcltorch.Adafactor([torch.zeros(3, requires_grad=True)], beta2_cap="0.9")


def test_python_big_vision_defaults_and_overrides():
    p = torch.zeros(3, requires_grad=True)
    group = tcltorch.Adafactor([p], variant="big_vision").param_groups[0]
    assert (group["lr"], group["d"], group["beta1"], group["beta2_cap"]) == (1.0, None, 0.9, 0.999)
    assert (group["weight_decay_mode"], group["eps"][0]) == ("lr", None)  # None: 1e-30 here
    assert group["momentum_dtype"] == torch.bfloat16
    assert (group["relative_step"], group["scale_parameter"]) == (False, False)
    assert (group["factored_dims"], group["min_dim_size_to_factor"]) == ("largest_two", 16)
    group = tcltorch.Adafactor([p], lr=0.1, d=1.0, variant="big_vision",
                               momentum_dtype=None).param_groups[0]
    assert (group["lr"], group["d"], group["momentum_dtype"]) == (0.1, 1.0, None)
    torch_group = tcltorch.Adafactor([p]).param_groups[0]
    assert (torch_group["lr"], torch_group["d"], torch_group["beta1"]) == (1e-2, 1.0, None)
    assert (torch_group["beta2_cap"], torch_group["momentum_dtype"]) == (None, None)
    assert tcltorch.Adafactor([p], variant="transformers").param_groups[0][
        "weight_decay_mode"] == "lr_t"


BAD_TCL = [
    ("-beta2Cap 1", "-beta2Cap", "1", "must be -1 (no cap) or in [0, 1)"),
    ("-maxLr 0", "-maxLr", "0", "must be -1 ("),
    ("-decayOffset -2", "-decayOffset", "-2", "must be"),
    ("-weightDecayMode l2", "-weightDecayMode", "l2",
     "must be lr, lr_t, unscaled, corrected, or coupled"),
    ("-momentumDtype float16", "-momentumDtype", "float16", "must be none or bfloat16"),
    ("-clipThreshold 0", "-clipThreshold", "0", "must be -1 (no clipping) or > 0"),
    ("-clipThreshold inf", "-clipThreshold", "inf", "must be a finite number"),
    ("-clipThreshold off", "-clipThreshold", "off", "must be a floating-point number"),
    ("-variant bigvision", "-variant", "bigvision", "must be"),
    ("-caution maybe", "-caution", "maybe", "must be a boolean"),
]


@pytest.mark.parametrize("args,option,value,text", BAD_TCL, ids=[a for a, *_ in BAD_TCL])
def test_tcl_refuses_bad_values(tcl, args, option, value, text):
    tcl.eval("set w [torch::zeros {4 3}]")
    result = tcl.eval(f"list [catch {{torch::optimizer_adafactor -parameters $w {args}}} msg opts]"
                      " $msg [dict get $opts -errorcode]")
    code, message, errorcode = tcl.call("lindex", result, 0), tcl.call("lindex", result, 1), \
        tcl.call("lindex", result, 2)
    assert str(code) == "1"
    assert f'bad value "{value}" for {option}: ' in str(message), message
    assert text in str(message), message
    assert str(errorcode).split()[:3] == ["TORCH", "VALUE", option], errorcode


def test_three_doors_give_the_same_bits(tcl):
    """Tcl, Python and the core's own class run the same big_vision problem."""
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(24, 20, generator=gen)
    grads = [torch.randn(24, 20, generator=gen) for _ in range(5)]

    py_p = torch.nn.Parameter(p0.clone())
    opt = tcltorch.Adafactor([py_p], lr=0.05, variant="big_vision", caution=True,
                             weight_decay=0.1, weight_decay_mode="unscaled", decay_offset=1,
                             beta2_cap=0.9)
    for g in grads:
        py_p.grad = g.clone()
        opt.step()

    core_p = p0.clone()
    core = _C.Adafactor([core_p], lr=0.05, variant="big_vision", caution=True,
                        weight_decay=0.1, weight_decay_mode="unscaled", decay_offset=1,
                        beta2_cap=0.9)
    for g in grads:
        core_p.grad = g.clone()
        core.step()

    tcl_p = p0.clone()
    handle = tcl.put_tensor(tcl_p)
    opt_handle = tcl.eval(f"torch::optimizer_adafactor -parameters {handle} -lr 0.05 "
                          "-variant big_vision -caution 1 -weightDecay 0.1 "
                          "-weightDecayMode unscaled -decayOffset 1 -beta2Cap 0.9")
    for g in grads:
        tcl_p.grad = g.clone()
        tcl.eval(f"torch::optimizer_step {opt_handle}")

    assert not torch.equal(py_p.detach(), p0)
    assert torch.equal(core_p, py_p.detach())
    assert torch.equal(tcl_p, py_p.detach())


def test_bf16_momentum_survives_a_state_dict_round_trip():
    # torch's load_state_dict casts state to the parameter's dtype: the
    # momentum must come back in bfloat16, and training go on bit for bit.
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(12, 10, generator=gen)
    grads = [torch.randn(12, 10, generator=gen) for _ in range(4)]

    def make(p):
        return tcltorch.Adafactor([p], variant="big_vision", lr=0.05)

    a = torch.nn.Parameter(p0.clone())
    opt_a = make(a)
    for g in grads:
        a.grad = g.clone()
        opt_a.step()

    b = torch.nn.Parameter(p0.clone())
    opt_b = make(b)
    for g in grads[:2]:
        b.grad = g.clone()
        opt_b.step()
    saved = opt_b.state_dict()
    c = torch.nn.Parameter(b.detach().clone())
    opt_c = make(c)
    opt_c.load_state_dict(saved)
    assert opt_c.state[c]["exp_avg"].dtype == torch.bfloat16
    for g in grads[2:]:
        c.grad = g.clone()
        opt_c.step()
    assert torch.equal(a.detach(), c.detach())
