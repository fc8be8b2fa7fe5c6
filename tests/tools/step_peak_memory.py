"""Prints, as JSON, how much resident memory one optimizer step adds at its
peak, for a square fp32 parameter, measured in this fresh process.

    python step_peak_memory.py tcltorch|torch|aten N

Linux only: resets the peak RSS counter (/proc/self/clear_refs) after a
warm-up step, then reads VmHWM after a second step.
"""
import json
import sys

import torch


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def main() -> None:
    impl, n = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    p = torch.randn(n, n)
    if impl == "torch":
        opt = torch.optim.Adafactor([p], foreach=False)
    else:
        from tcltorch import _C

        _C._set_fused_enabled(impl == "tcltorch")
        opt = _C.Adafactor([p])
    p.grad = torch.randn(n, n)
    with torch.no_grad():
        opt.step()  # creates the state, warms up threads and allocator
    p.grad.normal_()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss("VmRSS")
    with torch.no_grad():
        opt.step()
    peak = rss("VmHWM")
    print(json.dumps({"impl": impl, "param_bytes": p.numel() * 4, "added": max(0, peak - before)}))


if __name__ == "__main__":
    main()
