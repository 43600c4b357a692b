"""``certify verify``: a trusted, fresh certificate for the given model with the required gates passes;
each way it can be untrustworthy or insufficient is refused with its own reason."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from certify import attest, cli
from certify.policy import POLICIES
from certify.verdict import FAIL, NOT_EVALUATED, PASS
from certify.verify import DEFAULT_MAX_AGE_DAYS, GATE_THRESHOLDS, Request, verify
from tests.helpers.certificates import all_pass, gate_result, results_doc
from tests.helpers.signed import write_certificate, write_public_key


@pytest.fixture
def keys(tmp_path: Path) -> tuple[attest.Signer, Path]:
    private, public, _ = attest.generate_keypair(tmp_path / "keys" / "release.key")
    signer = attest.load_signer(private, environ={})
    assert signer is not None
    return signer, public


def refusals(req: Request) -> dict[str, str]:
    return {c.name: c.detail for c in verify(req).checks if not c.ok}


def all_pass_under(policy: str, *names: str) -> dict[str, dict[str, dict[str, object]]]:
    """Every one of the eight gates passing under ``policy``: each gate that reads a policy threshold records that
    policy's (as the gates do), with figures that clear it."""
    gates = all_pass(*names)
    thresholds = POLICIES[policy].thresholds()
    for by_gate in gates.values():
        if thresholds["min_accuracy_retention"] > 0.98:
            by_gate["accuracy"] = gate_result("accuracy", PASS, 0.995, [0.992, 0.998])
        for gate, result in by_gate.items():
            if result["threshold"] is not None:
                result["threshold"] = thresholds[GATE_THRESHOLDS[gate][0]]
    return gates


def test_a_good_certificate_verifies(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    assert set(gates["int8"]) == set(POLICIES["edge-default"].required_gates)  # all eight gates, each a pass
    assert {r["verdict"] for r in gates["int8"].values()} == {PASS}
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, gates), signer)
    outcome = verify(Request(cert, [public], [tmp_path / "int8.onnx"], "edge-default", max_age_days=1))
    assert outcome.ok, outcome.to_dict()
    assert {c.name for c in outcome.checks} >= {"signature", "complete", "model", "policy", "gates", "fresh",
                                                "subjects", "verdicts"}
    assert verify(Request(cert, [public])).ok  # by default: against the built-in policy of its name, 30 days
    assert cli.main(["verify", str(cert), "--key", str(public), "--model", str(tmp_path / "int8.onnx")]) == 0


def test_help_says_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {DEFAULT_MAX_AGE_DAYS:g};" in text and "--allow-noisy" in text and "'none'" in text
    assert "built-in policy of the name it records" in text
    assert cli.build_parser().parse_args(["verify", "c", "--key", "k", "--max-age", "none"]).max_age is None
    assert cli.build_parser().parse_args(["verify", "c", "--key", "k", "--max-age", "7.5"]).max_age == 7.5
    for bad in ("soon", "0", "-3"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["verify", "c", "--key", "k", "--max-age", bad])


def test_tampered_payload_and_untrusted_key_are_refused(tmp_path: Path, keys: tuple[attest.Signer, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    signer, public = keys
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, all_pass("int8")), signer)
    envelope = json.loads(cert.read_text())
    payload = base64.b64decode(envelope["payload"]).replace(b'"verdict":"certified"', b'"verdict":"certifieD"')
    envelope["payload"] = base64.b64encode(payload).decode()
    cert.write_text(json.dumps(envelope))
    assert "does not verify" in refusals(Request(cert, [public]))["signature"]
    assert cli.main(["verify", str(cert), "--key", str(public)]) == 1
    assert "FAIL  signature" in capsys.readouterr().out
    other = write_certificate(tmp_path / "other.json", results_doc(tmp_path, all_pass("int8")), attest.dev_signer())
    assert "not among the trusted keys" in refusals(Request(other, [public]))["signature"]


def test_a_changed_model_file_is_refused(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, all_pass("int8")), signer)
    model = tmp_path / "int8.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    assert "matches no subject" in refusals(Request(cert, [public], [model]))["model"]
    assert "does not exist" in refusals(Request(cert, [public], [tmp_path / "gone.onnx"]))["model"]


