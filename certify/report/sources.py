"""Certificates read for reports that span several runs (``compare``, ``merge``), and the machine that measured
each candidate of one (``Source.machine_of``: the certificate's host, or the board of a lab that measured it).

With trusted keys every certificate must be a DSSE envelope whose signature verifies with one of them, or the
whole report is refused with a ``CertifyError`` naming the file and the reason. Without keys the certificates are
read unverified (``Source.verified`` is False), which every such report states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certify.attest import VerificationError, load_public_key, open_envelope, read_json, read_unverified
from certify.errors import CertifyError
from certify.report.certificate import parse_iso
from certify.report.lab import boards_of

UNVERIFIED_NOTE = "UNVERIFIED: signatures were not checked (no trusted key given); do not base a release on this"
SHORT_FINGERPRINT = 6


def machine_label(host: dict[str, Any], fingerprint: str) -> str:
    """'amd · AMD EPYC 7B13 · 3f2a9c': a host's platform markers, CPU model and short fingerprint."""
    platforms = "+".join(str(p) for p in host.get("platforms") or []) or "no platform"
    cpu = str(host.get("cpu_model") or "unknown cpu")
    return f"{platforms} · {cpu} · {fingerprint.removeprefix('sha256:')[:SHORT_FINGERPRINT]}"


@dataclass(frozen=True)
class Machine:
    """What measured a certificate's candidate: the certificate's host, or a board of its lab."""

    key: str  # the host's fingerprint; a board's fingerprint '@' its name
    label: str
    host: dict[str, Any]  # as detected (a board's also names it: ``board``)


@dataclass(frozen=True)
class Source:
    """One certificate as read: its file, its in-toto statement, the key that signed it, and whether that
    signature was verified against a trusted key."""

    path: Path
    statement: dict[str, Any]
    keyid: str | None
    verified: bool

    @property
    def predicate(self) -> dict[str, Any]:
        predicate: dict[str, Any] = self.statement["predicate"]
        return predicate

    @property
    def run_id(self) -> str:
        return str(self.predicate.get("run", {}).get("id", "?"))

    @property
    def finished(self) -> str:
        return str(self.predicate.get("run", {}).get("finished", "?"))

    def finished_at(self) -> float:
        """The run's finish time as a timestamp; refuses a certificate whose time cannot be read."""
        try:
            return parse_iso(self.finished)
        except ValueError:
            raise CertifyError(f"certificate {self.path}: unreadable run finish time {self.finished!r}",
                               hint="give the certificate.json of a run") from None

    @property
    def host(self) -> dict[str, Any]:
        host = self.predicate.get("host")
        return host if isinstance(host, dict) else {}

    @property
    def host_fingerprint(self) -> str:
        return str(self.host.get("fingerprint") or "unknown")

    @property
    def host_label(self) -> str:
        """'amd · AMD EPYC 7B13 · 3f2a9c': the host's platform markers, CPU model and short fingerprint."""
        return machine_label(self.host, self.host_fingerprint)

    @property
    def candidates(self) -> dict[str, dict[str, Any]]:
        """Candidate entries by case ('model/candidate', 'model/candidate@board' for one measured on a board)."""
        return {str(c["case"]): c for c in self.predicate.get("candidates", []) if isinstance(c, dict)}

    def machine_of(self, candidate: dict[str, Any]) -> Machine:
        """What measured a candidate: its board of the lab (key: the board's fingerprint and name), else the host."""
        name = candidate.get("board")
        board = next((b for b in boards_of(self.predicate) if name is not None and b.get("name") == name), None)
        if board is None:
            return Machine(self.host_fingerprint, self.host_label, self.host)
        found = board.get("host")
        host: dict[str, Any] = {**(found if isinstance(found, dict) else {}), "board": str(name)}
        fingerprint = str(board.get("fingerprint") or host.get("fingerprint") or "unknown")
        label = f"{name} · {machine_label(host, fingerprint)}" + (" (refused)" if board.get("refused") else "")
        return Machine(f"{fingerprint}@{name}", label, {**host, "fingerprint": fingerprint})

    def describe(self) -> str:
        key = (self.keyid or "")[:16]
        signed = f"verified key {key}" if self.verified else f"unverified, key {key}" if key else "unsigned"
        dev = "; throwaway development key" if self.predicate.get("dev_key") else ""
        return f"{self.path} (run {self.run_id}, finished {self.finished}, {signed}{dev})"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "run_id": self.run_id, "finished": self.finished,
                "verdict": self.predicate.get("verdict"), "host": self.host_label,
                "host_fingerprint": self.host_fingerprint, "keyid": self.keyid, "verified": self.verified,
                "dev_key": bool(self.predicate.get("dev_key"))}


def load_sources(paths: list[Path], keys: list[Path]) -> list[Source]:
    """Read every certificate; with keys, verify each one or refuse (CertifyError naming the file)."""
    if not keys:
        return [Source(path, *read_unverified(path), verified=False) for path in paths]
    trusted = dict(load_public_key(k) for k in keys)
    return [_verified_source(path, trusted) for path in paths]


def _verified_source(path: Path, trusted: dict[str, Ed25519PublicKey]) -> Source:
    envelope = read_json(path, "certificate")
    if not isinstance(envelope, dict) or "payload" not in envelope:
        raise CertifyError(f"certificate {path} is refused: it is not signed (no DSSE envelope)",
                           hint="compare signed certificates, or drop --key to read them unverified")
    try:
        statement, keyid = open_envelope(envelope, trusted)
    except VerificationError as exc:
        raise CertifyError(f"certificate {path} is refused ({exc.check}): {exc.message}",
                           hint=exc.hint or "it was altered or signed by another key; do not trust it") from None
    return Source(path, statement, keyid, verified=True)
