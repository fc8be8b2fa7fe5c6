"""A whole training step per optimizer: peak memory and time (a part of
`make bench`: benchmarks/run.py runs it and puts it in docs/performance.md), or
on its own:

    .venv/bin/python benchmarks/training_step.py            # the full model, a few minutes
    .venv/bin/python benchmarks/training_step.py --smoke    # a tiny model, the same code paths

Forward, cross-entropy, backward and the optimizer's step of a transformer-like
torch.nn model (bench/training.py: its shapes, rows and method), each figure in
a fresh process: the peak memory the step adds above parameters + optimizer
state, the activations' share of it, and the median time of a step. Prints a
table and writes build/bench/training_step.json (build/bench-smoke/ with
--smoke).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench import training  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny model, one short round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS,
                    metavar=("MODE", "KEY", "CONFIG", "WARM", "STEPS", "THREADS"))
    args = ap.parse_args(argv)
    if args.worker:
        mode, key, config, warm, steps, threads = args.worker
        print(json.dumps(training.worker(mode, key, json.loads(config), int(warm), int(steps),
                                         int(threads))))
        return 0
    from bench import training_report

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = training.run(args.smoke, args.threads, args.rounds, log=log)
    out = args.json or REPO / "build" / ("bench-smoke" if args.smoke else "bench") / \
        "training_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("\n".join(training_report.text({"training": result})))
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
