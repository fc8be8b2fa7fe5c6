"""Every command of the Tcl package, driven through tcltorch.tcl.Interp, with
its result checked against torch computed here; and the errors of bad calls
to every command."""
from __future__ import annotations

import re
import struct
import zipfile

import pytest
import torch
import torch.nn.functional as F

import tcl_nn_cases
from conftest import REPO, run_tclsh
from tcltorch import _C
from tcltorch.tcl import TclError


# ------------------------------------------------------------------ helpers

def T(tcl, handle: str) -> torch.Tensor:
    return tcl.tensor(handle)


def nested(tcl, value: str, depth: int):
    """A Tcl list of `depth` levels of numbers as nested Python lists of floats."""
    if depth == 0:
        return float(value)
    return [nested(tcl, v, depth - 1) for v in tcl.split(value)]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def error_of(tcl, script: str) -> TclError:
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    return info.value


def still_works(tcl):
    assert tcl.eval("expr {6 * 7}") == "42"
    h = tcl.eval("torch::full {2 2} 3")
    assert float(tcl.eval(f"torch::tensor_item [torch::sum {h}]")) == 12.0
    tcl.eval(f"torch::delete {h}")


def table_commands() -> set[str]:
    """The commands named in the function tables at the bottom of tcl/*.cpp."""
    names = set()
    for path in (REPO / "tcl").glob("commands_*.cpp"):
        names |= set(re.findall(r'\{"(torch::\w+)",\s*cmd_\w+\}', path.read_text()))
    return names


# Every command this file exercises by its result (the error tests below cover
# them all too).
COVERED = {
    "torch::zeros", "torch::ones", "torch::randn", "torch::rand", "torch::full",
    "torch::tensor_create", "torch::tensor_item", "torch::tensor_to_list",
    "torch::tensor_shape", "torch::tensor_dtype", "torch::tensor_grad",
    "torch::tensor_backward", "torch::tensor_requires_grad", "torch::manual_seed",
    "torch::delete", "torch::handles",
    "torch::add", "torch::sub", "torch::mul", "torch::div", "torch::eq", "torch::matmul",
    "torch::sum", "torch::mean", "torch::argmax", "torch::tensor_slice",
    "torch::index_select", "torch::randperm", "torch::tensor_reshape", "torch::tensor_to",
    "torch::linear", "torch::relu", "torch::tanh", "torch::sigmoid", "torch::gelu",
    "torch::dropout", "torch::train", "torch::eval", "torch::module_save",
    "torch::module_load", "torch::sequential", "torch::add_module", "torch::forward",
    "torch::parameters", "torch::mse_loss", "torch::cross_entropy_loss",
    "torch::optimizer_adafactor", "torch::optimizerAdafactor", "torch::optimizer_adam",
    "torch::optimizer_adamw", "torch::optimizer_sgd", "torch::optimizer_step",
    "torch::optimizer_state", "torch::optimizer_save", "torch::optimizer_load",
    "torch::optimizer_zero_grad", "torch::optimizer_lr",
}
COVERED |= tcl_nn_cases.COMMANDS  # their results: test_tcl_nn.py, test_tcl_training_commands.py
# Collectives need a process group, and several ranks to mean anything: they
# and their errors are tested in tests/test_tcl_distributed.py.
DISTRIBUTED = {
    "torch::distributed_init", "torch::distributed_rank", "torch::distributed_world_size",
    "torch::barrier", "torch::distributed_destroy", "torch::all_reduce", "torch::broadcast",
    "torch::all_gather", "torch::distributed_data_parallel",
}


def test_every_command_is_covered(tcl):
    registered = {c.lstrip(":") for c in tcl.split(tcl.eval("info commands ::torch::*"))}
    assert registered == table_commands()
    assert registered - DISTRIBUTED == COVERED


# ------------------------------------------------------------------ tensors

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int8": torch.int8, "int16": torch.int16,
          "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
          "bool": torch.bool}


def test_zeros_ones_full(tcl):
    z = T(tcl, tcl.eval("torch::zeros {2 3}"))
    assert z.dtype == torch.float32 and torch.equal(z, torch.zeros(2, 3))
    o = T(tcl, tcl.eval("torch::ones -shape {4} -dtype int64"))
    assert torch.equal(o, torch.ones(4, dtype=torch.int64))
    s = T(tcl, tcl.eval("torch::ones {}"))
    assert s.shape == () and s.item() == 1.0
    f = T(tcl, tcl.eval("torch::full {2 2} -2.5"))
    assert torch.equal(f, torch.full((2, 2), -2.5))
    fi = T(tcl, tcl.eval("torch::full -shape {3} -value 7 -dtype int32"))
    assert torch.equal(fi, torch.full((3,), 7, dtype=torch.int32))
    g = T(tcl, tcl.eval("torch::full {2} 1.5 float64 true"))
    assert g.dtype == torch.float64 and g.requires_grad
    w = T(tcl, tcl.eval("torch::zeros -shape {2 2} -requires_grad 1"))
    assert w.requires_grad and w.is_leaf
    for name, dtype in DTYPES.items():
        t = T(tcl, tcl.eval(f"torch::zeros {{3}} {name}"))
        assert t.dtype == dtype, name
        assert torch.equal(t, torch.zeros(3, dtype=dtype))


def test_rand_and_randn_follow_the_seed_like_torch(tcl):
    tcl.eval("torch::manual_seed 1234")
    a = T(tcl, tcl.eval("torch::randn {3 4}")).clone()
    b = T(tcl, tcl.eval("torch::rand -shape {5} -dtype float64")).clone()
    torch.manual_seed(1234)
    assert torch.equal(a, torch.randn(3, 4))
    assert torch.equal(b, torch.rand(5, dtype=torch.float64))
    assert ((b >= 0) & (b < 1)).all()
    tcl.eval("torch::manual_seed 1235")
    assert not torch.equal(a, T(tcl, tcl.eval("torch::randn {3 4}")))


def test_tensor_create(tcl):
    t = T(tcl, tcl.eval("torch::tensor_create {{1 2.5 3} {4 5 6}}"))
    assert torch.equal(t, torch.tensor([[1, 2.5, 3], [4, 5, 6]]))
    t = T(tcl, tcl.eval("torch::tensor_create {1 2 3 4 5 6} {3 2} int64"))
    assert torch.equal(t, torch.arange(1, 7).reshape(3, 2))
    t = T(tcl, tcl.eval("torch::tensor_create -values {0 1 0} -dtype bool"))
    assert torch.equal(t, torch.tensor([False, True, False]))
    t = T(tcl, tcl.eval("torch::tensor_create -values {-1 2.5} -requiresGrad 1"))
    assert torch.equal(t.detach(), torch.tensor([-1, 2.5])) and t.requires_grad
    t = T(tcl, tcl.eval("torch::tensor_create 4.25 {} float64"))
    assert t.shape == () and t.dtype == torch.float64 and t.item() == 4.25
    t = T(tcl, tcl.eval("torch::tensor_create {{-1 2} {3 -4}}"))
    assert torch.equal(t, torch.tensor([[-1.0, 2], [3, -4]]))


