"""Olive recipes, with real Olive runs on a small MLP: one named pass (dynamic and static INT8) or a user's workflow
file, built offline in the recipe child into the cache, leaving only the model and a record of the provider Olive
targeted; bad pass names, config keys and calibration data are clear errors. Also the Olive backend's reading of
that record and of Olive's own output folder (it needs Olive-made models, so its tests live here)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from certify.backends.olive import OliveBackend, olive_facts
from certify.plan import ModelPlan, ModelRef
from certify.plan.load import load_plan
from certify.recipes import RecipeError
from certify.recipes.build import BUILD_MARKER, made_by, materialize
from tests.helpers.models import PLAN, mlp_project

# not pytest.importorskip("olive"): importing olive costs ~5 s (torch, transformers) and the builds run in a child
pytestmark = pytest.mark.skipif(importlib.util.find_spec("olive") is None, reason="olive-ai is not installed")
ort = pytest.importorskip("onnxruntime")
WIDE = (16, 64, 64, 4)
CPU = "CPUExecutionProvider"


def olive_candidate(name: str, params: str, method: str = "pass") -> str:
    return (f'\n[[models.candidates]]\nname = "{name}"\nframework = "olive"\n'
            f'recipe = {{ tool = "olive", method = "{method}", {params} }}\n')


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_project(tmp_path_factory.mktemp("olive"), WIDE)


@pytest.fixture(autouse=True)
def cache(recipe_cache: Path) -> Path:
    return recipe_cache


def model_of(project: Path, *candidates: str, plan: str = PLAN) -> ModelPlan:
    (project / "certify.toml").write_text(plan + "".join(candidates))
    return load_plan(project / "certify.toml").models[0]


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=[CPU]).run(None, {"x": x})[0])


def ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(("pass_type", "params", "quantized_ops", "samples"), [
    ("OnnxDynamicQuantization", "", {"DynamicQuantizeLinear", "MatMulInteger"}, None),
    ("OnnxStaticQuantization", ", samples = 64", {"QuantizeLinear", "DequantizeLinear"}, 64),
])
def test_a_pass_builds_an_int8_model_records_its_provider_and_is_reused(
        project: Path, pass_type: str, params: str, quantized_ops: set[str], samples: int | None) -> None:
    model = model_of(project, olive_candidate("q", f'pass = "{pass_type}"{params}'))
    started = time.perf_counter()
    built = materialize(model, model.candidates[0], max_drop=0.05)
    build_s = time.perf_counter() - started
    assert built.path is not None and built.path.name == "model.onnx" and quantized_ops <= ops(built.path)
    x = np.load(project / "data.npz")["x"]
    reference, got = outputs(project / "fp32.onnx", x), outputs(built.path, x)
    assert np.mean(got.argmax(1) == reference.argmax(1)) > 0.9
    assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()
    record = json.loads((built.path.parent / "olive.json").read_text())
    assert record["pass"] == pass_type and record["execution_provider"] == CPU and record["device"] == "cpu"
    versions = (made_by(built) or {})["versions"]
    assert record["calibration_samples"] == samples and record["olive_version"] == versions["olive-ai"]
    assert [p["pass"] for p in record["passes"]] == [pass_type.lower()]
    assert sorted(p.name for p in built.path.parent.iterdir()) == sorted([BUILD_MARKER, "model.onnx", "olive.json"])
    materialize.cache_clear()  # a second call finds the build by its key: no Olive run
    stamp, started = built.path.stat().st_mtime_ns, time.perf_counter()
    again = materialize(model, model.candidates[0], max_drop=0.05)
    assert again.path == built.path and again.path.stat().st_mtime_ns == stamp
    assert time.perf_counter() - started < min(1.0, build_s / 3)


def test_a_bad_pass_name_is_a_recipe_error_with_did_you_mean(project: Path, cache: Path) -> None:
    model = model_of(project, olive_candidate("q", 'pass = "OnnxStaticQuantisation"'))
    with pytest.raises(RecipeError) as err:
        materialize(model, model.candidates[0], max_drop=0.05)
    assert "unknown Olive pass 'OnnxStaticQuantisation' (did you mean 'OnnxStaticQuantization'?)" in err.value.message
    assert "'q'" in err.value.message
    assert not [p for p in (cache / "recipes").iterdir() if p.is_dir()]  # no partial build left behind


def test_an_unknown_pass_config_key_is_refused_not_ignored(project: Path) -> None:
    """Olive itself silently ignores unknown pass config keys: a typo would quietly change nothing."""
    model = model_of(project, olive_candidate("q", 'pass = "OnnxDynamicQuantization", config = { per_chanel = true }'))
    with pytest.raises(RecipeError, match=r"unknown config key\(s\) 'per_chanel' for Olive pass "
                                          r"OnnxDynamicQuantization \(did you mean 'per_channel'\?\)"):
        materialize(model, model.candidates[0], max_drop=0.05)


@pytest.mark.parametrize(("config", "cause"), [
    ('quant_format = "XYZ"', "KeyError: 'XYZ'"),  # Olive logs this failure and returns no model: not raised
    ('per_channel = "maybe"', "ValidationError: per_channel: Input should be a valid boolean"),  # raised
])
def test_a_pass_that_fails_inside_olive_is_one_line_cause(project: Path, cache: Path, config: str, cause: str) -> None:
    params = f'pass = "OnnxStaticQuantization", samples = 8, config = {{ {config} }}'
    model = model_of(project, olive_candidate("q", params))
    with pytest.raises(RecipeError) as err:
        materialize(model, model.candidates[0], max_drop=0.05)
    assert f"Olive pass OnnxStaticQuantization failed: {cause}" in err.value.message
    assert "\n" not in err.value.message and not [p for p in (cache / "recipes").iterdir() if p.is_dir()]


@pytest.mark.parametrize(("x", "message"), [
    (np.full((8, 16), np.nan, np.float32), "calibration data for input 'x' holds NaN or infinite values"),
    (np.zeros((8, 12), np.float32), r"calibration data for input 'x' has shape \(12,\) per sample but the model "
                                    r"expects \(16,\)"),
])
def test_bad_calibration_data_is_a_recipe_error(project: Path, tmp_path: Path, x: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros(len(x), np.int64))
    plan = PLAN.replace('path = "data.npz"', f'path = "{tmp_path / "bad.npz"}"')
    model = model_of(project, olive_candidate("q", 'pass = "OnnxStaticQuantization", samples = 8'), plan=plan)
    with pytest.raises(RecipeError, match=message):
        materialize(model, model.candidates[0], max_drop=0.05)


def test_a_workflow_file_runs_on_the_recipe_source_with_outputs_redirected(project: Path, tmp_path: Path) -> None:
    workflow = {
        "input_model": {"type": "HfModel", "model_path": "not/used"},  # replaced by the recipe's source
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": [CPU]}]}},
        "passes": {"peephole": {"type": "OnnxPeepholeOptimizer"}, "quantize": {"type": "OnnxDynamicQuantization"}},
        "engine": {"host": "local_system", "target": "local_system", "output_dir": str(tmp_path / "elsewhere"),
                   "cache_dir": str(tmp_path / "olive-cache"), "log_severity_level": 3},
    }
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    model = model_of(project, olive_candidate("wf", f'config = "{tmp_path / "workflow.json"}"', method="workflow"))
    built = materialize(model, model.candidates[0], max_drop=0.05)
    assert built.path is not None and "MatMulInteger" in ops(built.path)
    record = json.loads((built.path.parent / "olive.json").read_text())
    assert record["method"] == "workflow" and record["execution_provider"] == CPU
    assert [p["pass"] for p in record["passes"]] == ["onnxpeepholeoptimizer", "onnxdynamicquantization"]
    assert record["workflow"]["overridden"] == ["cache_dir", "output_dir"] and len(record["workflow"]["sha256"]) == 64
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "olive-cache").exists()


def olive_backend(path: Path, providers: tuple[str, ...] = ()) -> OliveBackend:
    olive_facts.cache_clear()
    backend = OliveBackend(ModelRef(name="c", path=path, framework="olive", providers=providers))
    backend.load()
    return backend


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_the_backend_asks_for_the_target_olive_recorded_and_reports_what_ran(tmp_path: Path, project: Path) -> None:
    """A model Olive built for CUDA, on a host without CUDA: ORT falls back to the CPU and the info says both."""
    shutil.copy(project / "fp32.onnx", tmp_path / "model.onnx")
    (tmp_path / "olive.json").write_text(json.dumps({"tool": "olive", "execution_provider": "CUDAExecutionProvider",
                                                     "device": "gpu", "olive_version": "0.13.0", "passes": []}))
    backend = olive_backend(tmp_path / "model.onnx")
    info = backend.info()
    assert info["providers_requested"] == ["CUDAExecutionProvider", CPU] and info["framework"] == "olive"
    assert info["olive"]["target"] == "CUDAExecutionProvider" and info["olive"]["providers_from"] == "olive"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert backend.executed_device() == CPU and info["olive"]["target_ran"] is False
    cpu_ok, _ = OliveBackend.available_devices(ModelRef("c", tmp_path / "model.onnx", "olive"))
    gpu_ok, detail = OliveBackend.available_devices(ModelRef("c", tmp_path / "model.onnx", "olive", device="gpu"))
    assert cpu_ok and "Olive targeted CUDAExecutionProvider" in detail
    assert gpu_ok == ("CUDAExecutionProvider" in ort.get_available_providers())
    plan_wins = olive_backend(tmp_path / "model.onnx", providers=(CPU,)).info()
    assert plan_wins["providers_requested"] == [CPU] and plan_wins["olive"]["providers_from"] == "plan"


def test_the_backend_reads_an_olive_output_folder_made_outside_the_harness(project: Path, tmp_path: Path) -> None:
    """`olive run --config` writes model.onnx, model_config.json and footprints, but no target provider (0.13)."""
    (tmp_path / "workflow.json").write_text(json.dumps({
        "input_model": {"type": "ONNXModel", "model_path": str(project / "fp32.onnx")},
        "passes": {"quantize": {"type": "OnnxDynamicQuantization"}}, "output_dir": "out", "cache_dir": "cache"}))
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "CI": "1"}
    done = subprocess.run([sys.executable, "-m", "olive", "run", "--config", "workflow.json"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "out" / "model_config.json").read_text())
    facts = olive_backend(tmp_path / "out" / "model.onnx").info()["olive"]
    assert facts["passes"] == ["onnxdynamicquantization"] and facts["providers_from"] == "device default"
    assert facts["target"] is None and not config["config"]["inference_settings"]
    config["config"]["inference_settings"] = {"execution_provider": [[CPU, {}]], "provider_options": [{}]}
    (tmp_path / "out" / "model_config.json").write_text(json.dumps(config))  # as OrtSessionParamsTuning leaves it
    facts = olive_backend(tmp_path / "out" / "model.onnx").info()["olive"]
    assert facts["target"] == CPU and facts["source"] == "model_config.json" and facts["target_ran"] is True
