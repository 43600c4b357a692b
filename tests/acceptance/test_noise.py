"""A host kept busy by other jobs gives no speed PASS: with the default ``measure.noise = "wait"`` the harness
re-checks the host until ``noise_wait_s`` runs out, measures, and calls the timed verdicts not judged (ERROR),
with the figures and the conditions kept in the evidence and shown in the matrix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import NOT_JUDGED, run_certification
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

SPIN = "while True: pass"


@pytest.fixture
def busy_host() -> Iterator[None]:
    """Two busy loops on this host's (two) cores: the preflight's calibration loop gets half a core or less."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_a_busy_host_gets_no_speed_pass(tmp_path: Path, busy_host: None) -> None:
    tiny_project(tmp_path)
    plan = tmp_path / "certify.toml"
    plan.write_text(PLAN.replace("threads = 1", "threads = 1\nnoise_wait_s = 6") + candidate("int8", "int8.onnx"))
    outcome = run_certification(tmp_path, plan, "-k", "speed or stability")
    v = outcome.verdicts()
    for gate in ("speed", "stability"):
        result = v[("int8", gate)]
        assert result["verdict"] == "error" and result["reason"].startswith(NOT_JUDGED), result
        assert result["details"]["conditions"]["noise"] == "too_noisy"
    record = next(r for r in outcome.evidence() if r["gate"] == "speed")
    measured = record["measurement"]
    assert measured["samples"] > 0 and measured["preflight"]["checks"] >= 2  # it waited, then measured
    assert "ERROR (too noisy)" in outcome.stdout and outcome.returncode == 1
