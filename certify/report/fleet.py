"""``certify merge CERT...``: one fleet matrix from certificates made on several machines.

Rows are candidates (``model/candidate``, framework); columns are hosts x gates, a host being named by its platform
markers, CPU model and short fingerprint (``amd · AMD EPYC 7B13 · 3f2a9c``). A cell is the gate's verdict and value
(``certify.report.results.cell_text``), and each host also gets the candidate's verdict column.

When several certificates hold the same candidate from the same host, the newest run (``run.finished``) wins; on
equal finish times the certificate given later wins. The fleet records which certificate every (candidate, host)
came from and which older ones it replaced. Signatures follow ``certify.report.sources``: with keys every
certificate must verify, without them the fleet is marked unverified.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certify.errors import CertifyError
from certify.report.sources import UNVERIFIED_NOTE, Source, load_sources
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
    cells: dict[str, FleetCell]  # by host fingerprint


@dataclass(frozen=True)
class Superseded:
    """An older certificate's result for a (candidate, host) replaced by a newer run's."""

    case: str
    framework: str
    host: str  # fingerprint
    used: int
    dropped: int


@dataclass
class Fleet:
    sources: list[Source]
    hosts: dict[str, str]  # fingerprint -> label, in column order
    gates: list[str]
    rows: list[FleetRow]
    superseded: list[Superseded]

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

    def _host_dict(self, fingerprint: str) -> dict[str, Any]:
        host = next(s.host for s in self.sources if s.host_fingerprint == fingerprint)
        return {"label": self.hosts[fingerprint], "fingerprint": fingerprint,
                **{k: host.get(k) for k in ("platforms", "cpu_model", "os", "machine", "accelerators")}}

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
    found: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for index, source in enumerate(sources):
        for case, candidate in source.candidates.items():
            found[(case, _framework(candidate), source.host_fingerprint)].append(index)
    newest = {i: (s.finished_at(), i) for i, s in enumerate(sources)}
    cells: dict[tuple[str, str], dict[str, FleetCell]] = defaultdict(dict)
    superseded = []
    for (case, framework, host), indexes in sorted(found.items()):
        used = max(indexes, key=newest.__getitem__)
        cells[(case, framework)][host] = FleetCell(used, sources[used].candidates[case])
        superseded += [Superseded(case, framework, host, used, i) for i in indexes if i != used]
    rows = [FleetRow(case, framework, cells[(case, framework)]) for case, framework in sorted(cells)]
    gates = gate_order(g for row in rows for cell in row.cells.values() for g in cell.candidate.get("gates") or {})
    return Fleet(sources, host_labels(sources), gates, rows, superseded)


def host_labels(sources: list[Source]) -> dict[str, str]:
    """fingerprint -> label for every host, ordered by label; a label shared by two fingerprints (a short
    fingerprint collision) gets the full fingerprint appended."""
    labels = {s.host_fingerprint: s.host_label for s in sources}
    taken = defaultdict(list)
    for fp, label in labels.items():
        taken[label].append(fp)
    unique = {fp: label if len(taken[label]) == 1 else f"{label} ({fp})" for fp, label in labels.items()}
    return dict(sorted(unique.items(), key=lambda item: item[1]))


def _framework(candidate: dict[str, Any]) -> str:
    return str(candidate.get("framework") or "-")
