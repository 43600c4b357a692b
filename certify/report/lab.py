"""A lab run's boards in the reports (results.json ``boards``, the certificate's ``boards``): one line per board for
the Markdown summary, and the HTML report's Lab section, a table of the boards and the candidate x (board x gate)
matrix, whose rows are the candidates (``model/candidate``) and whose column groups are the boards that measured
them (``model/candidate@board``, ``certify.records.split_case_id``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from certify.records import split_case_id

SHORT_FINGERPRINT = 16  # 'sha256:' and 9 hex digits
SHOWN_PACKAGES = 4
RUNTIMES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-genai", "openvino", "openvino-genai",
            "nncf", "olive-ai", "llama-cpp-python", "mlx", "mlx-lm", "transformers", "torch")
HERE = "this host"  # the column of the cases a lab run measured on the controller itself


def host_markers(host: Any) -> list[str]:
    """A detected host's markers: its platform markers, then its devices (``certify.hardware.Host``)."""
    if not isinstance(host, dict):
        return []
    return list(dict.fromkeys(str(m) for key in ("platforms", "devices") for m in host.get(key) or []))


def boards_of(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The boards of a results.json or of a certificate's predicate ([] for a local run)."""
    return [b for b in found.get("boards") or [] if isinstance(b, dict)]


def short_fingerprint(fingerprint: Any) -> str:
    return str(fingerprint or "unknown")[:SHORT_FINGERPRINT]


def _packages_text(packages: Any) -> str:
    """The board's runtimes first (what measured), then the rest, ``SHOWN_PACKAGES`` of them."""
    items = sorted((packages or {}).items(), key=lambda kv: (kv[0] not in RUNTIMES, kv[0])) \
        if isinstance(packages, dict) else []
    shown = ", ".join(f"{name} {version}" for name, version in items[:SHOWN_PACKAGES])
    return shown + (f" (+{len(items) - SHOWN_PACKAGES} more)" if len(items) > SHOWN_PACKAGES else "") or "none"


def board_row(board: dict[str, Any]) -> dict[str, str]:
    """One board as the report's lab table shows it (every value a string; '' for a problem it did not have)."""
    found = board.get("host")
    host: dict[str, Any] = found if isinstance(found, dict) else {}
    tags = board.get("tags") or {}
    wait = board.get("wait_s")
    return {"name": str(board.get("name", "?")), "place": str(board.get("place") or "no coordinator"),
            "tags": ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) if isinstance(tags, dict) else str(tags),
            "address": str(board.get("address") or ""), "cpu": str(host.get("cpu_model") or "unknown cpu"),
            "markers": ", ".join(host_markers(host)) or "none",
            "fingerprint": short_fingerprint(board.get("fingerprint") or host.get("fingerprint")),
            "packages": _packages_text(board.get("packages")),
            "wait": f"{wait:.2f} s" if isinstance(wait, int | float) else "",
            "refused": str(board.get("refused") or ""), "lost": str(board.get("lost") or "")}


def board_line(board: dict[str, Any]) -> str:
    """'board `nuc1` (place nuc1, platform=intel) at root@...: Intel Core i5, markers intel, cpu, fingerprint ...'."""
    row = board_row(board)
    problems = "".join(f"; {word}: {row[word.lower()]}" for word in ("REFUSED", "LOST") if row[word.lower()])
    return (f"board `{row['name']}` (place {row['place']}, {row['tags'] or 'no tags'}) at {row['address']}: "
            f"{row['cpu']}, markers {row['markers']}, fingerprint `{row['fingerprint']}`, waited {row['wait'] or '?'}"
            f"{problems}")


def _columns(boards: list[dict[str, Any]], cases: Iterable[str]) -> list[str]:
    """The boards in results.json order (then any board only a case names), and this host if a case ran here."""
    names = [str(b.get("name")) for b in boards]
    on = [split_case_id(case)[1] for case in cases]
    names += sorted({b for b in on if b is not None and b not in names})
    return [*names, *([HERE] if None in on else [])]


def lab_view(results: dict[str, Any], candidates: list[dict[str, Any]], gates: list[str]) -> dict[str, Any] | None:
    """The Lab section of the HTML report, from the report's candidate views (each with ``case``, ``framework``,
    ``gates``: its gate cells, ``status``, ``label``, ``anchor``); None for a run without boards."""
    boards = boards_of(results)
    if not boards:
        return None
    columns = _columns(boards, (c["case"] for c in candidates))
    rows: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        pair, board = split_case_id(cand["case"])
        row = rows.setdefault(pair, {"pair": pair, "framework": cand.get("framework") or "", "on": {}})
        row["on"][board or HERE] = {**cand, "cells": [{c["gate"]: c for c in cand["gates"]}.get(g) for g in gates]}
    return {"boards": [board_row(b) for b in boards], "columns": columns, "gates": gates,
            "rows": [{**row, "groups": [row["on"].get(column) for column in columns]}
                     for _, row in sorted(rows.items())]}
