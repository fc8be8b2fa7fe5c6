"""The optimizers timed from Python, each behind the same small interface.

Every Adafactor row runs its own defaults, which are the same algorithm
(torch.optim.Adafactor's, for ours: the core's default "torch" variant), or for
transformers and timm the paper's variant, whose work per element is the same.
To add a row, add a builder to `_BUILDERS`: an Impl whose `make(params)`
returns an optimizer (anything with `step()`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .timing import Row

# torch.finfo(torch.float32).eps: the core's default eps1 for float32, which
# the Tcl command must be given explicitly (its default is transformers').
FLOAT32_EPS = "1.1920928955078125e-07"


class PyRow:
    """Times `opt.step()` from Python."""

    process = "python"

    def __init__(self, opt):
        self.opt = opt

    def run_batch(self, k: int) -> float:
        step = self.opt.step
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            return (time.perf_counter() - t0) / k

    def close(self):
        self.opt = None


@dataclass
class Impl:
    key: str
    label: str
    kind: str  # "ours", "adafactor" (another Adafactor), "reference", "floor"
    make: Optional[Callable] = None  # params -> optimizer (has .step())
    reason: str = ""  # why it is not available
    # Instead of make: params -> a Row of its own (the Tcl door).
    opener: Optional[Callable] = None
    # Timed by the C++ benchmark program (the C++ door, the floor).
    external: bool = False

    @property
    def available(self) -> bool:
        return self.make is not None or self.opener is not None or self.external

    def open(self, params) -> Row:
        return self.opener(params) if self.opener is not None else PyRow(self.make(params))


def _reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text[:160]


def _tcltorch_python_door() -> list[Impl]:
    import tcltorch
    from tcltorch import _C

    impls = [Impl("py_C", "tcltorch._C.Adafactor (Python door)", "ours",
                  make=lambda ps: _C.Adafactor(ps))]
    # tcltorch.Adafactor (a torch.optim.Optimizer) gets its row when it exists.
    cls = getattr(tcltorch, "Adafactor", None)
    if cls is not None:
        impls.append(Impl("py", "tcltorch.Adafactor", "ours", make=lambda ps: cls(ps)))
    return impls


class TclDoor:
    """torch::optimizer_step driven by a real Tcl interpreter (tkinter), on
    parameters made in Python and registered with Interp.put_tensor. Timed
    with Tcl's own `time` command, so no Python runs between steps."""

    _TIME = re.compile(r"^\s*([0-9.eE+-]+) microseconds per iteration")
    process = "python"  # Tcl runs in the Python process, through tkinter

    def __init__(self, params):
        from tcltorch.tcl import Interp

        self.interp = Interp()
        # What a Tcl user trains: tensors that require grad (the package
        # warns on stderr about parameters that do not).
        for p in params:
            p.requires_grad_(True)
        handles = [self.interp.put_tensor(p) for p in params]
        self.interp.tk.call("set", "::bench_params", tuple(handles))
        # The core's default algorithm (variant torch, lr 1e-2, eps1 =
        # finfo(float32).eps, eps2 = 1e-3): the same as the other rows.
        self.opt = self.interp.eval(
            "torch::optimizer_adafactor -parameters $::bench_params -variant torch "
            f"-lr 0.01 -eps2 {FLOAT32_EPS} -epsScale 1e-3")

    def step(self):
        self.interp.eval(f"torch::optimizer_step {self.opt}")

    def run_batch(self, k: int) -> float:
        out = self.interp.eval(f"time {{torch::optimizer_step {self.opt}}} {k}")
        m = self._TIME.match(out)
        if not m:
            raise RuntimeError(f"unexpected output of Tcl's time: {out!r}")
        return float(m.group(1)) * 1e-6

    def close(self):
        self.interp.close()


