"""The harness under faults, for real: a session stopped by SIGTERM or Ctrl-C (SIGINT) keeps its evidence and
writes its report marked incomplete and unsigned; ``--certify-resume`` then runs only the missing cases and signs
the completed run; a runaway worker fails its case alone under a memory limit.

The stop never depends on the host's speed: the first candidate loads at once, the other three wait in their
load (``tests.helpers.faulty.GatedLoad``) until the test opens the gate, and the signal is sent once the first
case's evidence is written and the second case is known to be waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certify.cli import suites_dir
from tests.acceptance.conftest import run_certification
from tests.helpers.faulty import GATE_ENV
from tests.helpers.models import ACCURACY_ONLY, PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

GATED = "tests.helpers.faulty:GatedLoad"
CANDIDATES = candidate("slow-0", "int8.onnx", extra=ACCURACY_ONLY) + "".join(
    candidate(f"slow-{i}", "int8.onnx", GATED, extra=ACCURACY_ONLY) for i in range(1, 4))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tiny_project(tmp_path)
    (folder / "certify.toml").write_text(PLAN + CANDIDATES)
    return folder


def start(folder: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "pytest", str(suites_dir()), "--certify-plan", str(folder / "certify.toml"),
           "--certify-report-dir", str(folder), "--certify-run-id", "run", "-p", "no:cacheprovider",
           "--rootdir", str(folder), "-k", "accuracy", "--certify-dev-key", *args]
    return subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), GATE_ENV: str(gate(folder))})


def gate(folder: Path) -> Path:
    return folder / "gate"


def records(folder: Path) -> list[dict]:
    path = folder / "run" / "evidence.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def interrupt_after_first_case(folder: Path, signum: int) -> str:
    """Stop the session once the first case is recorded and the second waits at the gate (closed till resumed)."""
    session, waiting = start(folder), Path(str(gate(folder)) + ".waiting")
    deadline = time.monotonic() + 300  # only a bound on a broken session: the test waits on events, not time
    while not (records(folder) and waiting.exists()) and time.monotonic() < deadline and session.poll() is None:
        time.sleep(0.1)
    assert records(folder) and waiting.exists(), "the session ended before the second case began loading"
    session.send_signal(signum)
    output, _ = session.communicate(timeout=120)
    return output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_session_keeps_its_evidence_and_writes_an_unsigned_incomplete_report(
        project: Path, signum: int) -> None:
    output = interrupt_after_first_case(project, signum)
    run = project / "run"
    results = json.loads((run / "results.json").read_text())
    measured = records(project)
    assert not results["complete"] and len(results["cases"]) == 1, output  # the gated three never loaded
    assert results["status"] == "incomplete" and results["candidates"]["tiny/slow-1"] == "incomplete"
    assert {c["case"] for c in results["cases"]} <= {r["case"] for r in measured}
    assert not (run / "certificate.json").exists()  # a key was given, yet an incomplete run is never signed
    statement = json.loads((run / "statement.json").read_text())
    assert statement["predicate"]["run"]["complete"] is False and statement["subject"] == []
    assert "INCOMPLETE" in (run / "report.html").read_text()
    assert "certificate: not signed" in output and "Traceback" not in output


def test_resume_runs_only_the_missing_cases_and_signs_the_completed_run(project: Path) -> None:
    interrupt_after_first_case(project, signal.SIGTERM)
    before = records(project)
    gate(project).touch()
    resumed = start(project, "--certify-resume", str(project / "run"))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output  # every candidate certified (on the one gate its policy requires)
    after = records(project)
    by_case = [(r["case"], r["gate"]) for r in after]
    assert len(by_case) == len(set(by_case)) == 4  # nothing measured twice
    assert after[: len(before)] == before  # the first session's evidence is kept as it was
    results = json.loads((project / "run" / "results.json").read_text())
    assert results["complete"] and len(results["cases"]) == 4
    assert results["started"] == pytest.approx(min(r["started"] for r in after))
    assert (project / "run" / "certificate.json").exists() and "signed by key" in output


def test_resume_refuses_another_plan(project: Path) -> None:
    interrupt_after_first_case(project, signal.SIGTERM)
    plan = project / "certify.toml"
    plan.write_text(plan.read_text().replace('name = "tiny"', 'name = "tiny-changed"', 1))
    resumed = start(project, "--certify-resume", str(project / "run"))
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 4 and "measured with plan digest" in output and "same plan" in output


def test_a_runaway_worker_fails_alone_under_the_memory_limit(project: Path) -> None:
    text = PLAN.replace("threads = 1", "threads = 1\nmemory_limit_mib = 1024") + candidate(
        "int8", "int8.onnx") + candidate("runaway", "int8.onnx", "tests.helpers.faulty:AllocatesOnInfer")
    (project / "limited.toml").write_text(text)
    outcome = run_certification(project, project / "limited.toml", "-k", "accuracy")
    verdicts = outcome.verdicts()
    assert verdicts[("int8", "accuracy")]["verdict"] == "pass", outcome.stdout
    runaway = verdicts[("runaway", "accuracy")]
    assert runaway["verdict"] == "fail" and "ran out of memory" in runaway["reason"]
    assert "1024 MiB (measure.memory_limit_mib)" in runaway["reason"]
