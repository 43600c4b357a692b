"""From a plan alone: a metric that cannot judge is refused, a user's own metric decides, and a quantization that
changed nothing is never certified as one. Real ONNX Runtime inference on the streaming RNN fixture
(``certify.fixtures.streaming_rnn``: a one-column speech probability, the state carried over chunks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from certify.fixtures import streaming_rnn

from tests.acceptance.conftest import run_certification

pytest.importorskip("onnxruntime")

PLAN = """
name = "vad"
[measure]
bootstrap_resamples = 300
[[models]]
name = "vad"
metric = {metric}
dataset = {{ path = "audio.npz", inputs = {{ input = "input" }}, labels = "labels", batch_size = 8 }}
""" + streaming_rnn.PLAN_LAYOUT.replace("{", "{{").replace("}", "}}") + """[models.baseline]
path = "{baseline}"
framework = "onnxruntime"
[[models.candidates]]
name = "int8"
framework = "onnxruntime"
recipe = {{ tool = "onnxruntime", method = "quantize_dynamic" }}
"""

USER_METRIC = '''
import numpy as np


def close(outputs, baseline, labels):
    """Per sequence: the share of chunks whose probability is within 0.02 of the baseline's."""
    diff = np.abs(outputs.reshape(len(outputs), -1) - baseline.reshape(len(baseline), -1))
    return (diff <= 0.02).mean(axis=1)
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    streaming_rnn.build(folder / "vad.onnx")
    streaming_rnn.build(folder / "vad_if.onnx", wrapped_in_if=True)
    streaming_rnn.make_dataset(folder / "audio.npz", sequences=16, chunks=6)
    (folder / "vad_metrics.py").write_text(USER_METRIC)
    return folder


def certify(folder: Path, metric: str, baseline: str = "vad.onnx", *args: str) -> object:
    plan = folder / "certify.toml"
    plan.write_text(PLAN.format(metric=metric, baseline=baseline))
    return run_certification(folder, plan, "-m", "accuracy", *args)


def test_argmax_of_a_probability_is_refused_with_the_metric_to_use(project: Path) -> None:
    outcome = certify(project, '"top1_agreement"')
    accuracy = outcome.verdicts()[("int8", "accuracy")]  # type: ignore[attr-defined]
    assert accuracy["verdict"] == "error", accuracy
    assert "cannot judge this model" in accuracy["reason"] and "always the same" in accuracy["reason"]
    assert "binary_agreement" in accuracy["hint"]


def test_binary_agreement_and_a_user_metric_judge_the_int8_stream(project: Path) -> None:
    outcome = certify(project, '{ name = "binary_agreement", threshold = 0.5 }')
    accuracy = outcome.verdicts()[("int8", "accuracy")]  # type: ignore[attr-defined]
    assert accuracy["verdict"] == "pass" and accuracy["details"]["samples"] == 16, accuracy
    record = [r for r in outcome.evidence() if r["gate"] == "accuracy"][-1]  # type: ignore[attr-defined]
    batching = record["measurement"]["candidate_where"]["batching"]
    assert batching["streamed"] and batching["scored"] == ["output"]
    outcome = certify(project, '{ name = "vad_metrics:close" }', "vad.onnx", "--rootdir", str(project))
    accuracy = outcome.verdicts()[("int8", "accuracy")]  # type: ignore[attr-defined]
    assert accuracy["verdict"] in ("pass", "fail") and accuracy["details"]["metric"] == "vad_metrics:close", accuracy


def test_a_quantization_that_quantized_nothing_is_an_error_not_an_int8(project: Path) -> None:
    outcome = certify(project, '{ name = "binary_agreement" }', "vad_if.onnx")
    accuracy = outcome.verdicts()[("int8", "accuracy")]  # type: ignore[attr-defined]
    assert accuracy["verdict"] == "error", accuracy
    assert "quantized no node" in accuracy["reason"] and "If subgraphs" in accuracy["reason"], accuracy