def _transformers() -> Impl:
    label = "transformers.optimization.Adafactor"
    try:
        from transformers.optimization import Adafactor
    except Exception as e:  # noqa: BLE001 - any import failure makes the row unavailable
        return Impl("transformers", label, "adafactor", reason=_reason(e))
    return Impl("transformers", label, "adafactor", make=lambda ps: Adafactor(ps))


def timm_module(name: str = "adafactor"):
    """timm's optimizer module `timm.optim.<name>`, loaded on its own (the
    bench's timm row and the parity tests' anchors, tests/anchors.py).

    `import timm.optim` runs timm's package init, which imports torchvision
    (for its layers and data code); PyPI's torchvision does not load beside the
    CPU torch 2.13.0 wheel, and `make bench` installs timm without it. The
    Adafactor modules need only torch and helper modules of their own
    package, so they are imported with bare `timm` and `timm.optim` packages
    standing for the real ones: timm's own code, minus the unrelated init."""
    import importlib
    import importlib.machinery
    import importlib.util
    import sys
    import types
    from pathlib import Path

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
        raise ModuleNotFoundError("No module named 'timm'")
    root = Path(spec.origin).parent
    for pkg, path in [("timm", root), ("timm.optim", root / "optim")]:
        package = types.ModuleType(pkg)
        package.__path__ = [str(path)]
        # A spec, so that importlib.util.find_spec("timm") still answers.
        package.__spec__ = importlib.machinery.ModuleSpec(pkg, None, is_package=True)
        package.__spec__.submodule_search_locations = [str(path)]
        sys.modules[pkg] = package
    return importlib.import_module(full)


def _timm() -> Impl:
    label = "timm.optim.Adafactor"
    try:
        adafactor = timm_module()
    except Exception as e:  # noqa: BLE001
        return Impl("timm", label, "adafactor", reason=_reason(e))
    return Impl("timm", label, "adafactor", make=lambda ps: adafactor.Adafactor(ps))


def _tcl() -> Impl:
    return Impl("tcl", "torch::optimizer_step (Tcl door)", "ours", opener=TclDoor)


def _torch_loop() -> Impl:
    return Impl("torch_loop", "torch.optim.Adafactor (for-loop)", "adafactor",
                make=lambda ps: torch.optim.Adafactor(ps, foreach=False))


def _torch_foreach() -> Impl:
    return Impl("torch_foreach", "torch.optim.Adafactor (foreach)", "adafactor",
                make=lambda ps: torch.optim.Adafactor(ps, foreach=True))


def _adamw_fused() -> Impl:
    return Impl("adamw_fused", "torch.optim.AdamW(fused=True)", "reference",
                make=lambda ps: torch.optim.AdamW(ps, fused=True))


# Table order (after the C++ door); each builder imports only what it needs.
_BUILDERS = [_tcltorch_python_door, _tcl, _torch_loop, _torch_foreach, _transformers, _timm,
             _adamw_fused]
_KEYS = {"py_C": _tcltorch_python_door, "py": _tcltorch_python_door, "tcl": _tcl,
         "torch_loop": _torch_loop, "torch_foreach": _torch_foreach,
         "transformers": _transformers, "timm": _timm, "adamw_fused": _adamw_fused}


def python_impls() -> list[Impl]:
    """The rows timed in the Python process, in table order."""
    out = []
    for build in _BUILDERS:
        made = build()
        out += made if isinstance(made, list) else [made]
    return out


def python_impl(key: str) -> Impl:
    """One row, importing only what it needs."""
    made = _KEYS[key]()
    for impl in made if isinstance(made, list) else [made]:
        if impl.key == key:
            return impl
    raise KeyError(f"{key}: not available")


def state_bytes(opt, params) -> int:
    """Bytes of the tensors in an optimizer's state."""
    from tcltorch import _C

    if isinstance(opt, _C.Adafactor):
        states = [opt.state(p) for p in params]
    else:
        states = [opt.state[p] for p in params if p in opt.state]
    total = 0
    for st in states:
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total
