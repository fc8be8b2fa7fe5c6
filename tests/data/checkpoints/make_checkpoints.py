"""Writes the checkpoints of this directory with a given build of tcltorch._C
(they were written by tcltorch 0.1.0, before the table of options existed):

    python make_checkpoints.py path/to/_C.cpython-311-x86_64-linux-gnu.so

For each: NAME.pt (the optimizer's file after 3 steps) and NAME_expected.pt
(parameters, state and options at that point, saved by torch.save).
"""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

CASES = {
    "adafactor_defaults_0.1.0": {},
    "adafactor_options_0.1.0": dict(
        lr=0.05, beta2_decay=-0.7, eps1=1e-20, eps2=2e-3, d=0.9, weight_decay=0.01,
        maximize=False, beta1=0.8, relative_step=False, scale_parameter=True,
        warmup_init=False, variant="transformers", factored_dims="largest_two",
        min_dim_size_to_factor=2, fp32_state=True, stochastic_rounding=False,
        skip_nan_updates=True),
}


def main(path: str) -> None:
    loader = importlib.machinery.ExtensionFileLoader("_C", path)
    spec = importlib.util.spec_from_file_location("_C", path, loader=loader)
    C = importlib.util.module_from_spec(spec)
    loader.exec_module(C)
    here = Path(__file__).resolve().parent
    for name, options in CASES.items():
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(6, 5, generator=gen, dtype=torch.float64),
                  torch.randn(7, generator=gen, dtype=torch.float64)]
        opt = C.Adafactor(params, **options)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        opt.save(str(here / f"{name}.pt"))
        torch.save({"params": params, "state": [opt.state(p) for p in params],
                    "options": opt.options()}, here / f"{name}_expected.pt")


if __name__ == "__main__":
    main(sys.argv[1])
