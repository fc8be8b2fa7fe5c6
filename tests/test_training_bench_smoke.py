"""The whole-training-step benchmark's code paths (benchmarks/run.py --smoke
with its training-step and char-LM phases; the optimizer-step phases that
tests/test_benchmarks_smoke.py covers are cut to the Python rows): every row
runs in its fresh processes or says why it cannot, the figures are sane
measurements, and the page gets its sections, targets and plot. No target is
asserted: the figures are benchmark results (make bench), not tests."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

import tcltorch
from conftest import REPO

ROWS = ["ours", "ours_in_backward", "torch_adafactor", "torch_in_backward", "adamw_fused",
        "adalomo"]


def step_in_backward_refusal():
    """The error tcltorch.Adafactor raises for step_in_backward=True, or None
    when it takes it."""
    try:
        tcltorch.Adafactor([torch.zeros(2, requires_grad=True)], step_in_backward=True)
    except TypeError as e:
        return str(e)
    return None


def test_training_step_benchmark_smoke(tmp_path):
    results = tmp_path / "results.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--no-cpp", "--no-peak",
         "--no-distributed", "--threads", "1", "--json", str(results), "--docs", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(results.read_text())
    tr = res["training"]
    rows = {row["key"]: row for row in tr["rows"]}
    assert list(rows) == ROWS

    # Every row ran, or says why it cannot; these must run here.
    for row in rows.values():
        assert row["available"] or row["reason"], row
    refusal = step_in_backward_refusal()
    must_run = {"ours", "torch_adafactor", "torch_in_backward", "adamw_fused"}
    if refusal is None:
        must_run.add("ours_in_backward")
    else:
        assert not rows["ours_in_backward"]["available"]
        assert "step_in_backward" in rows["ours_in_backward"]["reason"]
    for key in must_run:
        assert rows[key]["available"], rows[key]

    # The model and its activations.
    big, pb = tr["largest_param"]["bytes"], tr["param_bytes"]
    assert tr["param_numel"] * 4 == pb and 0 < big < pb
    act = tr["activations"]
    assert 0 < act["forward"] <= act["forward_backward"] < pb

    # The figures: times, losses, state, and the peak of every row.
    live = {k: row for k, row in rows.items() if row["available"]}
    for key, row in live.items():
        assert row["step_s"] > 0 and len(row["rounds"]) == tr["plan"]["rounds"], key
        assert len(row["samples"]) == tr["plan"]["rounds"] * tr["plan"]["steps"], key
        assert math.isfinite(row["loss"]), key
        assert row["added"] > 0 and row["state_bytes"] > 0, key
        in_backward = key in ("ours_in_backward", "torch_in_backward", "adalomo")
        assert row["grads_after_backward"] is (not in_backward), key
        if not in_backward:
            # A usual step holds every gradient at once.
            assert row["added"] >= 0.9 * pb, (key, row["added"], pb)
    # Adafactor's factored state is far smaller than AdamW's two moments, and
    # the same whether the step runs after or inside backward.
    assert live["ours"]["state_bytes"] < live["adamw_fused"]["state_bytes"] / 10
    assert live["torch_in_backward"]["state_bytes"] == live["torch_adafactor"]["state_bytes"]
    if "ours_in_backward" in live:
        sib = live["ours_in_backward"]
        assert sib["state_bytes"] == live["ours"]["state_bytes"]
        # The gradients no longer pile up: the step in backward's peak is
        # below the usual one's by at least one large parameter.
        assert sib["added"] < live["ours"]["added"] - 0.5 * big, (sib, live["ours"])

    # The targets, the printed tables and the page.
    targets = {t["id"]: t for t in res["targets"]}
    assert {"train_in_backward_peak", "train_in_backward_time", "charlm_tcl"} <= set(targets)
    for tid in ("train_in_backward_peak", "train_in_backward_time"):
        assert (targets[tid]["value"] is None) is (refusal is not None), targets[tid]
    assert "Training step (forward + backward + step)" in r.stdout
    assert "Char-LM training step, Tcl and Python" in r.stdout
    page = (tmp_path / "performance.md").read_text()
    assert "## Training step" in page and "## Char-LM training step from Tcl and Python" in page
    for row in rows.values():
        assert row["label"] in page
        if not row["available"]:
            assert f"not available here: {row['reason']}" in page
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "performance" / "training_step.png").stat().st_size > 1000
