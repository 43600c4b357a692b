"""certify.report.fleet: certificates from several machines merge into one candidate x (host x gate) matrix;
the newest run of a candidate on a host wins and the fleet says which certificate every cell came from."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from certify import attest
from certify.errors import CertifyError
from certify.report.fleet import Fleet, merge
from certify.verdict import FAIL
from tests.helpers.certificates import all_pass, board, board_lost, gate_result, lab_results_doc, results_doc
from tests.helpers.signed import EPOCH, host, short_fingerprint, tamper, write_certificate

LABEL_A = f"amd · AMD EPYC 7B13 · {short_fingerprint('box-a')}"
LABEL_B = f"intel+nvidia · Intel Xeon 8480 · {short_fingerprint('box-b')}"


def certificate(tmp_path: Path, name: str, gates: dict[str, Any], signer: attest.Signer | None, *,
                box: dict[str, Any], finished: float, frameworks: dict[str, str] | None = None) -> Path:
    results = results_doc(tmp_path, gates, finished=finished, host=box)
    results["run_id"] = name
    for ref in results["models"][0]["candidates"]:
        ref["framework"] = (frameworks or {}).get(ref["name"], ref["framework"])
    return write_certificate(tmp_path / f"{name}.json", results, signer)


@pytest.fixture
def three(tmp_path: Path, signer: attest.Signer) -> tuple[Path, Path, Path]:
    """box-a ran int8 and ov (old run), then int8 again (new run, now slower); box-b ran int8 and ov."""
    box_a, box_b = host("box-a"), host("box-b", ("intel", "nvidia"), "Intel Xeon 8480")
    old_a = certificate(tmp_path, "a-old", all_pass("int8", "ov"), signer, box=box_a, finished=EPOCH)
    slower = {"int8": {**all_pass("int8")["int8"], "speed": gate_result("speed", verdict=FAIL, value=1.5,
                                                                        interval=[1.4, 1.6])}}
    new_a = certificate(tmp_path, "a-new", slower, signer, box=box_a, finished=EPOCH + 3600)
    b = certificate(tmp_path, "b", all_pass("int8", "ov"), signer, box=box_b, finished=EPOCH + 60,
                    frameworks={"ov": "openvino"})
    return old_a, new_a, b


def cell(fleet: Fleet, case: str, label: str) -> dict[str, Any]:
    row = next(r for r in fleet.to_dict()["matrix"] if r["case"] == case)
    hosts: dict[str, Any] = row["hosts"]
    return dict(hosts[label])


def test_three_certificates_from_two_hosts_give_one_matrix(three: tuple[Path, Path, Path], pub: Path) -> None:
    old_a, new_a, b = three
    fleet = merge([new_a, b, old_a], [pub])  # argument order does not decide which run is newest
    assert list(fleet.hosts.values()) == [LABEL_A, LABEL_B]
    assert [(r.case, r.framework) for r in fleet.rows] == [("m/int8", "onnxruntime"), ("m/ov", "onnxruntime"),
                                                          ("m/ov", "openvino")]
    assert fleet.gates == ["accuracy", "speed", "memory", "stability", "stress", "fallback", "robustness", "security"]
    assert cell(fleet, "m/int8", LABEL_A)["cells"]["speed"] == "FAIL 1.50x [1.40x]"
    assert cell(fleet, "m/int8", LABEL_A)["verdict"] == "not_certified"
    assert cell(fleet, "m/int8", LABEL_B)["cells"]["speed"] == "PASS 3.10x [2.80x]"
    ov_rows = {r["framework"]: r["hosts"] for r in fleet.to_dict()["matrix"] if r["case"] == "m/ov"}
    assert list(ov_rows["onnxruntime"]) == [LABEL_A] and list(ov_rows["openvino"]) == [LABEL_B]


def test_the_newest_run_wins_and_the_fleet_says_where_each_cell_came_from(three: tuple[Path, Path, Path],
                                                                        pub: Path) -> None:
    old_a, new_a, b = three
    fleet = merge([new_a, b, old_a], [pub])
    assert cell(fleet, "m/int8", LABEL_A)["certificate"] == str(new_a)
    assert cell(fleet, "m/int8", LABEL_A)["run_id"] == "a-new"
    assert cell(fleet, "m/ov", LABEL_A)["certificate"] == str(old_a)  # not in the newer run: the older one stands
    assert cell(fleet, "m/int8", LABEL_B)["certificate"] == str(b)
    assert fleet.to_dict()["superseded"] == [{"case": "m/int8", "framework": "onnxruntime", "host": LABEL_A,
                                              "used": str(new_a), "dropped": str(old_a)}]
    legend = "\n".join(fleet.lines())
    assert f"H1 = {LABEL_A}: from #1, #3" in legend and f"H2 = {LABEL_B}: from #2" in legend
    assert "newest wins: m/int8 (onnxruntime) on H1: #1 (finished 2026-05-28T21:26:40Z) replaces older #3" in legend


def test_equal_finish_times_let_the_certificate_given_later_win(tmp_path: Path, signer: attest.Signer,
                                                                pub: Path) -> None:
    first = certificate(tmp_path, "first", all_pass("int8"), signer, box=host("box-a"), finished=EPOCH)
    second = certificate(tmp_path, "second", all_pass("int8"), signer, box=host("box-a"), finished=EPOCH)
    assert cell(merge([first, second], [pub]), "m/int8", LABEL_A)["run_id"] == "second"
    assert cell(merge([second, first], [pub]), "m/int8", LABEL_A)["run_id"] == "first"


def test_text_and_markdown_show_hosts_gates_and_cells(three: tuple[Path, Path, Path], pub: Path) -> None:
    fleet = merge(list(three), [pub])
    lines = fleet.lines()
    assert lines[0] == "Fleet matrix: 3 candidates on 2 hosts from 3 certificates"
    assert lines[1] == "every certificate's signature verified with a trusted key"
    header = next(line for line in lines if line.startswith("candidate"))
    assert re.split(r"\s{2,}", header)[:12] == ["candidate", "framework", "H1 accuracy", "H1 speed", "H1 memory",
                                                "H1 stability", "H1 stress", "H1 fallback", "H1 robustness",
                                                "H1 security", "H1 verdict", "H2 accuracy"]
    int8 = next(line for line in lines if line.startswith("m/int8"))
    assert "FAIL 1.50x [1.40x]" in int8 and "NOT CERTIFIED" in int8 and "PASS 3.10x [2.80x]" in int8
    openvino = next(line for line in lines if "openvino" in line)
    assert re.split(r"\s{2,}", openvino)[2:11] == ["-"] * 9  # ov on openvino never ran on box-a
    markdown = fleet.markdown()
    assert markdown.startswith("## Fleet matrix: 3 candidates on 2 hosts")
    assert f"- H1 = {LABEL_A}: from #1, #2" in markdown
    assert "| candidate | framework | H1 accuracy |" in markdown


def test_to_dict_is_json_with_sources_hosts_and_keys(three: tuple[Path, Path, Path], pub: Path,
                                                     signer: attest.Signer) -> None:
    data = json.loads(json.dumps(merge(list(three), [pub]).to_dict()))
    assert data["signatures_checked"] is True
    assert [c["path"] for c in data["certificates"]] == [str(p) for p in three]
    assert [c["run_id"] for c in data["certificates"]] == ["a-old", "a-new", "b"]
    assert {c["keyid"] for c in data["certificates"]} == {signer.keyid}
    assert all(c["verified"] and c["dev_key"] for c in data["certificates"])
    assert [(h["label"], h["cpu_model"]) for h in data["hosts"]] == [(LABEL_A, "AMD EPYC 7B13"),
                                                                   (LABEL_B, "Intel Xeon 8480")]
    assert data["hosts"][1]["fingerprint"] == host("box-b")["fingerprint"]


def test_a_tampered_certificate_refuses_the_merge(three: tuple[Path, Path, Path], pub: Path) -> None:
    old_a, new_a, b = three
    tamper(b, b'"value":3.1', b'"value":9.1')
    with pytest.raises(CertifyError) as refused:
        merge([old_a, new_a, b], [pub])
    assert str(b) in refused.value.message and "signature does not verify" in refused.value.message


def test_a_certificate_signed_by_an_untrusted_key_refuses_the_merge(tmp_path: Path, three: tuple[Path, Path, Path],
                                                                   pub: Path) -> None:
    stranger = certificate(tmp_path, "stranger", all_pass("int8"), attest.dev_signer(), box=host("box-c"),
                           finished=EPOCH)
    with pytest.raises(CertifyError, match=re.escape(f"{stranger} is refused (signature): signed by key")):
        merge([*three, stranger], [pub])


def test_unverified_mode_marks_the_fleet(tmp_path: Path, three: tuple[Path, Path, Path]) -> None:
    unsigned = certificate(tmp_path, "unsigned", all_pass("int8"), None, box=host("box-c"), finished=EPOCH)
    fleet = merge([*three, unsigned], [])
    assert not fleet.signatures_checked
    assert fleet.lines()[1].startswith("UNVERIFIED: signatures were not checked")
    assert "**UNVERIFIED" in fleet.markdown()
    data = fleet.to_dict()
    assert data["signatures_checked"] is False
    assert not any(c["verified"] for c in data["certificates"])
    assert data["certificates"][-1]["keyid"] is None and data["certificates"][0]["keyid"] is not None
    assert cell(fleet, "m/int8", LABEL_A)["verified"] is False


def test_merging_nothing_is_an_error() -> None:
    with pytest.raises(CertifyError, match="no certificate to merge"):
        merge([], [])


def test_a_lab_certificate_brings_one_host_per_board(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    """A lab's candidates 'm/int8@nuc1' and 'm/int8@pi' are the row m/int8 in the columns of nuc1 and pi, beside
    a local certificate's host; a board is keyed by its fingerprint and name, so two boards never share a column."""
    pi = board("pi", "arm", 3, lost="ssh connection closed")
    lost = {"int8": {gate: board_lost(gate, "pi") for gate in all_pass("int8")["int8"]}}
    results = lab_results_doc(tmp_path, {"nuc1": all_pass("int8"), "pi": lost}, [board("nuc1", "intel"), pi],
                              finished=EPOCH)
    lab = write_certificate(tmp_path / "lab.json", results, signer)
    local = certificate(tmp_path, "a", all_pass("int8"), signer, box=host("box-a"), finished=EPOCH)
    fleet = merge([lab, local], [pub])
    nuc1, on_pi = "nuc1 · intel · Intel Core i5-1135G7 · nuc1-f", "pi · arm · Cortex-A76 · pi-fin"
    assert list(fleet.hosts.values()) == [LABEL_A, nuc1, on_pi]
    assert list(fleet.hosts) == [host("box-a")["fingerprint"], "sha256:nuc1-fingerprint@nuc1",
                                 "sha256:pi-fingerprint@pi"]
    assert [r.case for r in fleet.rows] == ["m/int8"]
    assert cell(fleet, "m/int8", nuc1)["verdict"] == "certified" and cell(fleet, "m/int8", LABEL_A)["run_id"] == "a"
    assert cell(fleet, "m/int8", on_pi)["verdict"] == "not_certified"
    assert cell(fleet, "m/int8", on_pi)["cells"]["speed"] == "ERROR"
    hosts = fleet.to_dict()["hosts"]
    assert [(h.get("board"), h["fingerprint"]) for h in hosts] == [(None, host("box-a")["fingerprint"]),
                                                                   ("nuc1", "sha256:nuc1-fingerprint"),
                                                                   ("pi", "sha256:pi-fingerprint")]
    assert fleet.title() == "Fleet matrix: 1 candidate on 3 hosts from 2 certificates"
