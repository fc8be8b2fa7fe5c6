"""The seed page's examples, verbatim, and the numbers behind them."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO, run_tclsh
from reference import ReferenceAdafactor, rel_err

EXAMPLE_SINGLE_TENSOR = """
# Create a tensor
set tensor [torch::zeros {5 5} float32]

# Create optimizer with default parameters
set opt [torch::optimizer_adafactor -parameters $tensor]

# Use in training loop
torch::optimizer_zero_grad $opt
# ... forward pass and loss calculation ...
torch::optimizer_step $opt
"""

EXAMPLE_MULTIPLE = """
# Create multiple tensors
set t1 [torch::zeros {5 5} float32]
set t2 [torch::zeros {3 3} float32]
set params [list $t1 $t2]

# Create optimizer with custom settings
set opt [torch::optimizer_adafactor \\
    -parameters $params \\
    -lr 0.8 \\
    -eps2 1e-30 \\
    -clipThreshold 1.0 \\
    -decayRate 0.8 \\
    -beta1 0.9 \\
    -weightDecay 0.01]
"""

EXAMPLE_MODULE = """
# Create a neural network module
set model [torch::sequential]
torch::add_module $model [torch::linear 784 256]
torch::add_module $model [torch::relu]
torch::add_module $model [torch::linear 256 10]

# Create optimizer for all module parameters
set opt [torch::optimizer_adafactor -parameters $model -lr 0.8]
"""


def test_single_tensor_example(tcl):
    tcl.eval(EXAMPLE_SINGLE_TENSOR)
    t = tcl.tensor(tcl.eval("set tensor"))
    assert tcl.eval("set opt").startswith("optimizer")
    # No gradient yet: the step leaves the tensor alone, as torch does.
    assert torch.equal(t, torch.zeros(5, 5))
    # With a gradient, a step moves it exactly as the reference says.
    g = torch.randn(5, 5)
    t.grad = g.clone()
    ref_p = torch.zeros(5, 5, dtype=torch.float64)
    ref_p.grad = g.double()
    ref = ReferenceAdafactor([ref_p], variant="transformers", lr=0.8, eps1=1e-30)
    tcl.eval("torch::optimizer_step $opt")
    ref.step()
    assert rel_err(t, ref_p) <= 1e-6


def test_multiple_tensors_example_uses_every_option(tcl):
    tcl.eval(EXAMPLE_MULTIPLE)
    t1, t2 = (tcl.tensor(tcl.eval(f"set {v}")) for v in ("t1", "t2"))
    refs = [torch.zeros(5, 5, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)]
    # The page's -decayRate 0.8 means beta2_t = 1 - t^-0.8; -beta1 0.9 turns
    # momentum on; -weightDecay 0.01 is scaled by the step size.
    ref = ReferenceAdafactor(refs, variant="transformers", lr=0.8, eps1=1e-30,
                             beta2_decay=-0.8, beta1=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        for mine, r in zip((t1, t2), refs):
            g = torch.randn(mine.shape, generator=gen)
            mine.grad = g.clone()
            r.grad = g.double()
        tcl.eval("torch::optimizer_step $opt")
        ref.step()
    assert rel_err(t1, refs[0]) <= 1e-6
    assert rel_err(t2, refs[1]) <= 1e-6


def test_module_example_optimizes_all_four_parameters(tcl):
    tcl.eval(EXAMPLE_MODULE)
    params = [tcl.tensor(h) for h in tcl.split(tcl.eval("torch::parameters $model"))]
    assert [tuple(p.shape) for p in params] == [(256, 784), (256,), (10, 256), (10,)]
    before = [p.detach().clone() for p in params]
    x = tcl.put_tensor(torch.randn(4, 784))
    y = tcl.put_tensor(torch.tensor([0, 3, 9, 1]))
    tcl.eval(f"torch::tensor_backward [torch::cross_entropy_loss [torch::forward $model {x}] {y}]")
    tcl.eval("torch::optimizer_step $opt")
    assert all(not torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("example", [EXAMPLE_SINGLE_TENSOR, EXAMPLE_MULTIPLE, EXAMPLE_MODULE])
def test_examples_run_in_plain_tclsh(example):
    out = run_tclsh("package require torch\n" + example + "\nputs [torch::handles]\n")
    assert out.returncode == 0, out.stderr
    assert "optimizer1" in out.stdout


def test_main_example_trains():
    out = run_tclsh(None, "6", file=REPO / "examples" / "train_mlp.tcl")
    assert out.returncode == 0, out.stderr
    losses = [float(line.split()[-1]) for line in out.stdout.splitlines()]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]


def test_tcl_defaults_match_transformers_adafactor(tcl):
    transformers = pytest.importorskip("transformers.optimization")
    # transformers' relative step is capped at 1e-2: the same as -lr 0.01.
    p = tcl.put_tensor(torch.randn(6, 7, generator=torch.Generator().manual_seed(4)))
    v = tcl.put_tensor(torch.randn(9, generator=torch.Generator().manual_seed(5)))
    mine = [tcl.tensor(p), tcl.tensor(v)]
    theirs = [t.detach().clone() for t in mine]
    tcl.eval(f"set opt [torch::optimizer_adafactor -parameters [list {p} {v}] -lr 0.01]")
    ref = transformers.Adafactor(theirs, lr=None)
    gen = torch.Generator().manual_seed(6)
    for _ in range(20):
        for a, b in zip(mine, theirs):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        tcl.eval("torch::optimizer_step $opt")
        ref.step()
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) <= 1e-6
