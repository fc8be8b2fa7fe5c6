"""tcltorch.Adafactor(step_in_backward=True) under torch.distributed (2
processes, gloo on 127.0.0.1): DDP and FSDP2 compose, ZeroRedundancyOptimizer
is refused."""
from __future__ import annotations

import torch

import dist_workers_in_backward as workers
from test_distributed import run_ranks


def test_ddp_runs_the_steps_after_its_all_reduce(tmp_path):
    run_ranks(workers.ddp, tmp_path)
    r = torch.load(tmp_path / "result.pt", weights_only=False)
    for (bucket_view, accumulate), runs in ((k, v) for k, v in r.items() if isinstance(k, tuple)):
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
