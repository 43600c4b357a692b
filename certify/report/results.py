"""``results.json`` (a versioned schema) and the terminal's candidate x gate matrix."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from certify.gates import ERROR, FAIL, NOT_EVALUATED, PASS

SCHEMA = "certify.results/v1"
CELL = {PASS: "PASS", FAIL: "FAIL", NOT_EVALUATED: "NOT EVALUATED", ERROR: "ERROR"}


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


def build_results(*, run_id: str, plan: dict[str, Any], host: dict[str, Any], packages: dict[str, str],
                  entries: list[dict[str, Any]], started: float, finished: float, complete: bool,
                  models: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = candidate_verdicts(entries)
    counts = {v: sum(1 for e in entries if e["result"]["verdict"] == v) for v in CELL}
    return {
        "schema": SCHEMA, "run_id": run_id, "started": started, "finished": finished, "complete": complete,
        "plan": plan, "models": models, "host": host, "packages": packages, "counts": counts,
        "candidates": verdicts, "cases": sorted(entries, key=lambda e: (e["case"], e["gate"])),
    }


def cell_text(result: dict[str, Any]) -> str:
    text = CELL[result["verdict"]]
    value, unit = result.get("value"), result.get("unit", "")
    if value is None or result["verdict"] in (NOT_EVALUATED, ERROR):
        return text
    shown = f"{value:.1%}" if unit == "%" else f"{value:.2f}{unit}"
    if result.get("interval"):
        low = result["interval"][0] if result.get("comparison") == ">=" else result["interval"][1]
        shown += f" [{low:.1%}]" if unit == "%" else f" [{low:.2f}{unit}]"
    return f"{text} {shown}"


def not_evaluated_groups(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(case, reason) -> gates, so one reason shared by a case's gates is said once."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in entries:
        if e["result"]["verdict"] == NOT_EVALUATED:
            groups[(e["case"], e["result"]["reason"])].append(e["gate"])
    return dict(groups)


def matrix_lines(entries: list[dict[str, Any]], gates: tuple[str, ...]) -> list[str]:
    """A fixed-width candidate x gate table; cells show verdict, value and the decisive bound."""
    cases = sorted({e["case"] for e in entries})
    present = [g for g in gates if any(e["gate"] == g for e in entries)]
    cell = {(e["case"], e["gate"]): cell_text(e["result"]) for e in entries}
    rows = [["candidate", *present, "verdict"]]
    verdicts = candidate_verdicts(entries)
    rows += [[c, *(cell.get((c, g), "-") for g in present), verdicts[c].upper().replace("_", " ")] for c in cases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]
