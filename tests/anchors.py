"""The other Adafactors the parity tests run beside ours: timm's two, loaded
on their own (timm's package init imports torchvision, which does not load
beside the CPU torch wheel), pytorch_optimizer's and optax's (on CPU jax, in
float64). Each loader raises ImportError when its package is missing."""
from __future__ import annotations

import sys
from pathlib import Path


def timm_module(name: str):
    """`timm.optim.<name>`, timm's own optimizer code loaded without its
    package init (the bench's loader)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.bench.impls import timm_module as load

    return load(name)


def pytorch_optimizer_adafactor():
    from pytorch_optimizer.optimizer.adafactor import AdaFactor

    return AdaFactor


def optax_x64():
    """optax, with jax computing in float64 on the CPU."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    import optax

    return optax
