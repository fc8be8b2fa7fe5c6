"""A whole training step (forward, backward, optimizer step) of a
transformer-like torch.nn model, per optimizer: the peak memory it adds above
parameters + optimizer state, and its time. Each figure comes from a fresh
process (benchmarks/training_step.py --worker), so that no implementation
inherits another's allocator state or threads.

The model is charlm.CharLM (token and position embeddings, pre-norm GELU
encoder layers of nn.MultiheadAttention and an MLP, LayerNorms, a linear head,
biases everywhere) on random token ids, float32 on the CPU; its shapes are
MODEL below, the only place they are set.

Rows (ROWS): tcltorch.Adafactor as usual and with step_in_backward=True,
torch.optim.Adafactor, torch's _apply_optimizer_in_backward with
torch.optim.Adafactor, torch.optim.AdamW(fused=True) and lomo-optim's AdaLomo.
A row that cannot run here (import error, refused option, an error in its
first step) is kept with the error as its reason. A row that steps in
backward is checked on its first step: every .grad is None after backward,
the parameters have moved during backward, and nothing moves after it; a row
that steps after backward must have every gradient after backward and move
the parameters in its step. A row that fails its check fails the run.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from charlm import CharLM  # noqa: E402 - the repo's torch.nn transformer, once
from bench.proc_memory import rss  # noqa: E402

# The model's shapes, for the full run and for --smoke (the same code paths on
# a tiny model: its embeddings keep the parameters measurable, a few tokens
# keep the step quick).
MODEL = {
    "full": dict(vocab=16384, dModel=512, heads=8, ff=2048, layers=6, context=64, batch=2),
    "smoke": dict(vocab=8192, dModel=128, heads=2, ff=1024, layers=2, context=8, batch=2),
}
# Steps per timing process: warm-up steps after the first (which creates the
# state), then timed steps; rounds of one process per row, alternating order.
PLAN = {
    "full": dict(warm=1, steps=4, rounds=5),
    "smoke": dict(warm=1, steps=2, rounds=1),
}
WORKER = BENCH / "training_step.py"


# ------------------------------------------------------------------ the model
def build(config: dict):
    """The model (seeded) and one fixed batch of inputs and next-token targets."""
    torch.manual_seed(0)
    model = CharLM(**config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab"], (config["batch"], config["context"] + 1), generator=g)
    return model, ids[:, :-1], ids[:, 1:]


def loss_of(model, x, y):
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def describe(model) -> dict:
    params = list(model.named_parameters())
    name, big = max(params, key=lambda kv: kv[1].numel() * kv[1].element_size())
    return {"param_numel": sum(p.numel() for _, p in params),
            "param_bytes": sum(p.numel() * p.element_size() for _, p in params),
            "tensors": len(params),
            "largest_param": {"name": name, "shape": list(big.shape),
                              "bytes": big.numel() * big.element_size()}}


def tensor_bytes(values) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


# ------------------------------------------------------------------ the rows
class Trainer:
    """One implementation's training step, split where the checks look:
    backward() runs forward and loss.backward() (and whatever the optimizer
    does inside it), finish() whatever runs after it."""

    in_backward = False

    def __init__(self, model):
        self.model = model
        self.params = list(model.parameters())

    def backward(self, x, y):
        loss_of(self.model, x, y).backward()

    def finish(self):
        pass

    def step(self, x, y):
        self.backward(x, y)
        self.finish()

    def release(self):
        """Drops the gradients the last step left (none when in backward)."""
        for p in self.params:
            p.grad = None

    def state(self) -> int:
        raise NotImplementedError


class Usual(Trainer):
    """opt.zero_grad(); loss.backward(); opt.step(): any torch.optim.Optimizer."""

    def __init__(self, model, make):
        super().__init__(model)
        self.opt = make(self.params)

    def backward(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        super().backward(x, y)

    def finish(self):
        self.opt.step()

    def state(self) -> int:
        return sum(tensor_bytes(self.opt.state[p].values()) for p in self.params
                   if p in self.opt.state)


class OursInBackward(Usual):
    """tcltorch.Adafactor(..., step_in_backward=True) in the usual loop: each
    parameter is stepped as its gradient is accumulated, opt.step() does
    nothing."""

    in_backward = True

    def __init__(self, model):
        import tcltorch
        super().__init__(model, lambda ps: tcltorch.Adafactor(ps, step_in_backward=True))


class TorchInBackward(Trainer):
    """torch.distributed.optim._apply_optimizer_in_backward(torch.optim.Adafactor,
    params, {}): one torch.optim.Adafactor per parameter, stepped by a hook on
    its AccumulateGrad node, which then sets .grad to None."""

    in_backward = True

    def __init__(self, model):
        from torch.distributed.optim import _apply_optimizer_in_backward

        super().__init__(model)
        _apply_optimizer_in_backward(torch.optim.Adafactor, self.params, {})

    def state(self) -> int:
        return sum(tensor_bytes(o.state[p].values()) for p in self.params
                   for o in p._in_backward_optimizers if p in o.state)


class AdaLomoRow(Trainer):
    """lomo_optim.AdaLomo(model): its hooks update every parameter whose
    gradient is ready during `fused_backward(loss, lr)`."""

    in_backward = True

    def __init__(self, model):
        from lomo_optim import AdaLomo

        super().__init__(model)
        self.opt = AdaLomo(model)

    def backward(self, x, y):
        self.opt.fused_backward(loss_of(self.model, x, y), self.opt.lr)

    def state(self) -> int:
        return sum(tensor_bytes(d.values()) for d in
                   (self.opt.exp_avg_sq, self.opt.exp_avg_sq_row, self.opt.exp_avg_sq_col))


def _ours(model):
    import tcltorch
    return Usual(model, lambda ps: tcltorch.Adafactor(ps))


# key -> (label, builder); table order. Every optimizer runs its defaults.
ROWS = {
    "ours": ("tcltorch.Adafactor", _ours),
    "ours_in_backward": ("tcltorch.Adafactor(step_in_backward=True)", OursInBackward),
    "torch_adafactor": ("torch.optim.Adafactor", lambda m: Usual(m, torch.optim.Adafactor)),
    "torch_in_backward": ("torch _apply_optimizer_in_backward(torch.optim.Adafactor)",
                          TorchInBackward),
    "adamw_fused": ("torch.optim.AdamW(fused=True)",
                    lambda m: Usual(m, lambda ps: torch.optim.AdamW(ps, fused=True))),
    "adalomo": ("lomo_optim.AdaLomo", AdaLomoRow),
}


class CheckFailed(AssertionError):
    pass


def first_step(trainer: Trainer, x, y) -> None:
    """The first step (it creates the state), checking that the row does what
    its label says and falls back to nothing else."""
    probes = [trainer.params[0], trainer.params[-1]]
    before = [p.detach().clone() for p in probes]
    trainer.backward(x, y)
    grads = [p.grad is not None for p in trainer.params]
    moved = [not torch.equal(p, b) for p, b in zip(probes, before)]
    if trainer.in_backward:
        if any(grads):
            raise CheckFailed(f"{sum(grads)} of {len(grads)} gradients are set after backward; "
                              "the step in backward sets each to None")
        if not all(moved):
            raise CheckFailed("the parameters did not move during backward")
    else:
        if not all(grads):
            raise CheckFailed(f"{len(grads) - sum(grads)} gradients are missing after backward")
        if any(moved):
            raise CheckFailed("the parameters moved during backward")
    after_backward = [p.detach().clone() for p in probes]
    trainer.finish()
    moved = [not torch.equal(p, b) for p, b in zip(probes, after_backward)]
    if trainer.in_backward and any(moved):
        raise CheckFailed("the parameters moved after backward (a second step?)")
    if not trainer.in_backward and not all(moved):
        raise CheckFailed("the step did not move the parameters")


# ------------------------------------------------------------------ memory
def reset_peak() -> int:
    """Resets the peak RSS (VmHWM) to the current RSS, which it returns."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss("VmRSS")


