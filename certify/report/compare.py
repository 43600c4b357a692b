"""``certify compare OLD NEW``: what changed between two certificates, gate by gate.

For every (candidate, gate) in both certificates the change is classified:

- **regression**: the verdict got worse (``pass`` -> ``fail``/``error``/``not_evaluated``), or the value got worse
  beyond the confidence intervals: for a higher-is-better gate (``>=``) the new interval lies entirely below the old
  one (new upper bound < old lower bound); for a lower-is-better gate (``<=``) entirely above it (new lower bound >
  old upper bound);
- **improvement**: the mirror of a regression (a verdict that became ``pass``, or intervals separated the other way);
- **unchanged**: anything else, e.g. overlapping intervals: the runs cannot tell the two values apart.

When either side has no interval the two point values are compared with a relative tolerance of
``POINT_TOLERANCE`` (25%; ``--tolerance`` changes it) of the larger magnitude of the two (symmetric: A -> B is a
regression exactly when B -> A is an improvement); a move within it is ``unchanged``. It is wide on purpose: such
values (the stability gate's p99/p50) moved 17% between two runs of the same model on the same host here, and a
release gate that cries wolf gets switched off. A verdict decides before the value does.

Gates and candidates present in only one certificate are ``added``/``removed``. The comparison also notes what
usually explains a change: a different host (fingerprint), policy (digest) or candidate model (sha256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.errors import CertifyError
from certify.report.sources import UNVERIFIED_NOTE, Source, load_sources
from certify.report.tables import counted, gate_order, markdown_table, measured_text, text_table, value_text
from certify.verdict import PASS, label

POINT_TOLERANCE = 0.25
REGRESSION, IMPROVEMENT, UNCHANGED, ADDED, REMOVED = "regression", "improvement", "unchanged", "added", "removed"
STATUSES = (REGRESSION, IMPROVEMENT, UNCHANGED, ADDED, REMOVED)
SUMMARY_WORDS = {REGRESSION: ("regression", ""), IMPROVEMENT: ("improvement", ""), UNCHANGED: ("gate", "unchanged"),
                 ADDED: ("gate", "added"), REMOVED: ("gate", "removed")}
HEADER = ("candidate", "gate", "old", "new", "change", "status", "why")


@dataclass(frozen=True)
class GateChange:
    """One gate of one candidate in the old and the new certificate (None where it is absent)."""

    case: str
    gate: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    status: str
    why: str

    def row(self) -> list[str]:
        return [self.case, self.gate, measured_text(self.old), measured_text(self.new),
                change_text(self.old, self.new), self.status.upper(), self.why]

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "gate": self.gate, "status": self.status, "why": self.why,
                "old": self.old, "new": self.new}


@dataclass
class Comparison:
    old: Source
    new: Source
    changes: list[GateChange] = field(default_factory=list)
    added_cases: list[str] = field(default_factory=list)
    removed_cases: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tolerance: float = POINT_TOLERANCE

    @property
    def signatures_checked(self) -> bool:
        return self.old.verified and self.new.verified

    @property
    def regressions(self) -> list[GateChange]:
        return [c for c in self.changes if c.status == REGRESSION]

    @property
    def improvements(self) -> list[GateChange]:
        return [c for c in self.changes if c.status == IMPROVEMENT]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.changes if c.status == s) for s in STATUSES}

    def summary(self) -> str:
        """'1 regression, 7 gates unchanged; 1 candidate added'."""
        counts = ", ".join(counted(n, *SUMMARY_WORDS[status]) for status, n in self.counts().items() if n)
        cases = [counted(len(self.added_cases), "candidate", "added")] if self.added_cases else []
        cases += [counted(len(self.removed_cases), "candidate", "removed")] if self.removed_cases else []
        return "; ".join([counts or "no gates in common", *cases])

    def _candidate_lines(self) -> list[str]:
        added = [f"added candidate {case} ({_verdict(self.new, case)})" for case in self.added_cases]
        return added + [f"removed candidate {case} (was {_verdict(self.old, case)})" for case in self.removed_cases]

    def _preamble(self) -> list[str]:
        lines = [f"old: {self.old.describe()}", f"new: {self.new.describe()}"]
        return lines + ([] if self.signatures_checked else [UNVERIFIED_NOTE])

    def lines(self) -> list[str]:
        out = [f"Certificate comparison: {self.summary()}", *self._preamble()]
        out += [f"note: {n}" for n in self.notes]
        if self.changes:
            out += ["", *text_table([HEADER, *(c.row() for c in self.changes)])]
        return out + self._candidate_lines()

    def markdown(self) -> str:
        title = counted(len(self.regressions), "regression") if self.regressions else "no regressions"
        out = [f"## Certificate comparison: {title}", "", f"{self.summary()}.", ""]
        out += [f"- {line}" for line in self._preamble()] + [f"- note: {n}" for n in self.notes]
        if self.changes:
            out += ["", *markdown_table([HEADER, *(c.row() for c in self.changes)])]
        candidates = self._candidate_lines()
        return "\n".join(out + ([""] + [f"- {c}" for c in candidates] if candidates else [])) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old.to_dict(), "new": self.new.to_dict(), "signatures_checked": self.signatures_checked,
                "tolerance": self.tolerance, "counts": self.counts(), "notes": self.notes,
                "added_cases": self.added_cases, "removed_cases": self.removed_cases,
                "changes": [c.to_dict() for c in self.changes]}


def compare(old: Path, new: Path, keys: list[Path], *, tolerance: float = POINT_TOLERANCE) -> Comparison:
    """Compare two certificates; with keys both must verify (else CertifyError), without them both are read
    unverified and the comparison says so. ``tolerance`` is the relative tolerance for values without interval."""
    if tolerance < 0:
        raise CertifyError(f"tolerance {tolerance:g} is negative", hint="give a fraction such as 0.05 (5%)")
    old_source, new_source = load_sources([old, new], keys)
    before, after = old_source.candidates, new_source.candidates
    common = sorted(before.keys() & after.keys())
    changes = [change for case in common for change in gate_changes(case, before[case], after[case], tolerance)]
    notes = run_notes(old_source, new_source)
    notes += [note for case in common for note in candidate_notes(old_source, new_source, case)]
    return Comparison(old_source, new_source, changes, sorted(after.keys() - before.keys()),
                      sorted(before.keys() - after.keys()), notes, tolerance)


def gate_changes(case: str, old: dict[str, Any], new: dict[str, Any], tolerance: float = POINT_TOLERANCE
                 ) -> list[GateChange]:
    old_gates, new_gates = old.get("gates") or {}, new.get("gates") or {}
    model_changed = old.get("sha256") != new.get("sha256")
    out = []
    for gate in gate_order(old_gates.keys() | new_gates.keys()):
        before, after = old_gates.get(gate), new_gates.get(gate)
        if before is None:
            status, why = ADDED, "gate not in the old certificate"
        elif after is None:
            status, why = REMOVED, "gate not in the new certificate"
        else:
            status, why = classify(before, after, tolerance)
        if model_changed and status in (REGRESSION, IMPROVEMENT):
            why += "; the model file changed"
        out.append(GateChange(case, gate, before, after, status, why))
    return out


def classify(old: dict[str, Any], new: dict[str, Any], tolerance: float = POINT_TOLERANCE) -> tuple[str, str]:
    """(status, why) of one gate present in both certificates: the verdict decides first, then the value."""
    verdicts = f"verdict {old.get('verdict')} -> {new.get('verdict')}"
    if old.get("verdict") == PASS and new.get("verdict") != PASS:
        return REGRESSION, verdicts
    if old.get("verdict") != PASS and new.get("verdict") == PASS:
        return IMPROVEMENT, verdicts
    direction, why = value_shift(old, new, tolerance)
    if old.get("verdict") != new.get("verdict"):
        why = f"{verdicts}; {why}"
    if direction == 0:
        return UNCHANGED, why
    higher_is_better = new.get("comparison") == ">="
    return (IMPROVEMENT if (direction > 0) == higher_is_better else REGRESSION), why


def value_shift(old: dict[str, Any], new: dict[str, Any], tolerance: float = POINT_TOLERANCE) -> tuple[int, str]:
    """+1 when the new value is decisively higher, -1 when lower, 0 when the runs cannot tell; and why."""
    if old.get("value") is None or new.get("value") is None:
        return 0, "no value to compare"
    if old.get("comparison") != new.get("comparison"):
        return 0, f"the gate's direction changed ({old.get('comparison')} -> {new.get('comparison')})"
    if new.get("comparison") not in (">=", "<="):
        return 0, f"the gate has no direction ({new.get('comparison')!r})"
    if old.get("interval") and new.get("interval"):
        return interval_shift(old["interval"], new["interval"], new.get("unit"))
    return point_shift(float(old["value"]), float(new["value"]), tolerance)


def interval_shift(old: list[float], new: list[float], unit: str | None) -> tuple[int, str]:
    """Decisive only when the intervals do not overlap."""
    (old_low, old_high), (new_low, new_high) = old, new
    shown = (f"new [{value_text(new_low, unit)}, {value_text(new_high, unit)}] vs old "
             f"[{value_text(old_low, unit)}, {value_text(old_high, unit)}]")
    if new_high < old_low:
        return -1, f"value dropped beyond the intervals: {shown}"
    if new_low > old_high:
        return 1, f"value rose beyond the intervals: {shown}"
    return 0, f"the intervals overlap: {shown}"


def point_shift(before: float, after: float, tolerance: float = POINT_TOLERANCE) -> tuple[int, str]:
    """Decisive only beyond ``tolerance`` times the larger magnitude of the two values."""
    if abs(after - before) <= tolerance * max(abs(before), abs(after)):
        return 0, f"within the {tolerance:.0%} tolerance (an interval is missing)"
    moved = "rose" if after > before else "dropped"
    return (1 if after > before else -1), f"value {moved} beyond the {tolerance:.0%} tolerance " \
                                          "(an interval is missing)"


def change_text(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """The value's move: '-1.50x (-38%)'; '%' gates move in percentage points; '-' when there is nothing to say."""
    if not old or not new or old.get("value") is None or new.get("value") is None:
        return "-"
    before, after = float(old["value"]), float(new["value"])
    delta = after - before
    unit = new.get("unit")
    text = f"{delta * 100:+.1f} pp" if unit == "%" else f"{delta:+.2f}{unit or ''}"
    return text + (f" ({delta / abs(before):+.0%})" if before else "")


