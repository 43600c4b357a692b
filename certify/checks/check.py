"""One static check of a model's files, as the ``security`` gate records it: its name, status and reason, and
the statuses a check can have (``not_evaluated`` when a package it needs is missing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, WARN, NOT_APPLICABLE, NOT_EVALUATED = "pass", "fail", "warn", "not_applicable", "not_evaluated"
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
