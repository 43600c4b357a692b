"""The Markdown summary of a certification (``summary.md``, and ``$GITHUB_STEP_SUMMARY`` in GitHub Actions)."""

from __future__ import annotations

from typing import Any

from certify.hardware import GATES
from certify.report.results import cell_text

VERDICT_TEXT = {"certified": "CERTIFIED", "not_certified": "NOT CERTIFIED", "incomplete": "INCOMPLETE"}


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _matrix(candidates: list[dict[str, Any]]) -> list[str]:
    gates = [g for g in GATES if any(g in c["gates"] for c in candidates)]
    lines = ["| candidate | framework | ran on | " + " | ".join(gates) + " | verdict |",
             "|---|---|---|" + "---|" * len(gates) + "---|"]
    for c in candidates:
        cells = [cell_text(c["gates"][g]) if g in c["gates"] else "-" for g in gates]
        lines.append(f"| {_escape(c['case'])} | {c.get('framework') or '-'} | "
                     f"{_escape(', '.join(c['executed_devices']) or '-')} | "
                     + " | ".join(_escape(x) for x in cells) + f" | **{VERDICT_TEXT[c['verdict']]}** |")
    return lines


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
    lines = [f"## Certification: {VERDICT_TEXT[pred['verdict']]}", "",
             f"Plan `{pred['plan']['name']}`, policy `{policy['name']}` (`{policy['digest'][:19]}`), run "
             f"`{pred['run']['id']}`, {pred['run']['started']} to {pred['run']['finished']}, "
             f"host `{pred['host'].get('fingerprint', '?')}`.", "", *_matrix(pred["candidates"]), ""]
    for item in pred["not_evaluated"]:
        lines.append(f"- NOT EVALUATED {_escape(item['case'])} ({', '.join(item['gates'])}): {_escape(item['reason'])}")
    for c in pred["candidates"]:
        if c.get("reason"):
            lines.append(f"- {_escape(c['case'])}: {_escape(c['reason'])}")
    return "\n".join([*lines, "", *_signature_lines(signature)]) + "\n"
