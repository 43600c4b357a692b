"""The embedded demo, certified for real: good INT8 candidates pass, the bad one is refused with a
helpful message, and cases for hardware this host does not have are NOT EVALUATED, never passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.conftest import Outcome, run_certification, timed

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

GOOD = ("int8-dynamic", "int8-static-qdq")
ABSENT = {"int8-static-qdq-cuda": "nvidia", "ov-int8-intel-gpu": "intel"}
MADE = {"ov-fp16": ("openvino", "convert", "CPU"), "ov-int8-nncf": ("nncf", "quantize", "CPU"),
        "olive-int8": ("olive", "pass", "CPUExecutionProvider")}


@pytest.fixture(scope="module")
def demo_run(demo_plan: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The demo certified once; the tests below read its outcome. Without the stress suite: its p99 and decay
    checks follow whatever else loads a shared CI host, which would make these tests flaky; tests/acceptance/
    test_stress.py proves that gate on models built for it."""
    return run_certification(tmp_path_factory.mktemp("demo"), demo_plan, "--certify-dev-key", "-m", "not stress")


def test_good_candidates_pass_accuracy_and_memory(demo_run: Outcome) -> None:
    v = demo_run.verdicts()
    for name in GOOD:
        assert v[(name, "accuracy")]["verdict"] == "pass", v[(name, "accuracy")]
        assert v[(name, "accuracy")]["value"] >= 0.95
        assert v[(name, "memory")]["verdict"] == "pass", v[(name, "memory")]


def test_bad_candidate_fails_accuracy_with_a_helpful_message(demo_run: Outcome) -> None:
    bad = demo_run.verdicts()[("int8-static-badcalib", "accuracy")]
    assert bad["verdict"] == "fail"
    assert bad["value"] < 0.95 and bad["interval"][0] <= bad["value"] <= bad["interval"][1]
    assert bad["threshold"] == 0.95 and "retention" in bad["reason"] and "calibrat" in bad["hint"]
    assert "accuracy gate FAIL" in demo_run.stdout and "hint: calibrate" in demo_run.stdout
    assert demo_run.results["candidates"]["digits-mlp/int8-static-badcalib"] == "not_certified"


def test_speed_verdicts_are_decided_on_intervals(demo_run: Outcome) -> None:
    for name in (*GOOD, "int8-static-badcalib"):
        speed = demo_run.verdicts()[(name, "speed")]
        assert timed(speed) in ("pass", "fail", "not_judged"), speed
        if timed(speed) == "not_judged":
            continue
        low, high = speed["interval"]
        assert low <= speed["value"] <= high and speed["threshold"] == 2.0
        assert (speed["verdict"] == "pass") == (low >= 2.0)  # the lower bound decides by default
    speed_records = [r for r in demo_run.evidence()
                     if r["gate"] == "speed" and r["result"]["verdict"] != "not_evaluated"]
    assert speed_records and all(r["serialized"] for r in speed_records)
    m = speed_records[0]["measurement"]
    assert m["order"] == "ABBA" and m["stop_reason"] in ("decisive", "max_duration", "max_iterations")
    assert len(m["baseline_ns"]) == len(m["candidate_ns"]) == m["samples"] > 0
    for side in ("baseline", "candidate"):  # the plan's measure.threads reached the runtime
        assert m[side]["info"]["intra_op_num_threads"] == 1
        assert m[side]["executed_device"] == "CPUExecutionProvider"


def test_absent_hardware_is_not_evaluated_with_the_reason(demo_run: Outcome) -> None:
    v = demo_run.verdicts()
    for name, platform in ABSENT.items():
        for gate in ("accuracy", "speed", "memory", "stability"):
            entry = v[(name, gate)]
            assert entry["verdict"] == "not_evaluated"
            assert f"target platform {platform} not present on this host" in entry["reason"]
        assert demo_run.results["candidates"][f"digits-mlp/{name}"] == "incomplete"
    assert "NOT EVALUATED digits-mlp/int8-static-qdq-cuda" in demo_run.stdout


def test_results_document_has_schema_host_and_versions(demo_run: Outcome) -> None:
    results = demo_run.results
    assert demo_run.returncode == 1  # the bad candidate fails: the run must not pass as a whole
    assert results["schema"] == "certify.results/v1" and results["complete"] is True
    assert results["host"]["fingerprint"].startswith("sha256:")
    assert "onnxruntime" in results["packages"] and "edge-certify" in results["packages"]
    assert results["plan"]["policy"]["name"] == "edge-default"
    assert "certification summary" in demo_run.stdout


