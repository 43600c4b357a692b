"""``certify merge CERT...``: one fleet matrix from certificates made on several machines.

Rows are candidates (``model/candidate``, framework); columns are hosts x gates, a host being named by its platform
markers, CPU model and short fingerprint (``amd · AMD EPYC 7B13 · 3f2a9c``). A lab's certificate brings one host per
board, keyed by the board's fingerprint and name and named after it (``nuc1 · intel · Intel Core i5 · 9b1c2d``): its
candidate ``m/int8@nuc1`` is the row ``m/int8`` in the column of nuc1. A cell is the gate's verdict and value
(``certify.report.results.cell_text``), and each host also gets the candidate's verdict column.

When several certificates hold the same candidate from the same host, the newest run (``run.finished``) wins; on
equal finish times the certificate given later wins. The fleet records which certificate every (candidate, host)
came from and which older ones it replaced. Signatures follow ``certify.report.sources``: with keys every
certificate must verify, without them the fleet is marked unverified.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.errors import CertifyError
from certify.records import split_case_id
from certify.report.sources import UNVERIFIED_NOTE, Machine, Source, load_sources
from certify.report.tables import cell_text, counted, gate_order, markdown_table, text_table
from certify.verdict import label as verdict_label

VERIFIED_NOTE = "every certificate's signature verified with a trusted key"


@dataclass(frozen=True)
class FleetCell:
    """One candidate as measured on one host, from the certificate ``source`` (an index into ``Fleet.sources``)."""

    source: int
    candidate: dict[str, Any]

    def gate_text(self, gate: str) -> str:
        result = (self.candidate.get("gates") or {}).get(gate)
        return cell_text(result) if result else "-"

    @property
    def verdict(self) -> str:
        return verdict_label(str(self.candidate.get("verdict", "?")))


@dataclass(frozen=True)
class FleetRow:
    case: str
    framework: str
    cells: dict[str, FleetCell]  # by host key (``Machine.key``)


@dataclass(frozen=True)
class Superseded:
    """An older certificate's result for a (candidate, host) replaced by a newer run's."""

    case: str
    framework: str
    host: str  # key (``Machine.key``)
    used: int
    dropped: int


@dataclass
class Fleet:
    sources: list[Source]
    hosts: dict[str, str]  # host key (``Machine.key``) -> label, in column order
    gates: list[str]
    rows: list[FleetRow]
    superseded: list[Superseded]
    machines: dict[str, Machine] = field(default_factory=dict)  # by key

    @property
    def signatures_checked(self) -> bool:
        return all(s.verified for s in self.sources)

    def host_ids(self) -> dict[str, str]:
        """fingerprint -> the short column name 'H1', 'H2', ... used by the text and Markdown tables."""
        return {fp: f"H{i}" for i, fp in enumerate(self.hosts, 1)}

    def header(self) -> list[str]:
        ids, columns = self.host_ids(), [*self.gates, "verdict"]
        return ["candidate", "framework", *(f"{ids[fp]} {col}" for fp in self.hosts for col in columns)]

    def table_rows(self) -> list[list[str]]:
        rows = []
        for row in self.rows:
            cells = [row.case, row.framework]
            for fp in self.hosts:
                cell = row.cells.get(fp)
                if cell is None:
                    cells += ["-"] * (len(self.gates) + 1)
                else:
                    cells += [*(cell.gate_text(g) for g in self.gates), cell.verdict]
            rows.append(cells)
        return rows

    def legend(self) -> list[str]:
        """The certificates, and per host column: its label, which certificates it came from, what they replaced."""
        lines = [f"#{i} {s.describe()}" for i, s in enumerate(self.sources, 1)]
        ids = self.host_ids()
        for fp, label in self.hosts.items():
            used = sorted({row.cells[fp].source for row in self.rows if fp in row.cells})
            lines.append(f"{ids[fp]} = {label}: from " + ", ".join(f"#{i + 1}" for i in used))
        lines += [f"newest wins: {s.case} ({s.framework}) on {ids[s.host]}: #{s.used + 1} (finished "
                  f"{self.sources[s.used].finished}) replaces older #{s.dropped + 1} (finished "
                  f"{self.sources[s.dropped].finished})" for s in self.superseded]
        return lines

    def title(self) -> str:
        return (f"Fleet matrix: {counted(len(self.rows), 'candidate')} on {counted(len(self.hosts), 'host')} from "
                f"{counted(len(self.sources), 'certificate')}")

    def lines(self) -> list[str]:
        trust = VERIFIED_NOTE if self.signatures_checked else UNVERIFIED_NOTE
        return [self.title(), trust, *self.legend(), "", *text_table([self.header(), *self.table_rows()])]

    def markdown(self) -> str:
        trust = VERIFIED_NOTE.capitalize() if self.signatures_checked else f"**{UNVERIFIED_NOTE}**"
        lines = [f"## {self.title()}", "", f"{trust}.", "", *(f"- {line}" for line in self.legend()), "",
                 *markdown_table([self.header(), *self.table_rows()])]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"signatures_checked": self.signatures_checked,
                "certificates": [s.to_dict() for s in self.sources],
                "hosts": [self._host_dict(fp) for fp in self.hosts], "gates": self.gates,
                "matrix": [self._row_dict(row) for row in self.rows],
                "superseded": [{"case": s.case, "framework": s.framework, "host": self.hosts[s.host],
                                "used": str(self.sources[s.used].path), "dropped": str(self.sources[s.dropped].path)}
                               for s in self.superseded]}

    def _host_dict(self, key: str) -> dict[str, Any]:
        host = self.machines[key].host
        return {"label": self.hosts[key], "fingerprint": host.get("fingerprint", key),
                **{k: host.get(k) for k in ("platforms", "cpu_model", "os", "machine", "accelerators")},
                **({"board": host["board"]} if host.get("board") else {})}

    def _row_dict(self, row: FleetRow) -> dict[str, Any]:
        hosts = {}
        for fp, cell in row.cells.items():
            source = self.sources[cell.source]
            hosts[self.hosts[fp]] = {"certificate": str(source.path), "run_id": source.run_id, "keyid": source.keyid,
                                     "verified": source.verified, "verdict": cell.candidate.get("verdict"),
                                     "cells": {g: cell.gate_text(g) for g in self.gates},
                                     "gates": cell.candidate.get("gates") or {}}
        return {"case": row.case, "framework": row.framework, "hosts": hosts}


def merge(paths: list[Path], keys: list[Path]) -> Fleet:
    """The fleet matrix of these certificates; with keys each must verify (else CertifyError naming the file)."""
    if not paths:
        raise CertifyError("no certificate to merge", hint="give the certificate.json of each machine's run")
    sources = load_sources(paths, keys)
    found: dict[tuple[str, str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    machines: dict[str, Machine] = {}
    for index, source in enumerate(sources):
        for case, candidate in source.candidates.items():
            machine = source.machine_of(candidate)
            machines.setdefault(machine.key, machine)
            found[(split_case_id(case)[0], _framework(candidate), machine.key)].append((index, candidate))
    newest = {i: (s.finished_at(), i) for i, s in enumerate(sources)}
    cells: dict[tuple[str, str], dict[str, FleetCell]] = defaultdict(dict)
    superseded = []
    for (case, framework, host), measured in sorted(found.items(), key=lambda item: item[0]):
        used, candidate = max(measured, key=lambda pair: newest[pair[0]])
        cells[(case, framework)][host] = FleetCell(used, candidate)
        superseded += [Superseded(case, framework, host, used, i) for i, _ in measured if i != used]
    rows = [FleetRow(case, framework, cells[(case, framework)]) for case, framework in sorted(cells)]
    gates = gate_order(g for row in rows for cell in row.cells.values() for g in cell.candidate.get("gates") or {})
    return Fleet(sources, host_labels(machines.values()), gates, rows, superseded, machines)


def host_labels(machines: Iterable[Machine]) -> dict[str, str]:
    """key -> label for every host, ordered by label; a label shared by two keys (a short fingerprint collision)
    gets the full key appended."""
    labels = {m.key: m.label for m in machines}
    taken = defaultdict(list)
    for key, label in labels.items():
        taken[label].append(key)
    unique = {key: label if len(taken[label]) == 1 else f"{label} ({key})" for key, label in labels.items()}
    return dict(sorted(unique.items(), key=lambda item: item[1]))


def _framework(candidate: dict[str, Any]) -> str:
    return str(candidate.get("framework") or "-")
