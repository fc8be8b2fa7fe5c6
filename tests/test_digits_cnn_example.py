"""examples/train_digits_cnn.tcl in a plain tclsh: a conv net trained with
Adafactor on the digits learns them, and Adafactor keeps factored state for
the 4-d convolution kernels."""
from __future__ import annotations

import re
import subprocess

from conftest import REPO, tclsh_env

EXAMPLE = REPO / "examples" / "train_digits_cnn.tcl"


def test_cnn_example_learns_the_digits_with_factored_conv_state():
    # one thread: the suite shares the machine
    r = subprocess.run(["tclsh", str(EXAMPLE), "3"], capture_output=True, text=True,
                       timeout=300, env={**tclsh_env(), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    epochs = re.findall(r"^epoch (\d+)/3  loss (\S+)  test accuracy (\S+)%$", out, re.M)
    assert [e[0] for e in epochs] == ["1", "2", "3"], out
    losses = [float(e[1]) for e in epochs]
    assert losses[-1] < losses[0]
    assert "0.weight  16 1 3 3" in out and "3.weight  32 16 3 3" in out
    # row and column factors of a {16 1 3 3} kernel, not its full second moment
    m = re.search(r"conv weight 16 1 3 3: Adafactor state (.*)$", out, re.M)
    assert m, out
    state = m.group(1)
    assert "row_var {16 1 3 1}" in state and "col_var {16 1 1 3}" in state, state
    assert "variance" not in state
    used, adam = map(int, re.search(r"optimizer state (\d+) bytes \(Adam would keep (\d+)\)",
                                    out).groups())
    assert used < adam / 2
    final = float(re.search(r"final test accuracy (\S+)%", out).group(1))
    assert final >= 90.0, out
