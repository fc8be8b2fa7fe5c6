"""examples/train_digits.tcl in a plain tclsh: it trains on 80% of the digits
data and reaches at least 95% accuracy on the held-out 20% with the default
Adafactor options."""
from __future__ import annotations

import re

import pytest

from conftest import REPO, run_tclsh

EXAMPLE = REPO / "examples" / "train_digits.tcl"
DATA = REPO / "examples" / "data" / "digits.txt"

EPOCH = re.compile(r"^(adafactor|adam)\s+epoch (\d+)/(\d+)\s+loss (\S+)\s+"
                   r"test accuracy (\S+)%$")
FINAL = re.compile(r"^final test accuracy: adafactor (\S+)%, adam (\S+)%$")


def samples_in_data() -> int:
    return sum(1 for line in DATA.read_text().splitlines()
               if line.strip() and not line.startswith("#"))


@pytest.fixture(scope="module")
def default_run():
    return run_tclsh(None, file=EXAMPLE, timeout=300)


def test_example_exits_cleanly(default_run):
    assert default_run.returncode == 0, default_run.stderr
    assert "error" not in default_run.stderr.lower()


def test_holds_out_a_fifth_of_the_data(default_run):
    n = samples_in_data()
    assert n > 1000
    first = default_run.stdout.splitlines()[0]
    m = re.match(r"digits: (\d+) training and (\d+) test samples, batch (\d+), (\d+) epochs",
                 first)
    assert m, first
    train, test = int(m.group(1)), int(m.group(2))
    assert train + test == n
    assert test == n // 5


def test_one_progress_line_per_epoch_for_both_optimizers(default_run):
    lines = default_run.stdout.strip().splitlines()
    epochs = int(re.search(r"(\d+) epochs", lines[0]).group(1))
    progress = [EPOCH.match(line) for line in lines[1:-1]]
    assert all(progress), lines[1:-1]
    assert [(m.group(1), int(m.group(2)), int(m.group(3))) for m in progress] == \
        [(name, e, epochs) for name in ("adafactor", "adam") for e in range(1, epochs + 1)]
    for m in progress:
        assert float(m.group(4)) > 0
        assert 0 <= float(m.group(5)) <= 100
    # the training loss falls for both
    for name in ("adafactor", "adam"):
        losses = [float(m.group(4)) for m in progress if m.group(1) == name]
        assert losses[-1] < losses[0], name


def test_adafactor_reaches_95_percent_on_held_out_data(default_run):
    lines = default_run.stdout.strip().splitlines()
    final = FINAL.match(lines[-1])
    assert final, lines[-1]
    adafactor, adam = float(final.group(1)), float(final.group(2))
    assert adafactor >= 95.0
    assert 0 <= adam <= 100
    # the final line repeats the last epoch's accuracy of each optimizer
    last = {}
    for line in lines[1:-1]:
        m = EPOCH.match(line)
        last[m.group(1)] = float(m.group(5))
    assert last == {"adafactor": adafactor, "adam": adam}


def test_epochs_and_batch_arguments():
    out = run_tclsh(None, "2", "64", file=EXAMPLE, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "batch 64, 2 epochs" in lines[0]
    assert sum(1 for line in lines if EPOCH.match(line)) == 4
    assert FINAL.match(lines[-1])
