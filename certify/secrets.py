"""Secrets that must never reach a run's outputs, and a scan that finds them there.

What counts as a secret: the value of every environment variable whose *name* says it holds one (``KEY``,
``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASSPHRASE``, ``CREDENTIAL``, ``AUTH``, ``PRIVATE``; ``$CERTIFY_SIGNING_KEY``
and its passphrase among them), the signing key itself however it was given, and any PEM private-key block.
A finding names the variable (``$MY_API_TOKEN``) and the file, never the value.

This is a heuristic: a secret held in a variable with an innocent name, or written to an output in an encoding
other than as-is, JSON-escaped or HTML-escaped (base64, URL-encoded, split across lines), is not found.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "AUTH", "PRIVATE")
NOT_SECRET_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_SOCK")  # they name where a secret is, e.g. $CERTIFY_SIGNING_KEY_FILE
MIN_LENGTH = 8
SIGNING_KEY = "the signing key"
PEM_BLOCK = "a PEM private key block"
PEM_PRIVATE = re.compile(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----")
PEM_PRIVATE_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----.*?-----END ([A-Z0-9]+ )*PRIVATE KEY-----",
                               re.DOTALL)

Source = Path | tuple[str, str]  # a file, or (name, text) for an output not yet written


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS) and not upper.endswith(NOT_SECRET_SUFFIXES)


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"$NAME": value}`` for every variable whose name looks secret and whose value is long enough to be one
    (at least 8 characters, and not only digits or a boolean word, which timings and flags match by chance)."""
    env = os.environ if environ is None else environ
    return {f"${name}": value for name, value in sorted(env.items())
            if looks_secret(name) and len(value.strip()) >= MIN_LENGTH and not value.strip().isdigit()
            and value.strip().lower() not in ("true", "false")}


def private_key_secrets(key: Any) -> dict[str, str]:
    """The signing key (a ``cryptography`` private key) as it could leak: its unencrypted PKCS#8 PEM and raw bytes."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return {SIGNING_KEY: pem, f"{SIGNING_KEY} (hex)": raw.hex(),
            f"{SIGNING_KEY} (base64)": base64.b64encode(raw).decode()}


def _markupsafe_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
            .replace("'", "&#39;"))


def variants(value: str) -> set[str]:
    """The forms a value takes in the outputs: as-is, JSON-escaped, HTML-escaped (``html`` and Jinja's
    markupsafe), and for a multi-line value (a PEM key) each of its long lines that is not a ``-----`` marker."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], html.escape(value),
             html.escape(value, quote=False), _markupsafe_escape(value)}
    if "\n" in value:
        forms |= {line.strip() for line in value.splitlines()
                  if len(line.strip()) >= 16 and not line.strip().startswith("-----")}
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _read(source: Source) -> tuple[str, str] | None:
    if isinstance(source, tuple):
        return source
    try:
        return source.name, source.read_bytes().decode("utf-8", "replace")
    except OSError:  # an output that was not written is not a leak
        return None


def scan(sources: Iterable[Source], secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(file, what)`` for every secret found in every source: ``what`` is the variable's name (``$NAME``),
    ``the signing key`` or ``a PEM private key block``; the secret itself is never returned."""
    forms = {name: variants(value) for name, value in secrets.items()}
    found: list[tuple[str, str]] = []
    for source in sources:
        read = _read(source)
        if read is None:
            continue
        name, text = read
        hits = [what for what, values in forms.items() if any(v in text for v in values)]
        found += [(name, what.split(" (")[0]) for what in dict.fromkeys(hits)]
        if PEM_PRIVATE.search(text) and not any(w.startswith(SIGNING_KEY) for w in hits):
            found.append((name, PEM_BLOCK))
    return list(dict.fromkeys(found))


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every form of every secret, and every PEM private-key block, replaced by ``[redacted NAME]``."""
    for name, value in secrets.items():
        for form in sorted(variants(value), key=len, reverse=True):
            text = text.replace(form, f"[redacted {name.split(' (')[0]}]")
    return PEM_PRIVATE_BLOCK.sub("[redacted PEM private key]", text)


def describe(leaks: list[tuple[str, str]]) -> str:
    """``$MY_API_TOKEN in evidence.jsonl, report.html; a PEM private key block in summary.md``."""
    by_what: dict[str, list[str]] = {}
    for file, what in leaks:
        by_what.setdefault(what, []).append(file)
    return "; ".join(f"{what} in {', '.join(dict.fromkeys(files))}" for what, files in by_what.items())