def run_notes(old: Source, new: Source) -> list[str]:
    """What differs between the two runs as a whole: the host and the policy."""
    notes = []
    if old.host_fingerprint != new.host_fingerprint:
        notes.append(f"different hosts: {old.host_label} -> {new.host_label} (measurements on different "
                     "hardware are not directly comparable)")
    old_policy, new_policy = old.predicate.get("policy") or {}, new.predicate.get("policy") or {}
    if old_policy.get("digest") != new_policy.get("digest"):
        notes.append(f"different policies: {_policy_text(old_policy)} -> {_policy_text(new_policy)} "
                     "(verdicts can change without the model changing)")
    return notes


def candidate_notes(old: Source, new: Source, case: str) -> list[str]:
    """What differs for one candidate: its model digest, framework, policy (beyond the run's) and verdict."""
    before, after = old.candidates[case], new.candidates[case]
    notes = []
    if before.get("sha256") != after.get("sha256"):
        notes.append(f"{case}: model changed: sha256 {_short(before.get('sha256'))} -> {_short(after.get('sha256'))}")
    if before.get("framework") != after.get("framework"):
        notes.append(f"{case}: framework {before.get('framework')} -> {after.get('framework')}")
    old_policy, new_policy = before.get("policy") or {}, after.get("policy") or {}
    explained_by_run = (old_policy.get("digest") == (old.predicate.get("policy") or {}).get("digest")
                        and new_policy.get("digest") == (new.predicate.get("policy") or {}).get("digest"))
    if old_policy.get("digest") != new_policy.get("digest") and not explained_by_run:
        notes.append(f"{case}: policy {_policy_text(old_policy)} -> {_policy_text(new_policy)}")
    if before.get("verdict") != after.get("verdict"):
        notes.append(f"{case}: {before.get('verdict')} -> {after.get('verdict')}")
    return notes


def _policy_text(policy: dict[str, Any]) -> str:
    return f"{policy.get('name', '?')} ({_short(policy.get('digest'))})"


def _short(digest: Any) -> str:
    return str(digest).removeprefix("sha256:")[:12] if digest else "none"


def _verdict(source: Source, case: str) -> str:
    return label(str(source.candidates[case].get("verdict", "?")))
