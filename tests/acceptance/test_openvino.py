"""An OpenVINO candidate through the real suites: an FP16 IR of the tiny ONNX baseline keeps its accuracy and the
evidence names the device that ran; AUTO with a missing NPU falls back to the CPU and says so; a GPU candidate on
a host without one is NOT EVALUATED, with what OpenVINO sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import run_certification
from tests.helpers.models import PLAN, build_dataset, build_mlp, candidate

ov = pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


def has_device(kind: str) -> bool:
    return any(d.split(".")[0] == kind for d in ov.Core().available_devices)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("openvino")
    build_mlp(folder / "fp32.onnx")
    build_dataset(folder / "data.npz", folder / "fp32.onnx")
    ov.save_model(ov.convert_model(str(folder / "fp32.onnx")), str(folder / "fp16.xml"), compress_to_fp16=True)
    return folder


def accuracy_record(evidence: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [record] = [r for r in evidence if r["candidate"] == name and r["gate"] == "accuracy"]
    return record


def test_openvino_ir_is_certified_on_accuracy_and_a_missing_gpu_is_not_evaluated(project: Path) -> None:
    plan = project / "certify.toml"
    plan.write_text(PLAN + candidate("ov-fp16", "fp16.xml", "openvino", 'device = "CPU"')
                    + candidate("ov-auto", "fp16.xml", "openvino", 'device = "AUTO:NPU,CPU"')
                    + candidate("ov-gpu", "fp16.xml", "openvino", 'device = "GPU"'))
    outcome = run_certification(project, plan, "-k", "accuracy")
    verdicts, evidence = outcome.verdicts(), outcome.evidence()
    for name in ("ov-fp16", "ov-auto"):
        assert verdicts[(name, "accuracy")]["verdict"] == "pass", outcome.stdout + outcome.stderr
    where = accuracy_record(evidence, "ov-fp16")["measurement"]["candidate_where"]
    assert where["executed_device"] == "CPU" and where["info"]["framework"] == "openvino"
    assert where["info"]["version"] == ov.__version__
    if not has_device("NPU"):  # AUTO fell back to the CPU, and the evidence says so
        auto = accuracy_record(evidence, "ov-auto")["measurement"]["candidate_where"]
        assert auto["executed_device"] == "CPU" and auto["info"]["device_requested"] == "AUTO:NPU,CPU"
    if has_device("GPU"):
        return
    gpu = verdicts[("ov-gpu", "accuracy")]
    assert gpu["verdict"] == "not_evaluated"
    assert "device 'GPU' not available: GPU is not available; OpenVINO " in gpu["reason"]
    assert "devices here: CPU" in gpu["reason"] and "intel-opencl-icd" in gpu["reason"]
    assert outcome.returncode == 6  # not evaluated is reported, not failed (missing_device = "skip"), nor certified
