"""Parity with the other Adafactors: timm's Adafactor and AdafactorBigVision,
pytorch_optimizer's AdaFactor and optax's adafactor, each run side by side
with ours for 30 steps on 1-D to 4-D parameters with the same gradients.

Every case is one row of the anchors table in docs/algorithm.md: the
anchor's constructor and ours, written the same way in both places (a test
below checks that the table and CASES agree). The error measure is
max|p_anchor - p_ours| / max|p_anchor - p0| over the worst parameter: at most
1e-10 in float64 for the torch-based anchors, 1e-6 for optax (which computes
its beta2 schedule in float32 even under x64). With bf16 momentum the two
runs round the same values to bf16 in the same order, so they agree to
float64 rounding except where a value sits on a bf16 rounding boundary; the
bound there is a small multiple of what tiny perturbations of the anchor
itself move it by (1.1e-4), well below the 6e-3 a different order leaves.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import tcltorch
from tcltorch import _C

import anchors

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithm.md"
STEPS = 30
# 1-D, 2-D, 3-D and 4-D, small. The 3-D one has a small leading dim (timm's
# rule then factors its last two); the 4-D one is a conv weight whose dims 0
# and 1 pass every size rule; [8, 40] has one dim too small to factor under
# the size rules of 16 or 17. No two dims of a shape are equal, so "the two
# largest" is the same under every tie rule.
SHAPES = [(40,), (24, 20), (8, 40), (5, 24, 18), (20, 17, 3, 2)]

TORCH_TOL = 1e-10
OPTAX_TOL = 1e-6
BF16_TOL = 5e-4


@dataclass
class Case:
    id: str
    anchor: str  # the anchor's constructor, as in the docs table
    ours: str    # ours, as in the docs table
    lr: object = None  # step -> lr set on every group before that step
    tol: float = TORCH_TOL
    weight_decay: bool = field(default=False)


def _decay(lr0):
    return lambda t: lr0 * (1.0 - t / 40.0)


CASES = [
    # timm Adafactor
    Case("timm-defaults", "timm.Adafactor(params)",
         "Adafactor(params, variant='transformers', factored_dims='leading_two', "
         "min_dim_size_to_factor=17)"),
    Case("timm-external-lr", "timm.Adafactor(params, lr=0.01, weight_decay=0.1)",
         "Adafactor(params, lr=0.01, weight_decay=0.1, variant='transformers', "
         "relative_step=False, scale_parameter=False, factored_dims='leading_two', "
         "min_dim_size_to_factor=17)"),
    Case("timm-caution", "timm.Adafactor(params, betas=(0.9, 0.999), caution=True)",
         "Adafactor(params, variant='transformers', beta1=0.9, caution=True, "
         "factored_dims='leading_two', min_dim_size_to_factor=17)"),
    # timm AdafactorBigVision
    Case("bv-defaults", "timm.AdafactorBigVision(params)",
         "Adafactor(params, variant='big_vision')", tol=BF16_TOL),
    Case("bv-cap", "timm.AdafactorBigVision(params, lr=0.1, beta2_cap=0.5, "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, variant='big_vision', beta2_cap=0.5, "
         "momentum_dtype=None)"),
    Case("bv-decaying-lr", "timm.AdafactorBigVision(params, lr=0.1, clipping_threshold=1.0, "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, d=1.0, variant='big_vision', momentum_dtype=None)",
         lr=_decay(0.1)),
    Case("bv-decay-offset", "timm.AdafactorBigVision(params, lr=0.1, decay_offset=10, "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, variant='big_vision', decay_offset=10, "
         "momentum_dtype=None)"),
    Case("bv-unscaled-wd", "timm.AdafactorBigVision(params, lr=0.1, weight_decay=0.2, "
         "unscaled_wd=True, momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, weight_decay=0.2, variant='big_vision', "
         "weight_decay_mode='unscaled', momentum_dtype=None)", lr=_decay(0.1)),
    Case("bv-corrected-wd", "timm.AdafactorBigVision(params, lr=0.1, weight_decay=0.2, "
         "corrected_weight_decay=True, momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, weight_decay=0.2, variant='big_vision', "
         "weight_decay_mode='corrected', momentum_dtype=None)", lr=_decay(0.1)),
    Case("bv-unscaled-corrected-wd", "timm.AdafactorBigVision(params, lr=0.1, "
         "weight_decay=0.2, unscaled_wd=True, corrected_weight_decay=True, "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, weight_decay=0.2 / 0.1, variant='big_vision', "
         "weight_decay_mode='lr', momentum_dtype=None)", lr=_decay(0.1)),
    Case("bv-caution", "timm.AdafactorBigVision(params, lr=0.1, caution=True, "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, lr=0.1, variant='big_vision', caution=True, "
         "momentum_dtype=None)"),
    # pytorch_optimizer AdaFactor
    Case("kozistr-defaults", "pytorch_optimizer.AdaFactor(params)",
         "Adafactor(params, variant='transformers', beta1=0.9, beta2_cap=0.999, "
         "momentum_dtype=torch.bfloat16)", tol=BF16_TOL),
    Case("kozistr-cap", "pytorch_optimizer.AdaFactor(params, betas=(0.9, 0.5), "
         "momentum_dtype=torch.float64)",
         "Adafactor(params, variant='transformers', beta1=0.9, beta2_cap=0.5)"),
    Case("kozistr-coupled", "pytorch_optimizer.AdaFactor(params, betas=(0.9, 0.999), "
         "weight_decay=0.1, weight_decouple=False, momentum_dtype=torch.float64)",
         "Adafactor(params, variant='transformers', beta1=0.9, beta2_cap=0.999, "
         "weight_decay=0.1, weight_decay_mode='coupled')"),
    Case("kozistr-fixed-decay", "pytorch_optimizer.AdaFactor(params, betas=(0.9, 0.999), "
         "weight_decay=0.1, fixed_decay=True, momentum_dtype=torch.float64)",
         "Adafactor(params, variant='transformers', beta1=0.9, beta2_cap=0.999, "
         "weight_decay=0.1, weight_decay_mode='unscaled')"),
    # optax adafactor
    Case("optax-wd", "optax.adafactor(learning_rate=0.05, min_dim_size_to_factor=16, "
         "weight_decay_rate=0.1)",
         "Adafactor(params, lr=0.05, variant='transformers', relative_step=False, "
         "factored_dims='largest_two', min_dim_size_to_factor=16, weight_decay=0.1, "
         "weight_decay_mode='unscaled')", tol=OPTAX_TOL),
    Case("optax-momentum", "optax.adafactor(learning_rate=0.05, min_dim_size_to_factor=16, "
         "momentum=0.9, dtype_momentum=jnp.float64)",
         "Adafactor(params, lr=0.05, variant='transformers', relative_step=False, "
         "factored_dims='largest_two', min_dim_size_to_factor=16, beta1=0.9)",
         tol=OPTAX_TOL),
    Case("optax-unfactored", "optax.adafactor(learning_rate=0.05, factored=False)",
         "Adafactor(params, lr=0.05, variant='transformers', relative_step=False, "
         "factored_dims='largest_two', min_dim_size_to_factor=2**62)", tol=OPTAX_TOL),
]


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    p0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    # Gradients of a few scales, so that clipping bites on some steps.
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * (0.1 + t % 3)
              for s in SHAPES] for t in range(STEPS)]
    return p0, grads


def _run_torch(make, p0, grads, lr):
    params = [torch.nn.Parameter(p.clone()) for p in p0]
    opt = make(params)
    for t, gs in enumerate(grads):
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr(t)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def _run_optax(tx, p0, grads):
    optax = anchors.optax_x64()
    import jax.numpy as jnp

    params = [jnp.asarray(p.numpy()) for p in p0]
    state = tx.init(params)
    for gs in grads:
        updates, state = tx.update([jnp.asarray(g.numpy()) for g in gs], state, params)
        params = optax.apply_updates(params, updates)
    return [torch.tensor(__import__("numpy").asarray(p)) for p in params]


def _error(p0, a, b):
    worst = 0.0
    for x0, xa, xb in zip(p0, a, b):
        moved = (xa - x0).abs().max().item()
        assert moved > 0, "the anchor did not move this parameter"
        worst = max(worst, (xa - xb).abs().max().item() / moved)
    return worst


def _namespace():
    ns = {"torch": torch, "Adafactor": tcltorch.Adafactor}
    return ns


def _anchor_result(case, p0, grads):
    ns = _namespace()
    head = case.anchor.split("(")[0]
    if head.startswith("timm."):
        cls = head.split(".")[1]
        module = anchors.timm_module("adafactor_bv" if cls == "AdafactorBigVision"
                                     else "adafactor")
        ns["timm"] = type("timm", (), {cls: getattr(module, cls)})
    elif head.startswith("pytorch_optimizer."):
        ns["pytorch_optimizer"] = type(
            "pytorch_optimizer", (), {"AdaFactor": anchors.pytorch_optimizer_adafactor()})
    else:
        ns["optax"] = anchors.optax_x64()
        import jax.numpy as jnp

        ns["jnp"] = jnp
        return _run_optax(eval(case.anchor, ns), p0, grads)
    return _run_torch(lambda params: eval(case.anchor, dict(ns, params=params)),
                      p0, grads, case.lr)


def _ours_result(case, p0, grads):
    ns = _namespace()
    return _run_torch(lambda params: eval(case.ours, dict(ns, params=params)),
                      p0, grads, case.lr)


def _skip_unless_installed(case):
    head = case.anchor.split(".")[0]
    module = {"timm": "timm", "pytorch_optimizer": "pytorch_optimizer",
              "optax": "optax"}[head]
    if module not in sys.modules and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")  # (timm's own init need not import)


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(params=[True, False], ids=["fused", "aten"])
def kernel(request):
    _C._set_fused_enabled(request.param)
    yield request.param
    _C._set_fused_enabled(True)


_ANCHOR_CACHE: dict[str, list] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_anchor(case, data, kernel):
    _skip_unless_installed(case)
    p0, grads = data
    if case.id not in _ANCHOR_CACHE:
        _ANCHOR_CACHE[case.id] = _anchor_result(case, p0, grads)
    expected = _ANCHOR_CACHE[case.id]
    got = _ours_result(case, p0, grads)
    err = _error(p0, expected, got)
    assert err <= case.tol, f"{case.id}: relative error {err:.3g} > {case.tol:g}"


def _doc_rows():
    text = DOC.read_text()
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = re.findall(r"`([^`]*)`", line)
        ours = [i for i, c in enumerate(cells) if c.startswith("Adafactor(params")]
        if ours and ours[0] > 0:
            rows.append((cells[ours[0] - 1], cells[ours[0]]))
    return rows


def test_docs_table_lists_the_cases():
    """The anchors table of docs/algorithm.md is the list of CASES."""
    rows = _doc_rows()
    assert rows == [(c.anchor, c.ours) for c in CASES]
