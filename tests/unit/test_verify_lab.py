"""``certify verify`` of a lab's certificate: candidates are measured on boards (case 'm/int8@nuc1'); ``--board`` and
``--host-marker`` narrow the verification to the candidates measured where the release goes, a board the lab refused
is never accepted, and a certificate of a local run narrows by its host's markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from certify import attest, cli
from certify.records import case_id, split_case_id
from certify.report.certificate import build_statement
from certify.report.markdown import summary
from certify.verify import Request, verify
from tests.helpers.certificates import UNITS, all_pass, board, board_lost, lab_results_doc, results_doc
from tests.helpers.signed import write_certificate

NUC1, PI = board("nuc1", "intel", 2), board("pi", "arm", 3, lost="ssh connection closed after 40 s")


def refusals(req: Request) -> dict[str, str]:
    return {c.name: c.detail for c in verify(req).checks if not c.ok}


def lost_on_pi(*names: str) -> dict[str, dict[str, dict[str, Any]]]:
    return {name: {gate: board_lost(gate, "pi") for gate in UNITS} for name in names}


@pytest.fixture
def fleet(tmp_path: Path, signer: attest.Signer) -> Path:
    """int8 measured on nuc1 (every gate passes) and on pi (lost mid-run: every gate ERROR); a complete run."""
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "pi": lost_on_pi("int8")}, [NUC1, PI])
    return write_certificate(tmp_path / "lab.json", results, signer)


def test_case_ids_split_into_pair_and_board() -> None:
    assert split_case_id("digits-mlp/int8@nuc1") == ("digits-mlp/int8", "nuc1")
    assert split_case_id("digits-mlp/int8") == ("digits-mlp/int8", None)
    assert split_case_id("a@b/int8") == ("a@b/int8", None)  # an '@' in the model's name names no board
    assert case_id("m", "int8", "pi") == "m/int8@pi" and case_id("m", "int8") == "m/int8"


def test_a_lab_certificate_has_one_candidate_and_subject_per_board(tmp_path: Path) -> None:
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "pi": lost_on_pi("int8")}, [NUC1, PI])
    statement = build_statement(results, [])
    pred = statement["predicate"]
    assert pred["boards"] == [NUC1, PI] and pred["verdict"] == "not_certified"
    by_case = {c["case"]: c for c in pred["candidates"]}
    assert {c: (v["board"], v["verdict"], v["model"]) for c, v in by_case.items()} == {
        "m/int8@nuc1": ("nuc1", "certified", "m"), "m/int8@pi": ("pi", "not_certified", "m")}
    assert by_case["m/int8@nuc1"]["sha256"] == by_case["m/int8@pi"]["sha256"]  # one model file, found by 'm/int8'
    assert [s["name"] for s in statement["subject"]] == ["m/int8@nuc1"]
    assert build_statement(results_doc(tmp_path, all_pass("int8")), [])["predicate"]["boards"] == []
    text = summary(statement, {"signed": False, "reason_unsigned": "no key"})
    assert "- board `pi`" in text and "LOST: ssh connection closed" in text and "| m/int8@nuc1 |" in text


def test_board_filter_accepts_the_board_that_certified_and_refuses_the_lost_one(fleet: Path, pub: Path) -> None:
    outcome = verify(Request(fleet, [pub], boards=["nuc1"], allow_dev_key=True))
    assert outcome.ok, outcome.to_dict()["refusals"]
    host = next(c for c in outcome.checks if c.name == "host")
    assert host.detail == "1 candidate(s) measured on a board named nuc1: nuc1 (intel, cpu)"
    refused = refusals(Request(fleet, [pub], boards=["pi"], allow_dev_key=True))
    assert "m/int8@pi: required gates not passed" in refused["gates"]
    assert "(error: board pi was lost: ssh connection closed)" in refused["gates"]
    assert refused["subject"] == "no candidate measured on a board named pi is certified"
    unfiltered = refusals(Request(fleet, [pub], allow_dev_key=True))
    assert unfiltered["gates"].startswith("m/int8@pi:")  # pi's candidate is part of the whole certificate
    assert cli.main(["verify", str(fleet), "--key", str(pub), "--allow-dev-key", "--board", "nuc1"]) == 0
    assert cli.main(["verify", str(fleet), "--key", str(pub), "--allow-dev-key", "--board", "pi"]) == 1


def test_host_marker_asks_where_a_model_file_is_certified(tmp_path: Path, fleet: Path, pub: Path) -> None:
    model = tmp_path / "int8.onnx"
    intel = verify(Request(fleet, [pub], [model], host_markers=["intel"], allow_dev_key=True))
    assert intel.ok, intel.to_dict()["refusals"]
    assert any(c.detail.startswith(f"{model} is certified subject m/int8@nuc1") for c in intel.checks)
    arm = refusals(Request(fleet, [pub], [model], host_markers=["arm"], allow_dev_key=True))
    assert arm["model"] == f"{model} is candidate m/int8@pi but its verdict is not_certified"
    gpu = refusals(Request(fleet, [pub], [model], host_markers=["gpu"], allow_dev_key=True))
    assert gpu == {"host": "no candidate of this certificate was measured on a board with marker 'gpu': it holds "
                           "nuc1 (intel, cpu), pi (arm, cpu; lost: ssh connection closed after 40 s)"}
    both = refusals(Request(fleet, [pub], [model], host_markers=["intel", "arm"], allow_dev_key=True))
    assert "with markers 'intel' and 'arm'" in both["host"]
    assert cli.main(["verify", str(fleet), "--key", str(pub), "--allow-dev-key", "--model", str(model),
                     "--host-marker", "intel"]) == 0


def test_a_model_certified_elsewhere_is_named_when_not_on_the_board_asked(tmp_path: Path, signer: attest.Signer,
                                                                          pub: Path) -> None:
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "pi": all_pass("int4")}, [NUC1, PI])
    cert = write_certificate(tmp_path / "lab.json", results, signer)
    refused = refusals(Request(cert, [pub], [tmp_path / "int8.onnx"], boards=["pi"], allow_dev_key=True))
    assert refused == {"model": f"{tmp_path / 'int8.onnx'} is candidate m/int8@nuc1, none measured on a board "
                                "named pi"}


def test_a_refused_board_is_never_accepted(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    liar = board("nuc2", "intel", 4, refused="its detected hardware (arm: Cortex-A76) contradicts its tags "
                                             "(platform=intel)")
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "nuc2": all_pass("int4")}, [NUC1, liar])
    cert = write_certificate(tmp_path / "lab.json", results, signer)
    refused = refusals(Request(cert, [pub], boards=["nuc2"], allow_dev_key=True))
    assert list(refused) == ["host"] and "nuc2 (intel, cpu; refused: its detected hardware" in refused["host"]
    unfiltered = refusals(Request(cert, [pub], allow_dev_key=True))
    assert unfiltered == {"board": "m/int4@nuc2: measured on board nuc2, which the lab refused: its detected "
                                   "hardware (arm: Cortex-A76) contradicts its tags (platform=intel)"}
    assert verify(Request(cert, [pub], host_markers=["intel"], allow_dev_key=True)).ok  # nuc1 only


def test_a_board_the_certificate_does_not_describe_is_refused(tmp_path: Path, signer: attest.Signer,
                                                              pub: Path) -> None:
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "ghost": all_pass("int4")}, [NUC1])
    cert = write_certificate(tmp_path / "lab.json", results, signer)
    assert refusals(Request(cert, [pub], allow_dev_key=True)) == {
        "board": "m/int4@ghost: measured on board ghost, which is not among the certificate's boards (nuc1)"}
    assert "it holds nuc1 (intel, cpu)" in refusals(Request(cert, [pub], boards=["ghost"], allow_dev_key=True))["host"]


def test_a_local_certificate_verifies_as_before_and_narrows_by_its_hosts_markers(tmp_path: Path,
                                                                               signer: attest.Signer,
                                                                               pub: Path) -> None:
    cert = write_certificate(tmp_path / "cert.json", results_doc(tmp_path, all_pass("int8")), signer)
    model = tmp_path / "int8.onnx"
    assert verify(Request(cert, [pub], [model], allow_dev_key=True)).ok
    on_amd = verify(Request(cert, [pub], [model], host_markers=["amd"], allow_dev_key=True))
    assert on_amd.ok and "1 candidate(s) measured on a host with marker 'amd': this host (amd)" in [
        c.detail for c in on_amd.checks]
    assert refusals(Request(cert, [pub], [model], host_markers=["nvidia"], allow_dev_key=True)) == {
        "host": "no candidate of this certificate was measured on a host with marker 'nvidia': it holds "
                "this host (amd)"}
    assert "on a host named nuc1" in refusals(Request(cert, [pub], boards=["nuc1"], allow_dev_key=True))["host"]
