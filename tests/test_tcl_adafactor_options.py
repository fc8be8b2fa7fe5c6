"""Every option of torch::optimizer_adafactor, checked by its numbers: the Tcl
command and tcltorch._C.Adafactor run the same C++ core, so the same problem
with the corresponding options must give the same bits (torch.equal).

Also: every spelling of every option (camelCase, snake_case, unique prefix),
the legacy positional form, the invalid values of each option, and a whole
training run driven from Tcl against the same run driven from Python."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcltorch import _C
from tcltorch.tcl import TclError

# What the Tcl command passes to the core when no option is given (docs: the
# Tcl defaults are lr=0.8, eps2 (core eps1)=1e-30, variant transformers,
# everything else at the core's defaults).
TCL_DEFAULTS = dict(variant="transformers", lr=0.8, eps1=1e-30)

STEPS = 6

# (camelCase, snake_case or None): every option of the command, in table order.
OPTIONS = [
    ("parameters", None), ("lr", None), ("eps2", None),
    ("clipThreshold", "clip_threshold"), ("decayRate", "decay_rate"), ("beta1", None),
    ("weightDecay", "weight_decay"), ("relativeStep", "relative_step"),
    ("scaleParameter", "scale_parameter"), ("warmupInit", "warmup_init"),
    ("epsScale", "eps_scale"), ("maximize", None), ("variant", None),
    ("factoredDims", "factored_dims"), ("minDimSizeToFactor", "min_dim_size_to_factor"),
    ("fp32State", "fp32_state"), ("stochasticRounding", "stochastic_rounding"),
    ("skipNonFinite", "skip_non_finite"), ("beta2Cap", "beta2_cap"),
    ("decayOffset", "decay_offset"), ("caution", None),
    ("weightDecayMode", "weight_decay_mode"),
    ("maxLr", "max_lr"), ("momentumDtype", "momentum_dtype"),
    ("momentumStochasticRounding", "momentum_stochastic_rounding"),
]
# Options of the command that are not the optimizer's numbers: -shardState
# (a process group's ZeRO-1, tests/test_tcl_distributed.py), -stepInBackward
# and -accumulateSteps (tests/test_step_in_backward_tcl_cpp.py).
DOOR_OPTIONS = [("shardState", "shard_state"), ("stepInBackward", "step_in_backward"),
                ("accumulateSteps", "accumulate_steps")]
SPELLINGS = [s for pair in OPTIONS for s in pair if s]


def unique_prefix(name: str) -> str:
    """The shortest prefix of `name` that no spelling of another option starts with."""
    others = [s for pair in OPTIONS + DOOR_OPTIONS if name not in pair for s in pair if s]
    for n in range(1, len(name) + 1):
        if not any(s.startswith(name[:n]) for s in others):
            return name[:n]
    return name


# ------------------------------------------------------------------ problems

def make_params(kind: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if kind == "float32":
        # factored 2-D, unfactored 1-D, and a 3-D tensor whose two largest
        # dimensions (0 and 2) are not its last two; the 3-D one is small
        # (RMS ~1e-4) so that the default epsScale of 1e-3 shows.
        shapes, scale = [(6, 5), (7,), (8, 2, 6)], [1.0, 1.0, 1e-4]
        return [torch.randn(s, generator=gen) * k for s, k in zip(shapes, scale)]
    elif kind == "bfloat16":
        shapes, dtype = [(6, 5), (7,)], torch.bfloat16
    else:
        raise ValueError(kind)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def make_grads(params, steps=STEPS, seed=1) -> list[list[torch.Tensor]]:
    """Random gradients; those of the 1-D parameter are tiny (~1e-15) so that
    G^2 is comparable to the default eps2 (core eps1) of 1e-30 and that
    default shows in the numbers."""
    gen = torch.Generator().manual_seed(seed)
    return [[(torch.randn(p.shape, generator=gen) * (1e-15 if p.dim() == 1 else 1.0))
             .to(p.dtype) for p in params]
            for _ in range(steps)]


def run_tcl(tcl, words: str, params0, grads, command="torch::optimizer_adafactor",
            seed=1234) -> list[torch.Tensor]:
    """Copies of params0 optimized from Tcl by `command -parameters ... words`."""
    params = [p.clone() for p in params0]
    handles = [tcl.put_tensor(p) for p in params]
    opt = tcl.eval(f"{command} -parameters [list {' '.join(handles)}] {words}")
    torch.manual_seed(seed)  # stochastic rounding draws from the default generator
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        tcl.eval(f"torch::optimizer_step {opt}")
    tcl.eval(f"torch::delete {opt}")
    return params


def run_tcl_script(tcl, script: str, params0, grads, seed=1234) -> list[torch.Tensor]:
    """As run_tcl, with a whole creation script using $params."""
    params = [p.clone() for p in params0]
    handles = [tcl.put_tensor(p) for p in params]
    tcl.eval(f"set params [list {' '.join(handles)}]")
    opt = tcl.eval(script)
    torch.manual_seed(seed)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        tcl.eval(f"torch::optimizer_step {opt}")
    return params


def run_core(kwargs: dict, params0, grads, seed=1234) -> list[torch.Tensor]:
    """Copies of params0 optimized from Python by tcltorch._C.Adafactor."""
    params = [p.clone() for p in params0]
    options = {**TCL_DEFAULTS, **kwargs}
    if options["variant"] == "torch" and "eps1" not in kwargs:
        # Without -eps2, -variant torch keeps the core's per-dtype default.
        options["eps1"] = None
    opt = _C.Adafactor(params, **options)
    torch.manual_seed(seed)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return params


def all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def assert_bits_equal(got, expected):
    for i, (x, y) in enumerate(zip(got, expected)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert torch.equal(x, y), (
            f"parameter {i}: max abs diff {(x.double() - y.double()).abs().max().item()}")


# ------------------------------------------------------------------ each option

# (Tcl words, core keyword arguments, parameters, whether it differs from the
# defaults on this problem: True, False, or None for "not checked")
CASES = [
    ("", {}, "float32", False),
    ("-lr 0.05", dict(lr=0.05), "float32", True),
    ("-eps2 1e-3", dict(eps1=1e-3), "float32", True),
    ("-clipThreshold 0.05", dict(d=0.05), "float32", True),
    ("-decayRate -1", dict(beta2_decay=-0.8), "float32", False),
    ("-decayRate 0.5", dict(beta2_decay=-0.5), "float32", True),
    ("-decayRate 1.3", dict(beta2_decay=-1.3), "float32", True),
    ("-decayRate -0.3", dict(beta2_decay=-0.3), "float32", True),
    ("-beta1 -1", dict(beta1=None), "float32", False),
    ("-beta1 0.9", dict(beta1=0.9), "float32", True),
    ("-beta1 0.0", dict(beta1=0.0), "float32", None),
    ("-weightDecay 0.2", dict(weight_decay=0.2), "float32", True),
    ("-relativeStep 0", dict(relative_step=False), "float32", True),
    ("-relativeStep false -lr 0.01", dict(relative_step=False, lr=0.01), "float32", True),
    ("-scaleParameter 0", dict(scale_parameter=False), "float32", True),
    ("-warmupInit 1", dict(warmup_init=True), "float32", True),
    ("-epsScale 5.0", dict(eps2=5.0), "float32", True),
    ("-maximize 1", dict(maximize=True), "float32", True),
    ("-variant torch", dict(variant="torch"), "float32", True),
    ("-variant transformers", dict(variant="transformers"), "float32", False),
    ("-factoredDims largest_two", dict(factored_dims="largest_two"), "float32", True),
    ("-factoredDims last_two", dict(factored_dims="last_two"), "float32", False),
    ("-minDimSizeToFactor 6", dict(min_dim_size_to_factor=6), "float32", True),
    ("-fp32State 1", dict(fp32_state=True), "bfloat16", True),
    ("-stochasticRounding 1", dict(stochastic_rounding=True), "bfloat16", True),
    # Finite gradients: skipping never triggers (tests/test_nonfinite.py has the rest).
    ("-skipNonFinite 1", dict(skip_nan_updates=True), "float32", False),
    ("-clipThreshold -1", dict(d=None), "float32", True),
    ("-beta2Cap 0.5", dict(beta2_cap=0.5), "float32", True),
    ("-beta2Cap -1", dict(beta2_cap=None), "float32", False),
    ("-decayOffset 2", dict(decay_offset=2), "float32", True),
    ("-caution 1 -beta1 0.9", dict(caution=True, beta1=0.9), "float32", True),
    ("-caution 1", dict(caution=True), "float32", False),  # without momentum: nothing
    ("-weightDecayMode unscaled -weightDecay 0.2",
     dict(weight_decay_mode="unscaled", weight_decay=0.2), "float32", True),
    ("-weightDecayMode coupled -weightDecay 0.2",
     dict(weight_decay_mode="coupled", weight_decay=0.2), "float32", True),
    ("-weightDecayMode corrected -weightDecay 0.2 -maxLr 1.6",
     dict(weight_decay_mode="corrected", weight_decay=0.2, max_lr=1.6), "float32", True),
    ("-momentumDtype bfloat16 -beta1 0.9", dict(momentum_dtype="bfloat16", beta1=0.9),
     "float32", True),
    ("-momentumStochasticRounding 1 -momentumDtype bfloat16 -beta1 0.9",
     dict(momentum_stochastic_rounding=True, momentum_dtype="bfloat16", beta1=0.9),
     "float32", True),
    ("-variant big_vision -lr 0.05", dict(variant="big_vision", lr=0.05), "float32", True),
    ("-variant big_vision -lr 0.05 -beta1 -1 -momentumDtype none -clipThreshold 1",
     dict(variant="big_vision", lr=0.05, beta1=None, momentum_dtype="none", d=1.0),
     "float32", True),
    ("-factoredDims leading_two", dict(factored_dims="leading_two"), "float32", True),
    ("-fp32State yes -stochasticRounding on",
     dict(fp32_state=True, stochastic_rounding=True), "bfloat16", True),
    # everything at once
    ("-lr 0.3 -eps2 1e-20 -clipThreshold 0.5 -decayRate 0.6 -beta1 0.8 -weightDecay 0.01 "
     "-relativeStep 1 -scaleParameter 1 -warmupInit 0 -epsScale 1e-2 -maximize 1 "
     "-variant torch -factoredDims largest_two -minDimSizeToFactor 3 -fp32State 0 "
     "-stochasticRounding 0",
     dict(lr=0.3, eps1=1e-20, d=0.5, beta2_decay=-0.6, beta1=0.8, weight_decay=0.01,
          relative_step=True, scale_parameter=True, warmup_init=False, eps2=1e-2,
          maximize=True, variant="torch", factored_dims="largest_two",
          min_dim_size_to_factor=3, fp32_state=False, stochastic_rounding=False),
     "float32", True),
]


@pytest.mark.parametrize("words, kwargs, kind, changes", CASES,
                         ids=[c[0][:60] or "defaults" for c in CASES])
def test_option_gives_the_same_bits_as_the_core(tcl, words, kwargs, kind, changes):
    params0 = make_params(kind)
    grads = make_grads(params0)
    got = run_tcl(tcl, words, params0, grads)
    expected = run_core(kwargs, params0, grads)
    assert_bits_equal(got, expected)
    # The problem exercises the option: it is not silently equal to the defaults.
    if changes is not None:
        default = run_core({}, params0, grads)
        assert (not all_equal(expected, default)) == changes
    # and the parameters moved at all
    assert not all_equal(got, params0)


def test_every_option_has_a_numbers_case():
    covered = {w.lstrip("-") for words, *_ in CASES for w in words.split()
               if w.startswith("-") and not w[1:2].isdigit()}
    assert covered == {name for name, _ in OPTIONS} - {"parameters"}


def test_alias_command_gives_the_same_bits(tcl):
    params0 = make_params("float32")
    grads = make_grads(params0)
    words = "-lr 0.3 -beta1 0.5 -weightDecay 0.1"
    a = run_tcl(tcl, words, params0, grads)
    b = run_tcl(tcl, words, params0, grads, command="torch::optimizerAdafactor")
    assert_bits_equal(a, b)


def test_fp32_state_keeps_float32_state(tcl):
    for flag, dtype in [("0", "bfloat16"), ("1", "float32")]:
        p = tcl.put_tensor(torch.randn(6, 5).to(torch.bfloat16))
        v = tcl.put_tensor(torch.randn(7).to(torch.bfloat16))
        opt = tcl.eval(f"torch::optimizer_adafactor -parameters [list {p} {v}] "
                       f"-fp32State {flag} -beta1 0.9")
        for h in (p, v):
            tcl.tensor(h).grad = torch.randn(tcl.tensor(h).shape).to(torch.bfloat16)
        tcl.eval(f"torch::optimizer_step {opt}")
        st = f"[torch::optimizer_state {opt}]"
        for h, names in [(p, ("row_var", "col_var", "exp_avg")), (v, ("variance", "exp_avg"))]:
            for name in names:
                got = tcl.eval(f"dict get {st} parameters {h} state {name} dtype")
                assert got == dtype, (flag, h, name)


# ------------------------------------------------------------------ spellings

# For each option: a non-default value, valid for the problem above.
VALUES = {
    "lr": "0.05", "eps2": "1e-3", "clipThreshold": "0.05", "decayRate": "0.5",
    "beta1": "0.9", "weightDecay": "0.2", "relativeStep": "0", "scaleParameter": "0",
    "warmupInit": "1", "epsScale": "5.0", "maximize": "1", "variant": "torch",
    "factoredDims": "largest_two", "minDimSizeToFactor": "6", "fp32State": "1",
    "stochasticRounding": "1", "skipNonFinite": "1", "beta2Cap": "0.5", "decayOffset": "2",
    # options that act with momentum only bring it along
    "caution": "1 -beta1 0.9", "weightDecayMode": "unscaled -weightDecay 0.2",
    "momentumDtype": "bfloat16 -beta1 0.9",
    "momentumStochasticRounding": "1 -momentumDtype bfloat16 -beta1 0.9",
    "maxLr": "1.6 -weightDecayMode corrected -weightDecay 0.2",
}
BF16_OPTIONS = {"fp32State", "stochasticRounding"}


@pytest.mark.parametrize("camel, snake", OPTIONS[1:], ids=[o[0] for o in OPTIONS[1:]])
def test_snake_case_and_prefix_spellings_give_the_same_bits(tcl, camel, snake):
    params0 = make_params("bfloat16" if camel in BF16_OPTIONS else "float32")
    grads = make_grads(params0)
    value = VALUES[camel]
    reference = run_tcl(tcl, f"-{camel} {value}", params0, grads)
    default = run_tcl(tcl, "", params0, grads)
    if camel != "skipNonFinite":  # acts on non-finite gradients only
        assert not all_equal(reference, default), "the value must change the numbers"
    spellings = {camel, unique_prefix(camel)}
    if snake:
        # and a prefix that only the snake_case spelling has: "clip_t", "min_d", ...
        spellings |= {snake, unique_prefix(snake)}
        short = snake[:snake.index("_") + 2]
        # (where no other option's spelling starts so: "weight_d" does not qualify)
        if not any(s.startswith(short) for pair in OPTIONS if snake not in pair
                   for s in pair if s):
            spellings.add(short)
    for s in sorted(spellings):
        got = run_tcl(tcl, f"-{s} {value}", params0, grads)
        assert all_equal(got, reference), s
    # -parameters itself, by prefix and with the options before it
    got = run_tcl_script(
        tcl, f"torch::optimizer_adafactor -{camel} {value} -{unique_prefix('parameters')} "
             "$params", params0, grads)
    assert all_equal(got, reference)


def test_prefixes_are_really_prefixes():
    # The table above must hold true prefixes, some shorter than the names.
    shorter = 0
    for camel, snake in OPTIONS:
        for name in filter(None, (camel, snake)):
            p = unique_prefix(name)
            assert name.startswith(p)
            shorter += len(p) < len(name)
    assert shorter >= 12


@pytest.mark.parametrize("prefix", ["-eps", "-e", "-s", "-w", "-m", "-f"])
def test_ambiguous_prefixes_are_errors(tcl, prefix):
    t = tcl.eval("torch::zeros {3 3}")
    before = tcl.handles()
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} {prefix} 1")
    assert info.value.message.startswith(f'ambiguous option "{prefix}"')
    assert info.value.code == ("TCL", "LOOKUP", "INDEX", "option", prefix)
    assert tcl.handles() == before


def test_unknown_option_lists_every_option(tcl):
    t = tcl.eval("torch::zeros {3 3}")
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} -x 1")
    names = ([f"-{camel}" for camel, _ in OPTIONS] + ["-groups"]  # door-level, last
             + [f"-{camel}" for camel, _ in DOOR_OPTIONS])
    assert info.value.message == \
        f'bad option "-x": must be {", ".join(names[:-1])}, or {names[-1]}'
    assert info.value.code == ("TCL", "LOOKUP", "INDEX", "option", "-x")


def test_option_without_value_and_missing_parameters(tcl):
    t = tcl.eval("torch::zeros {3 3}")
    for words, text in [(f"-parameters {t} -lr", 'value for "-lr" missing: should be "'),
                        ("-lr 0.1", "missing required option -parameters: should be \""),
                        ("", "missing required argument parameters")]:
        with pytest.raises(TclError) as info:
            tcl.eval(f"torch::optimizer_adafactor {words}")
        assert info.value.message.startswith(text), info.value.message
        assert info.value.code == ("TCL", "WRONGARGS")
    with pytest.raises(TclError) as info:
        tcl.eval("torch::optimizer_adafactor -parameters tensor999")
    assert info.value.message == \
        'bad value "tensor999" for -parameters: no such tensor or module handle'
    assert info.value.code == ("TORCH", "HANDLE", "tensor999")


def test_positional_form_equals_named_form(tcl):
    params0 = make_params("float32")
    grads = make_grads(params0)
    named = run_tcl_script(
        tcl, "torch::optimizer_adafactor -parameters $params -lr 0.3 -eps2 1e-12 "
             "-clipThreshold 0.5 -decayRate 0.6 -beta1 0.7 -weightDecay 0.05",
        params0, grads)
    positional = run_tcl_script(
        tcl, "torch::optimizer_adafactor $params 0.3 1e-12 0.5 0.6 0.7 0.05",
        params0, grads)
    core = run_core(dict(lr=0.3, eps1=1e-12, d=0.5, beta2_decay=-0.6, beta1=0.7,
                         weight_decay=0.05), params0, grads)
    assert_bits_equal(named, core)
    assert_bits_equal(positional, core)
    # fewer positional values: the rest at their defaults
    short = run_tcl_script(tcl, "torch::optimizer_adafactor $params 0.3 1e-12",
                           params0, grads)
    assert_bits_equal(short, run_core(dict(lr=0.3, eps1=1e-12), params0, grads))


def test_positional_form_stops_at_seven_values(tcl):
    t = tcl.eval("torch::zeros {3 3}")
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor {t} 0.8 1e-30 1.0 -1.0 -1.0 0.0 1")
    assert "wrong # args" in info.value.message
    assert info.value.code == ("TCL", "WRONGARGS")


# ------------------------------------------------------------------ bad values

BAD_VALUES = [
    ("-lr -1", "lr", "-1"),
    ("-lr inf", "lr", "inf"),
    ("-lr abc", "lr", "abc"),
    ("-eps2 -1e-3", "eps2", "-1e-3"),
    ("-eps2 nan", "eps2", "nan"),
    ("-clipThreshold 0", "clipThreshold", "0"),
    ("-clip_threshold -2", "clipThreshold", "-2"),
    ("-decayRate nan", "decayRate", "nan"),
    ("-decayRate x", "decayRate", "x"),
    ("-beta1 1", "beta1", "1"),
    ("-beta1 -0.5", "beta1", "-0.5"),
    ("-beta1 1.5", "beta1", "1.5"),
    ("-weightDecay -0.1", "weightDecay", "-0.1"),
    ("-relativeStep maybe", "relativeStep", "maybe"),
    ("-scaleParameter 0.5x", "scaleParameter", "0.5x"),
    ("-warmupInit sometimes", "warmupInit", "sometimes"),
    ("-warmupInit 1 -relativeStep 0", "warmupInit", "1"),
    ("-relativeStep false -warmup_init true", "warmupInit", "true"),
    ("-epsScale -1", "epsScale", "-1"),
    ("-maximize perhaps", "maximize", "perhaps"),
    ("-variant foo", "variant", "foo"),
    ("-variant t", "variant", "t"),
    ("-factoredDims x", "factoredDims", "x"),
    ("-factoredDims first_two", "factoredDims", "first_two"),
    ("-minDimSizeToFactor -1", "minDimSizeToFactor", "-1"),
    ("-minDimSizeToFactor 1.5", "minDimSizeToFactor", "1.5"),
    ("-fp32State xyz", "fp32State", "xyz"),
    ("-stochasticRounding 12ab", "stochasticRounding", "12ab"),
    ("-parameters {}", "parameters", ""),
]


@pytest.mark.parametrize("words, option, value", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_errors_naming_the_option(tcl, words, option, value):
    t = tcl.eval("torch::zeros {3 3}")
    before = tcl.handles()
    script = (f"torch::optimizer_adafactor {words}" if words.startswith("-parameters")
              else f"torch::optimizer_adafactor -parameters {t} {words}")
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    assert f"-{option}" in info.value.message
    assert info.value.message.startswith(f'bad value "{value}" for -{option}: ')
    assert info.value.code == ("TORCH", "VALUE", f"-{option}", value)
    assert tcl.handles() == before  # nothing created
    # still working
    assert tcl.eval(f"torch::optimizer_adafactor -parameters {t}").startswith("optimizer")


def test_variant_and_factored_dims_accept_unique_prefixes(tcl):
    params0 = make_params("float32")
    grads = make_grads(params0)
    got = run_tcl(tcl, "-variant to -factoredDims larg", params0, grads)
    assert_bits_equal(got, run_core(dict(variant="torch", factored_dims="largest_two"),
                                    params0, grads))
    t = tcl.eval("torch::zeros 3")
    with pytest.raises(TclError) as info:  # "la": last_two or largest_two
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} -factoredDims la")
    assert info.value.code == ("TORCH", "VALUE", "-factoredDims", "la")


# ------------------------------------------------------------------ a training run

def test_tcl_training_run_equals_python_run_to_the_last_bit(tcl):
    tcl.eval("torch::manual_seed 3")
    tcl.eval("set model [torch::sequential]\n"
             "torch::add_module $model [torch::linear 20 16]\n"
             "torch::add_module $model [torch::relu]\n"
             "torch::add_module $model [torch::linear 16 3]\n"
             "set opt [torch::optimizer_adafactor -parameters $model]")
    handles = tcl.split(tcl.eval("torch::parameters $model"))
    tcl_params = [tcl.tensor(h) for h in handles]
    assert [tuple(p.shape) for p in tcl_params] == [(16, 20), (16,), (3, 16), (3,)]

    net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        for mine, theirs in zip(net.parameters(), tcl_params):
            mine.copy_(theirs)
    py_opt = _C.Adafactor(list(net.parameters()), variant="transformers", lr=0.8, eps1=1e-30)

    gen = torch.Generator().manual_seed(11)
    X = torch.randn(12 * 16, 20, generator=gen)
    y = (X @ torch.randn(20, 3, generator=gen)).argmax(1)  # learnable labels
    xh, yh = tcl.put_tensor(X), tcl.put_tensor(y)
    tcl_losses, py_losses = [], []
    for epoch in range(2):
        for i in range(0, X.shape[0], 16):
            tcl_losses.append(float(tcl.eval(
                "torch::optimizer_zero_grad $opt\n"
                f"set xb [torch::tensor_slice {xh} 0 {i} {i + 16}]\n"
                f"set yb [torch::tensor_slice {yh} 0 {i} {i + 16}]\n"
                "set loss [torch::cross_entropy_loss [torch::forward $model $xb] $yb]\n"
                "torch::tensor_backward $loss\n"
                "torch::optimizer_step $opt\n"
                "set v [torch::tensor_item $loss]\n"
                "torch::delete $xb $yb $loss\n"
                "set v")))
            py_opt.zero_grad()
            loss = F.cross_entropy(net(X[i:i + 16]), y[i:i + 16])
            loss.backward()
            py_opt.step()
            py_losses.append(loss.item())
    assert tcl_losses == py_losses
    for mine, theirs in zip(tcl_params, net.parameters()):
        assert torch.equal(mine, theirs.detach())
    # and it learned: the second epoch's mean loss is below the first's
    assert sum(tcl_losses[12:]) < sum(tcl_losses[:12])
