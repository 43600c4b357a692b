"""Bad input never ends a session: a dataset loader that kills its process makes that model's cases ERROR, the
other models keep their results and results.json is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.conftest import run_certification
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")

ABORTING_MODEL = """
[[models]]
name = "aborting"
metric = "top1_accuracy"
[models.dataset]
loader = "os:abort"
[models.baseline]
path = "fp32.onnx"
framework = "onnxruntime"
"""


def test_a_dataset_loader_that_aborts_errors_its_model_alone(tmp_path: Path) -> None:
    folder = tiny_project(tmp_path)
    text = PLAN + candidate("int8", "int8.onnx") + ABORTING_MODEL + candidate("int8-too", "int8.onnx")
    (folder / "certify.toml").write_text(text)
    outcome = run_certification(folder, folder / "certify.toml", "-k", "accuracy")
    assert outcome.returncode in (0, 1), outcome.stdout[-2000:] + outcome.stderr[-2000:]
    v = outcome.verdicts()
    assert v[("int8", "accuracy")]["verdict"] == "pass"
    aborted = v[("int8-too", "accuracy")]
    assert aborted["verdict"] == "error"
    assert "dataset loader 'os:abort' crashed (SIGABRT)" in aborted["reason"]
    assert "Traceback" not in aborted["reason"] and "INTERNALERROR" not in outcome.stdout
