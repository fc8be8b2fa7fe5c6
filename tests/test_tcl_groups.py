"""torch::optimizer_adafactor -groups: parameter groups from Tcl, each group's
options overriding the command's, checked against torch.optim.Adafactor and
transformers' Adafactor run with the same parameter groups."""
from __future__ import annotations

import pytest
import torch

from reference import rel_err
from tcltorch.tcl import TclError

STEPS = 8


def problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (6, 5), "w2": (4, 3, 2), "b1": (7,), "b2": (5,), "w3": (3, 8)}
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
             for _ in range(STEPS)]
    return params, grads


def run_tcl(tcl, script: str, params0, grads):
    """Runs `script` (which sees $w1, $b1, ... as tensor handles and returns
    an optimizer) over copies of params0; returns the copies."""
    params = {k: p.clone() for k, p in params0.items()}
    for k, p in params.items():
        tcl.eval(f"set {k} {tcl.put_tensor(p)}")
    opt = tcl.eval(script)
    for gs in grads:
        for k, p in params.items():
            p.grad = gs[k].clone()
        tcl.eval(f"torch::optimizer_step {opt}")
    return params


def run_reference(make, groups, params0, grads):
    """`make(param_groups)` over copies of params0, groups naming parameters
    by key."""
    params = {k: p.clone().requires_grad_() for k, p in params0.items()}
    opt = make([{**g, "params": [params[k] for k in g["params"]]} for g in groups])
    for gs in grads:
        for k, p in params.items():
            p.grad = gs[k].clone()
        opt.step()
    return {k: p.detach() for k, p in params.items()}


def assert_close(got, expected, tol=1e-12):
    for k in expected:
        assert rel_err(got[k], expected[k]) <= tol, k
        assert not torch.equal(got[k], problem()[0][k]), k  # it moved


def test_groups_match_torch_optim_adafactor(tcl):
    params0, grads = problem()
    got = run_tcl(tcl, (
        "torch::optimizer_adafactor -parameters [list $w1 $w2 $b1 $b2 $w3] -variant torch "
        "-lr 0.02 -weightDecay 0.1 "
        "-groups [list [list -parameters [list $w1 $w2] -weightDecay 0.01] "
        "              [list -parameters [list $b1 $b2] -weightDecay 0 -lr 0.005]]"),
        params0, grads)
    # $w3 is in no group: it keeps the command's options.
    expected = run_reference(
        lambda groups: torch.optim.Adafactor(groups, lr=0.02, weight_decay=0.1),
        [{"params": ["w1", "w2"], "weight_decay": 0.01},
         {"params": ["b1", "b2"], "weight_decay": 0.0, "lr": 0.005},
         {"params": ["w3"]}],
        params0, grads)
    assert_close(got, expected)


def test_groups_match_transformers_adafactor(tcl):
    transformers = pytest.importorskip("transformers.optimization")
    params0, grads = problem(seed=1)
    # Tcl defaults are transformers' (relative step, eps 1e-30, clip 1), with
    # -lr the cap of the relative step; transformers fixes that cap at 1e-2.
    got = run_tcl(tcl, (
        "torch::optimizer_adafactor -parameters [list $w1 $w2 $b1 $b2 $w3] -lr 0.01 "
        "-beta1 0.9 "
        "-groups [list [list -parameters [list $w1 $w2] -weightDecay 0.01] "
        "              [list -parameters [list $b1 $b2 $w3] -beta1 -1 -clipThreshold 0.5]]"),
        params0, grads)
    expected = run_reference(
        lambda groups: transformers.Adafactor(groups, lr=None, beta1=0.9),
        [{"params": ["w1", "w2"], "weight_decay": 0.01},
         {"params": ["b1", "b2", "w3"], "beta1": None, "clip_threshold": 0.5}],
        params0, grads)
    assert_close(got, expected, tol=1e-12)