def test_tensor_create_integer_dtypes_take_their_whole_range(tcl):
    for dtype, (lo, hi) in {"int8": (-128, 127), "int16": (-32768, 32767), "uint8": (0, 255),
                            "int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}.items():
        t = T(tcl, tcl.eval(f"torch::tensor_create {{{lo} {hi}}} {{}} {dtype}"))
        assert t.dtype == DTYPES[dtype] and t.tolist() == [lo, hi]
    b = T(tcl, tcl.eval("torch::tensor_create {0 2 -5} {} bool"))
    assert b.tolist() == [False, True, True]


def test_tensor_create_positional_with_negative_first_value(tcl):
    t = T(tcl, tcl.eval("torch::tensor_create {-1 2}"))
    assert torch.equal(t, torch.tensor([-1.0, 2.0]))


def test_tensor_to_list_item_shape_dtype(tcl):
    x = torch.randn(2, 3, 4, generator=seeded(1))
    h = tcl.put_tensor(x)
    assert nested(tcl, tcl.eval(f"torch::tensor_to_list {h}"), 3) == x.double().tolist()
    assert tcl.eval(f"torch::tensor_shape {h}") == "2 3 4"
    assert tcl.eval(f"torch::tensor_dtype {h}") == "float32"
    i = tcl.put_tensor(torch.tensor([[7, -8], [9, 10]], dtype=torch.int16))
    assert tcl.eval(f"torch::tensor_to_list {i}") == "{7 -8} {9 10}"
    assert tcl.eval(f"torch::tensor_dtype {i}") == "int16"
    s = tcl.put_tensor(torch.tensor(0.1, dtype=torch.float64))
    assert float(tcl.eval(f"torch::tensor_item {s}")) == 0.1
    assert tcl.eval(f"torch::tensor_shape {s}") == ""
    one = tcl.put_tensor(torch.tensor([[3]], dtype=torch.int64))
    assert tcl.eval(f"torch::tensor_item {one}") == "3"
    f = tcl.put_tensor(torch.tensor([1.5], dtype=torch.float32))
    assert float(tcl.eval(f"torch::tensor_item -tensor {f}")) == 1.5
    for name, dtype in DTYPES.items():
        assert tcl.eval(f"torch::tensor_dtype [torch::ones 2 {name}]") == name


def test_requires_grad_backward_and_grad(tcl):
    x = torch.randn(3, 2, generator=seeded(2))
    h = tcl.put_tensor(x.clone())
    assert tcl.eval(f"torch::tensor_requires_grad {h}") == "0"
    assert tcl.eval(f"torch::tensor_requires_grad {h} true") == "1"
    assert T(tcl, h).requires_grad
    assert tcl.eval(f"torch::tensor_grad {h}") == ""
    # loss = sum(x * x * 3 - x): grad 6x - 1
    loss = tcl.eval(f"torch::sum [torch::sub [torch::mul [torch::mul {h} {h}] 3] {h}]")
    tcl.eval(f"torch::tensor_backward {loss}")
    g = tcl.eval(f"torch::tensor_grad {h}")
    assert g.startswith("tensor")
    assert tcl.eval(f"torch::tensor_grad {h}") == g  # one tensor, one handle
    torch.testing.assert_close(T(tcl, g), 6 * x - 1)
    assert T(tcl, g).data_ptr() == T(tcl, h).grad.data_ptr()
    assert tcl.eval(f"torch::tensor_requires_grad -tensor {h} -value 0") == "0"


def test_manual_seed(tcl):
    runs = []
    for seed in (5, 5, 6):
        tcl.eval(f"torch::manual_seed {seed}")
        runs.append(T(tcl, tcl.eval("torch::randn 8")).clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    tcl.eval("torch::manual_seed -seed 5")
    assert torch.equal(T(tcl, tcl.eval("torch::randn 8")), runs[0])


def test_handles_and_delete(tcl):
    a = tcl.eval("torch::zeros 2")
    m = tcl.eval("torch::linear 2 2")
    b = tcl.eval("torch::ones 2")
    o = tcl.eval(f"torch::optimizer_sgd {b}")
    assert tcl.split(tcl.eval("torch::handles")) == (a, m, b, o)
    assert tcl.split(tcl.eval("torch::handles tensor*")) == (a, b)
    assert tcl.split(tcl.eval("torch::handles -pattern module*")) == (m,)
    assert tcl.eval("torch::handles nothing*") == ""
    e = error_of(tcl, f"torch::delete {a} nosuch {b}")
    assert e.code == ("TORCH", "HANDLE", "nosuch")
    assert tcl.split(tcl.eval("torch::handles")) == (a, m, b, o)  # nothing deleted
    tcl.eval(f"torch::delete [list {a} {m}] {o}")
    assert tcl.split(tcl.eval("torch::handles")) == (b,)
    e = error_of(tcl, f"torch::tensor_shape {a}")
    assert e.code == ("TORCH", "HANDLE", a)
    assert tcl.eval("torch::delete") == ""


# ------------------------------------------------------------------ math

@pytest.fixture
def xy(tcl):
    gen = seeded(3)
    x, y = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    return x, y, tcl.put_tensor(x), tcl.put_tensor(y)


def test_add_sub_mul_div(tcl, xy):
    x, y, hx, hy = xy
    r = lambda s: T(tcl, tcl.eval(s))  # noqa: E731
    assert torch.equal(r(f"torch::add {hx} {hy}"), x + y)
    assert torch.equal(r(f"torch::add {hx} {hy} 2.5"), torch.add(x, y, alpha=2.5))
    assert torch.equal(r(f"torch::add -input {hx} -other {hy} -alpha -3"),
                       torch.add(x, y, alpha=-3))
    assert torch.equal(r(f"torch::add {hx} 1.5"), x + 1.5)
    assert torch.equal(r(f"torch::add {hx} 1.5 2"), torch.add(x, 1.5, alpha=2))
    assert torch.equal(r(f"torch::sub {hx} {hy}"), x - y)
    assert torch.equal(r(f"torch::sub {hx} {hy} 0.5"), torch.sub(x, y, alpha=0.5))
    assert torch.equal(r(f"torch::sub {hx} -2"), x + 2)
    assert torch.equal(r(f"torch::sub -input {hx} -other 3 -alpha 2"), torch.sub(x, 3, alpha=2))
    assert torch.equal(r(f"torch::mul {hx} {hy}"), x * y)
    assert torch.equal(r(f"torch::mul {hx} -0.25"), x * -0.25)
    assert torch.equal(r(f"torch::div {hx} {hy}"), x / y)
    assert torch.equal(r(f"torch::div {hx} 3"), x / 3)
    row = tcl.put_tensor(torch.arange(4.0))
    assert torch.equal(r(f"torch::add {hx} {row}"), x + torch.arange(4.0))  # broadcasting
    # the inputs are untouched
    assert torch.equal(T(tcl, hx), x) and torch.equal(T(tcl, hy), y)


def test_eq(tcl):
    a = torch.tensor([1, 2, 3, 2])
    b = torch.tensor([1, 0, 3, 5])
    ha, hb = tcl.put_tensor(a), tcl.put_tensor(b)
    e = T(tcl, tcl.eval(f"torch::eq {ha} {hb}"))
    assert e.dtype == torch.bool and torch.equal(e, torch.eq(a, b))
    assert torch.equal(T(tcl, tcl.eval(f"torch::eq {ha} 2")), a == 2)
    f = tcl.put_tensor(torch.tensor([0.5, 1.0]))
    assert torch.equal(T(tcl, tcl.eval(f"torch::eq -input {f} -other 0.5")),
                       torch.tensor([True, False]))


def test_matmul(tcl):
    gen = seeded(4)
    cases = [((3, 4), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4, 2)), ((2, 3, 4), (2, 4, 6))]
    for sa, sb in cases:
        a, b = torch.randn(sa, generator=gen), torch.randn(sb, generator=gen)
        got = T(tcl, tcl.eval(f"torch::matmul {tcl.put_tensor(a)} {tcl.put_tensor(b)}"))
        assert torch.equal(got, torch.matmul(a, b)), (sa, sb)
    a, b = torch.randn(2, 2, generator=gen), torch.randn(2, 2, generator=gen)
    got = T(tcl, tcl.eval(f"torch::matmul -other {tcl.put_tensor(b)} -input {tcl.put_tensor(a)}"))
    assert torch.equal(got, a @ b)


def test_sum_mean_argmax(tcl):
    x = torch.randn(3, 5, 2, generator=seeded(5))
    h = tcl.put_tensor(x)
    r = lambda s: T(tcl, tcl.eval(s))  # noqa: E731
    for name, fn in [("sum", torch.sum), ("mean", torch.mean)]:
        assert torch.equal(r(f"torch::{name} {h}"), fn(x))
        for d in (0, 1, 2, -1):
            assert torch.equal(r(f"torch::{name} {h} {d}"), fn(x, d)), (name, d)
            assert torch.equal(r(f"torch::{name} {h} {d} 1"), fn(x, d, keepdim=True))
            assert torch.equal(r(f"torch::{name} -input {h} -dim {d} -keepDim true"),
                               fn(x, d, keepdim=True))
            assert torch.equal(r(f"torch::{name} -input {h} -dim {d} -keep_dim 0"),
                               fn(x, d))
    assert torch.equal(r(f"torch::argmax {h}"), torch.argmax(x))
    for d in (0, 1, -1):
        assert torch.equal(r(f"torch::argmax {h} {d}"), torch.argmax(x, d))
        assert torch.equal(r(f"torch::argmax {h} {d} true"), torch.argmax(x, d, keepdim=True))
    assert r(f"torch::argmax {h} 1").dtype == torch.int64
    i = tcl.put_tensor(torch.tensor([[1, 2], [3, 4]]))
    assert torch.equal(r(f"torch::sum {i} 0"), torch.tensor([4, 6]))


SLICES = [  # (dim, start, end or None, step) -> Python slice along dim
    (0, 1, 3, 1), (1, 2, None, 1), (1, 0, 7, 2), (1, -3, None, 1), (1, 1, -1, 1),
    (0, -2, -1, 1), (1, 2, 100, 3), (0, -100, 2, 1), (1, 5, 2, 1), (-1, 0, 3, 1),
]


@pytest.mark.parametrize("dim, start, end, step", SLICES)
def test_tensor_slice_equals_python_slicing_and_shares_memory(tcl, dim, start, end, step):
    x = torch.arange(4 * 7, dtype=torch.float32).reshape(4, 7)
    h = tcl.put_tensor(x)
    sl = [slice(None)] * 2
    sl[dim] = slice(start, end, step)
    expected = x[tuple(sl)]
    words = f"{dim} {start}" + ("" if end is None else f" {end}") + \
        ("" if step == 1 else f" {step}")
    got = T(tcl, tcl.eval(f"torch::tensor_slice {h} {words}"))
    assert torch.equal(got, expected)
    named = f"-input {h} -dim {dim} -start {start} -step {step}" + \
        ("" if end is None else f" -end {end}")
    assert torch.equal(T(tcl, tcl.eval(f"torch::tensor_slice {named}")), expected)
    if got.numel():
        got.fill_(-1)  # writes through to the original
        assert (x[tuple(sl)] == -1).all()
        assert (x == -1).sum() == got.numel()


def test_index_select(tcl):
    x = torch.randn(5, 4, generator=seeded(6))
    h = tcl.put_tensor(x)
    idx = torch.tensor([4, 0, 0, 2])
    hi = tcl.put_tensor(idx)
    assert torch.equal(T(tcl, tcl.eval(f"torch::index_select {h} 0 {hi}")),
                       torch.index_select(x, 0, idx))
    idx1 = tcl.eval("torch::tensor_create {3 1} {} int64")
    assert torch.equal(T(tcl, tcl.eval(f"torch::index_select -input {h} -dim 1 -index {idx1}")),
                       x[:, [3, 1]])
    assert torch.equal(T(tcl, tcl.eval(f"torch::index_select {h} -1 {idx1}")), x[:, [3, 1]])


def test_randperm(tcl):
    for n in (0, 1, 10, 257):
        p = T(tcl, tcl.eval(f"torch::randperm {n}"))
        assert p.dtype == torch.int64 and p.shape == (n,)
        assert torch.equal(p.sort().values, torch.arange(n))
    tcl.eval("torch::manual_seed 9")
    p = T(tcl, tcl.eval("torch::randperm -n 50")).clone()
    torch.manual_seed(9)
    assert torch.equal(p, torch.randperm(50))
    assert not torch.equal(p, torch.arange(50))


def test_tensor_reshape(tcl):
    x = torch.arange(24.0)
    h = tcl.put_tensor(x)
    for shape in [(4, 6), (2, -1), (-1, 3, 2), (24,), (-1,), (2, 3, 4)]:
        words = " ".join(map(str, shape))
        got = T(tcl, tcl.eval(f"torch::tensor_reshape {h} {{{words}}}"))
        assert torch.equal(got, x.reshape(shape)), shape
    got = T(tcl, tcl.eval(f"torch::tensor_reshape -input {h} -shape {{3 -1}}"))
    assert got.shape == (3, 8)
    got[0, 0] = 100  # a view of a contiguous tensor, as torch.reshape
    assert x[0] == 100


def test_tensor_to(tcl):
    x = torch.tensor([[-1.75, 0.0, 2.5], [3.25, 200.0, -0.5]])
    h = tcl.put_tensor(x)
    for name, dtype in DTYPES.items():
        got = T(tcl, tcl.eval(f"torch::tensor_to {h} {name}"))
        assert got.dtype == dtype, name
        assert torch.equal(got, x.to(dtype)), name
        assert tcl.eval(f"torch::tensor_dtype [torch::tensor_to -input {h} -dtype {name}]") == name
    assert torch.equal(T(tcl, h), x)


# ------------------------------------------------------------------ modules

def test_linear(tcl):
    m = tcl.eval("torch::linear 5 3")
    w, b = (T(tcl, p) for p in tcl.split(tcl.eval(f"torch::parameters {m}")))
    assert w.shape == (3, 5) and b.shape == (3,)
    assert w.requires_grad and b.requires_grad
    # LibTorch's default init: U(-1/sqrt(in), 1/sqrt(in))
    assert w.abs().max() <= 5 ** -0.5 and b.abs().max() <= 5 ** -0.5
    x = torch.randn(4, 5, generator=seeded(7))
    y = T(tcl, tcl.eval(f"torch::forward {m} {tcl.put_tensor(x)}"))
    assert torch.equal(y, F.linear(x, w, b))
    nb = tcl.eval("torch::linear -in_features 5 -outFeatures 2 -bias false")
    params = tcl.split(tcl.eval(f"torch::parameters {nb}"))
    assert len(params) == 1 and T(tcl, params[0]).shape == (2, 5)
    y = T(tcl, tcl.eval(f"torch::forward {nb} {tcl.put_tensor(x)}"))
    assert torch.equal(y, x @ T(tcl, params[0]).t())
    assert len(tcl.split(tcl.eval(f"torch::parameters [torch::linear 5 2 0]"))) == 1


ACTIVATIONS = [("relu", torch.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
               ("gelu", F.gelu)]


@pytest.mark.parametrize("name, fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_as_module_and_on_a_tensor(tcl, name, fn):
    x = torch.randn(4, 6, generator=seeded(8)) * 3
    h = tcl.put_tensor(x)
    expected = fn(x)
    module = tcl.eval(f"torch::{name}")
    assert module.startswith("module")
    assert tcl.eval(f"torch::parameters {module}") == ""
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {module} {h}")), expected)
    seq = tcl.eval(f"torch::sequential [list [torch::{name}]]")
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {seq} {h}")), expected)
    assert torch.equal(T(tcl, tcl.eval(f"torch::{name} {h}")), expected)
    assert torch.equal(T(tcl, tcl.eval(f"torch::{name} -input {h}")), expected)
    # in a network, between linears
    lin = tcl.eval("torch::linear 6 2")
    net = tcl.eval(f"torch::sequential [list [torch::{name}] {lin}]")
    w, b = (T(tcl, p) for p in tcl.split(tcl.eval(f"torch::parameters {lin}")))
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {net} {h}")), F.linear(expected, w, b))


def test_dropout_train_and_eval(tcl):
    x = torch.ones(50, 40)
    h = tcl.put_tensor(x)
    d = tcl.eval("torch::dropout 0.25")
    y = T(tcl, tcl.eval(f"torch::forward {d} {h}"))
    zeros = (y == 0).sum().item()
    assert 0 < zeros < y.numel()
    assert 0.15 < zeros / y.numel() < 0.35
    assert torch.equal(y[y != 0], torch.full(((y != 0).sum().item(),), 1 / 0.75))
    tcl.eval(f"torch::eval {d}")
    for _ in range(2):
        assert torch.equal(T(tcl, tcl.eval(f"torch::forward {d} {h}")), x)
    tcl.eval(f"torch::train {d}")
    assert (T(tcl, tcl.eval(f"torch::forward {d} {h}")) == 0).any()
    # eval/train of a sequential reach its children
    net = tcl.eval("torch::sequential [list [torch::dropout -p 0.5] [torch::relu]]")
    assert (T(tcl, tcl.eval(f"torch::forward {net} {h}")) == 0).any()
    tcl.eval(f"torch::eval -module {net}")
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {net} {h}")), x)
    tcl.eval(f"torch::train -module {net}")
    assert (T(tcl, tcl.eval(f"torch::forward {net} {h}")) == 0).any()
    # the extremes
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward [torch::dropout 0] {h}")), x)
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward [torch::dropout 1] {h}")),
                       torch.zeros_like(x))
    # the default p is 0.5: survivors are doubled
    y = T(tcl, tcl.eval(f"torch::forward [torch::dropout] {h}"))
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert 0.35 < (y == 0).float().mean().item() < 0.65


def test_sequential_add_module_forward(tcl):
    l1, l2 = tcl.eval("torch::linear 4 8"), tcl.eval("torch::linear 8 3")
    a = tcl.eval(f"torch::sequential [list {l1} [torch::tanh] {l2}]")
    b = tcl.eval("torch::sequential")
    assert tcl.eval(f"torch::add_module {b} {l1}") == ""
    tcl.eval(f"torch::add_module {b} [torch::tanh]")
    tcl.eval(f"torch::add_module -sequential {b} -module {l2}")
    w1, b1 = (T(tcl, p) for p in tcl.split(tcl.eval(f"torch::parameters {l1}")))
    w2, b2 = (T(tcl, p) for p in tcl.split(tcl.eval(f"torch::parameters {l2}")))
    x = torch.randn(5, 4, generator=seeded(9))
    hx = tcl.put_tensor(x)
    expected = F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {a} {hx}")), expected)
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward -module {b} -input {hx}")), expected)
    # the same modules are shared, not copied
    assert tcl.split(tcl.eval(f"torch::parameters {a}")) == \
        tcl.split(tcl.eval(f"torch::parameters {b}"))
    # nesting
    outer = tcl.eval(f"torch::sequential [list {a} [torch::relu]]")
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {outer} {hx}")), torch.relu(expected))
    empty = tcl.eval("torch::sequential {}")
    assert tcl.eval(f"torch::parameters {empty}") == ""


def test_parameters_share_memory_with_the_module(tcl):
    m = tcl.eval("torch::sequential [list [torch::linear 3 4] [torch::relu] [torch::linear 4 2]]")
    handles = tcl.split(tcl.eval(f"torch::parameters {m}"))
    assert len(handles) == 4
    assert [tuple(T(tcl, h).shape) for h in handles] == [(4, 3), (4,), (2, 4), (2,)]
    assert tcl.split(tcl.eval(f"torch::parameters -module {m}")) == handles
    with torch.no_grad():
        for h in handles:
            T(tcl, h).zero_()
        T(tcl, handles[3]).copy_(torch.tensor([1.5, -2.0]))
    y = T(tcl, tcl.eval(f"torch::forward {m} [torch::randn {{6 3}}]"))
    assert torch.equal(y, torch.tensor([1.5, -2.0]).expand(6, 2))


@pytest.mark.parametrize("reduction", [None, "mean", "sum", "none"])
def test_losses(tcl, reduction):
    gen = seeded(10)
    x, t = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    logits, labels = torch.randn(6, 5, generator=gen), torch.tensor([0, 4, 2, 2, 1, 3])
    hx, ht, hl, hy = (tcl.put_tensor(v) for v in (x, t, logits, labels))
    kw = {} if reduction is None else {"reduction": reduction}
    word = "" if reduction is None else reduction
    assert torch.equal(T(tcl, tcl.eval(f"torch::mse_loss {hx} {ht} {word}")),
                       F.mse_loss(x, t, **kw))
    assert torch.equal(T(tcl, tcl.eval(f"torch::cross_entropy_loss {hl} {hy} {word}")),
                       F.cross_entropy(logits, labels, **kw))
    if reduction:
        assert torch.equal(
            T(tcl, tcl.eval(f"torch::mse_loss -input {hx} -target {ht} -reduction {reduction}")),
            F.mse_loss(x, t, **kw))
        assert torch.equal(
            T(tcl, tcl.eval(f"torch::cross_entropy_loss -target {hy} -input {hl} "
                            f"-reduction {reduction}")),
            F.cross_entropy(logits, labels, **kw))


def test_loss_gradients_match_torch(tcl):
    gen = seeded(11)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([2, 0, 1, 1])
    h = tcl.put_tensor(logits.clone().requires_grad_())
    tcl.eval(f"torch::tensor_backward [torch::cross_entropy_loss {h} "
             f"{tcl.put_tensor(labels)} sum]")
    mine = logits.clone().requires_grad_()
    F.cross_entropy(mine, labels, reduction="sum").backward()
    assert torch.equal(T(tcl, tcl.eval(f"torch::tensor_grad {h}")), mine.grad)


# ------------------------------------------------------------------ module files

def make_net(tcl, hidden=5):
    return tcl.eval(f"torch::sequential [list [torch::linear 4 {hidden}] [torch::tanh] "
                    f"[torch::linear {hidden} 2]]")


def param_values(tcl, module):
    return [T(tcl, h).detach().clone() for h in tcl.split(tcl.eval(f"torch::parameters {module}"))]


def test_module_save_load_round_trip(tcl, tmp_path):
    a = make_net(tcl)
    path = tmp_path / "net.pt"
    assert tcl.eval(f"torch::module_save {a} {{{path}}}") == ""
    assert path.exists() and not list(tmp_path.glob("*.tmp-*"))
    b = make_net(tcl)
    before_b = param_values(tcl, b)
    assert not all(torch.equal(x, y) for x, y in zip(param_values(tcl, a), before_b))
    assert tcl.eval(f"torch::module_load -module {b} -file {{{path}}}") == ""
    for x, y in zip(param_values(tcl, a), param_values(tcl, b)):
        assert torch.equal(x, y)
    x = tcl.eval("torch::randn {3 4}")
    assert torch.equal(T(tcl, tcl.eval(f"torch::forward {a} {x}")),
                       T(tcl, tcl.eval(f"torch::forward {b} {x}")))
    # the loaded module's parameters are still its own (not aliased to a's)
    with torch.no_grad():
        T(tcl, tcl.split(tcl.eval(f"torch::parameters {b}"))[0]).zero_()
    assert not torch.equal(param_values(tcl, a)[0], param_values(tcl, b)[0])
    # the named form of save too
    tcl.eval(f"torch::module_save -module {b} -file {{{tmp_path / 'b.pt'}}}")
    c = make_net(tcl)
    tcl.eval(f"torch::module_load {c} {{{tmp_path / 'b.pt'}}}")
    assert torch.equal(param_values(tcl, c)[0], torch.zeros(5, 4))


def _module_load_fails(tcl, module, path):
    before = param_values(tcl, module)
    e = error_of(tcl, f"torch::module_load {module} {{{path}}}")
    assert e.message and e.code[:2] == ("TORCH", "FILE"), (e.message, e.code)
    assert e.code[2] == str(path)
    for x, y in zip(before, param_values(tcl, module)):
        assert torch.equal(x, y)
    still_works(tcl)
    return e


def test_module_load_errors_leave_the_module_unchanged(tcl, tmp_path):
    a = make_net(tcl)
    good = tmp_path / "net.pt"
    tcl.eval(f"torch::module_save {a} {{{good}}}")
    data = good.read_bytes()
    b = make_net(tcl)
    e = _module_load_fails(tcl, b, tmp_path / "missing.pt")
    assert "missing.pt" in e.message
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    _module_load_fails(tcl, b, tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    _module_load_fails(tcl, b, tmp_path / "garbage.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    _module_load_fails(tcl, b, tmp_path / "empty.pt")
    # wrong architectures: other widths, a plain linear, a deeper network
    wide = make_net(tcl, hidden=7)
    e = _module_load_fails(tcl, wide, good)
    assert "0.weight" in e.message
    lin = tcl.eval("torch::linear 4 5")
    _module_load_fails(tcl, lin, good)
    deeper = tcl.eval("torch::sequential [list [torch::linear 4 5] [torch::tanh] "
                      "[torch::linear 5 2] [torch::linear 2 2]]")
    _module_load_fails(tcl, deeper, good)
    tcl.eval(f"torch::module_save {lin} {{{tmp_path / 'lin.pt'}}}")
    _module_load_fails(tcl, b, tmp_path / "lin.pt")
    # b still loads the good file afterwards
    tcl.eval(f"torch::module_load {b} {{{good}}}")
    assert torch.equal(param_values(tcl, b)[0], param_values(tcl, a)[0])


def test_module_load_rejects_a_file_with_extra_layers(tcl, tmp_path):
    a = make_net(tcl)
    path = tmp_path / "net.pt"
    tcl.eval(f"torch::module_save {a} {{{path}}}")
    shallow = tcl.eval("torch::sequential [list [torch::linear 4 5] [torch::tanh]]")
    _module_load_fails(tcl, shallow, path)


# ------------------------------------------------------------------ optimizers

def twin_params(tcl, seed=12, shapes=((6, 5), (7,))):
    gen = seeded(seed)
    base = [torch.randn(s, generator=gen) for s in shapes]
    return base


def drive(tcl, opt, tensors, grads):
    for gs in grads:
        for p, g in zip(tensors, gs):
            p.grad = g.clone()
        tcl.eval(f"torch::optimizer_step {opt}")


def grads_for(shapes, steps, seed):
    gen = seeded(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


LIBTORCH_OPTIMIZERS = [
    ("torch::optimizer_adam -parameters $P", lambda p: torch.optim.Adam(p)),
    ("torch::optimizer_adam $P 0.01 0.8 0.99 1e-6 0.1 1",
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                amsgrad=True)),
    ("torch::optimizer_adam -parameters $P -lr 0.05 -beta2 0.9 -weight_decay 0.01",
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.9, 0.9), weight_decay=0.01)),
    ("torch::optimizer_adamw -parameters $P", lambda p: torch.optim.AdamW(p)),
    ("torch::optimizer_adamw $P 0.02 0.85 0.995 1e-7 0.2",
     lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2)),
    ("torch::optimizer_adamw -parameters $P -lr 0.05 -weightDecay 0.3 -amsgrad 1",
     lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3, amsgrad=True)),
    ("torch::optimizer_sgd $P", lambda p: torch.optim.SGD(p, lr=0.001)),
    ("torch::optimizer_sgd $P 0.1 0.9 0.1 0.01",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("torch::optimizer_sgd -parameters $P -lr 0.1 -momentum 0.9 -nesterov 1",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("script, make", LIBTORCH_OPTIMIZERS,
                         ids=[s[0].replace("$P", "").strip() for s in LIBTORCH_OPTIMIZERS])
def test_libtorch_optimizers_match_torch_optim(tcl, script, make):
    base = twin_params(tcl)
    mine = [p.clone() for p in base]
    theirs = [p.clone().requires_grad_() for p in base]
    handles = [tcl.put_tensor(p) for p in mine]
    opt = tcl.eval(script.replace("$P", "[list " + " ".join(handles) + "]"))
    assert opt.startswith("optimizer")
    ref = make(theirs)
    for gs in grads_for([p.shape for p in base], 6, 13):
        for a, b, g in zip(mine, theirs, gs):
            a.grad, b.grad = g.clone(), g.clone()
        tcl.eval(f"torch::optimizer_step {opt}")
        ref.step()
    for a, b, p0 in zip(mine, theirs, base):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def test_adafactor_from_a_module_and_tensors(tcl):
    m = tcl.eval("torch::linear 3 2")
    handles = tcl.split(tcl.eval(f"torch::parameters {m}"))
    params = [T(tcl, h) for h in handles]
    # the module and one of its own parameters again: duplicates are used once
    opt = tcl.eval(f"torch::optimizerAdafactor -parameters [list {m} {handles[0]}]")
    before = [p.detach().clone() for p in params]
    x = tcl.eval("torch::randn {4 3}")
    tcl.eval(f"torch::tensor_backward [torch::sum [torch::forward {m} {x}]]")
    tcl.eval(f"torch::optimizer_step {opt}")
    assert all(not torch.equal(a, b) for a, b in zip(before, params))
    state = state_of(tcl, opt)
    assert tcl.split(tcl.eval(f"dict keys [dict get {{{state}}} parameters]")) == handles
    for h in handles:
        assert dget(tcl, state, "parameters", h, "step") == "1"


def test_optimizer_step_skips_parameters_without_grad(tcl):
    a, b = torch.randn(3, 3), torch.randn(4)
    ha, hb = tcl.put_tensor(a), tcl.put_tensor(b)
    for make in ("torch::optimizer_adafactor -parameters", "torch::optimizer_adam -parameters",
                 "torch::optimizer_sgd -lr 0.5 -parameters"):
        before_a, before_b = a.clone(), b.clone()
        opt = tcl.eval(f"{make} [list {ha} {hb}]")
        a.grad, b.grad = torch.ones(3, 3), None
        tcl.eval(f"torch::optimizer_step -optimizer {opt}")
        assert not torch.equal(a, before_a)
        assert torch.equal(b, before_b)


def test_optimizer_zero_grad(tcl):
    p = torch.randn(3)
    h = tcl.put_tensor(p)
    for kind in ("adafactor", "adam", "adamw", "sgd"):
        opt = tcl.eval(f"torch::optimizer_{kind} -parameters {h}")
        p.grad = torch.ones(3)
        tcl.eval(f"torch::optimizer_zero_grad {opt}")
        assert p.grad is None and tcl.eval(f"torch::tensor_grad {h}") == ""
        p.grad = torch.ones(3)
        tcl.eval(f"torch::optimizer_zero_grad {opt} 0")
        assert torch.equal(p.grad, torch.zeros(3))
        p.grad = torch.ones(3)
        tcl.eval(f"torch::optimizer_zero_grad -optimizer {opt} -set_to_none true")
        assert p.grad is None
        p.grad = torch.ones(3)
        tcl.eval(f"torch::optimizer_zero_grad -optimizer {opt} -setToNone false")
        assert torch.equal(p.grad, torch.zeros(3))


def test_optimizer_lr_get_and_set(tcl):
    h = tcl.put_tensor(torch.randn(3))
    defaults = {"adafactor": 0.8, "adam": 0.001, "adamw": 0.001, "sgd": 0.001}
    for kind, lr in defaults.items():
        opt = tcl.eval(f"torch::optimizer_{kind} -parameters {h}")
        assert float(tcl.eval(f"torch::optimizer_lr {opt}")) == lr
        assert float(tcl.eval(f"torch::optimizer_lr {opt} 0.125")) == 0.125
        assert float(tcl.eval(f"torch::optimizer_lr -optimizer {opt}")) == 0.125
        assert float(tcl.eval(f"torch::optimizer_lr -optimizer {opt} -lr 0")) == 0.0
    # setting it changes the next step: SGD moves by exactly lr * grad
    p = torch.tensor([1.0, 2.0, 4.0])
    opt = tcl.eval(f"torch::optimizer_sgd {tcl.put_tensor(p)} 0.5")
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    tcl.eval(f"torch::optimizer_step {opt}")
    assert torch.equal(p, torch.tensor([0.5, 1.5, 3.5]))
    tcl.eval(f"torch::optimizer_lr {opt} 0.25")
    tcl.eval(f"torch::optimizer_step {opt}")
    assert torch.equal(p, torch.tensor([0.25, 1.25, 3.25]))


def test_optimizer_lr_set_on_adafactor_changes_the_next_step(tcl):
    base = twin_params(tcl)
    shapes = [p.shape for p in base]
    grads = grads_for(shapes, 3, 14)
    results = []
    for lr_after_two in (None, 0.05):
        ps = [p.clone() for p in base]
        opt = tcl.eval(f"torch::optimizer_adafactor -parameters "
                       f"[list {' '.join(tcl.put_tensor(p) for p in ps)}] -lr 0.8 "
                       f"-relativeStep 0")
        drive(tcl, opt, ps, grads[:2])
        if lr_after_two is not None:
            tcl.eval(f"torch::optimizer_lr {opt} {lr_after_two}")
            assert float(tcl.eval(f"torch::optimizer_lr {opt}")) == lr_after_two
        mid = [p.clone() for p in ps]
        drive(tcl, opt, ps, grads[2:])
        results.append((mid, ps))
    # same first two steps, a different third
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert not any(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    # with -relativeStep 0 the step size is lr * RMS(param): from the same
    # parameters and state, the third step is 0.05/0.8 of the lr-0.8 twin's
    for m, a, b in zip(results[0][0], results[0][1], results[1][1]):
        torch.testing.assert_close(b - m, (a - m) * (0.05 / 0.8), rtol=1e-4, atol=1e-6)
    # and the same bits as the Python core with its lr set between the steps
    ps = [p.clone() for p in base]
    core = _C.Adafactor(ps, variant="transformers", lr=0.8, eps1=1e-30, relative_step=False)
    for k, gs in enumerate(grads):
        if k == 2:
            core.lr = 0.05
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        core.step()
    for a, b in zip(ps, results[1][1]):
        assert torch.equal(a, b)


def state_of(tcl, opt):
    return tcl.eval(f"torch::optimizer_state {opt}")


def state_values(tcl, opt):
    """The per-parameter entries of torch::optimizer_state, in order, without handles."""
    return tcl.split(tcl.eval(f"dict values [dict get [torch::optimizer_state {opt}] parameters]"))


def dget(tcl, d, *keys):
    return tcl.eval("dict get {" + d + "} " + " ".join(keys))


def test_optimizer_state_structure(tcl):
    w, v = torch.randn(6, 5), torch.randn(7)
    hw, hv = tcl.put_tensor(w), tcl.put_tensor(v)
    opt = tcl.eval(f"torch::optimizer_adafactor -parameters [list {hw} {hv}] -beta1 0.9")
    s = state_of(tcl, opt)
    assert dget(tcl, s, "type") == "adafactor"
    assert set(tcl.split(tcl.eval(f"dict keys {{{s}}}"))) == \
        {"type", "parameters", "state_bytes", "parameter_bytes", "adam_state_bytes",
         "skipped_updates"}
    assert tcl.split(tcl.eval(f"dict keys [dict get {{{s}}} parameters]")) == (hw, hv)
    # before any step: no state
    assert dget(tcl, s, "parameters", hw, "step") == "0"
    assert dget(tcl, s, "parameters", hw, "state") == ""
    assert dget(tcl, s, "state_bytes") == "0"
    assert int(dget(tcl, s, "parameter_bytes")) == (30 + 7) * 4
    assert int(dget(tcl, s, "adam_state_bytes")) == 2 * (30 + 7) * 4
    for _ in range(3):
        w.grad, v.grad = torch.randn(6, 5), torch.randn(7)
        tcl.eval(f"torch::optimizer_step {opt}")
    s = state_of(tcl, opt)
    pw = f"parameters {hw}"
    assert dget(tcl, s, pw, "shape") == "6 5"
    assert dget(tcl, s, pw, "step") == "3"
    assert set(tcl.split(tcl.eval(f"dict keys [dict get {{{s}}} {pw} state]"))) == \
        {"step", "row_var", "col_var", "exp_avg"}
    assert dget(tcl, s, pw, "state row_var shape") == "6 1"
    assert dget(tcl, s, pw, "state col_var shape") == "1 5"
    assert dget(tcl, s, pw, "state exp_avg shape") == "6 5"
    assert dget(tcl, s, pw, "state row_var dtype") == "float32"
    assert dget(tcl, s, pw, "state row_var bytes") == str(6 * 4)
    pv = f"parameters {hv}"
    assert set(tcl.split(tcl.eval(f"dict keys [dict get {{{s}}} {pv} state]"))) == \
        {"step", "variance", "exp_avg"}
    assert dget(tcl, s, pv, "state variance shape") == "7"
    total = 0
    for p in (pw, pv):
        names = tcl.split(tcl.eval(f"dict keys [dict get {{{s}}} {p} state]"))
        per = sum(int(dget(tcl, s, p, "state", n, "bytes")) for n in names)
        assert int(dget(tcl, s, p, "bytes")) == per
        total += per
    assert int(dget(tcl, s, "state_bytes")) == total
    # the parameters without momentum have no exp_avg
    opt2 = tcl.eval(f"torch::optimizer_adafactor -parameters [list {hw} {hv}]")
    w.grad, v.grad = torch.randn(6, 5), torch.randn(7)
    tcl.eval(f"torch::optimizer_step {opt2}")
    s2 = state_of(tcl, opt2)
    assert set(tcl.split(tcl.eval(f"dict keys [dict get {{{s2}}} {pw} state]"))) == \
        {"step", "row_var", "col_var"}
    # adam
    opt3 = tcl.eval(f"torch::optimizer_adam -parameters [list {hw} {hv}] -amsgrad 0")
    for _ in range(2):
        w.grad, v.grad = torch.randn(6, 5), torch.randn(7)
        tcl.eval(f"torch::optimizer_step {opt3}")
    s3 = state_of(tcl, opt3)
    assert dget(tcl, s3, "type") == "adam"
    assert dget(tcl, s3, pw, "step") == "2"
    assert set(tcl.split(tcl.eval(f"dict keys [dict get {{{s3}}} {pw} state]"))) == \
        {"exp_avg", "exp_avg_sq"}
    assert dget(tcl, s3, pw, "state exp_avg shape") == "6 5"
    assert dget(tcl, s3, pw, "state exp_avg_sq shape") == "6 5"
    assert dget(tcl, s3, pv, "state exp_avg_sq shape") == "7"
    assert int(dget(tcl, s3, "state_bytes")) == int(dget(tcl, s3, "adam_state_bytes"))
    opt4 = tcl.eval(f"torch::optimizer_sgd -parameters [list {hw} {hv}] -momentum 0.9")
    w.grad, v.grad = torch.randn(6, 5), torch.randn(7)
    tcl.eval(f"torch::optimizer_step {opt4}")
    s4 = state_of(tcl, opt4)
    assert dget(tcl, s4, "type") == "sgd"
    assert dget(tcl, s4, pw, "state momentum_buffer shape") == "6 5"


def test_adafactor_state_is_much_smaller_than_adam_state(tcl):
    w = torch.randn(256, 784) * 0.05
    hw = tcl.put_tensor(w)
    fac = tcl.eval(f"torch::optimizer_adafactor -parameters {hw}")
    adam = tcl.eval(f"torch::optimizer_adam -parameters {hw}")
    w.grad = torch.randn(256, 784)
    tcl.eval(f"torch::optimizer_step {fac}; torch::optimizer_step {adam}")
    s, a = state_of(tcl, fac), state_of(tcl, adam)
    fac_bytes = int(dget(tcl, s, "state_bytes"))
    adam_bytes = int(dget(tcl, a, "state_bytes"))
    assert adam_bytes == 2 * 256 * 784 * 4
    assert int(dget(tcl, s, "adam_state_bytes")) == adam_bytes
    row_col = (256 + 784) * 4
    assert row_col <= fac_bytes <= row_col + 8  # plus the step count
    assert fac_bytes * 100 < adam_bytes
    assert dget(tcl, s, f"parameters {hw} state row_var shape") == "256 1"
    assert dget(tcl, s, f"parameters {hw} state col_var shape") == "1 784"


# ------------------------------------------------------------------ optimizer files

OPTIMIZER_KINDS = [
    "torch::optimizer_adafactor -parameters $P -beta1 0.9 -weightDecay 0.01",
    "torch::optimizer_adafactor -parameters $P -variant torch -lr 0.05",
    "torch::optimizer_adam -parameters $P -lr 0.01 -amsgrad 1",
    "torch::optimizer_adamw -parameters $P -lr 0.01",
    "torch::optimizer_sgd -parameters $P -lr 0.05 -momentum 0.9",
]
SHAPES = [(6, 5), (7,), (3, 4, 2)]


def new_run(tcl, script, base):
    ps = [p.clone() for p in base]
    handles = [tcl.put_tensor(p) for p in ps]
    opt = tcl.eval(script.replace("$P", "[list " + " ".join(handles) + "]"))
    return opt, ps


@pytest.mark.parametrize("script", OPTIMIZER_KINDS, ids=lambda s: s.split()[0][7:] + s[-12:])
def test_optimizer_save_then_resume_equals_continuing(tcl, tmp_path, script):
    gen = seeded(15)
    base = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = grads_for(SHAPES, 8, 16)
    path = tmp_path / "opt.pt"
    opt, ps = new_run(tcl, script, base)
    drive(tcl, opt, ps, grads[:4])
    assert tcl.eval(f"torch::optimizer_save {opt} {{{path}}}") == ""
    assert path.exists()
    saved = [p.clone() for p in ps]
    saved_state = state_values(tcl, opt)
    drive(tcl, opt, ps, grads[4:])
    # a new optimizer over copies of the saved parameters, loaded from the file
    opt2, ps2 = new_run(tcl, script, saved)
    assert tcl.eval(f"torch::optimizer_load -optimizer {opt2} -file {{{path}}}") == ""
    assert state_values(tcl, opt2) == saved_state
    drive(tcl, opt2, ps2, grads[4:])
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)
    # without the file, the new optimizer would have done something else
    opt3, ps3 = new_run(tcl, script, saved)
    drive(tcl, opt3, ps3, grads[4:])
    assert not all(torch.equal(a, b) for a, b in zip(ps, ps3))
    # the named form of save
    tcl.eval(f"torch::optimizer_save -optimizer {opt} -file {{{tmp_path / 'again.pt'}}}")
    assert (tmp_path / "again.pt").stat().st_size > 0


def corrupt_record(data: bytes, path, name_suffix: str, fn) -> bytes:
    """Applies fn to the payload of the zip record whose name ends with name_suffix."""
    z = zipfile.ZipFile(path)
    info = next(i for i in z.infolist() if i.filename.endswith(name_suffix))
    h = info.header_offset
    n, e = struct.unpack("<HH", data[h + 26:h + 30])
    start = h + 30 + n + e
    out = bytearray(data)
    out[start:start + info.file_size] = fn(bytes(data[start:start + info.file_size]))
    return bytes(out)


def bad_files(tmp_path, good: bytes, good_path, adam_file, other_shape_file):
    yield "missing", tmp_path / "missing.pt"
    p = tmp_path / "truncated.pt"
    p.write_bytes(good[: len(good) // 2])
    yield "truncated", p
    p = tmp_path / "truncated_tail.pt"
    p.write_bytes(good[:-10])
    yield "truncated_tail", p
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    yield "empty", p
    p = tmp_path / "garbage.pt"
    p.write_bytes(bytes((i * 37 + 11) % 256 for i in range(len(good))))
    yield "garbage", p
    p = tmp_path / "corrupted_pickle.pt"
    p.write_bytes(corrupt_record(good, good_path, "data.pkl",
                                 lambda b: bytes(x ^ 0x5A for x in b)))
    yield "corrupted_pickle", p
    p = tmp_path / "corrupted_header.pt"
    b = bytearray(good)
    b[0:64] = bytes(64)
    p.write_bytes(bytes(b))
    yield "corrupted_header", p
    yield "wrong_kind", adam_file
    yield "wrong_shape", other_shape_file


def test_optimizer_load_errors_leave_the_optimizer_unchanged(tcl, tmp_path):
    gen = seeded(17)
    base = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = grads_for(SHAPES, 6, 18)
    script = "torch::optimizer_adafactor -parameters $P -beta1 0.9"
    # files: a good adafactor file, an adam file, an adafactor file for other shapes
    good_path = tmp_path / "good.pt"
    src, sps = new_run(tcl, script, base)
    drive(tcl, src, sps, grads[:2])
    tcl.eval(f"torch::optimizer_save {src} {{{good_path}}}")
    adam_path = tmp_path / "adam.pt"
    a, aps = new_run(tcl, "torch::optimizer_adam -parameters $P", base)
    drive(tcl, a, aps, grads[:2])
    tcl.eval(f"torch::optimizer_save {a} {{{adam_path}}}")
    other_path = tmp_path / "other.pt"
    transposed = [p.t().contiguous() if p.dim() == 2 else p for p in base]
    o, ops = new_run(tcl, script, transposed)
    drive(tcl, o, ops, [[g.t().contiguous() if g.dim() == 2 else g for g in gs]
                        for gs in grads[:2]])
    tcl.eval(f"torch::optimizer_save {o} {{{other_path}}}")
    good = good_path.read_bytes()

    live, lps = new_run(tcl, script, base)
    twin, tps = new_run(tcl, script, base)
    drive(tcl, live, lps, grads[:3])
    drive(tcl, twin, tps, grads[:3])
    step = 3
    for label, path in bad_files(tmp_path, good, good_path, adam_path, other_path):
        state_before = state_of(tcl, live)
        with pytest.raises(TclError) as info:
            tcl.eval(f"torch::optimizer_load {live} {{{path}}}")
        e = info.value
        assert e.message, label
        assert e.code[:2] == ("TORCH", "FILE"), (label, e.code, e.message)
        assert e.code[2] == str(path)
        assert e.message.startswith("cannot load adafactor optimizer from"), label
        assert state_of(tcl, live) == state_before, label
        # its next step equals the twin's
        g = grads[step % len(grads)]
        drive(tcl, live, lps, [g])
        drive(tcl, twin, tps, [g])
        step += 1
        for x, y in zip(lps, tps):
            assert torch.equal(x, y), label
    still_works(tcl)
    # and the live optimizer can still load the good file
    tcl.eval(f"torch::optimizer_load {live} {{{good_path}}}")
    assert dget(tcl, state_of(tcl, live), f"parameters {tcl.put_tensor(lps[0])} step") == "2"


def test_optimizer_load_adafactor_file_into_adam_is_an_error(tcl, tmp_path):
    base = [torch.randn(4, 3)]
    f, fps = new_run(tcl, "torch::optimizer_adafactor -parameters $P", base)
    drive(tcl, f, fps, grads_for([(4, 3)], 1, 19))
    path = tmp_path / "f.pt"
    tcl.eval(f"torch::optimizer_save {f} {{{path}}}")
    a, aps = new_run(tcl, "torch::optimizer_adam -parameters $P", base)
    e = error_of(tcl, f"torch::optimizer_load {a} {{{path}}}")
    assert e.code[:2] == ("TORCH", "FILE") and e.message
    still_works(tcl)


def test_optimizer_load_rejects_a_corrupted_step_count(tcl, tmp_path):
    base = [torch.randn(6, 5)]
    grads = grads_for([(6, 5)], 3, 20)
    opt, ps = new_run(tcl, "torch::optimizer_adafactor -parameters $P", base)
    drive(tcl, opt, ps, grads[:1])
    path = tmp_path / "opt.pt"
    tcl.eval(f"torch::optimizer_save {opt} {{{path}}}")
    data = path.read_bytes()
    # the first tensor record is the step count (a float32 1.0)
    def nan_step(b):
        assert struct.unpack("<f", b) == (1.0,)
        return struct.pack("<f", float("nan"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(corrupt_record(data, path, "data/0", nan_step))
    try:
        tcl.eval(f"torch::optimizer_load {opt} {{{bad}}}")
    except TclError as e:
        assert e.code[:2] == ("TORCH", "FILE")
    drive(tcl, opt, ps, grads[1:])
    assert torch.isfinite(ps[0]).all()


@pytest.mark.parametrize("target", ["torch::optimizer_adam", "torch::optimizer_sgd -lr 0.1"])
def test_wrong_kind_file_error_says_so(tcl, tmp_path, target):
    base = [torch.randn(4, 3)]
    f, fps = new_run(tcl, "torch::optimizer_adafactor -parameters $P", base)
    drive(tcl, f, fps, grads_for([(4, 3)], 1, 19))
    path = tmp_path / "f.pt"
    tcl.eval(f"torch::optimizer_save {f} {{{path}}}")
    a, _ = new_run(tcl, target + " -parameters $P", base)
    e = error_of(tcl, f"torch::optimizer_load {a} {{{path}}}")
    assert e.code[:2] == ("TORCH", "FILE")
    assert "INTERNAL ASSERT" not in e.message
    assert "report a bug" not in e.message


# ------------------------------------------------------------------ robustness

def test_a_cycle_of_sequentials_does_not_crash_the_process():
    script = "\n".join([
        "package require torch",
        "set a [torch::sequential]",
        "set b [torch::sequential [list $a [torch::linear 3 3]]]",
        "puts \"add [catch {torch::add_module $a $b} msg]: $msg\"",
        "puts \"parameters [catch {torch::parameters $b} msg]\"",
        "puts \"forward [catch {torch::forward $b [torch::ones {2 3}]} msg]\"",
        "puts survived",
    ]) + "\n"
    out = run_tclsh(script, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert out.stdout.strip().splitlines()[-1] == "survived"


def test_huge_integer_argument_error_is_not_misleading(tcl):
    try:
        tcl.eval("torch::manual_seed 9223372036854775808")  # torch accepts uint64 seeds
    except TclError as e:
        assert ">= 0" not in e.message, e.message


def test_huge_slice_start_is_not_wrapped_to_negative(tcl):
    x = torch.arange(5.0)
    h = tcl.put_tensor(x)
    try:
        got = T(tcl, tcl.eval(f"torch::tensor_slice {h} 0 18446744073709551615"))
    except TclError as e:
        assert e.code[:3] == ("TORCH", "VALUE", "-start")
    else:
        assert torch.equal(got, x[18446744073709551615:])


# ------------------------------------------------------------------ bad calls

# Tcl variables set for every bad call: $t float tensor 3x4, $v float vector 4,
# $i int64 index tensor, $m linear 4->3 module, $q sequential, $o optimizer,
# $dt/$dm/$do deleted tensor/module/optimizer handles, $f a writable file,
# $missing a path that does not exist, $nodir a path in a missing directory.
SETUP = """
set t [torch::randn {3 4}]
set v [torch::randn 4]
set i [torch::tensor_create {0 2} {} int64]
set m [torch::linear 4 3]
set q [torch::sequential [list [torch::linear 4 3] [torch::relu]]]
set w [torch::randn {3 3}]
set o [torch::optimizer_adafactor -parameters $w]
set dt [torch::zeros 2]; torch::delete $dt
set dm [torch::relu]; torch::delete $dm
set do [torch::optimizer_sgd -parameters [torch::zeros 2]]; torch::delete $do
"""

HANDLE = ("TORCH", "HANDLE")
VALUE = ("TORCH", "VALUE")
WRONGARGS = ("TCL", "WRONGARGS")
LIBTORCH = ("TORCH", "LIBTORCH")
FILE = ("TORCH", "FILE")


def lookup(opt):
    return ("TCL", "LOOKUP", "INDEX", "option", opt)


# (command, a good call, [(bad call, code prefix, text in the message)])
BAD = [
    ("torch::zeros", "torch::zeros {2 3}", [
        ("torch::zeros {2 3} float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::zeros", WRONGARGS, "missing required argument shape"),
        ("torch::zeros -shape {2} -size 3", lookup("-size"), "bad option"),
        ("torch::zeros {2 x}", VALUE + ("-shape",), "-shape"),
        ("torch::zeros {2} float99", VALUE + ("-dtype", "float99"), "-dtype"),
        ("torch::zeros {2} int64 1", VALUE + ("-requiresGrad",), "-requiresGrad"),
        ("torch::zeros -shape", WRONGARGS, 'value for "-shape" missing'),
    ]),
    ("torch::ones", "torch::ones 3", [
        ("torch::ones 3 float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::ones -bogus 1", lookup("-bogus"), "bad option"),
        ("torch::ones {-2}", VALUE + ("-shape",), "non-negative integers"),
        ("torch::ones 3 float32 maybe", VALUE + ("-requiresGrad", "maybe"), "-requiresGrad"),
    ]),
    ("torch::randn", "torch::randn {2 2}", [
        ("torch::randn {2 2} float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::randn -shape {2} -bogus 1", lookup("-bogus"), "bad option"),
        ("torch::randn {2 2} int64", LIBTORCH, ""),
        ("torch::randn {{1 2}}", VALUE + ("-shape",), "-shape"),
    ]),
    ("torch::rand", "torch::rand {2 2}", [
        ("torch::rand {2 2} float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::rand -bogus 1", lookup("-bogus"), "bad option"),
        ("torch::rand {2 1.5}", VALUE + ("-shape",), "-shape"),
    ]),
    ("torch::full", "torch::full {2} 1.5", [
        ("torch::full {2} 1 float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::full {2}", WRONGARGS, "missing required argument value"),
        ("torch::full {2} abc", VALUE + ("-value", "abc"), "-value"),
        ("torch::full {2} 1 complex", VALUE + ("-dtype", "complex"), "-dtype"),
        ("torch::full -shape {2} -value 1 -colour red", lookup("-colour"), "bad option"),
    ]),
    ("torch::tensor_create", "torch::tensor_create {1 2}", [
        ("torch::tensor_create {1 2} {} float32 0 extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_create", WRONGARGS, "missing required"),
        ("torch::tensor_create {{1 2} {3}}", VALUE + ("-values",), "regular nested list"),
        ("torch::tensor_create {1 two}", VALUE + ("-values",), "-values"),
        ("torch::tensor_create {1 2 3} {2 2}", VALUE + ("-shape",), "-shape"),
        ("torch::tensor_create {1.5 2} {} int64", VALUE + ("-values",), "integers"),
        ("torch::tensor_create {1 300} {} uint8", VALUE + ("-values", "300"), "[0, 255] for uint8"),
        ("torch::tensor_create {-129} {} int8", VALUE + ("-values", "-129"), "[-128, 127] for int8"),
        ("torch::tensor_create -values 2147483648 -dtype int32", VALUE + ("-values", "2147483648"),
         "[-2147483648, 2147483647] for int32"),
        ("torch::tensor_create {1 2} {} int64 1", VALUE + ("-requiresGrad",), "-requiresGrad"),
        ("torch::tensor_create -values {1} -bogus 1", lookup("-bogus"), "bad option"),
    ]),
]

for _cmd in ["torch::tensor_item", "torch::tensor_to_list", "torch::tensor_shape",
             "torch::tensor_dtype", "torch::tensor_grad", "torch::tensor_backward"]:
    BAD.append((_cmd, f"{_cmd} [torch::tensor_create 2.0 {{}} float32 1]", [
        (f"{_cmd} $t extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} -tensor $t -bogus 1", lookup("-bogus"), "bad option"),
        (f"{_cmd} $dt", HANDLE, "no such handle"),
        (f"{_cmd} $m", HANDLE, "is a module handle, not a tensor handle"),
        (f"{_cmd} $o", HANDLE, "is an optimizer handle, not a tensor handle"),
        (f"{_cmd} nosuch", HANDLE + ("nosuch",), "invalid tensor handle"),
    ]))
BAD[-6][2].append(("torch::tensor_item $t", VALUE, "exactly one"))
BAD[-1][2].append(("torch::tensor_backward $t", LIBTORCH, ""))

BAD += [
    ("torch::tensor_requires_grad", "torch::tensor_requires_grad $t", [
        ("torch::tensor_requires_grad $t 1 extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_requires_grad $t maybe", VALUE + ("-value", "maybe"), "-value"),
        ("torch::tensor_requires_grad $dt", HANDLE, "no such handle"),
        ("torch::tensor_requires_grad $m 1", HANDLE, "not a tensor handle"),
        ("torch::tensor_requires_grad $i 1", LIBTORCH, "floating point"),
        ("torch::tensor_requires_grad -tensor $t -bogus 1", lookup("-bogus"), "bad option"),
    ]),
    ("torch::manual_seed", "torch::manual_seed 3", [
        ("torch::manual_seed 1 2", WRONGARGS, "wrong # args"),
        ("torch::manual_seed", WRONGARGS, "missing required"),
        ("torch::manual_seed -1", VALUE + ("-seed", "-1"), "-seed"),
        ("torch::manual_seed abc", VALUE + ("-seed", "abc"), "must be an integer"),
        ("torch::manual_seed -sed 1", lookup("-sed"), "bad option"),
    ]),
    ("torch::delete", "torch::delete [torch::zeros 1]", [
        ("torch::delete $dt", HANDLE, "no such handle"),
        ("torch::delete $t nosuch", HANDLE + ("nosuch",), "no such handle"),
        ("torch::delete -bogus", HANDLE, "no such handle"),
    ]),
    ("torch::handles", "torch::handles", [
        ("torch::handles a b", WRONGARGS, "wrong # args"),
        ("torch::handles -bogus x", lookup("-bogus"), "bad option"),
        ("torch::handles -pattern", WRONGARGS, "missing"),
    ]),
]

for _cmd, alpha in [("torch::add", True), ("torch::sub", True), ("torch::mul", False),
                    ("torch::div", False), ("torch::eq", False)]:
    bad = [
        (f"{_cmd} $t $t 1 2" if alpha else f"{_cmd} $t $t 1", WRONGARGS, "wrong # args"),
        (f"{_cmd} $t", WRONGARGS, "missing required argument other"),
        (f"{_cmd} $t foo", VALUE + ("-other", "foo"), "tensor handle or a number"),
        (f"{_cmd} $t $m", VALUE + ("-other",), "-other"),
        (f"{_cmd} $m $t", HANDLE, "not a tensor handle"),
        (f"{_cmd} $dt 1", HANDLE, "no such handle"),
        (f"{_cmd} $t [torch::ones 5]", LIBTORCH, "size"),
        (f"{_cmd} -input $t -other 1 -beta 2", lookup("-beta"), "bad option"),
    ]
    if alpha:
        bad.append((f"{_cmd} $t 1 abc", VALUE + ("-alpha", "abc"), "-alpha"))
    else:
        bad.append((f"{_cmd} -input $t -other 1 -alpha 2", lookup("-alpha"), "bad option"))
    BAD.append((_cmd, f"{_cmd} $t 2", bad))

BAD += [
    ("torch::matmul", "torch::matmul $t [torch::randn {4 2}]", [
        ("torch::matmul $t $t $t", WRONGARGS, "wrong # args"),
        ("torch::matmul $t", WRONGARGS, "missing required"),
        ("torch::matmul $t 2", HANDLE + ("2",), "invalid tensor handle"),
        ("torch::matmul $t $t", LIBTORCH, "cannot be multiplied"),
        ("torch::matmul $m $t", HANDLE, "not a tensor handle"),
        ("torch::matmul $t $dt", HANDLE, "no such handle"),
        ("torch::matmul -input $t -with $t", lookup("-with"), "bad option"),
    ]),
]
for _cmd in ["torch::sum", "torch::mean", "torch::argmax"]:
    BAD.append((_cmd, f"{_cmd} $t 1", [
        (f"{_cmd} $t 0 0 extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} $t x", VALUE + ("-dim", "x"), "must be an integer"),
        (f"{_cmd} $t 0 maybe", VALUE + ("-keepDim", "maybe"), "-keepDim"),
        (f"{_cmd} $t 5", LIBTORCH, "Dimension out of range"),
        (f"{_cmd} $o", HANDLE, "not a tensor handle"),
        (f"{_cmd} $dt", HANDLE, "no such handle"),
        (f"{_cmd} -input $t -axis 0", lookup("-axis"), "bad option"),
    ]))
BAD += [
    ("torch::tensor_slice", "torch::tensor_slice $t 0 1 3", [
        ("torch::tensor_slice $t 0 0 1 1 extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_slice $t 0", WRONGARGS, "missing required argument start"),
        ("torch::tensor_slice $t 0 0 2 0", VALUE + ("-step", "0"), "must be >= 1"),
        ("torch::tensor_slice $t x 0", VALUE + ("-dim", "x"), "-dim"),
        ("torch::tensor_slice $t 0 a", VALUE + ("-start", "a"), "-start"),
        ("torch::tensor_slice $t 0 0 b", VALUE + ("-end", "b"), "-end"),
        ("torch::tensor_slice $t 9 0", LIBTORCH, "Dimension out of range"),
        ("torch::tensor_slice $m 0 0", HANDLE, "not a tensor handle"),
        ("torch::tensor_slice $dt 0 0", HANDLE, "no such handle"),
        ("torch::tensor_slice -input $t -dim 0 -begin 0", lookup("-begin"), "bad option"),
    ]),
    ("torch::index_select", "torch::index_select $t 1 $i", [
        ("torch::index_select $t 0 $i extra", WRONGARGS, "wrong # args"),
        ("torch::index_select $t 0", WRONGARGS, "missing required"),
        ("torch::index_select $t 0 [torch::tensor_create {5} {} int64]", LIBTORCH,
         "out of range"),
        ("torch::index_select $t 0 $v", LIBTORCH, ""),
        ("torch::index_select $t z $i", VALUE + ("-dim", "z"), "-dim"),
        ("torch::index_select $t 0 $m", HANDLE, "not a tensor handle"),
        ("torch::index_select $dt 0 $i", HANDLE, "no such handle"),
        ("torch::index_select -input $t -dim 0 -indices $i", lookup("-indices"), "bad option"),
    ]),
    ("torch::randperm", "torch::randperm 5", [
        ("torch::randperm 5 6", WRONGARGS, "wrong # args"),
        ("torch::randperm", WRONGARGS, "missing required"),
        ("torch::randperm -1", VALUE + ("-n", "-1"), "must be >= 0"),
        ("torch::randperm five", VALUE + ("-n", "five"), "must be an integer"),
        ("torch::randperm -count 5", lookup("-count"), "bad option"),
    ]),
    ("torch::tensor_reshape", "torch::tensor_reshape $t {2 -1}", [
        ("torch::tensor_reshape $t {12} extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_reshape $t", WRONGARGS, "missing required"),
        ("torch::tensor_reshape $t {a 2}", VALUE + ("-shape",), "-shape"),
        ("torch::tensor_reshape $t {-2 -6}", VALUE + ("-shape",), "-shape"),
        ("torch::tensor_reshape $t {5 -1}", LIBTORCH, "invalid for input of size 12"),
        ("torch::tensor_reshape $t {-1 -1}", LIBTORCH, "only one dimension"),
        ("torch::tensor_reshape $m {12}", HANDLE, "not a tensor handle"),
        ("torch::tensor_reshape $dt {2}", HANDLE, "no such handle"),
        ("torch::tensor_reshape -input $t -size {12}", lookup("-size"), "bad option"),
    ]),
    ("torch::tensor_to", "torch::tensor_to $t float64", [
        ("torch::tensor_to $t float64 extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_to $t", WRONGARGS, "missing required"),
        ("torch::tensor_to $t float128", VALUE + ("-dtype", "float128"), "must be float32"),
        ("torch::tensor_to $t float", VALUE + ("-dtype", "float"), "-dtype"),
        ("torch::tensor_to $m float32", HANDLE, "not a tensor handle"),
        ("torch::tensor_to $dt float32", HANDLE, "no such handle"),
        ("torch::tensor_to -input $t -type float32", lookup("-type"), "bad option"),
    ]),
    ("torch::linear", "torch::linear 2 3", [
        ("torch::linear 2 3 1 extra", WRONGARGS, "wrong # args"),
        ("torch::linear 2", WRONGARGS, "missing required"),
        ("torch::linear 0 3", VALUE + ("-inFeatures", "0"), "must be >= 1"),
        ("torch::linear 2 x", VALUE + ("-outFeatures", "x"), "must be an integer"),
        ("torch::linear 2 3 maybe", VALUE + ("-bias", "maybe"), "must be a boolean"),
        ("torch::linear -input 2 -output 3", lookup("-input"), "bad option"),
    ]),
]
for _cmd in ["torch::relu", "torch::tanh", "torch::sigmoid", "torch::gelu"]:
    BAD.append((_cmd, f"{_cmd} $t", [
        (f"{_cmd} $t extra", WRONGARGS, "wrong # args"),
        (f"{_cmd} $m", HANDLE, "not a tensor handle"),
        (f"{_cmd} $dt", HANDLE, "no such handle"),
        (f"{_cmd} -inplace 1", lookup("-inplace"), "bad option"),
    ]))
BAD += [
    ("torch::dropout", "torch::dropout 0.1", [
        ("torch::dropout 0.1 0.2", WRONGARGS, "wrong # args"),
        ("torch::dropout 1.5", VALUE + ("-p", "1.5"), "must be in [0, 1]"),
        ("torch::dropout -p -0.1", VALUE + ("-p", "-0.1"), "-p"),
        ("torch::dropout half", VALUE + ("-p", "half"), "floating-point"),
        ("torch::dropout -rate 0.1", lookup("-rate"), "bad option"),
    ]),
]
for _cmd in ["torch::train", "torch::eval"]:
    BAD.append((_cmd, f"{_cmd} $q", [
        (f"{_cmd} $q extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} $t", HANDLE, "is a tensor handle, not a module handle"),
        (f"{_cmd} $dm", HANDLE, "no such handle"),
        (f"{_cmd} -mode 1", lookup("-mode"), "bad option"),
    ]))
BAD += [
    ("torch::module_save", "torch::module_save $q $f", [
        ("torch::module_save $q $f extra", WRONGARGS, "wrong # args"),
        ("torch::module_save $q", WRONGARGS, "missing required"),
        ("torch::module_save $t $f", HANDLE, "not a module handle"),
        ("torch::module_save $dm $f", HANDLE, "no such handle"),
        ("torch::module_save $q $nodir", ("TORCH",), "does not exist"),
        ("torch::module_save -module $q -path $f", lookup("-path"), "bad option"),
    ]),
    ("torch::module_load", "torch::module_save $q $f; torch::module_load $q $f", [
        ("torch::module_load $q $f extra", WRONGARGS, "wrong # args"),
        ("torch::module_load $q", WRONGARGS, "missing required"),
        ("torch::module_load $t $f", HANDLE, "not a module handle"),
        ("torch::module_load $dm $f", HANDLE, "no such handle"),
        ("torch::module_load $q $missing", FILE, "cannot load module"),
        ("torch::module_load -module $q -path $f", lookup("-path"), "bad option"),
    ]),
    ("torch::sequential", "torch::sequential [list $m]", [
        ("torch::sequential {} extra", WRONGARGS, "wrong # args"),
        ("torch::sequential [list $m $t]", HANDLE, "is a tensor handle, not a module handle"),
        ("torch::sequential [list $dm]", HANDLE, "no such handle"),
        ("torch::sequential \"\\{\"", VALUE + ("-modules",), "list of module handles"),
        ("torch::sequential -layers {}", lookup("-layers"), "bad option"),
    ]),
    ("torch::add_module", "torch::add_module $q [torch::relu]", [
        ("torch::add_module $q $m extra", WRONGARGS, "wrong # args"),
        ("torch::add_module $q", WRONGARGS, "missing required"),
        ("torch::add_module $m $q", HANDLE, "not a sequential"),
        ("torch::add_module $q $t", HANDLE, "not a module handle"),
        ("torch::add_module $q $dm", HANDLE, "no such handle"),
        ("torch::add_module $q $q", VALUE, "cycle"),
        ("torch::add_module -sequential $q -child $m", lookup("-child"), "bad option"),
    ]),
    ("torch::forward", "torch::forward $q $t", [
        ("torch::forward $q $t extra", WRONGARGS, "wrong # args"),
        ("torch::forward $q", WRONGARGS, "missing required"),
        ("torch::forward $t $q", HANDLE, "not a module handle"),
        ("torch::forward $q $m", HANDLE, "not a tensor handle"),
        ("torch::forward $dm $t", HANDLE, "no such handle"),
        ("torch::forward $q $dt", HANDLE, "no such handle"),
        ("torch::forward $q [torch::randn {2 5}]", LIBTORCH, "cannot be multiplied"),
        ("torch::forward -module $q -x $t", lookup("-x"), "bad option"),
    ]),
    ("torch::parameters", "torch::parameters $q", [
        ("torch::parameters $q extra", WRONGARGS, "wrong # args"),
        ("torch::parameters", WRONGARGS, "missing required"),
        ("torch::parameters $t", HANDLE, "not a module handle"),
        ("torch::parameters $o", HANDLE, "is an optimizer handle, not a module handle"),
        ("torch::parameters $dm", HANDLE, "no such handle"),
        ("torch::parameters -recurse 1", lookup("-recurse"), "bad option"),
    ]),
]
for _cmd, good in [("torch::mse_loss", "torch::mse_loss $v $v"),
                   ("torch::cross_entropy_loss", "torch::cross_entropy_loss $t $i")]:
    BAD.append((_cmd, good.replace("$i", "[torch::tensor_create {0 2 1} {} int64]"), [
        (f"{_cmd} $t $t mean extra", WRONGARGS, "wrong # args"),
        (f"{_cmd} $t", WRONGARGS, "missing required"),
        (f"{_cmd} $t $t average", VALUE + ("-reduction", "average"), "mean, sum, or none"),
        (f"{_cmd} $m $t", HANDLE, "not a tensor handle"),
        (f"{_cmd} $t $dt", HANDLE, "no such handle"),
        (f"{_cmd} $t [torch::randn {{5 5}}]", ("TORCH",), ""),  # LibTorch's own check
        (f"{_cmd} -input $t -target $t -weight $t", lookup("-weight"), "bad option"),
    ]))
for _cmd in ["torch::optimizer_adafactor", "torch::optimizerAdafactor"]:
    BAD.append((_cmd, f"{_cmd} -parameters $w", [
        (f"{_cmd} $w 0.8 1e-30 1 -1 -1 0 extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} -lr 0.1", WRONGARGS, "missing required option -parameters"),
        (f"{_cmd} -parameters $w -lr -1", VALUE + ("-lr", "-1"), "must be >= 0"),
        (f"{_cmd} -parameters $w -colour red", lookup("-colour"), "bad option"),
        (f"{_cmd} -parameters $w -lr", WRONGARGS, 'value for "-lr" missing'),
        (f"{_cmd} -parameters $w -eps 1", lookup("-eps"), "ambiguous option"),
        (f"{_cmd} -parameters $dt", HANDLE, "no such tensor or module handle"),
        (f"{_cmd} -parameters $o", HANDLE, "not a tensor or module"),
        (f"{_cmd} -parameters $i", VALUE + ("-parameters",), "not a floating-point tensor"),
        (f"{_cmd} -parameters [torch::mul [lindex [torch::parameters $m] 0] 2]",
         VALUE + ("-parameters",), "not a leaf"),
    ]))
for _cmd in ["torch::optimizer_adam", "torch::optimizer_adamw"]:
    BAD.append((_cmd, f"{_cmd} $w", [
        (f"{_cmd} $w 0.1 0.9 0.99 1e-8 0 0 extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} -parameters $w -beta1 1", VALUE + ("-beta1", "1"), "in [0, 1)"),
        (f"{_cmd} $w 0.1 0.9 1.0", VALUE + ("-beta2", "1.0"), "-beta2"),
        (f"{_cmd} -parameters $w -eps -1e-8", VALUE + ("-eps", "-1e-8"), "-eps"),
        (f"{_cmd} -parameters $w -lr fast", VALUE + ("-lr", "fast"), "floating-point"),
        (f"{_cmd} -parameters $w -amsgrad perhaps", VALUE + ("-amsgrad", "perhaps"), "boolean"),
        (f"{_cmd} -parameters $w -momentum 0.9", lookup("-momentum"), "bad option"),
        (f"{_cmd} -parameters $dm", HANDLE, "no such"),
        (f"{_cmd} -parameters {{}}", VALUE + ("-parameters",), "-parameters"),
    ]))
BAD += [
    ("torch::optimizer_sgd", "torch::optimizer_sgd $w 0.1", [
        ("torch::optimizer_sgd $w 0.1 0 0 0 0 extra", WRONGARGS, "wrong # args"),
        ("torch::optimizer_sgd", WRONGARGS, "missing required"),
        ("torch::optimizer_sgd $w -0.1", VALUE + ("-lr", "-0.1"), "-lr"),
        ("torch::optimizer_sgd -parameters $w -momentum -1", VALUE + ("-momentum", "-1"),
         "-momentum"),
        ("torch::optimizer_sgd -parameters $w -nesterov 1", VALUE + ("-nesterov", "1"),
         "needs -momentum > 0"),
        ("torch::optimizer_sgd -parameters $w -dampening 1.5", VALUE + ("-dampening", "1.5"),
         "must be in [0, 1]"),
        ("torch::optimizer_sgd $w 0.1 0.9 -0.5", VALUE + ("-dampening", "-0.5"), "in [0, 1]"),
        ("torch::optimizer_sgd -parameters $w -beta1 0.9", lookup("-beta1"), "bad option"),
        ("torch::optimizer_sgd -parameters $o", HANDLE, "not a tensor or module"),
    ]),
]
for _cmd, extra in [("torch::optimizer_step", ""), ("torch::optimizer_state", ""),
                    ("torch::optimizer_zero_grad", " 1"), ("torch::optimizer_lr", " 0.1")]:
    bad = [
        (f"{_cmd} $o{extra} extra", WRONGARGS, "wrong # args"),
        (f"{_cmd}", WRONGARGS, "missing required"),
        (f"{_cmd} $t", HANDLE, "is a tensor handle, not an optimizer handle"),
        (f"{_cmd} $m", HANDLE, "is a module handle, not an optimizer handle"),
        (f"{_cmd} $do", HANDLE, "no such handle"),
        (f"{_cmd} -optimizer $o -bogus 1", lookup("-bogus"), "bad option"),
    ]
    if _cmd == "torch::optimizer_zero_grad":
        bad.append((f"{_cmd} $o maybe", VALUE + ("-setToNone", "maybe"), "boolean"))
    if _cmd == "torch::optimizer_lr":
        bad += [(f"{_cmd} $o -1", VALUE + ("-lr", "-1"), "must be >= 0"),
                (f"{_cmd} $o fast", VALUE + ("-lr", "fast"), "floating-point")]
    BAD.append((_cmd, f"{_cmd} $o", bad))
BAD += [
    ("torch::optimizer_save", "torch::optimizer_save $o $f", [
        ("torch::optimizer_save $o $f extra", WRONGARGS, "wrong # args"),
        ("torch::optimizer_save $o", WRONGARGS, "missing required"),
        ("torch::optimizer_save $t $f", HANDLE, "not an optimizer handle"),
        ("torch::optimizer_save $do $f", HANDLE, "no such handle"),
        ("torch::optimizer_save $o $nodir", ("TORCH",), "does not exist"),
        ("torch::optimizer_save -optimizer $o -path $f", lookup("-path"), "bad option"),
    ]),
    ("torch::optimizer_load", "torch::optimizer_save $o $f; torch::optimizer_load $o $f", [
        ("torch::optimizer_load $o $f extra", WRONGARGS, "wrong # args"),
        ("torch::optimizer_load $o", WRONGARGS, "missing required"),
        ("torch::optimizer_load $m $f", HANDLE, "not an optimizer handle"),
        ("torch::optimizer_load $do $f", HANDLE, "no such handle"),
        ("torch::optimizer_load $o $missing", FILE, "cannot load adafactor optimizer"),
        ("torch::optimizer_load -optimizer $o -path $f", lookup("-path"), "bad option"),
    ]),
]

BAD += tcl_nn_cases.BAD

BAD_CASES = [(cmd, good, bad, code, text) for cmd, good, bads in BAD
             for bad, code, text in bads if code is not None]


@pytest.fixture
def bad_env(tcl, tmp_path):
    tcl.eval(SETUP)
    tcl.eval(f"set f {{{tmp_path / 'file.pt'}}}")
    tcl.eval(f"set missing {{{tmp_path / 'missing.pt'}}}")
    tcl.eval(f"set nodir {{{tmp_path / 'no' / 'such' / 'dir.pt'}}}")
    return tcl


def test_every_command_has_bad_call_cases():
    assert {cmd for cmd, _, _ in BAD} == COVERED
    for cmd, _good, bads in BAD:
        codes = [c for _b, c, _t in bads if c is not None]
        if cmd != "torch::delete":
            assert WRONGARGS in codes, cmd
            assert any(c[:3] == ("TCL", "LOOKUP", "INDEX") for c in codes), cmd


@pytest.mark.parametrize("cmd, good", [(c, g) for c, g, _ in BAD], ids=[c for c, _, _ in BAD])
def test_good_call_of_the_bad_call_table_works(bad_env, cmd, good):
    bad_env.eval(good)


@pytest.mark.parametrize("cmd, good, script, code, text", BAD_CASES,
                         ids=[f"{c[0]}: {c[2]}" for c in BAD_CASES])
def test_bad_call_is_a_tcl_error(bad_env, cmd, good, script, code, text):
    tcl = bad_env
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    e = info.value
    assert e.message.strip(), script
    assert e.code and e.code[0] in ("TORCH", "TCL"), (script, e.code)
    assert e.code[: len(code)] == code, (script, e.code, e.message)
    assert text in e.message, (script, e.message)
    if code[:2] == VALUE and len(code) > 2:
        assert code[2] in e.message  # the option is named
    still_works(tcl)
    tcl.eval(good)  # and the same command works right after


def test_bad_calls_leave_no_new_handles(bad_env):
    tcl = bad_env
    for cmd, _good, bads in BAD:
        for script, code, _text in bads:
            if code is None or "[" in script:
                continue  # nested commands create handles of their own
            before = tcl.handles()
            with pytest.raises(TclError):
                tcl.eval(script)
            assert tcl.handles() == before, script
