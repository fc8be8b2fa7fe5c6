"""This process's memory as the kernel counts it (/proc/self/status), for
the peak-memory measurements that run in a fresh process each."""
from __future__ import annotations


def rss(field: str) -> int:
    """A field of /proc/self/status in bytes: VmRSS (now) or VmHWM (the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
