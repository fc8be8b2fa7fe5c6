"""The char-LM training step of examples/train_charlm.tcl, from Tcl and from
Python, side by side (a row of `make bench`):

    .venv/bin/python benchmarks/charlm.py            # the example's model, a few minutes
    .venv/bin/python benchmarks/charlm.py --smoke    # a tiny model, the same code paths

One step is: a batch of random windows, forward, cross-entropy, backward,
gradient clipping, and an Adafactor step (weight decay on the matrices, none
on the rest), with the learning rate set before it. The Tcl side runs the
example's own procs in tclsh; the Python side the same model in torch.nn
(nn.TransformerEncoderLayer, batch_first, norm_first, causal mask) with
tcltorch.Adafactor. Each runs in a fresh process, in rounds of one run each,
the side that goes first alternating from round to round (so that the load
of a shared machine and any drift fall on both alike), with the same torch
thread count (OMP_NUM_THREADS; 2 and 1 by default). The time of a step is
the median over the rounds; the ratio the median of the rounds' own Tcl /
Python ratios (the two runs of a round are back to back). Target: the Tcl
step within 1.05x of the Python step. Writes build/bench/charlm.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "train_charlm.tcl"
TEXT = REPO / "examples" / "data" / "tcl_manual.txt"

FULL = dict(layers=4, dModel=128, heads=4, ff=512, context=128, batch=16)  # the example's
SMOKE = dict(layers=1, dModel=16, heads=2, ff=32, context=16, batch=4)
COMMON = dict(lr=0.01, warmup=10, minLr=0.001, weightDecay=0.01, clip=1.0)
TARGET = 1.05



class CharLM(nn.Module):
    """The example's model in torch.nn: token and position embeddings, causal
    pre-norm GELU encoder layers, a final layer norm, a linear head (also the
    reference of tests/test_charlm_example.py)."""

    def __init__(self, vocab, dModel, heads, ff, layers, context, **_):
        super().__init__()
        self.tok = nn.Embedding(vocab, dModel)
        self.pos = nn.Embedding(context, dModel)
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(dModel, heads, ff, 0.0, "gelu", batch_first=True,
                                         norm_first=True) for _ in range(layers)],
            nn.LayerNorm(dModel), nn.Linear(dModel, vocab))

    def forward(self, x):
        n = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(n))
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        for layer in self.blocks[:-2]:
            h = layer(h, src_mask=mask, is_causal=True)
        return self.blocks[-1](self.blocks[-2](h))


def lr_at(step: int, c: dict) -> float:
    """The schedule the example states: linear warm-up over c["warmup"] steps,
    then a cosine down to c["minLr"] at step c["steps"]."""
    if step <= c["warmup"]:
        return c["lr"] * step / c["warmup"]
    progress = (step - c["warmup"]) / max(1, c["steps"] - c["warmup"])
    return c["minLr"] + 0.5 * (c["lr"] - c["minLr"]) * (1 + math.cos(math.pi * progress))


TCL_SCRIPT = r"""
package require torch
namespace eval charlm {variable library 1}
source [lindex $argv 0]
charlm::setup [lindex $argv 1]
set warm [lindex $argv 2]
set steps [lindex $argv 3]
for {set s 1} {$s <= $warm + $steps} {incr s} {
    if {$s == $warm + 1} {set t0 [clock microseconds]}
    lassign [charlm::batch] x y
    charlm::train_step $x $y [charlm::lr_at $s]
    torch::delete $x $y
}
puts [expr {([clock microseconds] - $t0) / 1e6 / $steps}]
"""


def tcl_round(config: dict, warm: int, steps: int, threads: int) -> float:
    import tcltorch
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["TCLLIBPATH"] = tcltorch.tcl_path()
    env["OMP_NUM_THREADS"] = str(threads)
    opts = " ".join(f"-{k} {v}" for k, v in {**config, **COMMON, "steps": warm + steps}.items())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "charlm_step.tcl"
        script.write_text(TCL_SCRIPT)
        r = subprocess.run(["tclsh", str(script), str(EXAMPLE), opts, str(warm), str(steps)],
                           capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"the Tcl step failed: {r.stderr}")
    return float(r.stdout.split()[-1])


def python_worker(config: dict, warm: int, steps: int) -> float:
    """The same step in torch.nn + tcltorch.Adafactor (run in its own process)."""
    import tcltorch
    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([table[c] for c in text])
    train = ids[: len(ids) - len(ids) // 10]
    vocab, T, B = len(chars), config["context"], config["batch"]
    torch.manual_seed(0)

    model = CharLM(vocab, **config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    opt = tcltorch.Adafactor(
        [{"params": decay, "weight_decay": COMMON["weightDecay"]},
         {"params": plain, "weight_decay": 0.0}],
        lr=COMMON["lr"], eps=(1e-30, 1e-3), d=1.0, relative_step=False, scale_parameter=False,
        variant="transformers")
    params = decay + plain
    window = torch.arange(T + 1)
    total = warm + steps

    schedule = {**COMMON, "steps": total}

    for s in range(1, total + 1):
        if s == warm + 1:
            t0 = time.perf_counter()
        starts = torch.randint(0, len(train) - T - 1, (B, 1))
        xy = train.index_select(0, (starts + window).reshape(-1)).reshape(B, T + 1)
        x, y = xy[:, :T], xy[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(s, schedule)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(params, COMMON["clip"])
        opt.step()
        loss.item()
    return (time.perf_counter() - t0) / steps


def python_round(config: dict, warm: int, steps: int, threads: int) -> float:
    r = subprocess.run([sys.executable, __file__, "--python-worker", json.dumps(config),
                        str(warm), str(steps)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise RuntimeError(f"the Python step failed: {r.stderr}")
    return float(r.stdout.split()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny model, one short round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per side (default 5)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 8)")
    ap.add_argument("--threads", default="2,1", help="torch thread counts (default 2,1)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--python-worker", nargs=3, metavar=("CONFIG", "WARM", "STEPS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.python_worker:
        config, warm, steps = args.python_worker
        print(python_worker(json.loads(config), int(warm), int(steps)))
        return 0
    config = SMOKE if args.smoke else FULL
    rounds = args.rounds or (1 if args.smoke else 5)
    steps = args.steps or (3 if args.smoke else 8)
    warm = 1 if args.smoke else 3
    tokens = config["batch"] * config["context"]
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        tcl_s, py_s = [], []
        for r in range(rounds):
            if r % 2 == 0:
                tcl_s.append(tcl_round(config, warm, steps, threads))
                py_s.append(python_round(config, warm, steps, threads))
            else:
                py_s.append(python_round(config, warm, steps, threads))
                tcl_s.append(tcl_round(config, warm, steps, threads))
            print(f"{threads} thread(s), round {r + 1}/{rounds}: Tcl {tcl_s[-1] * 1e3:.1f} ms/step, "
                  f"Python {py_s[-1] * 1e3:.1f} ms/step", file=sys.stderr, flush=True)
        t, p = statistics.median(tcl_s), statistics.median(py_s)
        ratio = statistics.median(a / b for a, b in zip(tcl_s, py_s))
        rows.append({"threads": threads, "tcl_s_per_step": t, "python_s_per_step": p,
                     "tcl_tokens_per_s": tokens / t, "python_tokens_per_s": tokens / p,
                     "ratio": ratio, "met": ratio <= TARGET, "tcl_rounds": tcl_s,
                     "python_rounds": py_s})
    result = {"config": config, "tokens_per_step": tokens, "rounds": rounds, "steps": steps,
              "target": TARGET, "rows": rows}
    out = args.json or REPO / "build" / ("bench-smoke" if args.smoke else "bench") / "charlm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    c = config
    print(f"char-LM training step ({c['layers']} layers, dModel {c['dModel']}, "
          f"batch {c['batch']} x {c['context']} tokens; medians of {rounds} rounds, "
          "the ratio the median of the rounds' ratios)")
    print("| threads | Tcl ms/step | Tcl tokens/s | Python ms/step | Python tokens/s | Tcl/Python |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['threads']} | {row['tcl_s_per_step'] * 1e3:.1f} | "
              f"{row['tcl_tokens_per_s']:.0f} | {row['python_s_per_step'] * 1e3:.1f} | "
              f"{row['python_tokens_per_s']:.0f} | {row['ratio']:.3f} "
              f"({'met' if row['met'] else 'NOT met'}: target <= {TARGET}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
