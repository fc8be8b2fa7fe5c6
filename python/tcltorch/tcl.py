"""Drive the Tcl package from Python: a ``tkinter.Tcl()`` interpreter with
``package require torch`` done, and access to the tensors behind its handles.

    >>> from tcltorch.tcl import Interp
    >>> tcl = Interp()
    >>> h = tcl.eval("torch::ones {2 3}")
    >>> tcl.tensor(h).sum().item()
    6.0

Each interpreter must be used from the thread that created it.
"""
from __future__ import annotations

import tkinter

import torch

from . import _C
from ._paths import tcl_path


class TclError(RuntimeError):
    """A Tcl error, with the interpreter's -errorcode as ``code`` (a tuple)."""

    def __init__(self, message: str, code: tuple[str, ...]):
        super().__init__(message)
        self.message = message
        self.code = code


class Interp:
    """A Tcl interpreter with the ``torch`` package loaded."""

    def __init__(self) -> None:
        self._tk = tkinter.Tcl()
        self._tk.call("lappend", "auto_path", tcl_path())
        self.version = self._call("package", "require", "torch")

    @property
    def tk(self) -> tkinter.Tk:
        """The underlying tkinter interpreter."""
        return self._live()

    @property
    def closed(self) -> bool:
        return self._tk is None

    def _live(self) -> tkinter.Tk:
        if self._tk is None:
            raise RuntimeError("this tcltorch.tcl.Interp is closed (close() was called, which "
                               "freed its interpreter and handles); create a new Interp()")
        return self._tk

    def _call(self, *args):
        tk = self._live()
        try:
            return tk.call(*args)
        except tkinter.TclError as e:
            raise self._error(e) from None

    def _error(self, e: tkinter.TclError) -> TclError:
        return TclError(str(e), tuple(self._tk.splitlist(self._tk.eval("set ::errorCode"))))

    def eval(self, script: str) -> str:
        """Evaluates a script; returns its result as a string. Raises
        :class:`TclError` carrying the error code on failure."""
        tk = self._live()
        try:
            return tk.eval(script)
        except tkinter.TclError as e:
            raise self._error(e) from None

    def call(self, *args):
        """Calls a command with each argument passed as one word (no
        substitution); returns tkinter's typed result."""
        return self._call(*[str(a) if isinstance(a, (int, float)) else a for a in args])

    def split(self, value) -> tuple:
        """Splits a Tcl list into a tuple of words."""
        return tuple(self._live().splitlist(value))

    def tensor(self, handle: str) -> torch.Tensor:
        """The tensor behind a handle: the same tensor, sharing memory."""
        return _C.tcl_get_tensor(self._live().interpaddr(), str(handle))

    def put_tensor(self, tensor: torch.Tensor) -> str:
        """Registers a tensor (shared, not copied) and returns its handle."""
        return _C.tcl_add_tensor(self._live().interpaddr(), tensor)

    def handles(self, pattern: str = "*") -> tuple[str, ...]:
        return self.split(self._call("torch::handles", pattern))

    def close(self) -> None:
        """Drops the interpreter: tkinter deletes it once no reference is
        left, and the package frees every handle it held. Any later use of
        this object raises RuntimeError; closing again does nothing."""
        self._tk = None
