"""examples/train_charlm.tcl: its model trained 20 steps from Tcl equals,
bit for bit, the same model written with torch.nn and trained from Python with
tcltorch's Adafactor (same weights, batches, schedule and clipping); and a
short run of the example beats the unigram baseline on held-out text."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import tcltorch
from conftest import REPO, tclsh_env

sys.path.insert(0, str(REPO))
from benchmarks.charlm import CharLM, lr_at as python_lr  # noqa: E402 - the model, once

EXAMPLE = REPO / "examples" / "train_charlm.tcl"
SMALL = dict(layers=2, dModel=32, heads=4, ff=64, context=32, batch=8, steps=20, warmup=5,
             lr=0.01, minLr=0.001, weightDecay=0.01, clip=1.0)


def unigram_baseline(val_fraction=0.1):
    """Cross-entropy of the held-out last 10% of the text under the add-one
    smoothed character frequencies of the rest."""
    text = (REPO / "examples" / "data" / "tcl_manual.txt").read_text(encoding="utf-8")
    nval = int(len(text) * val_fraction)
    train, val = text[: len(text) - nval], text[len(text) - nval:]
    vocab = sorted(set(text))
    counts = {c: train.count(c) for c in vocab}
    return -sum(val.count(c) * math.log((counts[c] + 1) / (len(train) + len(vocab)))
                for c in vocab) / nval


@pytest.fixture
def charlm(tcl):
    tcl.eval("namespace eval charlm {variable library 1}")
    tcl.eval(f"source {{{EXAMPLE}}}")
    opts = " ".join(f"-{k} {v}" for k, v in SMALL.items())
    vocab = int(tcl.eval(f"charlm::setup {{{opts}}}"))
    # One LibTorch in this process, for Tcl and Python alike: one thread, as
    # the suite shares the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tcl, vocab
    torch.set_num_threads(threads)


def test_twenty_steps_from_tcl_equal_pytorch(charlm):
    tcl, vocab = charlm
    d = tcl.split(tcl.eval("charlm::named_parameters"))
    tcl_params = {d[i]: tcl.tensor(d[i + 1]) for i in range(0, len(d), 2)}
    model = CharLM(vocab, **SMALL)
    assert list(tcl_params) == [n for n, _ in model.named_parameters()]
    model.load_state_dict({n: p.detach().clone() for n, p in tcl_params.items()})
    named = dict(model.named_parameters())
    # the example's groups: decay on matrices, none on vectors; the same order
    decay = [named[n] for n, p in tcl_params.items() if p.dim() >= 2]
    plain = [named[n] for n, p in tcl_params.items() if p.dim() < 2]
    opt = tcltorch.Adafactor(
        [{"params": decay, "weight_decay": SMALL["weightDecay"]},
         {"params": plain, "weight_decay": 0.0}],
        lr=SMALL["lr"], eps=(1e-30, 1e-3), d=1.0, relative_step=False,
        scale_parameter=False, variant="transformers")
    order = decay + plain
    for step in range(1, SMALL["steps"] + 1):
        x, y = tcl.split(tcl.eval("charlm::batch"))
        xb, yb = tcl.tensor(x).clone(), tcl.tensor(y).clone()
        lr = float(tcl.eval(f"charlm::lr_at {step}"))
        assert lr == pytest.approx(python_lr(step, SMALL), rel=1e-12)
        tcl_loss, tcl_norm = map(float, tcl.split(tcl.eval(f"charlm::train_step {x} {y} {lr}")))
        tcl.eval(f"torch::delete {x} {y}")
        if step == 2:
            handles = len(tcl.handles())

        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), yb.reshape(-1))
        loss.backward()
        norm = nn.utils.clip_grad_norm_(order, SMALL["clip"])
        opt.step()
        # the same ATen calls in the same order: the same bits, not just close
        assert tcl_loss == loss.item(), step
        assert tcl_norm == norm.item(), step
    assert len(tcl.handles()) == handles  # a step leaves no handle behind
    for name, p in named.items():
        assert torch.equal(tcl_params[name].detach(), p.detach()), name
    # and training did something
    assert tcl_loss < math.log(vocab) - 0.5


def test_example_beats_the_unigram_baseline():
    # a smaller model than the example's default, on one thread (the suite
    # shares the machine: two threads waiting on each other under load are
    # several times slower than one)
    r = subprocess.run(["tclsh", str(EXAMPLE), "-steps", "120", "-layers", "2", "-dModel", "64",
                        "-ff", "128", "-context", "64", "-batch", "16", "-warmup", "10",
                        "-lr", "0.02", "-evalBatches", "4", "-sample", "60", "-log", "40"],
                       capture_output=True, text=True, timeout=600,
                       env={**tclsh_env(), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"step +40/120 +loss [\d.]+ .* [\d.]+ tokens/s", out), out
    m = re.search(r"validation loss ([\d.]+) \(unigram baseline ([\d.]+)\)", out)
    assert m, out
    val, baseline = map(float, m.groups())
    assert baseline == pytest.approx(unigram_baseline(), abs=1e-4)
    assert val < baseline - 0.4, out
    sample = out.split("sample:\n", 1)[1]
    assert sample.startswith("NAME\n") and len(sample) >= 60
