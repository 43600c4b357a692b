"""Plain tables for reports made of several certificates (``compare``, ``merge``): fixed-width text and Markdown,
and the text of a gate value with its interval."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from certify.gates.registry import BUILTIN_REGISTRY
from certify.verdict import ERROR, NOT_EVALUATED, format_value, label


def gate_order(gates: Iterable[str]) -> list[str]:
    """The given gates in the harness's order (``certify.gates.registry``), others (a user's) after them by name."""
    return BUILTIN_REGISTRY.order(gates)


def counted(n: int, noun: str, rest: str = "") -> str:
    """'1 host', '3 hosts', '2 gates added': the noun takes an 's' unless there is exactly one."""
    return " ".join([str(n), noun if n == 1 else noun + "s", *([rest] if rest else [])])


def value_text(value: float, unit: str | None) -> str:
    """A gate value in its unit: '%' values are fractions (0.973 -> '97.3%'), others get two decimals."""
    return format_value(value, unit, decimals=2)


def measured_text(result: dict[str, Any] | None) -> str:
    """A gate result as 'VERDICT value [low, high]'; '-' when there is no result."""
    if result is None:
        return "-"
    text = label(str(result.get("verdict", "?")))
    if result.get("value") is None:
        return text
    unit = result.get("unit")
    text += " " + value_text(float(result["value"]), unit)
    interval = result.get("interval")
    if interval:
        text += f" [{value_text(float(interval[0]), unit)}, {value_text(float(interval[1]), unit)}]"
    return text


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """A fixed-width table; the first row is the header, underlined."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured Markdown table; the first row is the header."""
    lines = ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return [lines[0], "|" + "---|" * len(rows[0]), *lines[1:]]


def host_noise(result: dict[str, Any]) -> str:
    """'noisy' or 'too noisy' when the gate was measured on such a host (its ``conditions``), else ''."""
    found = result.get("conditions") or (result.get("details") or {}).get("conditions") or {}
    noise = str(found.get("noise", "quiet"))
    return "" if noise == "quiet" else noise.replace("_", " ")


def cell_text(result: dict[str, Any]) -> str:
    """A matrix cell: 'VERDICT value [decisive bound]' (the bound the lower_bound rule judged), and '(noisy)' or
    '(too noisy)' when the host was."""
    text, noise = label(result["verdict"]), host_noise(result)
    value, unit = result.get("value"), result.get("unit", "")
    if value is not None and result["verdict"] not in (NOT_EVALUATED, ERROR):
        shown = value_text(value, unit)
        if result.get("interval"):
            bound = result["interval"][0] if result.get("comparison") == ">=" else result["interval"][1]
            shown += f" [{value_text(bound, unit)}]"
        text = f"{text} {shown}"
    return f"{text} ({noise})" if noise else text