@pytest.mark.parametrize(("marker", "candidate"), [("intel", "ov-int8-intel-gpu"),
                                                    ("nvidia", "int8-static-qdq-cuda")])
def test_platform_marker_selects_its_cases_and_skips_them_here(
        demo_plan: Path, tmp_path: Path, marker: str, candidate: str) -> None:
    outcome = run_certification(tmp_path, demo_plan, "-m", marker)
    assert outcome.returncode == 6, outcome.stdout  # nothing failed; the target's gates could not run here
    assert "1 passed, 7 skipped" in outcome.stdout.splitlines()[-1]  # only the static security gate ran here
    assert {c["candidate"] for c in outcome.results["cases"]} == {candidate}
    verdicts = {c["gate"]: c["result"]["verdict"] for c in outcome.results["cases"]}
    assert verdicts.pop("security") == "pass" and set(verdicts.values()) == {"not_evaluated"}
    assert f"NOT EVALUATED: target platform {marker} not present on this host" in outcome.stdout


def test_demo_certificate_is_signed_with_a_dev_key_that_verify_refuses(demo_run: Outcome) -> None:
    from certify import cli

    cert, pub = demo_run.run_dir / "certificate.json", demo_run.run_dir / "dev-key.pub"
    assert cert.exists() and pub.exists() and (demo_run.run_dir / "report.html").exists()
    # a candidate this run certified: its timing gates (speed, stability) follow the host, and on a noisy VM
    # int8-dynamic's p99/p50 was once 4.1 (stability FAIL), which is the verdict, not a fault of the signing
    certified = [c["path"] for m in demo_run.results["models"] for c in m["candidates"]
                 if demo_run.results["candidates"].get(f"{m['name']}/{c['name']}") == "certified"]
    model = certified[0] if certified else next(
        c["path"] for m in demo_run.results["models"] for c in m["candidates"] if c["name"] == "int8-dynamic")
    args = ["verify", str(cert), "--key", str(pub), "--model", model, "--require", "accuracy", "--require", "memory"]
    assert cli.main(args) == 1  # a throwaway key never passes a release gate by default
    if not certified:
        pytest.skip("no candidate passed every gate on this host in this run (see its results): the positive "
                    "half of the check needs one")
    assert cli.main([*args, "--allow-dev-key"]) == 0


def test_recipe_candidates_are_built_and_measured_across_frameworks(demo_run: Outcome) -> None:
    """OpenVINO IR, NNCF INT8 and Olive INT8 are made from the baseline by recipes and certified like files."""
    v = demo_run.verdicts()
    for name, (tool, method, device) in MADE.items():
        accuracy = v[(name, "accuracy")]
        assert accuracy["verdict"] == "pass" and accuracy["value"] >= 0.95, (name, accuracy)
        assert timed(v[(name, "speed")]) in ("pass", "fail", "not_judged")  # no VNNI here, so often a fail
        records = [r for r in demo_run.evidence() if r["candidate"] == name and r["gate"] == "accuracy"]
        made = records[-1]["made_by"]
        assert made["recipe"]["tool"] == tool and made["recipe"]["method"] == method
        assert made["source"]["sha256"] and made["sha256"] and made["versions"]
        speed = next(r for r in demo_run.evidence() if r["candidate"] == name and r["gate"] == "speed")
        assert speed["measurement"]["candidate"]["executed_device"] == device
    nncf = next(r for r in demo_run.evidence() if r["candidate"] == "ov-int8-nncf")["made_by"]
    fp16 = next(r for r in demo_run.evidence() if r["candidate"] == "ov-fp16")["made_by"]
    assert nncf["source"]["sha256"] == fp16["sha256"]  # the NNCF stage was built from the FP16 IR stage


def test_good_candidates_are_ready_for_production_beyond_speed(demo_run: Outcome) -> None:
    v = demo_run.verdicts()
    for name in GOOD:
        for gate in ("fallback", "robustness", "security"):
            assert v[(name, gate)]["verdict"] == "pass", (gate, v[(name, gate)])
    fallback = next(r for r in demo_run.evidence() if r["candidate"] == "int8-dynamic" and r["gate"] == "fallback")
    scenarios = fallback["measurement"]["scenarios"]  # the plan names the baseline as its fallback model
    assert scenarios["load_failure"]["verdict"] == "pass" and scenarios["recovery"]["verdict"] == "pass"
