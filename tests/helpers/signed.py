"""Real certificates on disk for the tests of reports that read several of them (compare, merge): statements
built by ``build_statement`` from ``tests.helpers.certificates.results_doc`` and signed with a throwaway key."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from certify import attest
from certify.report.certificate import build_statement

EPOCH = 1_780_000_000.0  # 2026-05-28, a fixed "now" so run times order deterministically


def host(name: str, platforms: tuple[str, ...] = ("amd",), cpu: str = "AMD EPYC 7B13") -> dict[str, Any]:
    """A host description whose fingerprint is derived from ``name``."""
    return {"fingerprint": "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:32], "platforms": list(platforms),
            "cpu_model": cpu, "os": "Linux-6.1", "machine": "x86_64", "accelerators": []}


def short_fingerprint(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:6]


def write_certificate(path: Path, results: dict[str, Any], signer: attest.Signer | None) -> Path:
    """The statement of ``results``, in a DSSE envelope signed by ``signer`` (a bare statement when None)."""
    statement = build_statement(results, [], dev_key=bool(signer and signer.dev_key))
    path.write_text(json.dumps(attest.sign_statement(statement, signer) if signer else statement))
    return path


def write_public_key(path: Path, signer: attest.Signer) -> Path:
    path.write_bytes(attest.public_pem(signer.key.public_key()))
    return path


def tamper(path: Path, old: bytes, new: bytes) -> None:
    """Flip one byte of a signed certificate's payload (the first ``old`` becomes ``new``, which differs from it
    in exactly one byte), keeping the signature and valid base64 JSON, as an attacker editing a value would."""
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1
    envelope = json.loads(path.read_text())
    payload = base64.b64decode(envelope["payload"])
    assert old in payload
    envelope["payload"] = base64.b64encode(payload.replace(old, new, 1)).decode()
    path.write_text(json.dumps(envelope))