# ------------------------------------------------------------------ worker
def _reason(e: BaseException) -> str:
    lines = f"{type(e).__name__}: {e}".strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def worker(mode: str, key: str, config: dict, warm: int, steps: int, threads: int) -> dict:
    """One fresh process's measurement (benchmarks/training_step.py --worker)."""
    torch.set_num_threads(threads)
    model, x, y = build(config)
    out = {"mode": mode, "key": key, **describe(model)}
    if mode == "activations":
        return {**out, **activations(model, x, y, warm)}
    try:
        trainer = ROWS[key][1](model)
        first_step(trainer, x, y)
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - the row cannot run here: say why
        return {**out, "error": _reason(e)}
    for _ in range(warm):
        trainer.step(x, y)
    if mode == "peak":
        trainer.release()
        out["state_bytes"] = trainer.state()
        before = reset_peak()
        trainer.step(x, y)
        out["added"] = max(0, rss("VmHWM") - before)
        out["grads_after_backward"] = not trainer.in_backward
        return out
    samples = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step(x, y)
        samples.append(time.perf_counter() - t0)
    out["samples"] = samples
    out["loss"] = float(loss_of(model, x, y).detach())
    return out


def activations(model, x, y, warm: int) -> dict:
    """The model's own share of the peak: forward alone, then forward plus a
    backward that computes only the activations' gradients
    (torch.autograd.grad to the embeddings' outputs), so that no parameter
    gradient is ever made. The graph saves the same tensors as in training
    (every parameter requires grad)."""
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o))
             for m in (model.tok, model.pos)]

    def run(record):
        outputs.clear()
        loss = loss_of(model, x, y)
        forward = rss("VmHWM") if record else 0
        torch.autograd.grad(loss, outputs)
        return forward

    for _ in range(warm + 1):
        run(False)
    before = reset_peak()
    forward = run(True)
    total = rss("VmHWM")
    for h in hooks:
        h.remove()
    if any(p.grad is not None for p in model.parameters()):
        raise CheckFailed("a parameter gradient was made while measuring the activations")
    return {"forward": max(0, forward - before), "forward_backward": max(0, total - before)}


