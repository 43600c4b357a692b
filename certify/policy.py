"""Named gate policies. A policy is frozen and has a digest that goes into the evidence and certificate."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certify.gates.registry import GATE_NAMES

DECISION_RULES = ("lower_bound", "point")


@dataclass(frozen=True)
class Policy:
    """Thresholds of every gate and the rule that turns an interval into a verdict.

    ``decision = "lower_bound"`` passes a gate only when the whole confidence interval clears the
    threshold (the conservative default); ``"point"`` decides on the point estimate.
    """

    name: str
    min_accuracy_retention: float = 0.95
    min_speedup: float = 2.0
    min_memory_reduction: float = 0.5
    max_p99_over_p50: float = 3.0
    max_cv: float = 0.5
    max_drift: float = 0.25
    max_load_p99_ratio: float = 4.0  # stress: p99 latency under load / p99 in isolation
    max_throughput_decay: float = 0.2  # stress: 1 - throughput of the last window / the first
    max_memory_growth_mib_per_min: float = 32.0  # stress: resident-memory slope under sustained load (leaks)
    max_recovery_s: float = 30.0  # fallback: time from a fault to the next correct answer
    decision: str = "lower_bound"
    confidence: float = 0.95
    # the gates a candidate must have passed, in this run, to be CERTIFIED (a user's gate marked ``required`` in its
    # GateSpec is added to these); a run that leaves one out certifies nothing: its candidates are "partial"
    required_gates: tuple[str, ...] = GATE_NAMES

    def thresholds(self) -> dict[str, Any]:
        """Every rule of the policy by name (``required_gates`` as a list), as the evidence records it."""
        return {f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
                for f in dataclasses.fields(self) if f.name != "name"}

    def digest(self) -> str:
        canonical = json.dumps({"name": self.name, **self.thresholds()}, sort_keys=True)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def with_overrides(self, overrides: Mapping[str, Any]) -> Policy:
        """A derived policy; its name records that it was overridden."""
        if not overrides:
            return self
        name = self.name if self.name.endswith("+overrides") else self.name + "+overrides"
        return dataclasses.replace(self, name=name, **dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest(), "thresholds": self.thresholds()}


STRICTER_WHEN_HIGHER = ("min_accuracy_retention", "min_speedup", "min_memory_reduction", "confidence")
STRICTER_WHEN_LOWER = ("max_p99_over_p50", "max_cv", "max_drift", "max_load_p99_ratio", "max_throughput_decay",
                       "max_memory_growth_mib_per_min", "max_recovery_s")


def weaker_points(thresholds: Mapping[str, Any], required: Policy) -> list[str]:
    """Where a policy's thresholds (as recorded in a certificate) are weaker than ``required``; [] when it is
    at least as strict everywhere. A threshold missing from the record counts as weaker."""
    found = []
    for key, want in required.thresholds().items():
        have = thresholds.get(key)
        if have is None:
            found.append(f"{key} not recorded (required {want})")
        elif key == "required_gates":
            dropped = sorted(set(want) - set(have))
            if dropped:
                found.append(f"required_gates leaves out {', '.join(dropped)} (required: {', '.join(want)})")
        elif key == "decision":
            if have != want and want == "lower_bound":
                found.append(f"decision {have!r} (required 'lower_bound': the interval must clear the threshold)")
        elif (key in STRICTER_WHEN_HIGHER and have < want) or (key in STRICTER_WHEN_LOWER and have > want):
            found.append(f"{key} {have:g} (required {'>=' if key in STRICTER_WHEN_HIGHER else '<='} {want:g})")
    return found


POLICIES: dict[str, Policy] = {
    "edge-default": Policy(name="edge-default"),
    "edge-strict": Policy(
        name="edge-strict", min_accuracy_retention=0.99, max_p99_over_p50=2.0, max_cv=0.25, max_drift=0.1,
        max_load_p99_ratio=3.0, max_throughput_decay=0.1, max_memory_growth_mib_per_min=16.0, max_recovery_s=10.0,
    ),
}

THRESHOLD_TYPES: dict[str, type] = {
    f.name: float for f in dataclasses.fields(Policy) if f.name not in ("name", "decision", "required_gates")
} | {"decision": str, "required_gates": tuple}
