"""Calibration: time real models (PyTorch, ONNX Runtime) on real hardware and write profiles.

Everything here needs the ``calibrate`` extra (torch, onnx, onnxruntime, pillow); the modules
import those lazily so that ``capsim`` itself starts without them, and :func:`require` turns
their absence into one line telling the user what to install.
"""

from __future__ import annotations

import importlib

from capsim.errors import CapsimError

EXTRA_HINT = "the calibrate extra is missing: pip install 'capsim[calibrate]'"


class MissingExtra(CapsimError):
    """An optional dependency of the calibrate extra is not installed."""


def require(*modules: str) -> None:
    """Import-check ``modules``; raise :class:`MissingExtra` with the install hint when one is absent."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(f"{name} is not installed; {EXTRA_HINT}") from None
