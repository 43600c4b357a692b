"""The certification gates: one module per gate (``accuracy``, ``speed`` (with stability), ``memory``, ``stress``,
``fallback``, ``robustness``, ``security``), the registry that declares them (``registry``) and the narrow object a
gate receives (``context``). What a user needs to write a gate of their own is importable from here.

The names are imported when first asked for, so that ``certify.policy`` can read the registry's gate names without
importing the gates' context (which imports the verdicts, which import the policy)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certify.gates.context import GateContext
    from certify.gates.registry import GateSpec
    from certify.verdict import GateResult

__all__ = ["GateContext", "GateResult", "GateSpec"]
_WHERE = {"GateContext": "certify.gates.context", "GateSpec": "certify.gates.registry", "GateResult": "certify.verdict"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'certify.gates' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
