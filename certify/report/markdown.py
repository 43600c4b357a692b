"""The Markdown summary of a certification (``summary.md``, and ``$GITHUB_STEP_SUMMARY`` in GitHub Actions)."""

from __future__ import annotations

from typing import Any

from certify.report.lab import board_line, boards_of
from certify.report.tables import cell_text, gate_order, markdown_cell, markdown_table
from certify.verdict import label


def _matrix(candidates: list[dict[str, Any]]) -> list[str]:
    gates = gate_order(g for c in candidates for g in c["gates"])
    rows = [["candidate", "framework", "ran on", "runs in", *gates, "verdict"]]
    rows += [[c["case"], c.get("framework") or "-", ", ".join(c["executed_devices"]) or "-", c.get("precision") or "-",
              *(cell_text(c["gates"][g]) if g in c["gates"] else "-" for g in gates),
              f"**{label(c['verdict'])}**"] for c in candidates]
    return markdown_table(rows)


def _board_lines(pred: dict[str, Any]) -> list[str]:
    """One line per board of a lab run, and a blank line after them ([] for a local run)."""
    lines = [f"- {markdown_cell(board_line(board))}" for board in boards_of(pred)]
    return [*lines, ""] if lines else []


def _signature_lines(signature: dict[str, Any]) -> list[str]:
    if not signature["signed"]:
        return [f"**Not signed**: {signature['reason_unsigned']}."]
    lines = [f"Signed (Ed25519, DSSE) with key `{signature['keyid']}`."]
    if signature["dev_key"]:
        lines.append("**Warning: a throwaway development key signed this certificate; do not trust it for a release.**")
    return [*lines, "", "Verify with:", "", "```", str(signature["verify_command"]), "```"]


def summary(statement: dict[str, Any], signature: dict[str, Any]) -> str:
    pred = statement["predicate"]
    policy = pred["policy"]
    lines = [f"## Certification: {label(pred['verdict'])}", "",
             f"Plan `{pred['plan']['name']}`, policy `{policy['name']}` (`{policy['digest'][:19]}`), run "
             f"`{pred['run']['id']}`, {pred['run']['started']} to {pred['run']['finished']}, "
             f"host `{pred['host'].get('fingerprint', '?')}`.", "", *_board_lines(pred),
             *_matrix(pred["candidates"]), ""]
    for item in pred["not_evaluated"]:
        gates = ", ".join(item["gates"])
        lines.append(f"- NOT EVALUATED {markdown_cell(item['case'])} ({gates}): {markdown_cell(item['reason'])}")
    for c in pred["candidates"]:
        left_out = [g for g in c.get("required_gates") or [] if g not in c["gates"]]
        if left_out:
            lines.append(f"- {label(c['verdict'])} {markdown_cell(c['case'])}: not run here: {', '.join(left_out)}")
        if c.get("reason"):
            lines.append(f"- {markdown_cell(c['case'])}: {markdown_cell(c['reason'])}")
    return "\n".join([*lines, "", *_signature_lines(signature)]) + "\n"
