"""The other Adafactors the parity tests run beside ours: timm's two, loaded
on their own (timm's package init imports torchvision, which does not load
beside the CPU torch wheel), pytorch_optimizer's and optax's (on CPU jax, in
float64). Each loader raises ImportError when its package is missing."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def timm_module(name: str):
    """`timm.optim.<name>` with bare `timm` and `timm.optim` packages standing
    for the real ones: timm's own optimizer code, minus the unrelated init."""
    full = f"timm.optim.{name}"
    if full in sys.modules:
        return sys.modules[full]
    try:
        import timm.optim  # noqa: F401 - a timm whose init loads: use it as it is
        return importlib.import_module(full)
    except ImportError:
        for mod in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[mod]  # what the failed init left
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise ImportError("No module named 'timm'")
    root = Path(spec.origin).parent
    for pkg, path in [("timm", root), ("timm.optim", root / "optim")]:
        package = types.ModuleType(pkg)
        package.__path__ = [str(path)]
        sys.modules[pkg] = package
    return importlib.import_module(full)


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
