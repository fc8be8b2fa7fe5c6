"""Functions run in the processes of tests/test_distributed.py (2 ranks,
gloo on 127.0.0.1). Each writes what its test compares into out_dir."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

import tcltorch

STEPS = 6


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4)).double()


def batches(steps: int = STEPS, n: int = 16):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 8, generator=gen, dtype=torch.float64),
             torch.randn(n, 4, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def train_single(options: dict, steps: int = STEPS) -> list[torch.Tensor]:
    model = make_model()
    opt = tcltorch.Adafactor(model.parameters(), **options)
    for x, y in batches(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def init(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def finish() -> None:
    # Leave together: a rank that tears its process group down while the
    # other still works on its own can abort in gloo's shutdown.
    dist.barrier()
    dist.destroy_process_group()


def ddp(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    options = {"lr": 0.02, "beta1": 0.9, "weight_decay": 0.01}
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = tcltorch.Adafactor(model.parameters(), **options)
    for x, y in batches():
        half = x.shape[0] // world
        xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
    if rank == 0:
        torch.save({"ddp": [p.detach() for p in model.parameters()],
                    "single": train_single(options)}, Path(out_dir) / "result.pt")
    finish()


def zero(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    init(rank, world, port)
    options = {"lr": 0.02, "beta1": 0.9, "variant": "transformers"}
    data = batches(2 * STEPS)

    def run(model, opt, chunk):
        for x, y in chunk:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    model = make_model()
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tcltorch.Adafactor, **options)
    run(model, opt, data[:STEPS])
    # Checkpoint: consolidate on rank 0, save, and resume in a new optimizer.
    opt.consolidate_state_dict(to=0)
    path = Path(out_dir) / "zero_opt.pt"
    if rank == 0:
        torch.save(opt.state_dict(), path)
    dist.barrier()
    resumed = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tcltorch.Adafactor,
                                      **options)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    run(model, resumed, data[STEPS:])
    if rank == 0:
        torch.save({"zero": [p.detach() for p in model.parameters()],
                    "single": train_single(options, 2 * STEPS)}, Path(out_dir) / "result.pt")
    finish()


# ---------------------------------------------------------------- RPC
_PARAM = {}


def _make_remote_param(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    _PARAM["w"] = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    return _PARAM["w"]


def _remote_forward(w_rref, x):
    return x @ w_rref.local_value()


def rpc_optimizer(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed.autograd as dist_autograd
    import torch.distributed.rpc as rpc
    from torch.distributed.optim import DistributedOptimizer

    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                              rpc_timeout=60)
    rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world, rpc_backend_options=options)
    if rank == 0:
        w_rref = rpc.remote("worker1", _make_remote_param, args=(3,))
        opt = DistributedOptimizer(tcltorch.Adafactor, [w_rref], lr=0.05, beta1=0.8)
        gen = torch.Generator().manual_seed(2)
        xs = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
        for x in xs:
            with dist_autograd.context() as context_id:
                out = rpc.rpc_sync("worker1", _remote_forward, args=(w_rref, x))
                loss = out.pow(2).sum()
                dist_autograd.backward(context_id, [loss])
                opt.step(context_id)
        remote = w_rref.to_here()
        # The same training in this process.
        local = _make_remote_param(3)
        ref = tcltorch.Adafactor([local], lr=0.05, beta1=0.8)
        for x in xs:
            ref.zero_grad()
            (x @ local).pow(2).sum().backward()
            ref.step()
        torch.save({"rpc": remote.detach(), "single": local.detach()}, Path(out_dir) / "result.pt")
    rpc.shutdown()


def fsdp1_refused(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    init(rank, world, port)
    messages = []
    for use_orig_params in (False, True):
        model = FSDP(make_model().float(), device_id=torch.device("cpu"),
                     use_orig_params=use_orig_params)
        try:
            tcltorch.Adafactor(model.parameters())
            messages.append("accepted")
        except RuntimeError as e:
            messages.append(str(e))
    if rank == 0:
        (Path(out_dir) / "message.txt").write_text("\n".join(messages))
    finish()


# ---------------------------------------------------------------- FSDP2
def make_fsdp_model(seed: int = 0) -> torch.nn.Module:
    # Row counts 6, 3 and 1 split over 2 ranks: 3+3, 2+1 and 1+0 (an empty shard).
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3),
                               torch.nn.ReLU(), torch.nn.Linear(3, 1)).double()


def fsdp2_batches(steps: int, n: int = 8):
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(n, 8, generator=gen, dtype=torch.float64),
             torch.randn(n, 1, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def shard_model(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def train_steps(model, opt, data, rank=None, world=1):
    for x, y in data:
        if rank is not None:
            half = x.shape[0] // world
            x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


FSDP2_OPTIONS = {"lr": 0.05, "beta1": 0.9, "weight_decay": 0.01}


def fsdp2(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    data = fsdp2_batches(STEPS)
    model = shard_model(make_fsdp_model())
    opt = tcltorch.Adafactor(model.parameters(), **FSDP2_OPTIONS)
    train_steps(model, opt, data, rank, world)
    full = [p.full_tensor() for p in model.parameters()]
    shapes = {k: [tuple(v.shape) for v in s.values() if v.dim() > 0]
              for k, s in enumerate(opt.state.values())}

    # Stock torch.optim.Adafactor on the same sharded model.
    stock_model = shard_model(make_fsdp_model())
    stock = torch.optim.Adafactor(stock_model.parameters(), lr=0.05)
    try:
        train_steps(stock_model, stock, data, rank, world)
        stock_result = [p.full_tensor() for p in stock_model.parameters()]
    except Exception as e:  # noqa: BLE001 - recorded for the test to show
        stock_result = f"{type(e).__name__}: {e}"

    if rank == 0:
        single = make_fsdp_model()
        ref = tcltorch.Adafactor(single.parameters(), **FSDP2_OPTIONS)
        train_steps(single, ref, data)
        stock_single = make_fsdp_model()
        stock_ref = torch.optim.Adafactor(stock_single.parameters(), lr=0.05)
        train_steps(stock_single, stock_ref, data)
        torch.save({"fsdp2": full, "single": [p.detach() for p in single.parameters()],
                    "state_shapes": shapes, "stock": stock_result,
                    "stock_single": [p.detach() for p in stock_single.parameters()]},
                   Path(out_dir) / "result.pt")
    finish()


# The options of the other Adafactors under FSDP2: big_vision's order, caution
# (its kept fraction spans the shards), coupled decay, a beta2 cap and a
# schedule restart; float64 momentum, so that the runs agree to rounding.
FSDP2_NEW_OPTIONS = {"variant": "big_vision", "lr": 0.05, "momentum_dtype": None,
                     "caution": True, "weight_decay": 0.1, "weight_decay_mode": "coupled",
                     "beta2_cap": 0.9, "decay_offset": 1, "d": 1.0,
                     "min_dim_size_to_factor": 0}


def fsdp2_new_options(rank: int, world: int, port: int, out_dir: str) -> None:
    init(rank, world, port)
    data = fsdp2_batches(STEPS)
    model = shard_model(make_fsdp_model())
    opt = tcltorch.Adafactor(model.parameters(), **FSDP2_NEW_OPTIONS)
    train_steps(model, opt, data, rank, world)
    full = [p.full_tensor() for p in model.parameters()]
    if rank == 0:
        single = make_fsdp_model()
        ref = tcltorch.Adafactor(single.parameters(), **FSDP2_NEW_OPTIONS)
        train_steps(single, ref, data)
        torch.save({"fsdp2": full, "single": [p.detach() for p in single.parameters()]},
                   Path(out_dir) / "result.pt")
    finish()


def make_conv_model(seed: int = 0) -> torch.nn.Module:
    # Conv weights [3, 2, 3, 3] and [1, 3, 3, 3] split over 2 ranks along the
    # output channels: 2+1 and 1+0 (an empty shard). Their 3x3 kernels are
    # the factored matrices, so each shard holds whole ones.
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Flatten(),
                               torch.nn.Linear(16, 1)).double()


def conv_batches(steps: int, n: int = 8):
    gen = torch.Generator().manual_seed(6)
    return [(torch.randn(n, 2, 4, 4, generator=gen, dtype=torch.float64),
             torch.randn(n, 1, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def fsdp2_conv(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard

    init(rank, world, port)
    data = conv_batches(STEPS)
    model = make_conv_model()
    for layer in model:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            fully_shard(layer)
    fully_shard(model)
    opt = tcltorch.Adafactor(model.parameters(), **FSDP2_OPTIONS)
    train_steps(model, opt, data, rank, world)
    full = [p.full_tensor() for p in model.parameters()]
    if rank == 0:
        single = make_conv_model()
        ref = tcltorch.Adafactor(single.parameters(), **FSDP2_OPTIONS)
        train_steps(single, ref, data)
        torch.save({"fsdp2": full, "single": [p.detach() for p in single.parameters()]},
                   Path(out_dir) / "result.pt")
    finish()


def dcp_checkpoints(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        set_model_state_dict, set_optimizer_state_dict)

    init(rank, world, port)
    out = Path(out_dir)
    data = fsdp2_batches(2 * STEPS)
    first, rest = data[:STEPS], data[STEPS:]

    def fresh(seed):
        model = shard_model(make_fsdp_model(seed))
        return model, tcltorch.Adafactor(model.parameters(), **FSDP2_OPTIONS)

    model, opt = fresh(0)
    train_steps(model, opt, first, rank, world)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=str(out / "sharded"))
    full_options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = {"model": get_model_state_dict(model, options=full_options),
            "optim": get_optimizer_state_dict(model, opt, options=full_options)}
    if rank == 0:
        torch.save(full, out / "full.pt")
    dist.barrier()
    train_steps(model, opt, rest, rank, world)
    straight = [p.full_tensor() for p in model.parameters()]

    # Sharded checkpoint into a new model and optimizer (their state is made
    # by DCP's own lr=0 step).
    model2, opt2 = fresh(7)
    sd = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(sd, checkpoint_id=str(out / "sharded"))
    set_model_state_dict(model2, sd["model"])
    set_optimizer_state_dict(model2, opt2, sd["optim"])
    train_steps(model2, opt2, rest, rank, world)
    from_sharded = [p.full_tensor() for p in model2.parameters()]

    # Full checkpoint, present on rank 0 only, broadcast to the shards.
    model3, opt3 = fresh(8)
    loaded = torch.load(out / "full.pt", weights_only=False) if rank == 0 else {"model": {}, "optim": {}}
    broadcast = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model3, loaded["model"], options=broadcast)
    set_optimizer_state_dict(model3, opt3, loaded["optim"], options=broadcast)
    train_steps(model3, opt3, rest, rank, world)
    from_full = [p.full_tensor() for p in model3.parameters()]

    if rank == 0:
        whole = StateDictOptions(full_state_dict=True)
        results = {"straight": straight, "from_sharded": from_sharded, "from_full": from_full}
        # Broadcasting turned the loaded tensors into DTensors: read the file again.
        loaded = torch.load(out / "full.pt", weights_only=False)
        # The full checkpoint in single-process optimizers: ours and torch's.
        for name, cls, kwargs in [("single", tcltorch.Adafactor, FSDP2_OPTIONS),
                                  ("stock_single", torch.optim.Adafactor, {"lr": 0.05})]:
            single = make_fsdp_model(9)
            single_opt = cls(single.parameters(), **kwargs)
            copy = torch.load(out / "full.pt", weights_only=False)
            if cls is torch.optim.Adafactor:
                # DCP matches group keys exactly: keep the ones torch knows.
                known = set(single_opt.param_groups[0])
                copy["optim"]["param_groups"] = [
                    {k: v for k, v in g.items() if k in known} for g in copy["optim"]["param_groups"]]
            set_model_state_dict(single, copy["model"], options=whole)
            set_optimizer_state_dict(single, single_opt, copy["optim"], options=whole)
            train_steps(single, single_opt, rest)
            results[name] = [p.detach() for p in single.parameters()]
        results["state_keys"] = sorted(next(iter(loaded["optim"]["state"].values())).keys())
        torch.save(results, out / "result.pt")
    finish()