def test_group_variant_brings_its_own_defaults(tcl):
    # A group that switches to -variant torch gets torch's default eps1
    # (finfo(dtype).eps), not the transformers default the command implies.
    params0, grads = problem(seed=2)
    got = run_tcl(tcl, (
        "torch::optimizer_adafactor -parameters [list $w1 $w2 $b1 $b2 $w3] -lr 0.01 "
        "-groups [list [list -parameters [list $w1 $w2 $b1 $b2 $w3] -variant torch]]"),
        params0, grads)
    expected = run_reference(lambda groups: torch.optim.Adafactor(groups, lr=0.01),
                             [{"params": ["w1", "w2", "b1", "b2", "w3"]}], params0, grads)
    assert_close(got, expected)


def test_groups_round_trip_through_a_checkpoint(tcl, tmp_path):
    params0, grads = problem(seed=3)
    script = ("torch::optimizer_adafactor -parameters [list $w1 $w2 $b1 $b2 $w3] -variant torch "
              "-lr 0.02 -groups [list [list -parameters [list $b1 $b2] -weightDecay 0.5]]")
    straight = run_tcl(tcl, script, params0, grads)
    params = {k: p.clone() for k, p in params0.items()}
    for k, p in params.items():
        tcl.eval(f"set {k} {tcl.put_tensor(p)}")
    opt = tcl.eval(script)
    file = (tmp_path / "opt.pt").as_posix()
    for i, gs in enumerate(grads):
        if i == STEPS // 2:
            tcl.eval(f"torch::optimizer_save {opt} {{{file}}}")
            opt2 = tcl.eval(script)
            tcl.eval(f"torch::optimizer_load {opt2} {{{file}}}")
            opt = opt2
        for k, p in params.items():
            p.grad = gs[k].clone()
        tcl.eval(f"torch::optimizer_step {opt}")
    for k in params:
        assert torch.equal(params[k], straight[k]), k


# (words, -errorcode, text in the message, the group the message names or None)
BAD = [
    ("-groups [list [list -parameters $b1 -weightDecay -1]]",
     ("TORCH", "VALUE", "-weightDecay", "-1"), 'bad value "-1" for -weightDecay: must be >= 0', 1),
    ("-groups [list [list -parameters $w1] [list -parameters $b1 -bogus 1]]",
     ("TCL", "LOOKUP", "INDEX", "option", "-bogus"), 'bad option "-bogus": must be -parameters, -lr',
     2),
    ("-groups [list [list -weightDecay 0]]",
     ("TCL", "WRONGARGS"), "missing required option -parameters", 1),
    ("-groups [list [list -parameters $b1 -lr]]", ("TCL", "WRONGARGS"), 'value for "-lr" missing', 1),
    ("-groups [list [list -parameters tensor999]]",
     ("TORCH", "HANDLE", "tensor999"), "no such tensor or module handle", 1),
    ("-groups [list [list -parameters $b1] [list -parameters [list $w1 $b1]]]",
     ("TORCH", "VALUE", "-groups"), "a parameter is already in an earlier group", 2),
    ("-groups [list [list -parameters $b1 -warmupInit 1 -relativeStep 0]]",
     ("TORCH", "VALUE", "-warmupInit", "1"), "needs -relativeStep true", 1),
    ("-groups [list [list -parameters $b1 -variant keras]]",
     ("TORCH", "VALUE", "-variant", "keras"), "must be transformers, torch, or big_vision", 1),
    ("-groups \"{\"", ("TORCH", "VALUE", "-groups"), "must be a list of groups", None),
]


@pytest.mark.parametrize("words, code, text, group", BAD, ids=[b[0] for b in BAD])
def test_bad_groups_are_tcl_errors(tcl, words, code, text, group):
    w1, b1 = tcl.put_tensor(torch.zeros(3, 2)), tcl.put_tensor(torch.zeros(3))
    tcl.eval(f"set w1 {w1}; set b1 {b1}")
    before = tcl.handles()
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor -parameters [list $w1 $b1] {words}")
    assert text in info.value.message, info.value.message
    assert info.value.code[:len(code)] == code
    if group is not None:
        assert info.value.message.endswith(f" (group {group} of -groups)"), info.value.message
    assert tcl.handles() == before
