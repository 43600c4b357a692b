"""The release flow a user runs: make a key, certify with it, verify the certificate as a CI gate, re-render
the report; the outputs (certificate, HTML, Markdown, GitHub step summary, allure results) hold what they should
and never the private key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers.models import ACCURACY_ONLY, PLAN, build_mlp, candidate, tiny_project

pytest.importorskip("onnxruntime")

RELEASE_POLICY = 'policy = { name = "edge-default", required_gates = ["accuracy"] }\n'  # this team's release rule


def certify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certify.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Outcome]:
    """Accuracy certified on two candidates, one good and one a different (wrong) model, signed with a key; the
    plan requires only the accuracy gate of them, and the release checks them against that policy by name."""
    folder = tiny_project(tmp_path_factory.mktemp("release"))
    build_mlp(folder / "wrong.onnx", seed=7)
    plan = folder / "certify.toml"
    plan.write_text(PLAN + candidate("int8", "int8.onnx", extra=ACCURACY_ONLY)
                    + candidate("wrong", "wrong.onnx", extra=ACCURACY_ONLY))
    (folder / "accuracy-release.toml").write_text(RELEASE_POLICY)
    done = certify("keygen", "--out", "keys/release.key", cwd=folder)
    assert done.returncode == 0 and "key id:" in done.stdout, done.stderr
    outcome = run_certification(folder, plan, "-k", "accuracy", "--certify-sign-key", "keys/release.key",
                                "--alluredir", str(folder / "allure"),
                                env={"GITHUB_STEP_SUMMARY": str(folder / "step-summary.md")})
    assert outcome.returncode == 1, outcome.stdout + outcome.stderr  # 'wrong' fails accuracy
    return folder, outcome


def test_the_run_writes_a_signed_certificate_report_and_summaries(signed_run: tuple[Path, Outcome]) -> None:
    folder, outcome = signed_run
    envelope = json.loads((outcome.run_dir / "certificate.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and envelope["signatures"][0]["keyid"]
    assert not (outcome.run_dir / "statement.json").exists()
    assert "certificate: " in outcome.stdout and "verify: certify verify" in outcome.stdout
    html = (outcome.run_dir / "report.html").read_text()
    assert "tiny/int8" in html and "tiny/wrong" in html and envelope["signatures"][0]["keyid"] in html
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "## Certification: NOT CERTIFIED" in summary and "| tiny/int8 |" in summary
    assert (folder / "step-summary.md").read_text().strip() == summary.strip()


def test_the_private_key_is_in_no_output(signed_run: tuple[Path, Outcome]) -> None:
    folder, outcome = signed_run
    pem_body = "".join((folder / "keys" / "release.key").read_text().splitlines()[1:-1])
    outputs = [*outcome.run_dir.rglob("*"), *(folder / "allure").rglob("*"), folder / "step-summary.md"]
    for path in (p for p in outputs if p.is_file()):
        assert pem_body not in path.read_text(errors="replace"), path
    assert pem_body not in outcome.stdout + outcome.stderr


def test_verify_is_the_release_gate(signed_run: tuple[Path, Outcome]) -> None:
    folder, outcome = signed_run
    cert, pub = str(outcome.run_dir / "certificate.json"), "keys/release.key.pub"
    ok = certify("verify", cert, "--key", pub, "--model", "int8.onnx", "--policy", "accuracy-release.toml",
                 cwd=folder)
    assert ok.returncode == 0 and "VERIFIED" in ok.stdout, ok.stdout + ok.stderr
    default = certify("verify", cert, "--key", pub, "--model", "int8.onnx", cwd=folder)  # against edge-default
    assert default.returncode == 1 and "required_gates leaves out" in default.stdout, default.stdout
    missing_gates = certify("verify", cert, "--key", pub, "--model", "int8.onnx", "--policy", "accuracy-release.toml",
                            "--require", "accuracy", "--require", "speed", cwd=folder)
    assert missing_gates.returncode == 1 and "speed (not run)" in missing_gates.stdout, missing_gates.stdout
    wrong = certify("verify", cert, "--key", pub, "--model", "wrong.onnx", "--require", "accuracy", cwd=folder)
    assert wrong.returncode == 1 and "verdict is not_certified" in wrong.stdout
    strict = certify("verify", cert, "--key", pub, "--model", "int8.onnx", "--require", "accuracy",
                     "--policy", "edge-strict", cwd=folder)
    assert strict.returncode == 1 and "weaker than 'edge-strict'" in strict.stdout


def test_report_re_renders_from_the_evidence(signed_run: tuple[Path, Outcome]) -> None:
    folder, outcome = signed_run
    certificate = (outcome.run_dir / "certificate.json").read_bytes()
    (outcome.run_dir / "report.html").unlink()
    done = certify("report", str(outcome.run_dir), cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "tiny/int8" in (outcome.run_dir / "report.html").read_text()
    assert (outcome.run_dir / "certificate.json").read_bytes() == certificate  # the signature is kept as it was


def test_allure_results_carry_labels_and_evidence(signed_run: tuple[Path, Outcome]) -> None:
    folder, _ = signed_run
    results = [json.loads(p.read_text()) for p in (folder / "allure").glob("*-result.json")]
    int8 = next(r for r in results if any(lb == {"name": "candidate", "value": "int8"} for lb in r["labels"]))
    labels = {(lb["name"], lb["value"]) for lb in int8["labels"]}
    assert {("model", "tiny"), ("gate", "accuracy"), ("framework", "onnxruntime"), ("tag", "cpu")} <= labels
    evidence = next(a for a in int8["attachments"] if a["name"] == "evidence")
    record = json.loads((folder / "allure" / evidence["source"]).read_text())
    assert record["case"] == "tiny/int8" and record["result"]["verdict"] == "pass"


def test_an_unsigned_run_says_why(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    plan = tmp_path / "certify.toml"
    plan.write_text(PLAN + candidate("int8", "int8.onnx"))
    outcome = run_certification(tmp_path, plan, "-k", "accuracy", env={"CERTIFY_SIGNING_KEY": ""})
    assert outcome.returncode == 6, outcome.stdout  # nothing failed, but a subset run certifies nothing
    assert not (outcome.run_dir / "certificate.json").exists()
    statement = json.loads((outcome.run_dir / "statement.json").read_text())
    assert statement["subject"] == [] and statement["predicate"]["verdict"] == "partial"
    assert statement["predicate"]["candidates"][0]["verdict"] == "partial"
    assert "not signed: no signing key configured" in outcome.stdout


def test_a_private_key_readable_by_others_stops_the_session(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    plan = tmp_path / "certify.toml"
    plan.write_text(PLAN + candidate("int8", "int8.onnx"))
    assert certify("keygen", "--out", "k", cwd=tmp_path).returncode == 0
    (tmp_path / "k").chmod(0o644)
    outcome = run_certification(tmp_path, plan, "--certify-sign-key", "k")
    assert outcome.returncode == 4 and "readable by group or others" in outcome.stderr
    assert not outcome.run_dir.exists()  # refused before anything was measured
