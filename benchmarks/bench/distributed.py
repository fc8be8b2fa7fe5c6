"""The sharded Adafactor step at 1 and 2 ranks (torchrun, one thread per
rank): median step time per rank and the optimizer state each rank holds."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "distributed_step.tcl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(pset, steps: int, ranks=(1, 2), log=print) -> list[dict]:
    """One row per (world size, rank): the set's key, world, rank, median
    step seconds, state bytes on that rank."""
    import tcltorch

    rows = []
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["TCLLIBPATH"] = tcltorch.tcl_path()
    env["OMP_NUM_THREADS"] = "1"
    for world in ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "step"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                   "--no-python", "tclsh", str(SCRIPT), pset.spec, str(steps), str(out)]
            log(f"sharded Adafactor, {pset.key} set, {world} rank(s) ...")
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                           timeout=1800)
            for r in range(world):
                rank, w, median, state = (out.parent / f"step.rank{r}").read_text().split()
                rows.append({"set": pset.key, "world": int(w), "rank": int(rank),
                             "step_s": float(median), "state_bytes": int(state)})
    return rows


def table(results) -> list[list[str]]:
    from .report import fmt_bytes, fmt_time

    rows = results.get("distributed") or []
    one = {r["set"]: r for r in rows if r["world"] == 1}
    out = [["set", "ranks", "rank", "step time", "vs 1 rank", "state on this rank",
            "share of 1 rank's state"]]
    for r in rows:
        base = one.get(r["set"])
        ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base and base["step_s"] else "-"
        share = (f"{r['state_bytes'] / base['state_bytes']:.2f}"
                 if base and base["state_bytes"] else "-")
        out.append([r["set"], str(r["world"]), str(r["rank"]), fmt_time(r["step_s"]), ratio,
                    fmt_bytes(r["state_bytes"]), share])
    return out
