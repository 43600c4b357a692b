"""Recipes: validated with the plan, built once into the cache by content hash, never leaving a partial
model behind; ONNX Runtime's quantization recipes make real INT8 models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from certify.errors import PlanError
from certify.plan import ModelPlan
from certify.plan.load import load_plan
from certify.recipes import Recipe, RecipeError
from certify.recipes.build import BUILD_MARKER, made_by, materialize
from tests.helpers.models import PLAN, mlp_project

ort = pytest.importorskip("onnxruntime")
WIDE = (16, 64, 64, 4)


def recipe_candidate(name: str, recipe: str, framework: str = "onnxruntime") -> str:
    return f'\n[[models.candidates]]\nname = "{name}"\nframework = "{framework}"\nrecipe = {recipe}\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_project(tmp_path_factory.mktemp("recipes"), WIDE)


@pytest.fixture(autouse=True)
def cache(recipe_cache: Path) -> Path:
    return recipe_cache


def model_of(project: Path, *recipes: str) -> ModelPlan:
    (project / "certify.toml").write_text(PLAN + "".join(recipes))
    return load_plan(project / "certify.toml").models[0]


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


@pytest.mark.parametrize(("recipe", "key", "message"), [
    ('{ tool = "onnxrt", method = "quantize_dynamic" }', "tool", "did you mean 'onnxruntime'"),
    ('{ tool = "onnxruntime", method = "quantize_dinamic" }', "method", "did you mean 'quantize_dynamic'"),
    ('{ tool = "onnxruntime", method = "quantize_static", sample = 10 }', "sample", "did you mean 'samples'"),
    ('{ tool = "onnxruntime", method = "quantize_static", format = "QQQ" }', "format", "not one of QDQ, QOperator"),
    ('{ tool = "onnxruntime", method = "quantize_static", samples = "many" }', "samples", "expected int"),
    ('{ tool = "onnxruntime", method = "quantize_dynamic", from = "nobody" }', "from", "unknown source 'nobody'"),
])
def test_bad_recipes_are_plan_errors_naming_the_key(project: Path, recipe: str, key: str, message: str) -> None:
    with pytest.raises(PlanError) as err:
        model_of(project, recipe_candidate("q", recipe))
    assert err.value.key.endswith(key) and message in err.value.message


def test_recipe_cycles_and_path_plus_recipe_are_refused(project: Path) -> None:
    with pytest.raises(PlanError, match="cycle"):
        model_of(project, recipe_candidate("a", '{ tool = "onnxruntime", method = "quantize_dynamic", from = "b" }'),
                 recipe_candidate("b", '{ tool = "onnxruntime", method = "quantize_dynamic", from = "a" }'))
    both = recipe_candidate("q", '{ tool = "onnxruntime", method = "quantize_dynamic" }') + 'path = "fp32.onnx"\n'
    with pytest.raises(PlanError, match="not both"):
        model_of(project, both)


def test_dynamic_and_static_quantization_build_real_int8_models(project: Path) -> None:
    model = model_of(project,
                     recipe_candidate("dyn", '{ tool = "onnxruntime", method = "quantize_dynamic" }'),
                     recipe_candidate("qdq", '{ tool = "onnxruntime", method = "quantize_static", samples = 32 }'))
    x = np.load(project / "data.npz")["x"]
    reference = outputs(project / "fp32.onnx", x)
    for cand in model.candidates:
        assert cand.path is None and cand.recipe is not None
        built = materialize(model, cand, max_drop=0.05)
        assert built.path is not None and built.path.suffix == ".onnx"
        assert np.mean(outputs(built.path, x).argmax(1) == reference.argmax(1)) > 0.9
        record = made_by(built)
        assert record is not None and record["recipe"]["method"] == cand.recipe.method
        assert record["versions"]["onnxruntime"] == ort.__version__ and len(record["source"]["sha256"]) == 64
    import onnx

    ops = {n.op_type for n in onnx.load(str(materialize(model, model.candidates[1], max_drop=0.05).file)).graph.node}
    assert "QuantizeLinear" in ops  # QDQ format


def test_a_build_is_reused_and_a_changed_recipe_rebuilds(project: Path, cache: Path) -> None:
    one = model_of(project, recipe_candidate("q", '{ tool = "onnxruntime", method = "quantize_dynamic" }'))
    first = materialize(one, one.candidates[0], max_drop=0.05)
    stamp = first.file.stat().st_mtime_ns
    materialize.cache_clear()
    assert materialize(one, one.candidates[0], max_drop=0.05).file.stat().st_mtime_ns == stamp
    two = model_of(project, recipe_candidate(
        "q", '{ tool = "onnxruntime", method = "quantize_dynamic", per_channel = true }'))
    assert materialize(two, two.candidates[0], max_drop=0.05).file != first.file


def test_a_failed_build_leaves_no_model_and_names_the_cause(project: Path, cache: Path) -> None:
    model = model_of(project,
                     recipe_candidate("dyn", '{ tool = "onnxruntime", method = "quantize_dynamic" }'),
                     recipe_candidate("again", '{ tool = "onnxruntime", method = "quantize_static", from = "dyn" }'))
    with pytest.raises(RecipeError, match="already quantized") as err:
        materialize(model, model.candidates[1], max_drop=0.05)
    assert "'again'" in err.value.message and "'baseline'" in err.value.hint
    folders = [p for p in (cache / "recipes").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / BUILD_MARKER).is_file()  # only the good 'dyn' build remains
    assert json.loads((folders[0] / BUILD_MARKER).read_text())["recipe"]["method"] == "quantize_dynamic"


def test_calibration_data_that_does_not_fit_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", x=np.zeros((8, 16), np.float32), y=np.zeros(8, np.int64))
    text = PLAN.replace('path = "data.npz"', f'path = "{tmp_path / "other.npz"}"\ninputs = {{ wrong = "x" }}')
    (project / "other.toml").write_text(text + recipe_candidate(
        "qdq", '{ tool = "onnxruntime", method = "quantize_static", samples = 4 }'))
    model = load_plan(project / "other.toml").models[0]
    with pytest.raises(RecipeError, match=r"no array for model input\(s\) \['x'\]"):
        materialize(model, model.candidates[0], max_drop=0.05)


def test_describe_is_json_ready() -> None:
    recipe = Recipe("nncf", "quantize", "ov-fp32", (("ignored_scope", ("a", "b")), ("samples", 10)))
    assert recipe.describe() == {"tool": "nncf", "method": "quantize", "from": "ov-fp32", "stage": "quantization",
                                 "params": {"ignored_scope": ["a", "b"], "samples": 10}}
