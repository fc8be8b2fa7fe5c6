"""tcltorch.Adafactor(step_in_backward=True) under torch.distributed (2
processes, gloo on 127.0.0.1): DDP and FSDP2 compose, ZeroRedundancyOptimizer
is refused."""
from __future__ import annotations

import pytest
import torch

import dist_workers_in_backward as workers
from test_distributed import run_ranks


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    """One pair of processes for the DDP runs and the refusals."""
    out = tmp_path_factory.mktemp("ddp_in_backward")
    run_ranks(workers.ddp, out)
    return torch.load(out / "result.pt", weights_only=False)


def test_ddp_runs_the_steps_after_its_all_reduce(ddp_result):
    r = ddp_result
    runs_by_kind = {k: v for k, v in r.items() if isinstance(k, tuple)}
    assert len(runs_by_kind) == 4  # gradient_as_bucket_view x (1, 2 micro-batches)
    for (bucket_view, accumulate), runs in runs_by_kind.items():
        # Two ranks: halving before or after the sum is exact, so the step
        # in backward equals DDP's usual step bit for bit.
        for a, b in zip(runs["usual"], runs["in_backward"]):
            assert torch.equal(a, b), (bucket_view, accumulate)
        assert runs["grads_none"], (bucket_view, accumulate)
    assert r["ranks_agree"]
    # torch.optim.Adafactor's usual step under DDP.
    for a, b in zip(r["ours"], r["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    print("torch's _apply_optimizer_in_backward under DDP:", r["torch_in_backward"])


def test_refused_combinations_say_why(ddp_result):
    m = ddp_result["refusals"]
    assert "ZeroRedundancyOptimizer" in m["zero"] and "one step late" in m["zero"]
    assert "before the first forward pass of the DistributedDataParallel" in m["after_forward"]
    assert "accumulate_steps=2) cannot run under DistributedDataParallel" in m["accumulate"]
    assert "no_sync()" in m["accumulate"]
    assert "DistributedDataParallel has taken over" in m["remove"]


def test_fsdp2_calls_the_hooks_after_its_reduce_scatter(tmp_path):
    run_ranks(workers.fsdp2, tmp_path)
    r = torch.load(tmp_path / "result.pt", weights_only=False)
    for accumulate, runs in r.items():
        for a, b in zip(runs["usual"], runs["in_backward"]):
            assert torch.equal(a, b), accumulate
        assert runs["grads_none"], accumulate
