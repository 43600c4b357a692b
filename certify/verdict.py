"""The verdict vocabulary and the result of one gate: its value, interval, threshold and reason, and when it
fails a framework-specific hint for fixing it. ``decide`` turns an estimate and a threshold into a verdict under
the policy's decision rule. Every module that says or reads a verdict takes its words from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from certify.policy import Policy

PASS, FAIL, NOT_EVALUATED, ERROR = "pass", "fail", "not_evaluated", "error"  # a gate's verdicts
WARN, NOT_APPLICABLE = "warn", "not_applicable"  # also for the parts of a gate (a scenario, a probe, a file check)
VERDICTS = (PASS, FAIL, NOT_EVALUATED, ERROR)
# a candidate's (and a run's) status: certified only when every gate its policy requires ran in this run and passed;
# partial when a subset of them ran (-m accuracy) and passed; incomplete when one could not be evaluated or the run
# was interrupted; not certified when a gate failed or errored
CERTIFIED, NOT_CERTIFIED, PARTIAL, INCOMPLETE = "certified", "not_certified", "partial", "incomplete"
STATUSES = (CERTIFIED, NOT_CERTIFIED, PARTIAL, INCOMPLETE)


def label(verdict: str) -> str:
    """How a verdict word is shown: 'not_evaluated' -> 'NOT EVALUATED', 'not_certified' -> 'NOT CERTIFIED'."""
    return verdict.upper().replace("_", " ")


def format_value(value: float, unit: str | None, digits: int = 3, decimals: int | None = None) -> str:
    """A figure in its unit, the one way every verdict and report writes it: '%' values are fractions
    (0.973 -> '97.3%'), others keep ``digits`` significant digits ('3.9x', '12.5ms') or, for aligned table
    columns, ``decimals`` decimals ('3.90x')."""
    if unit == "%":
        return f"{value:.1%}"
    return f"{value:.{decimals}f}{unit or ''}" if decimals is not None else f"{value:.{digits}g}{unit or ''}"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: str
    reason: str
    value: float | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None
    comparison: str = ">="
    unit: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def message(self) -> str:
        text = f"{self.gate} gate {label(self.verdict)}: {self.reason}"
        return text + (f"\n  hint: {self.hint}" if self.hint and not self.passed else "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interval"] = list(self.interval) if self.interval else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        """The inverse of ``to_dict`` (a result read back from the evidence)."""
        interval = data.get("interval")
        return cls(**{**data, "interval": (interval[0], interval[1]) if interval else None})


def decide(gate: str, label: str, value: float, interval: tuple[float, float] | None, threshold: float, *,
           policy: Policy, unit: str = "", higher_is_better: bool = True, hint: str = "",
           details: dict[str, Any] | None = None) -> GateResult:
    """Pass when the estimate clears the threshold: its whole interval under the ``lower_bound`` rule,
    the point estimate under ``point``. An interval straddling the threshold fails as *not decisive*."""
    cmp = ">=" if higher_is_better else "<="
    bound = value if interval is None or policy.decision == "point" else (
        interval[0] if higher_is_better else interval[1])
    ok = bound >= threshold if higher_is_better else bound <= threshold
    ci = ""
    if interval is not None:
        ci = f" ({policy.confidence:.0%} CI {format_value(interval[0], unit)} to {format_value(interval[1], unit)})"
    point_ok = value >= threshold if higher_is_better else value <= threshold
    straddles = interval is not None and min(interval) < threshold < max(interval)
    if ok:
        reason = f"{label} {format_value(value, unit)}{ci} {cmp} {format_value(threshold, unit)}"
    elif point_ok or straddles:  # either side of the threshold is still possible: say so, whichever the point
        reason = (f"{label} {format_value(value, unit)} but its interval{ci} does not clear "
                  f"{format_value(threshold, unit)}: not decisive (measure longer, or on a quieter machine)")
    else:
        reason = f"{label} {format_value(value, unit)}{ci}, required {cmp} {format_value(threshold, unit)}"
    return GateResult(gate, PASS if ok else FAIL, reason, value, interval, threshold, cmp, unit,
                      "" if ok else hint, details or {})


def not_evaluated(gate: str, reason: str) -> GateResult:
    return GateResult(gate, NOT_EVALUATED, reason)


def errored(gate: str, reason: str, hint: str = "") -> GateResult:
    return GateResult(gate, ERROR, reason, hint=hint)
