"""The certification gates: one module per gate (``accuracy``, ``speed`` (with stability), ``memory``, ``stress``,
``fallback``, ``robustness``, ``security``), the registry that declares them (``registry``) and the narrow object a
gate receives (``context``). What a user needs to write a gate of their own is importable from here."""

from certify.gates.context import GateContext
from certify.gates.registry import GateSpec
from certify.verdict import GateResult

__all__ = ["GateContext", "GateResult", "GateSpec"]
