"""Acceptance fixtures: run the real certification suites in a separate pytest process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certify.cli import suites_dir

QUICK_MEASURE = """[measure]
warmup_iterations = 10
min_iterations = 100
max_iterations = 20000
min_duration_s = 1.0
max_duration_s = 4.0
memory_repeats = 1
bootstrap_resamples = 1000
threads = 1
"""


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path
    results: dict[str, Any] = field(default_factory=dict)

    def verdicts(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(candidate, gate) -> result entry of results.json."""
        return {(c["candidate"], c["gate"]): c["result"] for c in self.results.get("cases", [])}

    def evidence(self) -> list[dict[str, Any]]:
        path = self.run_dir / "evidence.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_certification(folder: Path, plan: Path, *args: str, env: dict[str, str] | None = None) -> Outcome:
    """``pytest <suites> --certify-plan PLAN ARGS`` in a fresh process with its reports under ``folder``;
    ``env`` adds to the environment."""
    cmd = [sys.executable, "-m", "pytest", str(suites_dir()), "--certify-plan", str(plan),
           "--certify-report-dir", str(folder), "--certify-run-id", "run", "-p", "no:cacheprovider",
           "--rootdir", str(folder), "-rs", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=folder, check=False,
                          env={**os.environ, **(env or {})})
    outcome = Outcome(done.returncode, done.stdout, done.stderr, folder / "run")
    results = outcome.run_dir / "results.json"
    if results.exists():
        outcome.results = json.loads(results.read_text())
    return outcome


@pytest.fixture(scope="session")
def demo_plan() -> Path:
    """The embedded demo, built once (cached), with a shorter measurement budget for tests."""
    pytest.importorskip("sklearn")
    from certify.fixtures import demo

    plan = demo.ensure_built()
    text = plan.read_text()
    start, end = text.index("[measure]"), text.index("[[models]]")
    quick = plan.with_name("plan-quick.toml")
    quick.write_text(text[:start] + QUICK_MEASURE + "\n" + text[end:])
    return quick


NOT_JUDGED = "not judged: the host was too noisy"  # a timed gate's ERROR on a too-noisy host (measure.noise = wait)


def timed(result: dict[str, Any]) -> str:
    """A speed or stability verdict, or 'not_judged' when the host was too noisy to judge it (the harness then says
    so rather than pass or fail on it): what a test may assert on any host."""
    return "not_judged" if result["verdict"] == "error" and result["reason"].startswith(NOT_JUDGED) \
        else str(result["verdict"])
