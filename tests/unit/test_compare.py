"""certify.report.compare: two signed certificates, gate by gate: regressions and improvements are decided by the
verdict and by confidence intervals that separate, not by noise; changed hosts, policies and models are noted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from certify import attest
from certify.errors import CertifyError
from certify.report.compare import ADDED, IMPROVEMENT, REGRESSION, REMOVED, UNCHANGED, Comparison, compare
from certify.verdict import FAIL, NOT_EVALUATED
from tests.helpers.certificates import all_pass, gate_result, results_doc
from tests.helpers.signed import EPOCH, host, tamper, write_certificate

Gates = dict[str, dict[str, dict[str, Any]]]


def certificate(tmp_path: Path, name: str, gates: Gates, signer: attest.Signer | None, **kw: Any) -> Path:
    kw.setdefault("host", host("box-a"))
    results = results_doc(tmp_path, gates, finished=kw.pop("finished", EPOCH), **kw)
    results["run_id"] = name
    return write_certificate(tmp_path / f"{name}.json", results, signer)


def with_gate(gate: str, **result: Any) -> Gates:
    gates = all_pass("int8")
    gates["int8"][gate] = gate_result(gate, **result)
    return gates


def statuses(comparison: Comparison) -> dict[tuple[str, str], str]:
    return {(c.case, c.gate): c.status for c in comparison.changes}


def compared(tmp_path: Path, signer: attest.Signer, pub: Path, old: Gates, new: Gates) -> Comparison:
    before = certificate(tmp_path, "old", old, signer)
    after = certificate(tmp_path, "new", new, signer, finished=EPOCH + 3600)
    return compare(before, after, [pub])


def test_speedup_dropping_beyond_the_intervals_is_a_regression(tmp_path: Path, signer: attest.Signer,
                                                                pub: Path) -> None:
    result = compared(tmp_path, signer, pub, with_gate("speed", value=3.1, interval=[2.8, 3.4]),
                      with_gate("speed", value=2.2, interval=[2.05, 2.5]))
    assert [(c.case, c.gate) for c in result.regressions] == [("m/int8", "speed")]
    regression = result.regressions[0]
    assert regression.old is not None and regression.old["verdict"] == "pass"
    assert regression.new is not None and regression.new["verdict"] == "pass"
    assert "dropped beyond the intervals" in regression.why
    assert statuses(result)[("m/int8", "accuracy")] == UNCHANGED
    assert result.signatures_checked


def test_a_gate_going_from_pass_to_fail_is_a_regression(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    result = compared(tmp_path, signer, pub, all_pass("int8"),
                      with_gate("accuracy", verdict=FAIL, value=0.985, interval=[0.975, 0.995]))
    assert [(c.case, c.gate) for c in result.regressions] == [("m/int8", "accuracy")]
    assert result.regressions[0].why == "verdict pass -> fail"
    assert "m/int8: certified -> not_certified" in result.notes


def test_pass_to_not_evaluated_is_a_regression(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    result = compared(tmp_path, signer, pub, all_pass("int8"),
                      with_gate("memory", verdict=NOT_EVALUATED, value=None, reason="no memory probe"))
    assert statuses(result)[("m/int8", "memory")] == REGRESSION


def test_a_change_within_overlapping_intervals_is_not_flagged(tmp_path: Path, signer: attest.Signer,
                                                             pub: Path) -> None:
    result = compared(tmp_path, signer, pub, with_gate("speed", value=3.1, interval=[2.8, 3.4]),
                      with_gate("speed", value=2.7, interval=[2.4, 2.9]))
    assert result.regressions == []
    change = next(c for c in result.changes if c.gate == "speed")
    assert change.status == UNCHANGED and "the intervals overlap" in change.why


def test_improvements_by_interval_and_by_verdict(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    old = with_gate("speed", value=3.1, interval=[2.8, 3.4])
    old["int8"]["memory"] = gate_result("memory", verdict=FAIL, value=0.3, interval=[0.28, 0.32])
    result = compared(tmp_path, signer, pub, old, with_gate("speed", value=4.2, interval=[3.9, 4.5]))
    assert statuses(result)[("m/int8", "speed")] == IMPROVEMENT
    assert statuses(result)[("m/int8", "memory")] == IMPROVEMENT
    assert result.regressions == [] and len(result.improvements) == 2


@pytest.mark.parametrize(("new_value", "expected"), [(1.7, UNCHANGED), (2.0, REGRESSION), (1.0, IMPROVEMENT)])
def test_lower_is_better_without_intervals_uses_the_point_tolerance(
        tmp_path: Path, signer: attest.Signer, pub: Path, new_value: float, expected: str) -> None:
    # stability: p99/p50, "<=" (lower is better), no interval: 1.4 -> 1.7 is an 18% move, within 25%
    result = compared(tmp_path, signer, pub, with_gate("stability", value=1.4),
                      with_gate("stability", value=new_value))
    assert statuses(result)[("m/int8", "stability")] == expected


def test_the_point_tolerance_can_be_changed(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    before = certificate(tmp_path, "old", with_gate("stability", value=1.4), signer)
    after = certificate(tmp_path, "new", with_gate("stability", value=1.8), signer)
    change = next(c for c in compare(before, after, [pub], tolerance=0.3).changes if c.gate == "stability")
    assert change.status == UNCHANGED and change.why == "within the 30% tolerance (an interval is missing)"
    tight = next(c for c in compare(before, after, [pub], tolerance=0.05).changes if c.gate == "stability")
    assert tight.status == REGRESSION
    with pytest.raises(CertifyError, match=r"tolerance -0\.1 is negative"):
        compare(before, after, [pub], tolerance=-0.1)


def test_added_and_removed_candidates_and_gates(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    old = all_pass("int8", "ov")
    del old["int8"]["memory"]
    new = all_pass("int8", "olive")
    del new["int8"]["stability"]
    result = compared(tmp_path, signer, pub, old, new)
    assert result.added_cases == ["m/olive"] and result.removed_cases == ["m/ov"]
    assert statuses(result)[("m/int8", "memory")] == ADDED
    assert statuses(result)[("m/int8", "stability")] == REMOVED
    assert {c.case for c in result.changes} == {"m/int8"}
    text = "\n".join(result.lines())
    assert "added candidate m/olive (CERTIFIED)" in text and "removed candidate m/ov (was CERTIFIED)" in text


def test_different_host_policy_and_model_are_noted(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    before = certificate(tmp_path, "old", with_gate("speed", value=3.1, interval=[2.8, 3.4]), signer)
    results = results_doc(tmp_path, with_gate("speed", value=2.2, interval=[2.05, 2.5]), finished=EPOCH + 60,
                          policy="edge-strict", host=host("box-b", ("intel",), "Intel Xeon"))
    results["models"][0]["candidates"][0]["sha256"] = "sha256:" + "ab" * 32
    result = compare(before, write_certificate(tmp_path / "new.json", results, signer), [pub])
    notes = "\n".join(result.notes)
    assert "different hosts: amd · AMD EPYC 7B13" in notes and "intel · Intel Xeon" in notes
    assert "different policies: edge-default" in notes and "edge-strict" in notes
    assert "m/int8: model changed: sha256" in notes and "-> abababababab" in notes
    assert result.regressions and result.regressions[0].why.endswith("the model file changed")


def test_a_tampered_certificate_is_refused_when_keys_are_given(tmp_path: Path, signer: attest.Signer,
                                                              pub: Path) -> None:
    before = certificate(tmp_path, "old", all_pass("int8"), signer)
    after = certificate(tmp_path, "new", with_gate("speed", value=1.5, verdict=FAIL), signer)
    tamper(after, b'"value":1.5', b'"value":9.5')
    with pytest.raises(CertifyError) as refused:
        compare(before, after, [pub])
    assert str(after) in refused.value.message and "signature does not verify" in refused.value.message
    unverified = compare(before, after, [])  # without keys it is read, and says it was not checked
    assert not unverified.signatures_checked
    tampered = next(c for c in unverified.changes if c.gate == "speed").new
    assert tampered is not None and tampered["value"] == 9.5


def test_certificates_from_another_key_or_unsigned_are_refused(tmp_path: Path, signer: attest.Signer,
                                                                pub: Path) -> None:
    good = certificate(tmp_path, "good", all_pass("int8"), signer)
    stranger = certificate(tmp_path, "stranger", all_pass("int8"), attest.dev_signer())
    unsigned = certificate(tmp_path, "unsigned", all_pass("int8"), None)
    with pytest.raises(CertifyError, match=re.escape(f"{stranger} is refused (signature): signed by key")):
        compare(good, stranger, [pub])
    with pytest.raises(CertifyError, match=re.escape(f"{unsigned} is refused: it is not signed")):
        compare(unsigned, good, [pub])


def test_unverified_mode_reads_without_keys_and_says_so(tmp_path: Path, signer: attest.Signer) -> None:
    before = certificate(tmp_path, "old", all_pass("int8"), None)
    after = certificate(tmp_path, "new", with_gate("accuracy", verdict=FAIL, value=0.9, interval=[0.88, 0.92]),
                        signer)
    result = compare(before, after, [])
    assert not result.signatures_checked and not result.old.verified and not result.new.verified
    assert result.new.keyid == signer.keyid and result.old.keyid is None
    assert any(line.startswith("UNVERIFIED") for line in result.lines())
    assert "UNVERIFIED" in result.markdown() and result.to_dict()["signatures_checked"] is False
    assert [c.gate for c in result.regressions] == ["accuracy"]


def test_text_markdown_and_json_show_the_table(tmp_path: Path, signer: attest.Signer, pub: Path) -> None:
    result = compared(tmp_path, signer, pub, with_gate("speed", value=3.1, interval=[2.8, 3.4]),
                      with_gate("speed", value=2.2, interval=[2.05, 2.5]))
    lines = result.lines()
    assert lines[0] == f"Certificate comparison: 1 regression, {len(result.changes) - 1} gates unchanged"
    header = next(line for line in lines if line.startswith("candidate"))
    assert header.split()[:6] == ["candidate", "gate", "old", "new", "change", "status"]
    row = next(line for line in lines if line.startswith("m/int8") and " speed " in line)
    assert "PASS 3.10x [2.80x, 3.40x]" in row and "PASS 2.20x [2.05x, 2.50x]" in row
    assert "-0.90x (-29%)" in row and "REGRESSION" in row
    markdown = result.markdown()
    assert markdown.startswith("## Certificate comparison: 1 regression\n")
    assert "| candidate | gate | old | new | change | status | why |" in markdown
    data = json.loads(json.dumps(result.to_dict()))
    assert data["counts"][REGRESSION] == 1 and data["signatures_checked"] is True and data["tolerance"] == 0.25
    assert data["old"]["run_id"] == "old" and data["new"]["keyid"] == signer.keyid
    assert {(c["case"], c["gate"]) for c in data["changes"] if c["status"] == REGRESSION} == {("m/int8", "speed")}


def test_cli_compare_exits_1_on_a_regression_and_merge_prints_json(
        tmp_path: Path, signer: attest.Signer, pub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from certify import cli

    before = certificate(tmp_path, "old", with_gate("speed", value=3.1, interval=[2.8, 3.4]), signer)
    same = certificate(tmp_path, "same", with_gate("speed", value=3.0, interval=[2.7, 3.3]), signer)
    worse = certificate(tmp_path, "worse", with_gate("speed", value=2.2, interval=[2.05, 2.5]), signer)
    assert cli.main(["compare", str(before), str(same), "--key", str(pub)]) == 0
    markdown = tmp_path / "diff.md"
    assert cli.main(["compare", str(before), str(worse), "--key", str(pub), "--markdown", str(markdown)]) == 1
    assert "regression" in capsys.readouterr().out and "regression" in markdown.read_text()
    assert cli.main(["merge", str(before), str(worse), "--key", str(pub), "--json"]) == 0
    fleet = json.loads(capsys.readouterr().out)
    assert fleet["signatures_checked"] is True and len(fleet["certificates"]) == 2
    assert cli.main(["compare", str(before), str(tmp_path / "missing.json"), "--key", str(pub)]) == 2
