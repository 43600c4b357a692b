"""The stress suite for real (``pytest -m stress``): a good ONNX Runtime candidate holds two concurrent clients and
Poisson arrivals, and each candidate that breaks only under load fails on the check it breaks: a leak on memory
growth, a slowdown on throughput decay or tail latency, a shared output slot on output mismatches, and a runtime
that fails every 50th request on errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers.models import PLAN, candidate, mlp_project

pytest.importorskip("onnxruntime")

WIDTHS = (256, 2048, 2048, 8)  # a few milliseconds a request: well above the host's scheduling jitter
STRESS = """
[stress]
duration_s = 3.0
clients = 2
rate = 40.0
windows = 3
sample_every = 2
"""
FAULTY = {"leak": "LeakOnInfer", "slow": "SlowsUnderLoad", "racy": "RacyOutputs", "flaky": "FailsSometimes"}
HOST_SENSITIVE = {"p99", "decay", "memory"}  # what other processes on a shared host can move within seconds
HEADER = PLAN.replace('path = "data.npz"', 'path = "data.npz"\nspeed_batch_size = 32') + STRESS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_project(tmp_path_factory.mktemp("stress"), WIDTHS)


@pytest.fixture(scope="module")
def outcome(project: Path) -> Outcome:
    text = HEADER + candidate("fp32", "fp32.onnx")
    for name, cls in FAULTY.items():
        text += candidate(name, "fp32.onnx", framework=f"tests.helpers.faulty_stress:{cls}")
    plan = project / "certify.toml"
    plan.write_text(text)
    return run_certification(project, plan, "-m", "stress")


def _stress(outcome: Outcome, name: str) -> dict[str, Any]:
    return outcome.verdicts()[(name, "stress")]


def _measurement(outcome: Outcome, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r["measurement"] for r in outcome.evidence() if r["candidate"] == name)
    return found


def test_only_the_stress_suite_ran_every_candidate(outcome: Outcome) -> None:
    assert {gate for _, gate in outcome.verdicts()} == {"stress"}, outcome.stdout[-3000:]
    assert len(outcome.verdicts()) == 1 + len(FAULTY) and outcome.returncode == 1
    assert all(r["serialized"] for r in outcome.evidence())  # under the exclusive measurement lock


def test_a_good_candidate_holds_sustained_load(outcome: Outcome, project: Path, tmp_path: Path) -> None:
    result, figures = _stress(outcome, "fp32"), _measurement(outcome, "fp32")
    if result["verdict"] == "fail" and set(result["details"]["broken"]) <= HOST_SENSITIVE:
        # tail latency, throughput over 1 s windows and a 2 s memory slope follow what other processes on this
        # shared 2-core host do meanwhile (the reason says how busy they kept the cores): measure once more
        plan = project / "certify-fp32.toml"
        plan.write_text(HEADER + candidate("fp32", "fp32.onnx"))
        again = run_certification(tmp_path, plan, "-m", "stress")
        result, figures = _stress(again, "fp32"), _measurement(again, "fp32")
    assert result["verdict"] == "pass", result["reason"]
    assert result["reason"].startswith("sustained load held (2 clients for 3 s")
    assert figures["errors"] == 0 and figures["outputs"]["mismatched"] == 0 and figures["outputs"]["compared"] > 20
    assert figures["open_loop"]["rate"] == 40.0 and figures["open_loop"]["requests"] > 20
    assert figures["executed_device"] == "CPUExecutionProvider" and not figures["served_one_at_a_time"]
    assert len(figures["closed_loop"]["windows_per_s"]) == 3 and figures["memory"]["samples_s_mib"]


@pytest.mark.parametrize(("name", "check", "words"), [
    ("leak", "memory", "Theil-Sen over"),
    ("slow", "decay", "throughput decay"),
    ("racy", "outputs", "sampled outputs differ from isolation"),
    ("flaky", "errors", "RuntimeError: simulated failure of request"),
])
def test_a_candidate_that_breaks_under_load_fails_on_what_it_breaks(outcome: Outcome, name: str, check: str,
                                                                     words: str) -> None:
    result = _stress(outcome, name)
    assert result["verdict"] == "fail" and check in result["details"]["broken"], result["reason"]
    assert words in result["reason"] and result["hint"]
