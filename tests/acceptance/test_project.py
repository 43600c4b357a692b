"""A user's own project: an empty folder with a certify.toml and nothing of this repository (no testpaths, no
suites, no conftest of ours). Plain ``pytest`` collects the plan itself; a gate the project writes in its own
conftest.py runs, shows in the matrix, results.json and the certificate like a built-in one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certify.attest import read_unverified
from tests.helpers.models import ACCURACY_ONLY, PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

INTEL = candidate("int8-intel", "int8.onnx", extra='platform = "intel"')
ANY = candidate("int8", "int8.onnx")

USER_GATE = '''
import numpy as np
from certify.gates import GateSpec


def p95_latency(ctx):
    feeds = ctx.speed_feeds()
    with ctx.worker() as model:
        model.call("feeds", key="x", arrays=feeds)
        times_ns = model.call("run", key="x", iterations=200)
    p95_ms = float(np.percentile(times_ns, 95)) / 1e6
    ctx.measurement["p95_ms"] = p95_ms
    return ctx.decide("p95 latency", p95_ms, ctx.threshold("max_p95_ms"), unit="ms",
                      higher_is_better=False)


def pytest_certify_gates():
    return [GateSpec("p95_latency", "95th-percentile latency within budget", p95_latency, exclusive=True,
                     defaults={"max_p95_ms": 250.0})]
'''


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], capture_output=True,
                          text=True, cwd=folder, timeout=600, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_project(tmp_path_factory.mktemp("project"))
    (folder / "certify.toml").write_text(PLAN + ANY + INTEL)
    return folder


def collected(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_plain_pytest_collects_the_plan_with_readable_node_ids(project: Path) -> None:
    done = pytest_in(project, "-m", "cpu", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    ids = collected(done)
    assert "certify.toml::tiny/int8::accuracy" in ids and "certify.toml::tiny/int8-intel::security" in ids
    assert len(ids) == 2 * 8  # two candidates, the eight built-in gates


def test_markers_select_the_target_and_the_gate(project: Path) -> None:
    intel = collected(pytest_in(project, "-m", "intel", "--collect-only", "-q"))
    assert intel and all("/int8-intel::" in i for i in intel) and len(intel) == 8
    speed_cpu = collected(pytest_in(project, "-m", "speed and cpu", "--collect-only", "-q"))
    assert sorted(speed_cpu) == ["certify.toml::tiny/int8-intel::speed", "certify.toml::tiny/int8::speed"]
    by_keyword = collected(pytest_in(project, "certify.toml", "-k", "int8-intel and memory", "--collect-only",
                                     "-q"))
    assert by_keyword == ["certify.toml::tiny/int8-intel::memory"]


def test_a_plain_run_writes_the_reports_of_certify_run(project: Path) -> None:
    done = pytest_in(project, "-m", "accuracy", "--certify-run-id", "acc")
    assert done.returncode == 6, done.stdout + done.stderr  # a subset run: nothing failed, nothing certified
    results = json.loads((project / "reports" / "acc" / "results.json").read_text())
    assert results["candidates"]["tiny/int8"] == "partial" and "speed" in results["left_out"]["tiny/int8"]
    verdicts = {(c["candidate"], c["gate"]): c["result"]["verdict"] for c in results["cases"]}
    assert verdicts[("int8", "accuracy")] == "pass"
    assert verdicts[("int8-intel", "accuracy")] == "not_evaluated" or "intel" in results["host"]["platforms"]
    assert (project / "reports" / "acc" / "report.html").exists()
    assert {g["name"] for g in results["gates"]} >= {"accuracy", "security"}


def test_a_conftest_gate_is_a_gate_like_the_built_in_ones(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + ANY)
    (tmp_path / "conftest.py").write_text(USER_GATE)
    listed = collected(pytest_in(tmp_path, "-m", "p95_latency", "--collect-only", "-q"))
    assert listed == ["certify.toml::tiny/int8::p95_latency"]
    done = pytest_in(tmp_path, "-m", "p95_latency or accuracy", "--certify-run-id", "mine", "--certify-dev-key")
    assert done.returncode == 6, done.stdout + done.stderr  # passed, but edge-default's other gates did not run
    assert "p95_latency" in done.stdout.split("certification summary")[1]  # a column of the matrix
    run = tmp_path / "reports" / "mine"
    results = json.loads((run / "results.json").read_text())
    mine = next(c for c in results["cases"] if c["gate"] == "p95_latency")
    assert mine["result"]["verdict"] == "pass" and mine["result"]["unit"] == "ms"
    assert mine["result"]["threshold"] == 250.0 and mine["result"]["comparison"] == "<="
    spec = next(g for g in results["gates"] if g["name"] == "p95_latency")
    assert spec["builtin"] is False and spec["exclusive"] is True
    record = next(json.loads(line) for line in (run / "evidence.jsonl").read_text().splitlines()
                  if json.loads(line)["gate"] == "p95_latency")
    assert record["measurement"]["p95_ms"] == pytest.approx(mine["result"]["value"]) and record["serialized"]
    statement, keyid = read_unverified(run / "certificate.json")
    certified = next(c for c in statement["predicate"]["candidates"] if c["case"] == "tiny/int8")
    assert keyid and certified["gates"]["p95_latency"]["verdict"] == "pass"
    assert "p95_latency" in (run / "report.html").read_text()


def test_a_conftest_gate_marked_required_is_required_for_certification(tmp_path: Path) -> None:
    """A project's own gate with GateSpec(required=True) joins the policy's required gates (here: accuracy)."""
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx", extra=ACCURACY_ONLY))
    (tmp_path / "conftest.py").write_text(USER_GATE.replace("exclusive=True,", "exclusive=True, required=True,"))
    without = pytest_in(tmp_path, "-m", "accuracy", "--certify-run-id", "without")
    results = json.loads((tmp_path / "reports" / "without" / "results.json").read_text())
    assert without.returncode == 6 and results["left_out"] == {"tiny/int8": ["p95_latency"]}, without.stdout
    assert results["required"]["tiny/int8"] == ["accuracy", "p95_latency"]
    both = pytest_in(tmp_path, "-m", "accuracy or p95_latency", "--certify-run-id", "both")
    assert both.returncode == 0 and "CERTIFIED" in both.stdout, both.stdout


def test_a_conftest_gate_that_fails_or_breaks_says_so(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + ANY)
    strict = USER_GATE.replace('ctx.threshold("max_p95_ms")', "1e-6")
    broken = USER_GATE.replace("ctx.measurement[", "undefined_name[")
    (tmp_path / "conftest.py").write_text(strict)
    failed = pytest_in(tmp_path, "-m", "p95_latency", "--certify-run-id", "strict")
    assert failed.returncode == 1 and "p95_latency gate FAIL: p95 latency" in failed.stdout
    (tmp_path / "conftest.py").write_text(broken)
    errored = pytest_in(tmp_path, "-m", "p95_latency or security", "--certify-run-id", "broken")
    results = json.loads((tmp_path / "reports" / "broken" / "results.json").read_text())
    verdicts = {c["gate"]: c["result"] for c in results["cases"]}
    assert errored.returncode == 1 and verdicts["p95_latency"]["verdict"] == "error"
    assert "NameError" in verdicts["p95_latency"]["reason"] and verdicts["security"]["verdict"] == "pass"


def test_pytest_xdist_spreads_the_plan_file_and_keeps_one_run_folder(project: Path) -> None:
    pytest.importorskip("xdist")
    done = pytest_in(project, "-n", "2", "-m", "security", "--certify-run-id", "xdist")
    assert done.returncode == 6, done.stdout + done.stderr  # security alone certifies nothing
    results = json.loads((project / "reports" / "xdist" / "results.json").read_text())
    assert sorted(c["case"] for c in results["cases"]) == ["tiny/int8", "tiny/int8-intel"]


PLAIN_GATE = '''
from certify.gates import GateSpec


def pytest_certify_gates():
    return [GateSpec("budget", "median latency within budget, judged by a test function", None, exclusive=True)]
'''
PLAIN_TEST = '''
import numpy as np
import pytest


@pytest.mark.budget
def test_budget(certify_case, certify_model, certify_dataset, certify_record):
    inputs, _ = certify_dataset
    certify_model.call("feeds", key="x", arrays={k: v[:8] for k, v in inputs.items()})
    times_ns = certify_model.call("run", key="x", iterations=50)
    certify_record("median latency", float(np.median(times_ns)) / 1e6, LIMIT, unit="ms", higher_is_better=False)


@pytest.mark.budget
def test_forgets_to_record(certify_case, certify_dataset):
    assert certify_dataset[0]
'''


@pytest.mark.parametrize(("limit", "verdict"), [(500.0, "pass"), (1e-9, "fail")])
def test_a_plain_test_function_records_a_verdict_with_the_fixtures(tmp_path: Path, limit: float,
                                                                    verdict: str) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + ANY)
    (tmp_path / "conftest.py").write_text(PLAIN_GATE)
    (tmp_path / "test_budget.py").write_text(PLAIN_TEST.replace("LIMIT", repr(limit)))
    done = pytest_in(tmp_path, "-m", "budget", "--certify-run-id", "plain")
    assert done.returncode == 1, done.stdout + done.stderr  # test_forgets_to_record is an ERROR either way
    results = json.loads((tmp_path / "reports" / "plain" / "results.json").read_text())
    by_node = {c["nodeid"].split("::")[1]: c["result"] for c in results["cases"]}
    assert by_node["test_budget[tiny/int8]"]["verdict"] == verdict and by_node["test_budget[tiny/int8]"]["unit"] == "ms"
    assert by_node["test_forgets_to_record[tiny/int8]"]["verdict"] == "error"
    assert "without recording a verdict" in by_node["test_forgets_to_record[tiny/int8]"]["reason"]
    assert not [c for c in results["cases"] if c["nodeid"].startswith("certify.toml")]  # no plan item for it
