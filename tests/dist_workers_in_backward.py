"""Functions run in the processes of tests/test_distributed_step_in_backward.py
(2 ranks, gloo on 127.0.0.1): tcltorch.Adafactor(step_in_backward=True) under
DDP, ZeroRedundancyOptimizer and FSDP2. Each writes what its test compares
into out_dir."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import tcltorch
from dist_workers import (FSDP2_OPTIONS, batches, finish, fsdp2_batches, init, make_fsdp_model,
                          make_model, shard_model)

OPTIONS = {"lr": 0.02, "beta1": 0.9, "weight_decay": 0.01}
STEPS = 6


def local_half(x, rank, world):
    half = x.shape[0] // world
    return x[rank * half:(rank + 1) * half]


def train_ddp(model, opt, data, rank, world, accumulate=1, check_grads=None):
    """DDP's accumulation: no_sync() for all but the last micro-batch of a step."""
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for i, (x, y) in enumerate(data):
        last = (i + 1) % accumulate == 0
        xs, ys = local_half(x, rank, world), local_half(y, rank, world)
        if last:
            torch.nn.functional.mse_loss(model(xs), ys).backward()
        else:
            with model.no_sync():
                torch.nn.functional.mse_loss(model(xs), ys).backward()
        if check_grads is not None:
            check_grads.append(all((p.grad is None) == last for p in model.parameters()))
        if last:
            opt.step()
            opt.zero_grad()
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


def ddp(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    out = {}
    data = batches(2 * STEPS)
    for bucket_view in (False, True):
        for accumulate in (1, 2):
            usual = DDP(make_model(), gradient_as_bucket_view=bucket_view)
            usual_result = train_ddp(usual, tcltorch.Adafactor(usual.parameters(), **OPTIONS),
                                     data, rank, world, accumulate)
            model = DDP(make_model(), gradient_as_bucket_view=bucket_view)
            opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True, **OPTIONS)
            grads_none = []
            result = train_ddp(model, opt, data, rank, world, accumulate, grads_none)
            out[(bucket_view, accumulate)] = {"usual": usual_result, "in_backward": result,
                                              "grads_none": all(grads_none)}
    # The reference: torch.optim.Adafactor under DDP (no beta1 there), with
    # the usual step; and torch's own protocol for it, as far as it runs.
    torch_kwargs = {"lr": 0.02, "weight_decay": 0.01}
    ref = DDP(make_model())
    ref_opt = torch.optim.Adafactor(ref.parameters(), **torch_kwargs)
    ours = DDP(make_model())
    ours_opt = tcltorch.Adafactor(ours.parameters(), step_in_backward=True, **torch_kwargs)
    for model, opt in ((ref, ref_opt), (ours, ours_opt)):
        for x, y in data:
            torch.nn.functional.mse_loss(model(local_half(x, rank, world)),
                                         local_half(y, rank, world)).backward()
            if opt is not None:
                opt.step()
                opt.zero_grad()
    out["torch"] = [p.detach().clone() for p in ref.parameters()]
    out["ours"] = [p.detach().clone() for p in ours.parameters()]
    from torch.distributed.optim import _apply_optimizer_in_backward

    model = make_model()
    _apply_optimizer_in_backward(torch.optim.Adafactor, model.parameters(), torch_kwargs)
    model = DDP(model)
    try:
        x, y = data[0]
        torch.nn.functional.mse_loss(model(local_half(x, rank, world)),
                                     local_half(y, rank, world)).backward()
        out["torch_in_backward"] = "ran"
    except RuntimeError as e:
        out["torch_in_backward"] = f"{type(e).__name__}: {e}"
    # The two ranks agree.
    flat = torch.cat([p.reshape(-1) for p in out[(False, 1)]["in_backward"]])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    out["ranks_agree"] = all(torch.equal(g, gathered[0]) for g in gathered)
    if rank == 0:
        torch.save(out, Path(out_dir) / "result.pt")
    finish()


def ddp_refusals(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    messages = {}
    x, y = (local_half(t, rank, world) for t in batches(1)[0])
    # Constructed after DDP's first forward: DDP no longer looks.
    model = DDP(make_model())
    torch.nn.functional.mse_loss(model(x), y).backward()
    try:
        tcltorch.Adafactor(model.parameters(), step_in_backward=True)
        messages["after_forward"] = "accepted"
    except RuntimeError as e:
        messages["after_forward"] = str(e)
    # accumulate_steps > 1: DDP sets the gradients to None after every pass.
    model = DDP(make_model())
    opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True, accumulate_steps=2)
    try:
        torch.nn.functional.mse_loss(model(x), y).backward()
        messages["accumulate"] = "accepted"
    except RuntimeError as e:
        messages["accumulate"] = str(e)
    dist.barrier()
    # remove_step_in_backward once DDP has taken the steps over.
    model = DDP(make_model())
    opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    try:
        opt.remove_step_in_backward()
        messages["remove"] = "accepted"
    except RuntimeError as e:
        messages["remove"] = str(e)
    if rank == 0:
        torch.save(messages, Path(out_dir) / "result.pt")
    finish()


def zero(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    init(rank, world, port)
    model = DDP(make_model())
    try:
        ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tcltorch.Adafactor,
                                step_in_backward=True, **OPTIONS)
        message = "accepted"
    except RuntimeError as e:
        message = str(e)
    if rank == 0:
        (Path(out_dir) / "message.txt").write_text(message)
    finish()


def zero_unguarded(rank: int, world: int, port: int, out_dir: str) -> None:
    """What ZeRO would do with the steps in backward (the refusal turned off),
    against ZeRO with the usual step: the reason for the refusal."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import tcltorch._in_backward as in_backward

    init(rank, world, port)
    in_backward.refuse_zero = lambda: None
    data = batches(STEPS)
    results = []
    for step_in_backward in (False, True):
        model = DDP(make_model())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tcltorch.Adafactor,
                                      step_in_backward=step_in_backward, **OPTIONS)
        results.append(train_ddp(model, opt, data, rank, world))
    if rank == 0:
        torch.save({"usual": results[0], "in_backward": results[1]},
                   Path(out_dir) / "result.pt")
    finish()


def train_fsdp(model, opt, data, rank, world, accumulate=1, check_grads=None):
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for i, (x, y) in enumerate(data):
        last = (i + 1) % accumulate == 0
        torch.nn.functional.mse_loss(model(local_half(x, rank, world)),
                                     local_half(y, rank, world)).backward()
        if check_grads is not None:
            check_grads.append(all((p.grad is None) == last for p in model.parameters()))
        if last:
            opt.step()
            opt.zero_grad()
            sched.step()
    return [p.full_tensor() for p in model.parameters()]


def fsdp2(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    data = fsdp2_batches(2 * STEPS)
    out = {}
    for accumulate in (1, 2):
        usual = shard_model(make_fsdp_model())
        usual_result = train_fsdp(usual, tcltorch.Adafactor(usual.parameters(), **FSDP2_OPTIONS),
                                  data, rank, world, accumulate)
        model = shard_model(make_fsdp_model())
        opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True,
                                 accumulate_steps=accumulate, **FSDP2_OPTIONS)
        grads_none = []
        result = train_fsdp(model, opt, data, rank, world, accumulate, grads_none)
        out[accumulate] = {"usual": usual_result, "in_backward": result,
                           "grads_none": all(grads_none)}
    if rank == 0:
        torch.save(out, Path(out_dir) / "result.pt")
    finish()
