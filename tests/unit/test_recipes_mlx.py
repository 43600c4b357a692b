"""The MLX quantization recipe, for real on the MLX CPU backend: folders that reload through the backend,
fidelity graded by bits (8-bit much closer to float than 3- and 2-bit), smaller weights, clear RecipeErrors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.plan import Dataset, ModelRef
from certify.recipes import Recipe, RecipeError
from certify.recipes.build import BuildContext
from certify.recipes.child import Calibration

pytest.importorskip("mlx.core")
from certify.recipes import mlx as recipes
from tests.helpers.mlx_models import lm_folder, mlp_folder


def build(out: Path, source: Path, **params: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    recipe = Recipe("mlx", "quantize", "baseline", tuple(sorted(params.items())))
    context = BuildContext(recipe, source, Dataset(None, None, (), None), "accuracy", 0.05, 0, out)
    artifact = recipes.quantize(context, Calibration(context))
    assert artifact.parent == out and (artifact / "model.json").is_file()
    return artifact


def run(folder: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    backend = resolve_backend("mlx")(ModelRef(name="m", path=folder, framework="mlx"))
    backend.load()
    return backend.infer(feeds)[0], backend.info()


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    p, q = log_softmax(reference.astype(np.float64)), log_softmax(other.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lm_folder(tmp_path_factory.mktemp("mlxq") / "lm", dims=128, heads=4)[0]


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 64)).astype(np.int32)


def test_language_model_fidelity_is_graded_by_bits(tmp_path: Path, lm: Path, tokens: np.ndarray) -> None:
    reference, float_info = run(lm, {"tokens": tokens})
    kl, agree, size = {}, {}, {}
    for bits in (8, 4, 3, 2):
        logits, info = run(build(tmp_path / f"q{bits}", lm, bits=bits, group_size=64), {"tokens": tokens})
        assert info["quantization"] == {"bits": bits, "group_size": 64, "mode": "affine"}
        assert info["quantized_layers"] > 0 and info["parameter_count"] == float_info["parameter_count"]
        kl[bits] = mean_kl(reference, logits)
        agree[bits] = float((reference.argmax(-1) == logits.argmax(-1)).mean())
        size[bits] = info["stored_bytes"] / float_info["stored_bytes"]
    print(f"\nmlx tiny LM vs float: KL {kl}, top-1 agreement {agree}, stored size {size}")
    assert kl[8] < kl[4] < kl[3] < kl[2] and kl[8] < kl[2] / 20
    assert agree[8] >= 0.95 and agree[8] > agree[2]
    assert size[8] < 0.35 and size[4] < size[8]


def test_classifier_keeps_its_predictions_at_8_bits(tmp_path: Path) -> None:
    source = mlp_folder(tmp_path / "mlp", seed=1)[0]
    x = np.random.default_rng(2).standard_normal((512, 64)).astype(np.float32)
    reference, _ = run(source, {"x": x})
    agree = {}
    for bits in (8, 2):
        out, _ = run(build(tmp_path / f"q{bits}", source, bits=bits, group_size=32), {"x": x})
        agree[bits] = float((out.argmax(-1) == reference.argmax(-1)).mean())
        if bits == 8:
            np.testing.assert_allclose(out, reference, atol=0.05)
    print(f"\nmlx MLP top-1 agreement with float: {agree}")
    assert agree[8] >= 0.98 and agree[8] > agree[2]


def test_model_json_records_the_quantized_layers(tmp_path: Path, lm: Path) -> None:
    out = build(tmp_path, lm, bits=4, group_size=128)
    spec = json.loads((out / "model.json").read_text())
    assert out.name == "mlx-q4-g128"
    assert spec["quantization"]["bits"] == 4 and spec["factory"].endswith(":tiny_lm")
    assert "head" in spec["quantization"]["layers"] and "embed" in spec["quantization"]["layers"]


@pytest.mark.parametrize(("params", "message"), [
    ({"bits": 7}, "bits = 7 is not supported"),
    ({"bits": True}, "bits = True is not supported"),
    ({"group_size": 16}, "group_size = 16 is not supported"),
    ({"bits": "4"}, "bits = '4' is not supported"),
])
def test_invalid_parameters_are_recipe_errors(tmp_path: Path, lm: Path, params: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build(tmp_path, lm, **params)
    assert list(tmp_path.iterdir()) == []


def test_requantizing_and_a_broken_source_are_recipe_errors(tmp_path: Path, lm: Path) -> None:
    once = build(tmp_path / "once", lm, bits=8)
    with pytest.raises(RecipeError, match="already quantized"):
        build(tmp_path / "twice", once, bits=4)
    with pytest.raises(RecipeError, match=r"cannot load the source: .*model.json does not exist"):
        build(tmp_path / "none", tmp_path / "absent")


def test_no_quantizable_layer_is_a_recipe_error(tmp_path: Path) -> None:
    source = mlp_folder(tmp_path / "narrow", features=48, hidden=48, classes=10)[0]
    with pytest.raises(RecipeError, match=r"no layer .* divisible by group_size 128"):
        build(tmp_path / "out", source, group_size=128)


def test_the_recipe_builds_through_the_cache_from_a_plan(tmp_path: Path, recipe_cache: Path) -> None:
    from certify.plan.load import load_plan
    from certify.recipes.build import made_by, materialize

    folder, _ = mlp_folder(tmp_path / "fp32")
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.zeros(16, np.int64))
    (tmp_path / "certify.toml").write_text(f"""
