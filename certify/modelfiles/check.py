"""One static check of a model's files, as the ``security`` gate records it: its name, status and reason, and
the statuses a check can have (the words of ``certify.verdict``; ``not_evaluated`` when a package it needs is
missing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from certify.verdict import FAIL, NOT_APPLICABLE, NOT_EVALUATED, PASS, WARN

__all__ = ["FAIL", "KIB", "MIB", "NOT_APPLICABLE", "NOT_EVALUATED", "PASS", "WARN", "Check"]
KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    reason: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
