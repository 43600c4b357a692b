"""Secrets in outputs: which environment values count, finding them as-is / JSON- / HTML-escaped without ever
returning them, and certify_run refusing to sign (and redacting) when an output holds one."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from certify import attest
from certify.report.publish import CERTIFICATE_FILE, STATEMENT_FILE, certify_run, rerender
from certify.secrets import PEM_BLOCK, SIGNING_KEY, describe, private_key_secrets, redact, scan, secret_values
from tests.helpers.report_run import write_run

TOKEN = "tok-3f9a8c1d2e<&>\"quoted\""


def test_secret_values_go_by_the_variable_name_and_skip_short_or_innocent_values() -> None:
    env = {"MY_API_TOKEN": "tok-3f9a8c1d2e", "github_token": "ghp_abcdefgh", "DB_PASSWORD": "hunter2hunter2",
           "CERTIFY_SIGNING_KEY": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n",
           "CERTIFY_SIGNING_KEY_PASSPHRASE": "correct horse", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
           "SHORT_KEY": "abc", "CERTIFY_SIGNING_KEY_FILE": "keys/release.key", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
           "TOKEN_TTL_MS": "86400000", "USE_AUTH": "false", "HOME": "/root/very/long/path", "PATH": "/usr/bin:/bin"}
    assert set(secret_values(env)) == {"$MY_API_TOKEN", "$github_token", "$DB_PASSWORD", "$CERTIFY_SIGNING_KEY",
                                       "$CERTIFY_SIGNING_KEY_PASSPHRASE", "$AWS_SECRET_ACCESS_KEY"}


def test_scan_finds_a_secret_in_any_of_its_encodings_and_names_only_the_variable(tmp_path: Path) -> None:
    secrets = {"$MY_API_TOKEN": TOKEN}
    raw = tmp_path / "log.txt"
    raw.write_text(f"token={TOKEN}\n")
    as_json = ("results.json", json.dumps({"info": TOKEN}))
    as_html = ("report.html", f"<td>{html.escape(TOKEN)}</td>")
    clean = ("summary.md", "nothing to see")
    found = scan([raw, as_json, as_html, clean, tmp_path / "never-written.json"], secrets)
    assert found == [("log.txt", "$MY_API_TOKEN"), ("results.json", "$MY_API_TOKEN"),
                     ("report.html", "$MY_API_TOKEN")]
    assert describe(found) == "$MY_API_TOKEN in log.txt, results.json, report.html"


def test_pem_private_keys_are_found_with_or_without_a_known_value() -> None:
    signer = attest.dev_signer()
    secrets = private_key_secrets(signer.key)
    pem = secrets[SIGNING_KEY]
    body = "".join(pem.splitlines()[1:-1])
    assert scan([("a", json.dumps({"key": pem})), ("b", f"key body {body}")], secrets) == [
        ("a", SIGNING_KEY), ("b", SIGNING_KEY)]
    other = attest.dev_signer()
    stranger = private_key_secrets(other.key)[SIGNING_KEY]
    assert scan([("c", stranger)], secrets) == [("c", PEM_BLOCK)]
    assert "PRIVATE KEY" not in redact(json.dumps(stranger), {})


def test_redact_replaces_every_encoding() -> None:
    text = f"{TOKEN} {json.dumps(TOKEN)} {html.escape(TOKEN)}"
    redacted = redact(text, {"$MY_API_TOKEN": TOKEN})
    assert "3f9a8c1d2e" not in redacted and redacted.count("[redacted $MY_API_TOKEN]") == 3


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_run(tmp_path / "run")
    return tmp_path / "run"


def leak_into_evidence(run_dir: Path, value: str) -> None:
    path = run_dir / "evidence.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[-1]["measurement"]["candidate_where"] = {"info": {"debug": value}}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_run_without_secrets_in_its_outputs_is_signed(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", TOKEN)
    signature = certify_run(run_dir, attest.dev_signer())
    assert signature["signed"] and (run_dir / CERTIFICATE_FILE).is_file()


def test_a_secret_in_the_evidence_stops_the_signature_and_is_redacted(run_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "step-summary.md"))
    leak_into_evidence(run_dir, TOKEN)
    signature = certify_run(run_dir, attest.dev_signer())
    assert not signature["signed"] and not (run_dir / CERTIFICATE_FILE).exists()
    assert not (run_dir / "dev-key.pub").exists()
    assert signature["reason_unsigned"] == "secret found in outputs: $MY_API_TOKEN in evidence.jsonl"
    statement = json.loads((run_dir / STATEMENT_FILE).read_text())
    assert statement["predicate"]["reason_unsigned"] == signature["reason_unsigned"]
    assert not statement["predicate"]["dev_key"]
    for written in (run_dir / STATEMENT_FILE, run_dir / "report.html", run_dir / "summary.md",
                    tmp_path / "step-summary.md"):
        assert scan([written], {"$MY_API_TOKEN": TOKEN}) == [], written
    assert "secret found in outputs: $MY_API_TOKEN in evidence.jsonl" in (run_dir / "summary.md").read_text()
    assert rerender(run_dir)["reason_unsigned"] == signature["reason_unsigned"]  # certify report keeps the reason
    assert scan([run_dir / "report.html"], {"$MY_API_TOKEN": TOKEN}) == []


def test_the_signing_key_in_an_output_stops_the_signature(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTIFY_SIGNING_KEY", raising=False)
    signer = attest.dev_signer()
    leak_into_evidence(run_dir, private_key_secrets(signer.key)[f"{SIGNING_KEY} (hex)"])
    signature = certify_run(run_dir, signer)
    assert not signature["signed"] and signature["reason_unsigned"] == (
        "secret found in outputs: the signing key in evidence.jsonl")
    outputs = [run_dir / STATEMENT_FILE, run_dir / "report.html", run_dir / "summary.md"]
    assert scan(outputs, private_key_secrets(signer.key)) == []
