"""Turn a run folder's results and evidence into its outputs: the certificate (signed when a key is configured and
the run is complete, else an unsigned statement that says why), the HTML report and the Markdown summary."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from certify.attest import Signer, public_pem, read_unverified, sign_statement
from certify.errors import CertifyError, first_line
from certify.evidence import EVIDENCE_FILE, RESULTS_FILE, EvidenceStore, write_json_atomic
from certify.records import EvidenceRecord
from certify.report.certificate import build_statement
from certify.secrets import describe, private_key_secrets, redact, scan, secret_values

CERTIFICATE_FILE, STATEMENT_FILE = "certificate.json", "statement.json"
HTML_FILE, SUMMARY_FILE, DEV_PUBLIC_KEY = "report.html", "summary.md", "dev-key.pub"
NO_KEY = ("no signing key configured: make one with `certify keygen --out KEY`, then pass "
          "--certify-sign-key KEY or set $CERTIFY_SIGNING_KEY")
INCOMPLETE = "the run was interrupted or did not complete: an incomplete run is never signed"
LEAKED = "secret found in outputs: "


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[EvidenceRecord]]:
    path = run_dir / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise CertifyError(f"{path} not found", hint="give a run folder: reports/<run-id>") from None
    except ValueError as exc:
        raise CertifyError(f"{path} is not valid JSON ({exc})", hint="re-run the certification") from None
    return results, EvidenceStore(run_dir).records()


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def verify_command(run_dir: Path, statement: dict[str, Any], public_key: str, dev_key: bool) -> str:
    parts = ["certify", "verify", _shown(run_dir / CERTIFICATE_FILE), "--key", public_key]
    for subject in statement["subject"]:
        parts += ["--model", _shown(Path(subject["annotations"]["path"]))]
    if dev_key:
        parts.append("--allow-dev-key")
    return " ".join(parts)


def _public_key_shown(signer: Signer, run_dir: Path) -> str:
    if signer.dev_key:
        return _shown(run_dir / DEV_PUBLIC_KEY)  # written with the certificate
    pub = Path(signer.source + ".pub")
    return _shown(pub) if pub.is_file() else "SIGNER.pub"


def certify_run(run_dir: Path, signer: Signer | None) -> dict[str, Any]:
    """Write the certificate (or the unsigned statement), the HTML report and the Markdown summary. Every output
    is scanned for secrets first (``certify.secrets``): when one holds a secret nothing is signed, the statement says
    why, and the statement, report and summary are written with the secret redacted."""
    results, records = load_run(run_dir)
    complete = bool(results.get("complete"))
    sign_with = signer if complete else None
    statement = build_statement(results, records, dev_key=bool(sign_with and sign_with.dev_key))
    for stale in (CERTIFICATE_FILE, STATEMENT_FILE, DEV_PUBLIC_KEY, HTML_FILE, SUMMARY_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    signature = _signed(run_dir, statement, sign_with) if sign_with else \
        _unsigned(INCOMPLETE if not complete else NO_KEY)
    texts = rendered(results, records, statement, signature)
    secrets = {**secret_values(), **(private_key_secrets(signer.key) if signer else {})}
    leaks = scan([run_dir / RESULTS_FILE, run_dir / EVIDENCE_FILE,
                  (CERTIFICATE_FILE if sign_with else STATEMENT_FILE, json.dumps(statement)), *texts.items()], secrets)
    if leaks:
        sign_with, reason = None, LEAKED + describe(leaks)
        statement = build_statement(results, records)
        statement["predicate"]["reason_unsigned"] = reason
        statement = json.loads(redact(json.dumps(statement), secrets))
        signature = _unsigned(reason)
        texts = {name: redact(text, secrets) for name, text in rendered(results, records, statement, signature).items()}
    if sign_with is None:
        write_json_atomic(run_dir / STATEMENT_FILE, statement)
    else:
        write_json_atomic(run_dir / CERTIFICATE_FILE, sign_statement(statement, sign_with))
        if sign_with.dev_key:
            (run_dir / DEV_PUBLIC_KEY).write_bytes(public_pem(sign_with.key.public_key()))
    write_texts(run_dir, texts)
    return signature


def _signed(run_dir: Path, statement: dict[str, Any], signer: Signer) -> dict[str, Any]:
    return {"signed": True, "keyid": signer.keyid, "dev_key": signer.dev_key, "certificate": CERTIFICATE_FILE,
            "reason_unsigned": None,
            "verify_command": verify_command(run_dir, statement, _public_key_shown(signer, run_dir), signer.dev_key)}


def _unsigned(reason: str) -> dict[str, Any]:
    return {"signed": False, "keyid": None, "dev_key": False, "certificate": STATEMENT_FILE,
            "verify_command": None, "reason_unsigned": reason}


def existing_signature(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The statement and signature facts of a run that was already certified, for re-rendering."""
    cert = run_dir / CERTIFICATE_FILE
    if cert.is_file():
        statement, keyid = read_unverified(cert)
        dev = bool(statement["predicate"].get("dev_key"))
        public_key = _shown(run_dir / DEV_PUBLIC_KEY) if dev else "SIGNER.pub"
        return statement, {"signed": True, "keyid": keyid, "dev_key": dev, "certificate": CERTIFICATE_FILE,
                           "reason_unsigned": None,
                           "verify_command": verify_command(run_dir, statement, public_key, dev)}
    statement_path = run_dir / STATEMENT_FILE
    if statement_path.is_file():
        statement, _ = read_unverified(statement_path)
        reason = statement["predicate"].get("reason_unsigned") or (
            INCOMPLETE if not statement["predicate"]["run"]["complete"] else NO_KEY)
        return statement, _unsigned(reason)
    raise CertifyError(f"{run_dir} has no {CERTIFICATE_FILE} or {STATEMENT_FILE}",
                       hint="it was made by an older version or never finished: re-run the certification")


def rerender(run_dir: Path) -> dict[str, Any]:
    """``certify report RUN_DIR``: re-render the report and summary from the evidence; the signature is kept (the
    environment's secrets are redacted from what is written, as when the run was certified)."""
    results, records = load_run(run_dir)
    statement, signature = existing_signature(run_dir)
    secrets = secret_values()
    write_texts(run_dir, {name: redact(text, secrets)
                          for name, text in rendered(results, records, statement, signature).items()})
    return signature


def rendered(results: dict[str, Any], records: list[EvidenceRecord], statement: dict[str, Any],
             signature: dict[str, Any]) -> dict[str, str]:
    """The report and the summary, by file name, not yet written. One that cannot be rendered is left out and
    named in ``signature["render_errors"]``: a rendering bug never costs the results or the certificate."""
    from certify.report.html import render_html
    from certify.report.markdown import summary

    def html() -> str:
        return render_html(results, records, signature)

    def markdown() -> str:
        return summary(statement, signature)

    texts: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, render in ((HTML_FILE, html), (SUMMARY_FILE, markdown)):
        try:
            texts[name] = render()
        except Exception as exc:  # any rendering bug: the other outputs are still written
            errors[name] = f"{type(exc).__name__}: {first_line(str(exc))}"
    signature["render_errors"] = errors
    return texts


def write_texts(run_dir: Path, texts: dict[str, str]) -> None:
    """Write the rendered outputs; the summary also goes to ``$GITHUB_STEP_SUMMARY`` when set."""
    for name, text in texts.items():
        _write_text(run_dir / name, text)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and SUMMARY_FILE in texts:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(texts[SUMMARY_FILE] + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
