"""tcltorch.tcl.Interp: the Python side of the Tcl package."""
from __future__ import annotations

import pytest
import torch

from tcltorch.tcl import Interp, TclError


def test_tensor_shares_memory_both_ways(tcl):
    h = tcl.eval("torch::ones {2 3}")
    t = tcl.tensor(h)
    t.mul_(4)
    assert tcl.eval(f"torch::tensor_to_list {h}") == "{4.0 4.0 4.0} {4.0 4.0 4.0}"
    mine = torch.arange(6.0).reshape(2, 3)
    h2 = tcl.put_tensor(mine)
    assert tcl.tensor(h2).data_ptr() == mine.data_ptr()
    assert tcl.put_tensor(mine) == h2  # one tensor, one handle


def test_handles_are_per_interpreter(tcl):
    other = Interp()
    h = tcl.eval("torch::zeros 3")
    with pytest.raises(ValueError, match="no such handle"):
        other.tensor(h)
    with pytest.raises(TclError):
        other.eval(f"torch::tensor_shape {h}")
    assert other.eval("torch::zeros 2") == h  # numbering is per interpreter too


def test_delete_and_handles(tcl):
    a = tcl.eval("torch::zeros 3")
    b = tcl.eval("torch::linear 2 2")
    assert tcl.handles() == (a, b)
    assert tcl.handles("module*") == (b,)
    with pytest.raises(TclError, match="no such handle"):
        tcl.eval(f"torch::delete {a} nosuch")
    assert tcl.handles() == (a, b)  # nothing deleted by a failing call
    tcl.eval(f"torch::delete {a} {b}")
    assert tcl.handles() == ()
    with pytest.raises(ValueError):
        tcl.tensor(a)


def test_tensor_commands(tcl):
    h = tcl.eval("torch::tensor_create {{1 2 3} {4 5 6}}")
    assert tcl.eval(f"torch::tensor_shape {h}") == "2 3"
    assert tcl.eval(f"torch::tensor_dtype {h}") == "float32"
    assert tcl.eval(f"torch::tensor_item [torch::tensor_create 7.5]") == "7.5"
    i = tcl.eval("torch::tensor_create {1 2 3 4} {2 2} int64")
    assert torch.equal(tcl.tensor(i), torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(TclError, match="regular nested list"):
        tcl.eval("torch::tensor_create {{1 2} {3}}")
    tcl.eval("torch::manual_seed 7")
    r1 = tcl.tensor(tcl.eval("torch::randn {3 3}")).clone()
    tcl.eval("torch::manual_seed 7")
    r2 = tcl.tensor(tcl.eval("torch::randn -shape {3 3}"))
    assert torch.equal(r1, r2)
    w = tcl.eval("torch::zeros {2 2} float64 true")
    assert tcl.eval(f"torch::tensor_requires_grad {w}") == "1"
    assert tcl.tensor(w).dtype == torch.float64


def test_bridge_refuses_interpreter_without_package():
    import tkinter

    from tcltorch import _C

    bare = tkinter.Tcl()
    with pytest.raises(ValueError, match="not loaded"):
        _C.tcl_get_tensor(bare.interpaddr(), "tensor1")
