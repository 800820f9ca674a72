"""Fitting engines behind one interface (base.Engine): 'native' everywhere, 'tractor' where it imports."""
from __future__ import annotations

from ..errors import JointphotError
from .base import Engine


def get_engine(name: str = "native") -> Engine:
    """Engine by name: 'native', 'tractor', or 'auto' (the Tractor when it imports, else native)."""
    from .native import NativeEngine

    if name == "native":
        return NativeEngine()
    if name in ("tractor", "auto"):
        try:
            from .tractor_engine import TractorEngine, tractor_available
        except ImportError as exc:  # the module itself is missing
            available, reason = False, str(exc)
        else:
            available, reason = tractor_available()
        if available:
            return TractorEngine()
        if name == "tractor":
            raise JointphotError(f"--engine tractor: the Tractor cannot be used here ({reason}); use --engine native")
        return NativeEngine()
    raise JointphotError(f"unknown engine {name!r}: use auto, native or tractor")
