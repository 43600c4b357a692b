"""OpenVINO/NNCF recipes through the real suites: baseline ONNX -> OpenVINO FP32 IR -> NNCF INT8, made by recipes,
certified on accuracy with how each was made in the evidence; a recipe with a bad ignored_scope is an ERROR with
its own message while the others complete."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from certify.digests import file_sha256
from tests.acceptance.conftest import run_certification
from tests.helpers.models import PLAN, build_mlp, confident_dataset

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnxruntime")



def recipe_candidate(name: str, recipe: str) -> str:
    return f'\n[[models.candidates]]\nname = "{name}"\nframework = "openvino"\nrecipe = {recipe}\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ovrecipes")
    build_mlp(folder / "fp32.onnx", (16, 64, 64, 4))
    confident_dataset(folder / "data.npz", folder / "fp32.onnx")
    return folder


def test_a_convert_then_quantize_chain_is_certified_and_a_broken_recipe_errors_alone(project: Path) -> None:
    plan = project / "certify.toml"
    plan.write_text(PLAN
                    + recipe_candidate("ov-fp32", '{ tool = "openvino", method = "convert" }')
                    + recipe_candidate("ov-int8", '{ tool = "nncf", method = "quantize", from = "ov-fp32", '
                                                  'samples = 64 }')
                    + recipe_candidate("ov-w8", '{ tool = "nncf", method = "compress_weights", from = "ov-fp32" }')
                    + recipe_candidate("ov-broken", '{ tool = "nncf", method = "quantize", from = "ov-fp32", '
                                                    'ignored_scope = ["no_such_node"] }'))
    outcome = run_certification(project, plan, "-k", "accuracy", env={"CERTIFY_CACHE_DIR": str(project / "cache")})
    verdicts = outcome.verdicts()
    for name in ("ov-fp32", "ov-int8", "ov-w8"):
        assert verdicts[(name, "accuracy")]["verdict"] == "pass", (name, outcome.stdout + outcome.stderr)
        assert verdicts[(name, "accuracy")]["value"] >= 0.95
    broken = verdicts[("ov-broken", "accuracy")]
    assert broken["verdict"] == "error"
    assert ("recipe nncf quantize for 'ov-broken' failed: ignored_scope names node(s) that model.xml does not "
            "have: 'no_such_node'") in broken["reason"]
    assert "m0, m1, y" in broken["hint"] and "Traceback" not in outcome.stdout
    assert outcome.returncode == 1

    made = {r["candidate"]: r["made_by"] for r in outcome.evidence() if r["gate"] == "accuracy"}
    assert made["ov-broken"] is None  # nothing was built, nothing is claimed
    fp32, int8 = made["ov-fp32"], made["ov-int8"]
    assert fp32["recipe"] == {"tool": "openvino", "method": "convert", "from": "baseline", "params": {},
                              "stage": "conversion"}
    versions = {"openvino": metadata.version("openvino"), "nncf": metadata.version("nncf")}
    assert fp32["versions"] == {"openvino": versions["openvino"]} and fp32["dataset_sha256"] is None
    assert int8["recipe"]["params"] == {"samples": 64} and int8["versions"] == versions
    assert int8["dataset_sha256"] == file_sha256(project / "data.npz")  # calibrated on the plan's dataset
    assert made["ov-w8"]["source"]["sha256"] == fp32["sha256"] and made["ov-w8"]["dataset_sha256"] is None
    assert int8["source"]["sha256"] == fp32["sha256"]  # the INT8 stage was built from the FP32 IR stage
    assert fp32["source"]["path"] == str(project / "fp32.onnx") and len(fp32["source"]["sha256"]) == 64