# ------------------------------------------------------------------ the run
def spawn(mode: str, key: str, config: dict, plan: dict, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if mode != "time":
        # glibc returns freed blocks to the system, so that a temporary freed
        # by an earlier step cannot be reused unseen by the measured one.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, str(WORKER), "--worker", mode, key, json.dumps(config),
           str(plan["warm"]), str(plan["steps"]), str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"training step, {mode} of {key} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(smoke: bool, threads: int, rounds: int | None = None, log=print) -> dict:
    """Every row's peak (one process each, one at a time), then its time
    (rounds of one process per row, in alternating order, so that a change
    in the machine's load falls on every row alike). The smoke run only
    checks the code paths: two processes at a time."""
    size = "smoke" if smoke else "full"
    config, plan = MODEL[size], dict(PLAN[size])
    if rounds:
        plan["rounds"] = rounds
    jobs = [("activations", "-")] + [("peak", key) for key in ROWS]
    def measure(job):
        r = spawn(*job, config, plan, threads)
        if job[0] == "activations":
            log(f"  training step: model {r['param_numel'] / 1e6:.1f}M parameters; "
                f"activations: forward {r['forward'] / 1e6:.1f} MB, forward+backward "
                f"{r['forward_backward'] / 1e6:.1f} MB")
        else:
            log(f"  training step: peak {job[1]:<18} "
                + (f"not available ({r['error']})" if "error" in r
                   else f"added {r['added'] / 1e6:.1f} MB"))
        return r

    pool = ThreadPoolExecutor(max_workers=2 if smoke else 1)
    done = list(pool.map(measure, jobs))
    act = done[0]
    rows = []
    for (key, (label, _)), r in zip(ROWS.items(), done[1:]):
        rows.append({"key": key, "label": label, "available": "error" not in r,
                     "reason": r.get("error", ""), "added": r.get("added"),
                     "state_bytes": r.get("state_bytes"),
                     "grads_after_backward": r.get("grads_after_backward"),
                     "rounds": [], "samples": []})
    live = [r for r in rows if r["available"]]
    for n in range(plan["rounds"]):
        order = live if n % 2 == 0 else live[::-1]
        timed = pool.map(lambda row: spawn("time", row["key"], config, plan, threads), order)
        for row, t in zip(order, timed):
            row["rounds"].append(statistics.median(t["samples"]))
            row["samples"] += t["samples"]
            row["loss"] = t["loss"]
        log(f"  training step: round {n + 1}/{plan['rounds']}: " + "  ".join(
            f"{r['key']} {r['rounds'][-1] * 1e3:.0f} ms" for r in live))
    pool.shutdown()
    for row in live:
        row["step_s"] = statistics.median(row["rounds"])
    return {"config": config, "plan": plan, "threads": threads,
            **{k: act[k] for k in ("param_numel", "param_bytes", "tensors", "largest_param")},
            "activations": {"forward": act["forward"],
                            "forward_backward": act["forward_backward"]},
            "rows": rows}
