"""The fused CPU kernel against the ATen-op path of the same core, and its
promises: no parameter-sized temporaries, results independent of thread
count and instruction set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcltorch import _C
from reference import rel_err

HERE = Path(__file__).resolve().parent


def run(shape, dtype, steps, fused, seed=0, zero_col=False, **options):
    _C._set_fused_enabled(fused)
    try:
        gen = torch.Generator().manual_seed(seed)
        p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        opt = _C.Adafactor([p], **options)
        for step in range(steps):
            g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            if step == 1:
                g.zero_()
            if zero_col and len(shape) >= 2:
                g[..., 0] = 0
                g[..., 0, :] = 0
            p.grad = g
            opt.step()
        return p, opt.state(p)
    finally:
        _C._set_fused_enabled(True)


CONFIGS = [
    {},
    {"beta1": 0.9, "weight_decay": 0.1, "lr": 0.05},
    {"maximize": True, "d": 0.5, "eps1": 1e-20},
    {"variant": "transformers"},
    {"variant": "transformers", "beta1": 0.8, "weight_decay": 0.02, "warmup_init": True},
    {"variant": "transformers", "relative_step": False, "lr": 1e-3, "scale_parameter": False},
    {"factored_dims": "largest_two"},
    {"factored_dims": "largest_two", "variant": "transformers", "beta1": 0.5},
    {"min_dim_size_to_factor": 8},
]
# Matrices of at most 2048 elements take the small-group passes ((1, 300),
# (3, 40, 50), (16, 8, 3, 3), ...), larger ones the passes of large matrices: (37, 300)
# and (150, 520) end in a partial group of rows whose column sums pass 1
# takes together, with leftover columns (300), and (150, 520) is cut into
# blocks mid-group; (20, 3, 45, 50) has blocks of whole leading indices that
# own their columns; (2, 300, 520) has blocks that run from one matrix into
# the next.
SHAPES = [(257,), (33, 65), (1, 300), (300, 1), (3, 40, 50), (16, 8, 3, 3), (40, 3, 50, 2),
          (37, 300), (150, 520), (20, 3, 45, 50), (2, 300, 520)]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_aten_path(options, dtype):
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for shape in SHAPES:
        a, sa = run(shape, dtype, 12, True, **options)
        b, sb = run(shape, dtype, 12, False, **options)
        assert rel_err(a, b) <= tol, shape
        assert set(sa) == set(sb)
        for name in sa:
            assert sa[name].shape == sb[name].shape
            assert rel_err(sa[name], sb[name]) <= tol, (shape, name)


@pytest.mark.parametrize("shape", [(20, 30), (50, 60), (12, 10, 3, 3), (4, 5, 40, 30),
                                   (3, 4, 50, 60)])
@pytest.mark.parametrize("variant", ["torch", "transformers"])
def test_fused_handles_all_zero_rows_and_columns(variant, shape):
    # torch floors V at eps1^2: with whole rows and columns of zero gradient
    # the fused kernel switches to computing V element by element (for small
    # groups, in the groups that need it).
    a, _ = run(shape, torch.float32, 6, True, zero_col=True, variant=variant)
    b, _ = run(shape, torch.float32, 6, False, zero_col=True, variant=variant)
    assert torch.isfinite(a).all()
    assert rel_err(a, b) <= 1e-6


@pytest.mark.parametrize("shape", [(64, 48), (32, 16, 3, 3)])
@pytest.mark.parametrize("state_fp32", [False, True])
def test_fused_bf16_close_to_aten_path(state_fp32, shape):
    a, sa = run(shape, torch.bfloat16, 8, True, fp32_state=state_fp32, beta1=0.9)
    b, sb = run(shape, torch.bfloat16, 8, False, fp32_state=state_fp32, beta1=0.9)
    assert a.dtype == torch.bfloat16
    want = torch.float32 if state_fp32 else torch.bfloat16
    assert sa["row_var"].dtype == want and sa["exp_avg"].dtype == want
    # Sums are accumulated differently, which can move a value across a
    # bf16 rounding boundary: nearly all values agree, all are close.
    assert (a == b).float().mean() > 0.95
    assert rel_err(a, b) <= 1e-2


@pytest.mark.parametrize("shape", [(512, 384), (256, 64, 3, 3), (300, 8, 20, 30)])
def test_results_do_not_depend_on_thread_count(shape):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, _ = run(shape, torch.float32, 4, True, beta1=0.9)
        torch.set_num_threads(max(2, threads))
        b, _ = run(shape, torch.float32, 4, True, beta1=0.9)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)


SCRIPT = """
import sys, torch
from tcltorch import _C
torch.manual_seed(0)
out = []
for shape in [(300, 200), (5000,), (64, 32, 3, 3), (40, 6, 20, 30)]:
    p = torch.randn(shape)
    opt = _C.Adafactor([p], beta1=0.9)
    for _ in range(3):
        p.grad = torch.randn(shape)
        opt.step()
    out.append(p)
torch.save(out, sys.argv[1])
print(_C._cpu_capability())
"""


def test_results_do_not_depend_on_instruction_set(tmp_path):
    results = {}
    # Every copy this CPU runs: the portable one, AVX2, and the best (AVX-512
    # where the CPU has it).
    for cap in ["default", "avx2", None]:
        env = dict(os.environ)
        env.pop("TCLTORCH_CPU_CAPABILITY", None)
        if cap:
            env["TCLTORCH_CPU_CAPABILITY"] = cap
        path = tmp_path / f"{cap}.pt"
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        results[out.stdout.strip()] = torch.load(path)
    assert "default" in results
    first, *others = results.values()
    for other in others:
        for a, b in zip(first, other):
            assert torch.equal(a, b)


def peak_added_bytes(impl: str, n: int = 4096) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "tools" / "step_peak_memory.py"), impl, str(n)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_step_allocates_no_parameter_sized_temporary():
    ours = peak_added_bytes("tcltorch")
    theirs = peak_added_bytes("torch")
    param_bytes = ours["param_bytes"]
    print(f"peak memory added by one step of a 4096x4096 fp32 parameter: "
          f"tcltorch {ours['added'] / 2**20:.2f} MiB, torch.optim.Adafactor "
          f"{theirs['added'] / 2**20:.2f} MiB (parameter {param_bytes / 2**20:.0f} MiB)")
    # The measurement sees a parameter-sized temporary where there is one.
    assert theirs["added"] > 0.5 * param_bytes
    assert peak_added_bytes("aten")["added"] > 0.5 * param_bytes
    assert ours["added"] < 0.02 * param_bytes
