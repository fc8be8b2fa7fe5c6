"""The transformer and CNN modules of the Tcl package against torch.nn: each
Tcl module's parameters are loaded by name into the torch.nn module (so the
names must be torch.nn's), then both run the same input, and the outputs and
the gradients of the parameters and of the input must agree, in float32 and
float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tcltorch.tcl import TclError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def named(tcl, module: str) -> dict[str, torch.Tensor]:
    d = tcl.split(tcl.eval(f"torch::named_parameters {module}"))
    return {d[i]: tcl.tensor(d[i + 1]) for i in range(0, len(d), 2)}


def load_into(ref: nn.Module, tcl, module: str) -> dict[str, torch.Tensor]:
    """Copies the Tcl module's parameters into `ref`, by torch.nn's names (the
    sets of names must be equal); returns the Tcl parameters."""
    params = named(tcl, module)
    assert list(params) == [n for n, _ in ref.named_parameters()]
    ref.load_state_dict({n: p.detach().clone() for n, p in params.items()}, strict=True)
    return params


def compare(tcl, module: str, ref: nn.Module, x: torch.Tensor, dtype, ref_forward=None,
            integer_input=False):
    """Forward and backward through both; asserts equal outputs and grads."""
    params = load_into(ref, tcl, module)
    tol = TOL[dtype]
    xt = x.clone()
    xr = x.clone()
    if not integer_input:
        xt.requires_grad_(True)
        xr.requires_grad_(True)
    out_t = tcl.tensor(tcl.eval(f"torch::forward {module} {tcl.put_tensor(xt)}"))
    out_r = ref_forward(xr) if ref_forward else ref(xr)
    assert out_t.dtype == out_r.dtype == dtype
    torch.testing.assert_close(out_t, out_r, **tol)
    g = torch.randn(out_r.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    (out_t * g).sum().backward()
    (out_r * g).sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name].grad, p.grad, **tol, msg=name)
    if not integer_input:
        torch.testing.assert_close(xt.grad, xr.grad, **tol)


def randn(*shape, dtype, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dt", DTYPES)
def test_embedding(tcl, dt):
    dtype = DTYPES[dt]
    m = tcl.eval(f"torch::embedding -numEmbeddings 11 -embeddingDim 6 -dtype {dt}")
    idx = torch.tensor([[0, 3, 10, 3], [5, 5, 1, 2]])
    compare(tcl, m, nn.Embedding(11, 6, dtype=dtype), idx, dtype, integer_input=True)
    assert tcl.eval("torch::tensor_shape [dict get [torch::named_parameters "
                    "[torch::embedding -numEmbeddings 3 -embeddingDim 2]] weight]") == "3 2"


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("script, make, shape", [
    ("torch::layer_norm -normalizedShape 8", lambda d: nn.LayerNorm(8, dtype=d), (3, 5, 8)),
    ("torch::layer_norm -normalizedShape {4 8} -eps 1e-3",
     lambda d: nn.LayerNorm([4, 8], eps=1e-3, dtype=d), (2, 4, 8)),
    ("torch::layer_norm -normalizedShape 8 -elementwiseAffine 0",
     lambda d: nn.LayerNorm(8, elementwise_affine=False, dtype=d), (6, 8)),
])
def test_layer_norm(tcl, dt, script, make, shape):
    dtype = DTYPES[dt]
    m = tcl.eval(f"{script} -dtype {dt}")
    ref = make(dtype)
    with torch.no_grad():  # not the default ones and zeros
        for p in named(tcl, m).values():
            p.copy_(randn(*p.shape, dtype=dtype, seed=3))
    compare(tcl, m, ref, randn(*shape, dtype=dtype), dtype)
    # the positional form
    p = tcl.eval("torch::layer_norm {4 8} 1e-3")
    assert [t.shape for t in named(tcl, p).values()] == [(4, 8), (4, 8)]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("args, kwargs, shape", [
    ("1 4 3", dict(in_channels=1, out_channels=4, kernel_size=3), (2, 1, 8, 8)),
    ("3 5 {3 5} 2 1", dict(in_channels=3, out_channels=5, kernel_size=(3, 5), stride=2,
                           padding=1), (2, 3, 9, 11)),
    ("2 3 2 {1 2} {0 1} 0", dict(in_channels=2, out_channels=3, kernel_size=2, stride=(1, 2),
                                 padding=(0, 1), bias=False), (1, 2, 5, 6)),
])
def test_conv2d(tcl, dt, args, kwargs, shape):
    dtype = DTYPES[dt]
    # The positional form, then -dtype: positional values cannot be followed
    # by options, so convert through the named form when a dtype is given.
    names = ["-inChannels", "-outChannels", "-kernelSize", "-stride", "-padding", "-bias"]
    words = tcl.split(args)
    named_args = " ".join(f"{n} {{{w}}}" for n, w in zip(names, words))
    m = tcl.eval(f"torch::conv2d {named_args} -dtype {dt}")
    compare(tcl, m, nn.Conv2d(**kwargs, dtype=dtype), randn(*shape, dtype=dtype), dtype)
    if dt == "float32":  # the positional form builds the same module
        p = tcl.eval(f"torch::conv2d {args}")
        assert {n: t.shape for n, t in named(tcl, p).items()} == \
               {n: t.shape for n, t in nn.Conv2d(**kwargs).named_parameters()}


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("script, ref", [
    ("torch::max_pool2d 2", nn.MaxPool2d(2)),
    ("torch::max_pool2d 3 2", nn.MaxPool2d(3, stride=2)),
    ("torch::max_pool2d -kernelSize {2 3} -stride {1 2}", nn.MaxPool2d((2, 3), stride=(1, 2))),
])
def test_max_pool2d(tcl, dt, script, ref):
    dtype = DTYPES[dt]
    compare(tcl, tcl.eval(script), ref, randn(2, 3, 7, 9, dtype=dtype), dtype)


@pytest.mark.parametrize("script, ref, shape", [
    ("torch::flatten", nn.Flatten(), (2, 3, 4, 5)),
    ("torch::flatten 0", nn.Flatten(0), (2, 3, 4)),
    ("torch::flatten -startDim 1 -endDim 2", nn.Flatten(1, 2), (2, 3, 4, 5)),
    ("torch::flatten 2 -1", nn.Flatten(2, -1), (2, 3, 4, 5)),
])
def test_flatten(tcl, script, ref, shape):
    for dtype in DTYPES.values():
        out = tcl.tensor(tcl.eval(f"torch::forward [{script}] "
                                  f"{tcl.put_tensor(randn(*shape, dtype=dtype))}"))
        assert torch.equal(out, ref(randn(*shape, dtype=dtype)))


def causal_mask(n, dtype):
    return nn.Transformer.generate_square_subsequent_mask(n, dtype=dtype)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("norm_first", [0, 1])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("causal", [0, 1])
def test_transformer_encoder_layer(tcl, dt, norm_first, activation, causal):
    dtype = DTYPES[dt]
    m = tcl.eval(f"torch::transformer_encoder_layer -dModel 16 -nHead 4 -dimFeedforward 24 "
                 f"-dropout 0 -activation {activation} -normFirst {norm_first} "
                 f"-causal {causal} -dtype {dt}")
    ref = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation,
                                     batch_first=True, norm_first=bool(norm_first), dtype=dtype)
    with torch.no_grad():  # norms and biases not at their default ones and zeros
        for p in named(tcl, m).values():
            p.add_(randn(*p.shape, dtype=dtype, seed=p.numel()) * 0.1)
    x = randn(3, 7, 16, dtype=dtype)
    if causal:
        fwd = lambda x: ref(x, src_mask=causal_mask(7, dtype), is_causal=True)
    else:
        fwd = None
    compare(tcl, m, ref, x, dtype, ref_forward=fwd)


def test_transformer_encoder_layer_causal_ignores_the_future(tcl):
    m = tcl.eval("torch::transformer_encoder_layer 8 2 16 0.0 relu 1 1")
    x = randn(1, 6, 8, dtype=torch.float32)
    y = x.clone()
    y[0, 4:] += 5.0  # change the last two positions only
    ox = tcl.tensor(tcl.eval(f"torch::forward {m} {tcl.put_tensor(x)}"))
    oy = tcl.tensor(tcl.eval(f"torch::forward {m} {tcl.put_tensor(y)}"))
    assert torch.equal(ox[0, :4], oy[0, :4])
    assert not torch.allclose(ox[0, 4:], oy[0, 4:])


def test_transformer_encoder_layer_defaults_and_eval_mode_match_torch(tcl):
    # torch.nn's defaults (2048 hidden units, dropout 0.1, relu, post-norm);
    # in eval mode under no_grad torch.nn takes its fused fast path.
    m = tcl.eval("torch::transformer_encoder_layer 32 4")
    ref = nn.TransformerEncoderLayer(32, 4, batch_first=True)
    params = load_into(ref, tcl, m)
    assert params["linear1.weight"].shape == (2048, 32)
    tcl.eval(f"torch::eval {m}")
    ref.eval()
    x = randn(2, 5, 32, dtype=torch.float32)
    with torch.no_grad():
        out_t = tcl.tensor(tcl.eval(f"torch::forward {m} {tcl.put_tensor(x)}"))
        torch.testing.assert_close(out_t, ref(x), rtol=1e-5, atol=1e-5)
    # unbatched (sequence, dModel), as torch.nn accepts it
    out_u = tcl.tensor(tcl.eval(f"torch::forward {m} {tcl.put_tensor(x[0])}"))
    torch.testing.assert_close(out_u, out_t[0], rtol=1e-5, atol=1e-6)
    # dropout acts in training mode
    tcl.eval(f"torch::train {m}")
    a = tcl.tensor(tcl.eval(f"torch::forward {m} {tcl.put_tensor(x)}"))
    assert not torch.allclose(a, out_t)


@pytest.mark.parametrize("dt", DTYPES)
def test_a_small_gpt_in_a_sequential_equals_torch_nn(tcl, dt):
    """Layers stacked in a torch::sequential (causal pre-norm encoder layers, a
    final layer norm and, in float32, where torch::linear makes its
    parameters, a linear head) equal the same nn.Sequential."""
    dtype = DTYPES[dt]
    layer = (f"[torch::transformer_encoder_layer -dModel 16 -nHead 2 -dimFeedforward 32 "
             f"-dropout 0.0 -activation gelu -normFirst 1 -causal 1 -dtype {dt}]")
    head = "[torch::linear 16 10]" if dt == "float32" else ""
    m = tcl.eval(f"torch::sequential [list {layer} {layer} [torch::layer_norm -normalizedShape 16 -dtype {dt}] {head}]")
    layers = [nn.TransformerEncoderLayer(16, 2, 32, 0.0, "gelu", batch_first=True,
                                         norm_first=True, dtype=dtype) for _ in range(2)]
    tail = [nn.LayerNorm(16, dtype=dtype)] + ([nn.Linear(16, 10)] if head else [])
    ref = nn.Sequential(*layers, *tail)

    def fwd(x):
        mask = causal_mask(x.shape[1], dtype)
        for layer in layers:
            x = layer(x, src_mask=mask, is_causal=True)
        for t in tail:
            x = t(x)
        return x

    compare(tcl, m, ref, randn(2, 9, 16, dtype=dtype), dtype, ref_forward=fwd)


def test_conv_net_in_a_sequential_equals_torch_nn(tcl):
    m = tcl.eval("""torch::sequential [list [torch::conv2d 1 4 3 1 1] [torch::relu] \
        [torch::max_pool2d 2] [torch::conv2d 4 6 3] [torch::relu] [torch::flatten] \
        [torch::linear 24 10]]""")
    ref = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(24, 10))
    compare(tcl, m, ref, randn(5, 1, 8, 8, dtype=torch.float32), torch.float32)


@pytest.mark.parametrize("script, option, text", [
    ("torch::transformer_encoder_layer 10 3", "-nHead", "must divide -dModel (10)"),
    ("torch::transformer_encoder_layer -dModel 8 -nHead 0", "-nHead", "must be >= 1"),
    ("torch::transformer_encoder_layer 8 2 16 1.5", "-dropout", "in [0, 1]"),
    ("torch::transformer_encoder_layer 8 2 16 0.1 tanh", "-activation", "relu or gelu"),
    ("torch::transformer_encoder_layer 8 2 16 0.1 relu maybe", "-normFirst", "boolean"),
    ("torch::conv2d 1 2 {3 3 3}", "-kernelSize", "list of 2"),
    ("torch::conv2d 1 2 3 0", "-stride", "integer >= 1"),
    ("torch::conv2d 1 2 3 1 -1", "-padding", "integer >= 0"),
    ("torch::max_pool2d 0", "-kernelSize", "integer >= 1"),
    ("torch::layer_norm {}", "-normalizedShape", "non-empty"),
    ("torch::layer_norm {4 x}", "-normalizedShape", "non-negative integers"),
    ("torch::layer_norm 4 0", "-eps", "> 0"),
    ("torch::embedding 0 4", "-numEmbeddings", ">= 1"),
    ("torch::embedding -numEmbeddings 4 -embeddingDim 2 -dtype int64", "-dtype", "float32"),
])
def test_bad_arguments_name_the_argument(tcl, script, option, text):
    with pytest.raises(TclError) as info:
        tcl.eval(script)
    e = info.value
    assert e.code[:3] == ("TORCH", "VALUE", option), e.code
    assert option in e.message and text in e.message, e.message


def test_named_options_after_positional_values_are_refused(tcl):
    # The positional form has no -dtype: the parser says that the two forms
    # cannot be mixed rather than reading "-dtype" as dimFeedforward.
    with pytest.raises(TclError) as info:
        tcl.eval("torch::transformer_encoder_layer 8 2 -dtype float64")
    assert info.value.code[:2] == ("TCL", "WRONGARGS"), info.value.code
    assert "cannot be mixed" in info.value.message, info.value.message


def test_wrong_input_shape_is_a_tcl_error(tcl):
    m = tcl.eval("torch::transformer_encoder_layer 8 2")
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::forward {m} [torch::randn {{2 3 6}}]")
    assert info.value.code[:2] == ("TORCH", "VALUE")
    assert "(batch, sequence, 8)" in info.value.message


@pytest.mark.parametrize("norm_first", [0, 1])
def test_transformer_encoder_layer_dropout_draws_as_torch_nn(tcl, norm_first):
    """In training mode with dropout, the layer draws its masks from the global
    generator in torch.nn's order (attention, dropout1, dropout, dropout2):
    after the same seed, the same output."""
    m = tcl.eval(f"torch::transformer_encoder_layer -dModel 16 -nHead 4 -dimFeedforward 32 "
                 f"-dropout 0.3 -activation gelu -normFirst {norm_first} -causal 1")
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.3, activation="gelu",
                                     batch_first=True, norm_first=bool(norm_first))
    load_into(ref, tcl, m)
    x = randn(2, 5, 16, dtype=torch.float32)
    h = tcl.put_tensor(x)
    tcl.eval("torch::manual_seed 42")
    out_t = tcl.tensor(tcl.eval(f"torch::forward {m} {h}"))
    torch.manual_seed(42)
    out_r = ref(x, src_mask=causal_mask(5, torch.float32), is_causal=True)
    torch.testing.assert_close(out_t, out_r, **TOL[torch.float32])
    tcl.eval("torch::manual_seed 43")
    assert not torch.allclose(tcl.tensor(tcl.eval(f"torch::forward {m} {h}")), out_t)


def test_transformer_encoder_layer_save_and_load(tcl, tmp_path):
    f = tmp_path / "layer.pt"
    a = tcl.eval("torch::transformer_encoder_layer 8 2 16 0.0 relu 1 1")
    b = tcl.eval("torch::transformer_encoder_layer 8 2 16 0.0 relu 1 1")
    tcl.eval(f"torch::module_save {a} {{{f}}}; torch::module_load {b} {{{f}}}")
    x = tcl.put_tensor(randn(2, 4, 8, dtype=torch.float32))
    assert torch.equal(tcl.tensor(tcl.eval(f"torch::forward {a} {x}")),
                       tcl.tensor(tcl.eval(f"torch::forward {b} {x}")))