[[models]]
name = "mlp"
metric = "top1_agreement"
[models.dataset]
path = "data.npz"
[models.baseline]
path = "{folder}"
framework = "mlx"
[[models.candidates]]
name = "q8"
framework = "mlx"
recipe = {{ tool = "mlx", method = "quantize", bits = 8, group_size = 32 }}
""")
    model = load_plan(tmp_path / "certify.toml").models[0]
    built = materialize(model, model.candidates[0], max_drop=0.05)
    record = made_by(built)
    assert record is not None and record["recipe"]["params"] == {"bits": 8, "group_size": 32}
    backend = resolve_backend("mlx")(built)
    backend.load()
    assert backend.info()["quantization"]["bits"] == 8
    assert np.asarray(backend.infer({"x": x})[0]).shape == (16, 10)


def test_an_mlx_lm_folder_builds_through_the_cache_from_a_plan(tmp_path: Path, recipe_cache: Path) -> None:
    pytest.importorskip("mlx_lm")
    from certify.plan.load import load_plan
    from certify.recipes.build import made_by, materialize
    from tests.helpers.mlx_lm_models import mlx_lm_folder

    folder, _ = mlx_lm_folder(tmp_path / "llama")
    (tmp_path / "eval.txt").write_text("The harness certifies edge models. " * 20)
    (tmp_path / "certify.toml").write_text(f"""
[[models]]
name = "llama"
[models.dataset]
text = "eval.txt"
context = 32
chunks = 4
[models.baseline]
path = "{folder}"
framework = "mlx"
[[models.candidates]]
name = "q4"
framework = "mlx"
recipe = {{ tool = "mlx", method = "quantize", bits = 4, group_size = 32 }}
""")
    model = load_plan(tmp_path / "certify.toml").models[0]
    built = materialize(model, model.candidates[0], max_drop=0.05)
    record = made_by(built)
    assert record is not None and record["recipe"]["params"] == {"bits": 4, "group_size": 32}
    assert built.path is not None and built.path.name == "mlx-q4-g32"
    assert sorted(p.name for p in built.path.iterdir()) == [
        "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    backend = resolve_backend("mlx")(built)
    backend.load()
    info = backend.info()
    assert info["kind"] == "mlx_lm" and info["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    assert backend.tokenize("edge") == list(b"edge")
