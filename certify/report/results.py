"""``results.json`` (a versioned schema) and the terminal's candidate x gate matrix."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from certify.gates.registry import GATE_NAMES, GateRegistry
from certify.report.tables import cell_text, text_table
from certify.verdict import ERROR, FAIL, NOT_EVALUATED, VERDICTS, label

SCHEMA = "certify.results/v1"


def candidate_verdicts(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per candidate: 'certified' only when every gate that ran passed and none was left unevaluated."""
    by_case: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        by_case[entry["case"]].append(entry["result"]["verdict"])
    out = {}
    for case, verdicts in by_case.items():
        if any(v in (FAIL, ERROR) for v in verdicts):
            out[case] = "not_certified"
        elif any(v == NOT_EVALUATED for v in verdicts):
            out[case] = "incomplete"
        else:
            out[case] = "certified"
    return out


def describe_gates(gates: GateRegistry) -> list[dict[str, Any]]:
    """The gates of the run as declared (``results.json`` ``gates``): built-in and user-added alike."""
    return [{"name": g.name, "summary": g.summary, "exclusive": g.exclusive, "static": g.static,
             "required": g.required, "thresholds": list(g.thresholds) + sorted(g.defaults),
             "builtin": g.name in GATE_NAMES} for g in gates]


def build_results(*, run_id: str, plan: dict[str, Any], host: dict[str, Any], packages: dict[str, str],
                  entries: list[dict[str, Any]], started: float, finished: float, complete: bool,
                  models: list[dict[str, Any]], gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    verdicts = candidate_verdicts(entries)
    counts = {v: sum(1 for e in entries if e["result"]["verdict"] == v) for v in VERDICTS}
    return {
        "schema": SCHEMA, "run_id": run_id, "started": started, "finished": finished, "complete": complete,
        "plan": plan, "models": models, "gates": gates or [], "host": host, "packages": packages, "counts": counts,
        "candidates": verdicts, "cases": sorted(entries, key=lambda e: (e["case"], e["gate"])),
    }


def not_evaluated_groups(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(case, reason) -> gates, so one reason shared by a case's gates is said once."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in entries:
        if e["result"]["verdict"] == NOT_EVALUATED:
            groups[(e["case"], e["result"]["reason"])].append(e["gate"])
    return dict(groups)


def precisions(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per candidate, the numeric precision in force as its backend reported it (any gate that loaded it)."""
    found: dict[str, str] = {}
    for e in entries:
        precision = (e["result"].get("details") or {}).get("precision")
        if precision:
            found.setdefault(e["case"], str(precision))
    return found


def matrix_lines(entries: list[dict[str, Any]], gates: Sequence[str]) -> list[str]:
    """A fixed-width candidate x gate table; cells show verdict, value and the decisive bound; the candidate's
    precision in force (as its runtime reported it) follows its name."""
    cases = sorted({e["case"] for e in entries})
    present = [g for g in gates if any(e["gate"] == g for e in entries)]
    cell = {(e["case"], e["gate"]): cell_text(e["result"]) for e in entries}
    rows = [["candidate", "runs in", *present, "verdict"]]
    verdicts, runs_in = candidate_verdicts(entries), precisions(entries)
    rows += [[c, runs_in.get(c, "-"), *(cell.get((c, g), "-") for g in present), label(verdicts[c])] for c in cases]
    return text_table(rows)
