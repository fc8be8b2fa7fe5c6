"""One argument parser for every command: named and positional forms,
spellings, prefixes, and the errors of bad calls."""
from __future__ import annotations

import pytest
import torch

from tcltorch.tcl import TclError
from conftest import run_tclsh


def make_params(tcl, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [tcl.put_tensor(torch.randn(s, generator=gen)) for s in [(4, 6), (5,)]]


def train(tcl, create: str, handles, steps=8, seed=10):
    """Creates an optimizer with `create` (a script using $params) and runs
    `steps` steps with fixed gradients; returns the final parameters."""
    tcl.eval("set params [list " + " ".join(handles) + "]")
    tcl.eval("set opt [" + create + "]")
    tensors = [tcl.tensor(h) for h in handles]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for t in tensors:
            t.grad = torch.randn(t.shape, generator=gen)
        tcl.eval("torch::optimizer_step $opt")
    return [t.detach().clone() for t in tensors]


NAMED = ("torch::optimizer_adafactor -parameters $params -lr 0.5 -eps2 1e-20 "
         "-clipThreshold 0.9 -decayRate 0.7 -beta1 0.8 -weightDecay 0.05")
SAME_CALLS = [
    "torch::optimizer_adafactor $params 0.5 1e-20 0.9 0.7 0.8 0.05",
    "torch::optimizerAdafactor -parameters $params -lr 0.5 -eps2 1e-20 "
    "-clipThreshold 0.9 -decayRate 0.7 -beta1 0.8 -weightDecay 0.05",
    "torch::optimizer_adafactor -parameters $params -lr 0.5 -eps2 1e-20 "
    "-clip_threshold 0.9 -decay_rate 0.7 -beta1 0.8 -weight_decay 0.05",
    # (-weightDecay and -beta1 are also the beginnings of -weightDecayMode and
    # -beta2Cap: an exact name wins)
    "torch::optimizer_adafactor -weightDecay 0.05 -beta1 0.8 -decayR 0.7 -cl 0.9 -eps2 1e-20 "
    "-l 0.5 -p $params",
]


@pytest.mark.parametrize("call", SAME_CALLS)
def test_every_form_equals_the_named_form(tcl, call):
    expected = train(tcl, NAMED, make_params(tcl))
    got = train(tcl, call, make_params(tcl))
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_positional_defaults_equal_named_defaults(tcl):
    a = train(tcl, "torch::optimizer_adafactor $params", make_params(tcl))
    b = train(tcl, "torch::optimizer_adafactor -parameters $params -lr 0.8 -eps2 1e-30 "
                   "-clipThreshold 1.0 -decayRate -1.0 -beta1 -1.0 -weightDecay 0.0",
              make_params(tcl))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_options_change_the_numbers(tcl):
    # The page's options are not silently dropped: each changes the result.
    base = train(tcl, "torch::optimizer_adafactor -parameters $params", make_params(tcl))
    for opt in ["-lr 0.1", "-eps2 1e-3", "-clipThreshold 0.01", "-decayRate 0.5",
                "-beta1 0.9", "-weightDecay 0.5"]:
        other = train(tcl, "torch::optimizer_adafactor -parameters $params " + opt,
                      make_params(tcl))
        assert not torch.equal(base[0], other[0]), opt


def test_parameters_take_tensor_list_or_module(tcl):
    t = tcl.eval("torch::zeros {3 3}")
    assert tcl.eval(f"torch::optimizer_adafactor -parameters {t}").startswith("optimizer")
    assert tcl.eval(f"torch::optimizer_adafactor -parameters [list {t} [torch::ones 4]]")
    m = tcl.eval("torch::linear 3 2")
    assert tcl.eval(f"torch::optimizer_adafactor -parameters {m}")
    assert tcl.eval(f"torch::optimizer_adafactor {m} 0.1")


BAD_CALLS = [
    ("torch::optimizer_adafactor -parameters $t -bogus 1",
     ("TCL", "LOOKUP", "INDEX", "option", "-bogus"), 'bad option "-bogus": must be -parameters'),
    ("torch::optimizer_adafactor -lr 0.1",
     ("TCL", "WRONGARGS"), "missing required option -parameters"),
    ("torch::optimizer_adafactor -parameters tensor999",
     ("TORCH", "HANDLE", "tensor999"), "no such tensor or module handle"),
    ("torch::optimizer_adafactor -parameters $t -lr fast",
     ("TORCH", "VALUE", "-lr", "fast"), 'bad value "fast" for -lr: must be a floating-point number'),
    ("torch::optimizer_adafactor -parameters $t -clipThreshold 0",
     ("TORCH", "VALUE", "-clipThreshold", "0"), "must be -1 (no clipping) or > 0"),
    ("torch::optimizer_adafactor -parameters $t -beta1 1.5",
     ("TORCH", "VALUE", "-beta1", "1.5"), "-1 (no momentum) or in [0, 1)"),
    ("torch::optimizer_adafactor -parameters $t -lr",
     ("TCL", "WRONGARGS"), 'value for "-lr" missing'),
    ("torch::optimizer_adafactor -parameters $t -w 1",
     ("TCL", "LOOKUP", "INDEX", "option", "-w"), 'ambiguous option "-w"'),
    ("torch::optimizer_adafactor $t 0.1 0 1 -1 -1 0 extra",
     ("TCL", "WRONGARGS"), "wrong # args"),
    ("torch::optimizer_adafactor -parameters $t -variant keras",
     ("TORCH", "VALUE", "-variant", "keras"), "must be transformers, torch, or big_vision"),
    ("torch::optimizer_adafactor -parameters $t -lr nan",
     ("TORCH", "VALUE", "-lr", "nan"), "must be"),
    ("torch::optimizer_adafactor -parameters [torch::tensor_create {1 2} {} int64]",
     ("TORCH", "VALUE", "-parameters"), "not a floating-point tensor"),
    ("torch::optimizer_step $t",
     ("TORCH", "HANDLE"), "is a tensor handle, not an optimizer handle"),
    ("torch::optimizer_step optimizer42",
     ("TORCH", "HANDLE", "optimizer42"), 'invalid optimizer handle "optimizer42"'),
    ("torch::add_module [torch::relu] [torch::relu]",
     ("TORCH", "HANDLE"), "not a sequential"),
    ("torch::zeros {2 -1}", ("TORCH", "VALUE", "-shape"), "non-negative integers"),
    ("torch::linear 0 3", ("TORCH", "VALUE", "-inFeatures", "0"), "must be >= 1"),
]


@pytest.mark.parametrize("script, code, message", BAD_CALLS)
def test_bad_calls_are_tcl_errors(tcl, script, code, message):
    tcl.eval("set t [torch::zeros {3 3}]")
    before = tcl.handles()
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    assert message in info.value.message
    assert info.value.code[: len(code)] == code
    # The interpreter is fine afterwards.
    assert tcl.eval("expr {1 + 1}") == "2"
    assert tcl.eval("torch::optimizer_adafactor -parameters $t").startswith("optimizer")
    assert set(before) <= set(tcl.handles())


def test_bad_calls_do_not_crash_tclsh():
    script = ["package require torch", "set t [torch::zeros {3 3}]", "set n 0"]
    for call, _code, _msg in BAD_CALLS:
        script.append("if {[catch {" + call + "} msg opts]} {incr n; "
                      "puts [dict get $opts -errorcode]}")
    script.append("puts \"errors $n\"")
    out = run_tclsh("\n".join(script) + "\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"errors {len(BAD_CALLS)}"


def test_variant_torch_without_eps2_is_torch_adafactor(tcl):
    # -eps2 defaults to 1e-30 for the paper's variant; with -variant torch and
    # no -eps2 the core's torch default applies (finfo(dtype).eps per parameter).
    a = train(tcl, "torch::optimizer_adafactor -parameters $params -variant torch -lr 0.01",
              make_params(tcl))
    ps = [torch.randn(s, generator=torch.Generator().manual_seed(0)) for s in [(4, 6), (5,)]]
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen) for s in [(4, 6), (5,)]]
    ref = torch.optim.Adafactor(ps, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(10)
    for _ in range(8):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        ref.step()
    for x, y in zip(a, ps):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_integer_arithmetic_keeps_integer_dtype(tcl):
    i = tcl.eval("torch::tensor_create {1 2 3} {} int64")
    assert tcl.eval(f"torch::tensor_dtype [torch::add {i} 1]") == "int64"
    assert tcl.eval(f"torch::tensor_to_list [torch::add {i} {i}]") == "2 4 6"
    assert tcl.eval(f"torch::tensor_to_list [torch::sub {i} {i} 2]") == "-1 -2 -3"
    assert tcl.eval(f"torch::tensor_dtype [torch::mul {i} 0.5]") == "float32"
