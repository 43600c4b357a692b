"""The certificate's statement: certified candidates are the subjects; the predicate holds every gate."""

from __future__ import annotations

from pathlib import Path

from certify.attest import PREDICATE_TYPE, STATEMENT_TYPE
from certify.digests import model_digest
from certify.report.certificate import build_statement
from certify.report.markdown import summary
from certify.verdict import FAIL, NOT_EVALUATED
from tests.helpers.certificates import all_pass, gate_result, results_doc


def test_only_certified_candidates_are_subjects(tmp_path: Path) -> None:
    gates = all_pass("good", "bad", "elsewhere")
    gates["bad"]["accuracy"] = gate_result("accuracy", FAIL, 0.28, [0.24, 0.32])
    gates["elsewhere"] = {g: gate_result(g, NOT_EVALUATED, reason="no GPU here") for g in gates["elsewhere"]}
    statement = build_statement(results_doc(tmp_path, gates), [])
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    assert [s["name"] for s in statement["subject"]] == ["m/good"]
    assert statement["subject"][0]["digest"]["sha256"] == model_digest(tmp_path / "good.onnx").sha256
    pred = statement["predicate"]
    assert pred["verdict"] == "not_certified"
    verdicts = {c["case"]: c["verdict"] for c in pred["candidates"]}
    assert verdicts == {"m/good": "certified", "m/bad": "not_certified", "m/elsewhere": "incomplete"}
    bad = next(c for c in pred["candidates"] if c["case"] == "m/bad")
    assert bad["gates"]["accuracy"]["interval"] == [0.24, 0.32] and bad["gates"]["accuracy"]["threshold"] == 0.95
    assert pred["not_evaluated"][0]["case"] == "m/elsewhere" and len(pred["not_evaluated"][0]["gates"]) == 8
    assert pred["models"][0]["baseline"]["sha256"] == model_digest(tmp_path / "baseline.onnx").sha256
    for key in ("run", "harness", "plan", "policy", "host", "packages", "dev_key"):
        assert key in pred


def test_a_model_that_changed_during_the_run_is_not_certified(tmp_path: Path) -> None:
    results = results_doc(tmp_path, all_pass("int8"))
    records = [{"case": "m/int8", "gate": "speed", "digests": {"candidate": "0" * 64}, "measurement": {}}]
    statement = build_statement(results, records)
    assert statement["subject"] == []
    cand = statement["predicate"]["candidates"][0]
    assert cand["verdict"] == "not_certified" and "changed" in cand["reason"]


def test_devices_that_really_ran_are_recorded(tmp_path: Path) -> None:
    results = results_doc(tmp_path, all_pass("int8"))
    ran = "CPUExecutionProvider"
    records = [{"case": "m/int8", "gate": "speed", "measurement": {"candidate": {"executed_device": ran}}},
               {"case": "m/int8", "gate": "accuracy",
                "measurement": {"candidate": 0.98, "candidate_where": {"executed_device": ran, "info": {"x": 1}}}}]
    pred = build_statement(results, records)["predicate"]
    assert pred["candidates"][0]["executed_devices"] == ["CPUExecutionProvider"]
    assert pred["verdict"] == "certified"


def test_an_incomplete_run_is_never_certified_overall(tmp_path: Path) -> None:
    pred = build_statement(results_doc(tmp_path, all_pass("int8"), complete=False), [])["predicate"]
    assert pred["verdict"] == "incomplete" and pred["run"]["complete"] is False


def test_markdown_summary(tmp_path: Path) -> None:
    gates = all_pass("good", "bad")
    gates["bad"]["speed"] = gate_result("speed", FAIL, 1.5, [1.2, 1.8])
    statement = build_statement(results_doc(tmp_path, gates), [])
    signed = {"signed": True, "keyid": "ab12", "dev_key": True, "verify_command": "certify verify X --key Y"}
    text = summary(statement, signed)
    assert text.startswith("## Certification: NOT CERTIFIED")
    assert "| m/good | onnxruntime |" in text and "**CERTIFIED**" in text and "FAIL 1.50x [1.20x]" in text
    assert "throwaway development key" in text and "certify verify X --key Y" in text
    unsigned = summary(statement, {"signed": False, "reason_unsigned": "no signing key configured"})
    assert "**Not signed**: no signing key configured." in unsigned