def test_a_weaker_policy_is_refused_a_stricter_one_accepted(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    default = write_certificate(tmp_path / "d.json", results_doc(tmp_path, all_pass("int8")), signer)
    refused = refusals(Request(default, [public], policy="edge-strict"))
    assert "weaker than 'edge-strict'" in refused["policy"] and "min_accuracy_retention 0.95" in refused["policy"]
    strict = write_certificate(tmp_path / "s.json", results_doc(tmp_path, all_pass_under("edge-strict", "int8"),
                                                                policy="edge-strict"), signer)
    assert verify(Request(strict, [public], policy="edge-default")).ok
    policy_file = tmp_path / "release-policy.toml"
    policy_file.write_text('[policy]\nname = "edge-default"\nmin_speedup = 3.0\n')
    assert "min_speedup 2 (required >= 3)" in refusals(Request(strict, [public], policy=str(policy_file)))["policy"]


def test_failed_or_unevaluated_required_gates_are_refused(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["speed"] = gate_result("speed", FAIL, 1.6, [1.4, 1.8])
    gates["int8"]["memory"] = gate_result("memory", NOT_EVALUATED)
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, gates), signer)
    refused = refusals(Request(cert, [public]))
    assert "speed (fail" in refused["gates"] and "memory (not evaluated" in refused["gates"]
    assert refused["subject"] == "the certificate certifies no model"
    assert verify(Request(cert, [public], require=["accuracy", "stability"])).checks
    only_accuracy = refusals(Request(cert, [public], require=["accuracy"]))
    assert "gates" not in only_accuracy


def test_a_stale_or_future_certificate_is_refused(tmp_path: Path, keys: tuple[attest.Signer, Path]) -> None:
    signer, public = keys
    old = results_doc(tmp_path, all_pass("int8"), finished=time.time() - 10 * 86400)
    cert = write_certificate(tmp_path / "old.json", old, signer)
    assert "max age 7 days" in refusals(Request(cert, [public], max_age_days=7))["fresh"]
    assert verify(Request(cert, [public], max_age_days=30)).ok
    future = write_certificate(tmp_path / "future.json",
                               results_doc(tmp_path, all_pass("int8"), finished=time.time() + 86400), signer)
    assert "in the future" in refusals(Request(future, [public], max_age_days=7))["fresh"]


def test_dev_key_incomplete_and_unsigned_are_refused(tmp_path: Path) -> None:
    dev = attest.dev_signer()
    write_public_key(tmp_path / "dev.pub", dev)
    cert = write_certificate(tmp_path / "dev.json", results_doc(tmp_path, all_pass("int8")), dev)
    assert "throwaway development key" in refusals(Request(cert, [tmp_path / "dev.pub"]))["key"]
    assert verify(Request(cert, [tmp_path / "dev.pub"], allow_dev_key=True)).ok
    partial = write_certificate(tmp_path / "partial.json",
                                results_doc(tmp_path, all_pass("int8"), complete=False), dev)
    assert "interrupted" in refusals(Request(partial, [tmp_path / "dev.pub"], allow_dev_key=True))["complete"]
    bare = write_certificate(tmp_path / "statement.json", results_doc(tmp_path, all_pass("int8")), None)
    assert "not a signed certificate" in refusals(Request(bare, [tmp_path / "dev.pub"]))["signature"]


def test_json_output_and_usage_errors(tmp_path: Path, keys: tuple[attest.Signer, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    signer, public = keys
    gates = all_pass("int8")
    gates["int8"]["accuracy"] = gate_result("accuracy", FAIL, 0.28, [0.24, 0.32])
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, gates), signer)
    assert cli.main(["verify", str(cert), "--key", str(public), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is False and any(r.startswith("gates: m/int8") for r in report["refusals"])
    assert cli.main(["verify", str(cert), "--key", str(tmp_path / "missing.pub")]) == 2
    assert "missing.pub" in capsys.readouterr().err
    assert cli.main(["verify", str(tmp_path / "nothing.json"), "--key", str(public)]) == 2
