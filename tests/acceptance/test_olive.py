"""Olive candidates through the real suites: one quantized by an Olive pass (OnnxStaticQuantization, calibrated on
the plan's dataset) is built in the cache, keeps its accuracy, and the evidence names the provider that ran and the
one Olive targeted; one with a misspelt pass is an ERROR that says so, and the other candidates still complete."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import run_certification
from tests.helpers.models import PLAN, build_dataset, build_mlp, candidate, quantize_dynamic

# not pytest.importorskip("olive"): importing olive costs ~5 s; the suites' build child imports it
pytestmark = pytest.mark.skipif(importlib.util.find_spec("olive") is None, reason="olive-ai is not installed")
pytest.importorskip("onnxruntime")
CPU = "CPUExecutionProvider"


def olive_candidate(name: str, pass_type: str) -> str:
    return (f'\n[[models.candidates]]\nname = "{name}"\nframework = "olive"\n'
            f'recipe = {{ tool = "olive", method = "pass", pass = "{pass_type}", samples = 64 }}\n')


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("olive")
    build_mlp(folder / "fp32.onnx", (16, 64, 64, 4))
    build_dataset(folder / "data.npz", folder / "fp32.onnx")
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx")
    return folder


def accuracy_record(evidence: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [record] = [r for r in evidence if r["candidate"] == name and r["gate"] == "accuracy"]
    return record


def test_an_olive_quantized_candidate_is_certified_and_a_bad_pass_is_an_error(project: Path, tmp_path: Path) -> None:
    plan = project / "certify.toml"
    plan.write_text(PLAN + olive_candidate("olive-qdq", "OnnxStaticQuantization")
                    + olive_candidate("olive-typo", "OnnxStaticQuantisation") + candidate("int8", "int8.onnx"))
    outcome = run_certification(project, plan, "-k", "accuracy", env={"CERTIFY_CACHE_DIR": str(tmp_path / "cache")})
    verdicts, evidence = outcome.verdicts(), outcome.evidence()
    assert verdicts[("olive-qdq", "accuracy")]["verdict"] == "pass", outcome.stdout + outcome.stderr
    record = accuracy_record(evidence, "olive-qdq")
    where = record["measurement"]["candidate_where"]
    assert where["executed_device"] == CPU and where["info"]["providers_active"][0] == CPU
    assert where["info"]["framework"] == "olive" and where["info"]["olive"]["target"] == CPU
    assert where["info"]["olive"]["source"] == "olive.json" and where["info"]["olive"]["target_ran"] is True
    assert record["made_by"]["recipe"]["params"]["pass"] == "OnnxStaticQuantization"
    assert Path(record["made_by"]["source"]["path"]) == project / "fp32.onnx"
    typo = verdicts[("olive-typo", "accuracy")]
    assert typo["verdict"] == "error"
    assert "unknown Olive pass 'OnnxStaticQuantisation' (did you mean 'OnnxStaticQuantization'?)" in typo["reason"]
    assert verdicts[("int8", "accuracy")]["verdict"] == "pass"  # the other candidates complete
    built = list((tmp_path / "cache" / "recipes").glob("tiny--olive-qdq-*/olive.json"))
    assert len(built) == 1 and not list((tmp_path / "cache" / "recipes").glob("*typo*/"))
