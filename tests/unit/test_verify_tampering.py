"""``certify verify`` refuses a certificate that was edited and signed again (with the release key itself, as a
careless or malicious signer would): each test makes one such certificate with a real key and real signing, and
checks the refusal names what is wrong; where an option accepts it on purpose, that it does."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from certify import attest, cli
from certify.policy import POLICIES
from certify.report.certificate import build_statement
from certify.verdict import FAIL, PASS
from certify.verify import Request, verify
from tests.helpers.certificates import all_pass, gate_result, results_doc

DAY = 86400.0
NOISY = {"noise": "too_noisy", "others_cpu_share": 0.85, "noise_option": "warn", "waited_s": 0.0,
         "summary": "3 busy processes"}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[attest.Signer, Path]:
    private, public, _ = attest.generate_keypair(tmp_path / "keys" / "release.key")
    signer = attest.load_signer(private, environ={})
    assert signer is not None
    return signer, public


def statement_of(results: dict[str, Any]) -> dict[str, Any]:
    return build_statement(results, [])


def signed(path: Path, statement: dict[str, Any], signer: attest.Signer) -> Path:
    path.write_text(json.dumps(attest.sign_statement(statement, signer)))
    return path


def candidate(statement: dict[str, Any], case: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in statement["predicate"]["candidates"] if c["case"] == case)
    return found


def refusals(req: Request) -> dict[str, str]:
    return {c.name: c.detail for c in verify(req).checks if not c.ok}


def with_policy(results: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    results["plan"]["policy"] = policy
    return results


def test_a_weaker_policy_is_refused_without_policy_option(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["speed"] = {**gate_result("speed", PASS, 1.7, [1.6, 1.8]), "threshold": 1.5}
    weaker = POLICIES["edge-default"].with_overrides({"min_speedup": 1.5})
    cert = signed(tmp_path / "c.json", statement_of(with_policy(results_doc(tmp_path, gates), weaker.to_dict())),
                  signer)
    refused = refusals(Request(cert, [public]))
    assert set(refused) == {"policy"}, refused
    assert "'edge-default+overrides' is weaker than the built-in 'edge-default'" in refused["policy"]
    assert "min_speedup 1.5 (required >= 2)" in refused["policy"]
    assert cli.main(["verify", str(cert), "--key", str(public)]) == 1
    team = tmp_path / "team-policy.toml"
    team.write_text('[policy]\nname = "edge-default"\nmin_speedup = 1.5\n')
    assert verify(Request(cert, [public], policy=str(team))).ok  # accepted explicitly, as today


def test_a_stricter_override_of_a_built_in_policy_is_accepted(tmp_path: Path,
                                                              keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["accuracy"]["threshold"] = 0.97
    stricter = POLICIES["edge-default"].with_overrides({"min_accuracy_retention": 0.97})
    cert = signed(tmp_path / "c.json", statement_of(with_policy(results_doc(tmp_path, gates), stricter.to_dict())),
                  signer)
    outcome = verify(Request(cert, [public]))
    assert outcome.ok, outcome.to_dict()


def test_an_unknown_policy_is_refused_unless_given_explicitly(tmp_path: Path,
                                                              keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    custom = {**POLICIES["edge-default"].to_dict(), "name": "team-lenient"}
    cert = signed(tmp_path / "c.json",
                  statement_of(with_policy(results_doc(tmp_path, all_pass("int8")), custom)), signer)
    refused = refusals(Request(cert, [public]))
    assert "policy 'team-lenient' is not a built-in policy" in refused["policy"]
    assert "pass --policy FILE to accept a custom policy explicitly" in refused["policy"]
    assert verify(Request(cert, [public], policy="edge-default")).ok


def test_a_certificate_older_than_30_days_is_refused_by_default(tmp_path: Path,
                                                                 keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    old = results_doc(tmp_path, all_pass("int8"), finished=time.time() - 31 * DAY)
    cert = signed(tmp_path / "c.json", statement_of(old), signer)
    assert "max age 30 days" in refusals(Request(cert, [public]))["fresh"]
    assert cli.main(["verify", str(cert), "--key", str(public)]) == 1
    assert verify(Request(cert, [public], max_age_days=None)).ok
    assert cli.main(["verify", str(cert), "--key", str(public), "--max-age", "none"]) == 0
    assert cli.main(["verify", str(cert), "--key", str(public), "--max-age", "31.5"]) == 0


def test_a_certificate_from_six_months_ahead_is_refused_even_without_a_max_age(
        tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    future = results_doc(tmp_path, all_pass("int8"), finished=time.time() + 182 * DAY)
    cert = signed(tmp_path / "c.json", statement_of(future), signer)
    assert "in the future" in refusals(Request(cert, [public], max_age_days=None))["fresh"]
    assert cli.main(["verify", str(cert), "--key", str(public), "--max-age", "none"]) == 1
    skewed = signed(tmp_path / "s.json", statement_of(results_doc(tmp_path, all_pass("int8"),
                                                                  finished=time.time() + 60)), signer)
    assert verify(Request(skewed, [public], max_age_days=None)).ok  # within the clock skew


def test_a_verdict_flipped_to_pass_is_refused(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["stability"] = gate_result("stability", PASS, 175.0)  # p99/p50 175x, threshold <= 3x
    cert = signed(tmp_path / "c.json", statement_of(results_doc(tmp_path, gates)), signer)
    refused = refusals(Request(cert, [public]))
    assert set(refused) == {"verdicts"}, refused
    assert "m/int8: stability recorded pass but its figures say fail" in refused["verdicts"]
    assert "value 175x vs threshold <= 3x" in refused["verdicts"]


def test_a_verdict_flipped_to_fail_and_numbers_edited_are_refused(tmp_path: Path,
                                                                   keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["speed"] = gate_result("speed", FAIL, 3.1, [2.8, 3.4])  # decided by this figure alone
    gates["int8"]["accuracy"]["threshold"] = 0.5  # not edge-default's min_accuracy_retention
    gates["int8"]["memory"]["comparison"] = "<="
    cert = signed(tmp_path / "c.json", statement_of(results_doc(tmp_path, gates)), signer)
    refused = refusals(Request(cert, [public]))["verdicts"]
    assert "speed recorded fail but its figures say pass: value 3.1x (interval 2.8x to 3.4x)" in refused
    assert "accuracy threshold 50.0% is not its policy's min_accuracy_retention 95.0%" in refused
    assert "memory compares '<='" in refused


def test_a_fail_on_another_figure_is_not_a_contradiction(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["stability"] = gate_result("stability", FAIL, 1.4)  # p99/p50 fine, its CV or drift was not
    cert = signed(tmp_path / "c.json", statement_of(results_doc(tmp_path, gates)), signer)
    checks = {c.name: c for c in verify(Request(cert, [public])).checks}
    assert checks["verdicts"].ok and not checks["gates"].ok


def test_a_subject_digest_swapped_for_another_model_is_refused(tmp_path: Path,
                                                               keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8", "int4")
    gates["int4"]["accuracy"] = gate_result("accuracy", FAIL, 0.6, [0.55, 0.65])
    statement = statement_of(results_doc(tmp_path, gates))
    assert [s["name"] for s in statement["subject"]] == ["m/int8"]
    statement["subject"][0]["digest"]["sha256"] = candidate(statement, "m/int4")["sha256"]
    cert = signed(tmp_path / "c.json", statement, signer)
    refused = refusals(Request(cert, [public], [tmp_path / "int4.onnx"]))
    assert "subject m/int8 has digest" in refused["subjects"] and "but its candidate has" in refused["subjects"]
    assert "is candidate m/int4 but its verdict is not_certified" in refused["model"]
    assert "subjects" in refusals(Request(cert, [public], [tmp_path / "int8.onnx"]))


def test_a_subject_that_is_not_a_certified_candidate_is_refused(tmp_path: Path,
                                                                keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8", "int4")
    gates["int4"]["accuracy"] = gate_result("accuracy", FAIL, 0.6, [0.55, 0.65])
    statement = statement_of(results_doc(tmp_path, gates))
    int4 = candidate(statement, "m/int4")
    statement["subject"] += [{"name": "m/int4", "digest": {"sha256": int4["sha256"]}},
                             {"name": "m/ghost", "digest": {"sha256": "ab" * 32}}]
    cert = signed(tmp_path / "c.json", statement, signer)
    refused = refusals(Request(cert, [public], [tmp_path / "int8.onnx"]))["subjects"]
    assert "subject m/int4 is a candidate whose verdict is not_certified" in refused
    assert "subject 'm/ghost' is no candidate of the certificate" in refused


def test_a_certified_candidate_missing_from_the_subjects_is_no_trust_problem(
        tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    statement = statement_of(results_doc(tmp_path, all_pass("int8", "int8b")))
    statement["subject"] = [s for s in statement["subject"] if s["name"] == "m/int8"]
    cert = signed(tmp_path / "c.json", statement, signer)
    assert verify(Request(cert, [public])).ok
    assert verify(Request(cert, [public], [tmp_path / "int8.onnx"])).ok
    assert "it is not a subject" in refusals(Request(cert, [public], [tmp_path / "int8b.onnx"]))["model"]


def test_a_certified_candidate_with_a_failing_required_gate_is_refused(tmp_path: Path,
                                                                       keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    statement = statement_of(results_doc(tmp_path, all_pass("int8")))
    candidate(statement, "m/int8")["gates"]["memory"].update(verdict=FAIL, value=0.3, interval=[0.28, 0.32],
                                                            reason="memory reduction 30%")
    del candidate(statement, "m/int8")["gates"]["security"]
    cert = signed(tmp_path / "c.json", statement, signer)
    refused = refusals(Request(cert, [public], require=["accuracy"]))  # even when the release asks less
    assert set(refused) == {"certified"}, refused
    assert "m/int8: recorded certified, but required gates not passed" in refused["certified"]
    assert "memory (fail: memory reduction 30%)" in refused["certified"]
    assert "security (not run)" in refused["certified"]


def test_a_required_gate_measured_too_noisy_is_refused_unless_allowed(tmp_path: Path,
                                                                     keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["speed"]["details"]["conditions"] = NOISY  # measure.noise = 'warn' let the verdict stand
    gates["int8"]["stability"]["details"]["conditions"] = {**NOISY, "noise": "noisy"}
    cert = signed(tmp_path / "c.json", statement_of(results_doc(tmp_path, gates)), signer)
    refused = refusals(Request(cert, [public]))
    assert set(refused) == {"noise"}, refused
    assert "speed (noise option 'warn', other processes held 85% of the cores)" in refused["noise"]
    assert "stability" not in refused["noise"] and "--allow-noisy" in refused["noise"]
    assert verify(Request(cert, [public], allow_noisy=True)).ok
    assert cli.main(["verify", str(cert), "--key", str(public), "--allow-noisy"]) == 0
    assert verify(Request(cert, [public], require=["accuracy"])).ok  # speed is not required by this release


def test_deeply_nested_json_is_one_refusal_line(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    _, public = keys
    cert = tmp_path / "nested.json"
    cert.write_text("[" * 100_000 + "]" * 100_000)  # 200 KB
    done = subprocess.run([sys.executable, "-m", "certify.cli", "verify", str(cert), "--key", str(public)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "RecursionError" not in done.stderr + done.stdout
    assert "FAIL  certificate: certificate" in done.stdout and "nested deeper than 64 levels" in done.stdout
    cert.write_text("[" * 100 + "]" * 100)  # shallow enough for the parser, too deep for a certificate
    assert "nested deeper than 64 levels" in refusals(Request(cert, [public]))["certificate"]


def test_a_deeply_nested_signed_payload_is_refused(tmp_path: Path, keys: tuple[attest.Signer, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    signer, public = keys
    payload = b"[" * 100_000 + b"]" * 100_000
    signature = signer.key.sign(attest.pae(attest.PAYLOAD_TYPE, payload))
    envelope = {"payloadType": attest.PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(signature).decode()}]}
    cert = tmp_path / "c.json"
    cert.write_text(json.dumps(envelope))
    assert cli.main(["verify", str(cert), "--key", str(public)]) == 1
    assert "FAIL  statement-type: the signed payload is not JSON this tool reads (nested deeper than 64 levels)" \
        in capsys.readouterr().out
    with pytest.raises(attest.CertifyError, match="unreadable payload"):
        attest.read_unverified(cert)


def test_a_too_large_file_is_refused(tmp_path: Path, keys: tuple[attest.Signer, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    signer, public = keys
    cert = signed(tmp_path / "c.json", statement_of(results_doc(tmp_path, all_pass("int8"))), signer)
    monkeypatch.setattr(attest, "MAX_JSON_BYTES", 1024)
    assert "larger than" in refusals(Request(cert, [public]))["certificate"]
    with pytest.raises(attest.UnreadableJSON, match="larger than"):
        attest.read_json(cert, "certificate")


def test_a_malformed_signed_statement_is_one_refusal(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    statement = statement_of(results_doc(tmp_path, all_pass("int8")))
    candidate(statement, "m/int8")["gates"] = ["not", "a", "mapping"]
    cert = signed(tmp_path / "c.json", statement, signer)
    assert "the signed statement is malformed" in refusals(Request(cert, [public]))["statement"]
