"""``results.json`` (a versioned schema) and the terminal's candidate x gate matrix."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from certify.gates.registry import GATE_NAMES, GateRegistry
from certify.report.tables import cell_text, text_table
from certify.verdict import (
    CERTIFIED,
    ERROR,
    FAIL,
    INCOMPLETE,
    NOT_CERTIFIED,
    NOT_EVALUATED,
    PARTIAL,
    VERDICTS,
    label,
)

SCHEMA = "certify.results/v1"


def candidate_verdicts(entries: list[dict[str, Any]], required: Mapping[str, Sequence[str]] | None = None,
                       complete: bool = True) -> dict[str, str]:
    """Per candidate (case): CERTIFIED only when every gate it requires (``required[case]``, default all built-in
    gates) ran in this run and passed; NOT CERTIFIED when any gate failed or errored; INCOMPLETE when a required gate
    was not evaluated, or is missing from an interrupted run; PARTIAL when the run left required gates out."""
    by_case: dict[str, dict[str, str]] = defaultdict(dict)
    for entry in entries:
        by_case[entry["case"]][entry["gate"]] = entry["result"]["verdict"]
    out = {}
    for case, verdicts in by_case.items():
        wanted = (required or {}).get(case, GATE_NAMES)
        missing = [g for g in wanted if g not in verdicts]
        if any(v in (FAIL, ERROR) for v in verdicts.values()):
            out[case] = NOT_CERTIFIED
        elif any(verdicts.get(g) == NOT_EVALUATED for g in wanted) or (missing and not complete):
            out[case] = INCOMPLETE
        else:
            out[case] = PARTIAL if missing else CERTIFIED
    if not complete:  # a candidate the interrupted run never reached is incomplete too, not absent
        out.update({case: INCOMPLETE for case in (required or {}) if case not in out})
    return dict(sorted(out.items()))


def run_status(statuses: Sequence[str], complete: bool) -> str:
    """The run's status from its candidates': NOT CERTIFIED if one is; CERTIFIED only when the run completed and
    every candidate is certified; PARTIAL when all that ran passed but gates were left out; else INCOMPLETE."""
    if NOT_CERTIFIED in statuses:
        return NOT_CERTIFIED
    if complete and statuses and set(statuses) == {CERTIFIED}:
        return CERTIFIED
    if complete and statuses and set(statuses) <= {CERTIFIED, PARTIAL}:
        return PARTIAL
    return INCOMPLETE


def gates_left_out(entries: list[dict[str, Any]], required: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Per candidate, the required gates this run did not run (a subset run, or an interrupted one)."""
    ran: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        ran[entry["case"]].add(entry["gate"])
    return {case: missing for case in sorted(ran)
            if (missing := [g for g in required.get(case, GATE_NAMES) if g not in ran[case]])}


def describe_gates(gates: GateRegistry) -> list[dict[str, Any]]:
    """The gates of the run as declared (``results.json`` ``gates``): built-in and user-added alike."""
    return [{"name": g.name, "summary": g.summary, "exclusive": g.exclusive, "static": g.static,
             "required": g.required, "thresholds": list(g.thresholds) + sorted(g.defaults),
             "builtin": g.name in GATE_NAMES} for g in gates]


def build_results(*, run_id: str, plan: dict[str, Any], host: dict[str, Any], packages: dict[str, str],
                  entries: list[dict[str, Any]], started: float, finished: float, complete: bool,
                  models: list[dict[str, Any]], gates: list[dict[str, Any]] | None = None,
                  required: Mapping[str, Sequence[str]] | None = None,
                  boards: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    required = {case: list(g) for case, g in (required or {}).items()}
    verdicts = candidate_verdicts(entries, required, complete)
    counts = {v: sum(1 for e in entries if e["result"]["verdict"] == v) for v in VERDICTS}
    return {
        "schema": SCHEMA, "run_id": run_id, "started": started, "finished": finished, "complete": complete,
        "plan": plan, "models": models, "gates": gates or [], "host": host, "packages": packages, "counts": counts,
        "boards": boards or [],  # the lab's boards (``certify.lab.fleet.LabBoard.facts``); [] when measured here
        "status": run_status(list(verdicts.values()), complete), "candidates": verdicts, "required": required,
        "left_out": gates_left_out(entries, required), "cases": sorted(entries, key=lambda e: (e["case"], e["gate"])),
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


def matrix_lines(entries: list[dict[str, Any]], gates: Sequence[str], verdicts: Mapping[str, str]) -> list[str]:
    """A fixed-width candidate x gate table; cells show verdict, value and the decisive bound; the candidate's
    precision in force (as its runtime reported it) follows its name; the last column is its status."""
    cases = sorted({e["case"] for e in entries})
    present = [g for g in gates if any(e["gate"] == g for e in entries)]
    cell = {(e["case"], e["gate"]): cell_text(e["result"]) for e in entries}
    rows = [["candidate", "runs in", *present, "verdict"]]
    runs_in = precisions(entries)
    rows += [[c, runs_in.get(c, "-"), *(cell.get((c, g), "-") for g in present), label(verdicts.get(c, INCOMPLETE))]
             for c in cases]
    return text_table(rows)


def left_out_lines(results: dict[str, Any]) -> list[str]:
    """One line per candidate the run did not fully judge: which required gates it left out, and why that matters."""
    why = "a subset run certifies nothing" if results.get("complete") else "the run was interrupted"
    return [f"{label(results['candidates'].get(case, INCOMPLETE))} {case}: not run here: {', '.join(gates)} ({why})"
            for case, gates in (results.get("left_out") or {}).items()]
