"""The training-loop commands of the Tcl package (named parameters, gradient
clipping, softmax, sampling, cat, randint, token tensors) against torch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import run_tclsh


def T(tcl, h):
    return tcl.tensor(h)


def named(tcl, module):
    d = tcl.split(tcl.eval(f"torch::named_parameters {module}"))
    return {d[i]: T(tcl, d[i + 1]) for i in range(0, len(d), 2)}


def test_named_parameters_have_torch_nn_names_and_share_memory(tcl):
    m = tcl.eval("""torch::sequential [list [torch::embedding 5 8] \
        [torch::transformer_encoder_layer 8 2 16] [torch::layer_norm 8] [torch::linear 8 5 0]]""")
    ref = nn.Sequential(nn.Embedding(5, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
                        nn.LayerNorm(8), nn.Linear(8, 5, bias=False))
    params = named(tcl, m)
    assert list(params) == [n for n, _ in ref.named_parameters()]
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in ref.named_parameters()}
    # the same tensors as torch::parameters, in the same order
    plain = [T(tcl, h) for h in tcl.split(tcl.eval(f"torch::parameters {m}"))]
    assert [p.data_ptr() for p in plain] == [p.data_ptr() for p in params.values()]
    assert tcl.eval(f"torch::named_parameters [torch::relu]") == ""


def test_named_parameters_lists_a_shared_module_once(tcl):
    tcl.eval("set l [torch::linear 3 3]")
    m = tcl.eval("torch::sequential [list $l [torch::relu] $l]")
    assert list(named(tcl, m)) == ["0.weight", "0.bias"]


def grads_of(tcl, module, seed):
    """Backward of a fixed loss through `module` (a linear 4 -> 3 chain)."""
    torch.manual_seed(seed)
    x = tcl.put_tensor(torch.randn(6, 4) * 10)
    tcl.eval(f"torch::tensor_backward [torch::sum [torch::mul [torch::forward {module} {x}] "
             f"[torch::forward {module} {x}]]]")


@pytest.mark.parametrize("max_norm, norm_type", [(1.0, 2.0), (1e6, 2.0), (0.5, 1.0), (2.0, 3.0)])
def test_clip_grad_norm_equals_torch(tcl, max_norm, norm_type):
    m = tcl.eval("torch::sequential [list [torch::linear 4 5] [torch::tanh] [torch::linear 5 3]]")
    grads_of(tcl, m, 0)
    params = list(named(tcl, m).values())
    ref = [p.grad.clone() for p in params]
    ref_params = [torch.zeros_like(p, requires_grad=True) for p in params]
    for rp, g in zip(ref_params, ref):
        rp.grad = g
    expected = nn.utils.clip_grad_norm_(ref_params, max_norm, norm_type)
    got = float(tcl.eval(f"torch::clip_grad_norm {m} {max_norm} {norm_type}"))
    assert got == pytest.approx(expected.item(), rel=1e-6)
    for p, rp in zip(params, ref_params):
        torch.testing.assert_close(p.grad, rp.grad, rtol=1e-6, atol=0)


def test_clip_grad_norm_takes_tensors_and_lists_and_skips_missing_grads(tcl):
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.tensor([3.0, 4.0, 0.0])
    v = torch.zeros(2, requires_grad=True)  # no gradient
    hw, hv = tcl.put_tensor(w), tcl.put_tensor(v)
    assert float(tcl.eval(f"torch::clip_grad_norm [list {hw} {hv} {hw}] 1.0")) == pytest.approx(5.0)
    torch.testing.assert_close(w.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=0)
    assert float(tcl.eval(f"torch::clip_grad_norm -parameters {hv} -maxNorm 1")) == 0.0


def test_softmax(tcl):
    x = torch.randn(3, 5, dtype=torch.float64)
    for dim in (0, 1, -1):
        got = T(tcl, tcl.eval(f"torch::softmax {tcl.put_tensor(x)} {dim}"))
        assert torch.equal(got, torch.softmax(x, dim))
    h = tcl.put_tensor(x.requires_grad_(True))
    T(tcl, tcl.eval(f"torch::softmax -input {h} -dim 1"))[:, 0].sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.softmax(x, 1)[:, 0].sum().backward()
    assert torch.equal(g, x.grad)


def test_multinomial_follows_the_seed_like_torch(tcl):
    p = torch.tensor([[0.1, 0.2, 0.7, 0.0], [1.0, 1.0, 1.0, 1.0]])
    h = tcl.put_tensor(p)
    tcl.eval("torch::manual_seed 11")
    a = T(tcl, tcl.eval(f"torch::multinomial {h} 3")).clone()
    b = T(tcl, tcl.eval(f"torch::multinomial -input {h} -numSamples 20 -replacement 1")).clone()
    torch.manual_seed(11)
    assert torch.equal(a, torch.multinomial(p, 3))
    assert torch.equal(b, torch.multinomial(p, 20, replacement=True))
    assert a.dtype == torch.int64 and not (a[0] == 3).any()


def test_cat(tcl):
    a, b = torch.randn(2, 3), torch.randn(4, 3)
    ha, hb = tcl.put_tensor(a), tcl.put_tensor(b)
    assert torch.equal(T(tcl, tcl.eval(f"torch::cat [list {ha} {hb}]")), torch.cat([a, b]))
    assert torch.equal(T(tcl, tcl.eval(f"torch::cat -tensors [list {ha} {ha}] -dim -1")),
                       torch.cat([a, a], -1))
    assert torch.equal(T(tcl, tcl.eval(f"torch::cat {ha}")), a)


def test_randint_follows_the_seed_like_torch(tcl):
    tcl.eval("torch::manual_seed 3")
    a = T(tcl, tcl.eval("torch::randint 0 100 {4 5}")).clone()
    b = T(tcl, tcl.eval("torch::randint -low -3 -high 3 -shape 50 -dtype int32")).clone()
    torch.manual_seed(3)
    assert torch.equal(a, torch.randint(0, 100, (4, 5)))
    assert torch.equal(b, torch.randint(-3, 3, (50,), dtype=torch.int32))


@pytest.mark.parametrize("text", ["hello, world", "", "tab\there\nnewline", "caf\u00e9 \u2192 \u4e2d"])
def test_string_to_tensor_and_back(tcl, text):
    tcl.tk.setvar("s", text)
    chars = T(tcl, tcl.eval("torch::string_to_tensor $s"))
    assert chars.dtype == torch.int64 and chars.tolist() == [ord(c) for c in text]
    raw = T(tcl, tcl.eval("torch::string_to_tensor -string $s -unit byte"))
    assert raw.tolist() == list(text.encode("utf-8"))
    assert tcl.call("torch::tensor_to_string", tcl.eval("torch::string_to_tensor $s")) == text
    assert tcl.call("torch::tensor_to_string",
                    tcl.eval("torch::string_to_tensor $s byte"), "byte") == text


def test_string_with_nul_and_2d_tensor_to_string(tcl):
    tcl.eval('set s "a\\0b"')
    assert T(tcl, tcl.eval("torch::string_to_tensor $s")).tolist() == [97, 0, 98]
    assert T(tcl, tcl.eval("torch::string_to_tensor $s byte")).tolist() == [97, 0, 98]
    h = tcl.put_tensor(torch.tensor([[72, 105], [33, 33]], dtype=torch.int32))
    assert tcl.eval(f"torch::tensor_to_string {h}") == "Hi!!"


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "int8", "uint8", "float32", "float64"])
def test_list_to_tensor(tcl, dtype):
    values = [0, 1, 7, 100, 127]
    got = T(tcl, tcl.eval(f"torch::list_to_tensor {{{' '.join(map(str, values))}}} {dtype}"))
    assert got.dtype == getattr(torch, dtype) and got.tolist() == values
    assert T(tcl, tcl.eval("torch::list_to_tensor {}")).shape == (0,)
    big = T(tcl, tcl.eval("torch::list_to_tensor {-9223372036854775808 9223372036854775807}"))
    assert big.tolist() == [-2**63, 2**63 - 1]


def test_a_million_tokens_from_tcl():
    """A million characters and a million-element list become tensors and
    back (one pass of C each; their speed is not timed here)."""
    script = r"""
package require torch
set text [string repeat "abcdefghij" 100000]
set t [torch::string_to_tensor $text]
set u [torch::list_to_tensor [torch::tensor_to_list $t]]
puts [list [torch::tensor_shape $t] [torch::tensor_item [torch::sum [torch::eq $t $u]]] \
    [string equal [torch::tensor_to_string $u] $text]]
"""
    r = run_tclsh(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000000", "1000000", "1"]
