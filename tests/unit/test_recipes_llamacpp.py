"""The llama.cpp quantization recipe, for real, on the tiny trained LLaMA: smaller files that load, fidelity graded
by type (KL from F32: Q8_0 << Q4_K_M << Q2_K), and failures that leave no partial file behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from certify.fixtures import tinyllama

from certify.backends import resolve_backend
from certify.digests import model_digest
from certify.plan import Dataset, ModelPlan, ModelRef
from certify.recipes import RECIPES, Recipe, RecipeError
from certify.recipes import llamacpp as recipes
from certify.recipes.build import BuildContext, made_by, materialize
from certify.recipes.child import Calibration
from tests.helpers.tinyllama import mean_kl, perplexity, quantized, tiny_llama

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
pytest.importorskip("torch")

ROWS, CONTEXT = 4, 128


@pytest.fixture(scope="module")
def source() -> Path:
    return tiny_llama() / tinyllama.MODEL_FILE


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """Held-out text: ROWS windows of CONTEXT + 1 tokens."""
    text = (tiny_llama() / tinyllama.EVAL_FILE).read_text(encoding="utf-8")
    return tinyllama.encode(text)[: ROWS * (CONTEXT + 1)].astype(np.int32).reshape(ROWS, CONTEXT + 1)


@pytest.fixture(scope="module")
def reference(source: Path, tokens: np.ndarray) -> np.ndarray:
    return logits(source, tokens)


def text_dataset() -> Dataset:
    return Dataset(path=None, loader=None, inputs=(), labels=None, text=tiny_llama() / tinyllama.EVAL_FILE)


def context(out: Path, source: Path, **params: Any) -> BuildContext:
    out.mkdir(parents=True, exist_ok=True)
    recipe = Recipe("llamacpp", "quantize", "baseline", tuple(sorted(params.items())))
    return BuildContext(recipe, source, text_dataset(), "perplexity", 0.05, 0, out)


def build(out: Path, source: Path, **params: Any) -> Path:
    ctx = context(out, source, **params)
    artifact = recipes.quantize(ctx, Calibration(ctx))
    assert artifact.parent == out and artifact.suffix == ".gguf"
    return artifact


def logits(model: Path, tokens: np.ndarray) -> np.ndarray:
    ref = ModelRef(name="m", path=model, framework="llamacpp", threads=2)
    backend = resolve_backend("llamacpp")(ref)
    backend.load()
    try:
        return backend.infer({"tokens": tokens[:, :-1]})[0]
    finally:
        backend.close()


def file_type(model: Path) -> str:
    backend = resolve_backend("llamacpp")(ModelRef(name="m", path=model, framework="llamacpp"))
    backend.load()
    return str(backend.info()["model"]["file_type"])


def test_quantized_models_shrink_load_and_lose_fidelity_in_order(tmp_path: Path, source: Path, tokens: np.ndarray,
                                                                 reference: np.ndarray) -> None:
    built = {kind: build(tmp_path / kind, source, type=kind, threads=2) for kind in ("Q8_0", "Q4_K_M", "Q2_K")}
    sizes = {kind: path.stat().st_size for kind, path in built.items()}
    assert sizes["Q8_0"] < source.stat().st_size / 3 and sizes["Q2_K"] < sizes["Q4_K_M"] < sizes["Q8_0"]
    assert {kind: file_type(path) for kind, path in built.items()} == {k: k for k in built}
    candidate = {kind: logits(path, tokens) for kind, path in built.items()}
    kl = {kind: mean_kl(reference, value) for kind, value in candidate.items()}
    assert kl["Q8_0"] < 1e-3 and 3 * kl["Q8_0"] < kl["Q4_K_M"] and 3 * kl["Q4_K_M"] < kl["Q2_K"], kl
    agreement = {k: float((v.argmax(-1) == reference.argmax(-1)).mean()) for k, v in candidate.items()}
    assert agreement["Q8_0"] > 0.98 and agreement["Q2_K"] < agreement["Q8_0"], agreement  # top-1 is coarser
    baseline = perplexity(reference, tokens[:, 1:])
    assert perplexity(candidate["Q8_0"], tokens[:, 1:]) == pytest.approx(baseline, rel=1e-3)
    assert perplexity(candidate["Q2_K"], tokens[:, 1:]) > baseline


def test_an_already_quantized_source_is_refused_unless_requantizing_is_allowed(tmp_path: Path, source: Path) -> None:
    q8 = quantized(source, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(RecipeError, match=r"quantize Q4_0: the source q8\.gguf is already quantized \(tensors: "
                                          r"\d+ Q8_0\)") as info:
        build(tmp_path / "refused", q8, type="Q4_0")
    assert "allow_requantize = true" in info.value.hint and not list((tmp_path / "refused").iterdir())
    requantized = build(tmp_path / "allowed", q8, type="Q4_0", allow_requantize=True)
    assert file_type(requantized) == "Q4_0"
    q4 = quantized(source, tmp_path / "q4.gguf", "Q4_0")  # upward: Q8_0 from Q4_0 only grows
    with pytest.raises(RecipeError, match="Q8_0 has more bits than its Q4_0 weights, so it could only be larger"):
        build(tmp_path / "upward", q4, type="Q8_0")


def test_requantizations_are_told_apart_by_their_bits() -> None:
    from certify.recipes.llamacpp import requantization

    assert requantization({}, "Q4_K_M") is None  # a float source: a quantization, not a requantization
    up = requantization({"Q4_1": 210, "Q8_0": 1}, "Q8_0")  # SmolLM2's published Q4_1: the embedding is Q8_0
    assert up is not None and up["upward"]
    assert (up["source_type"], up["source_bits"], up["target_bits"]) == ("Q4_1", 4, 8)
    down = requantization({"Q8_0": 30}, "Q2_K")
    assert down is not None and not down["upward"]
    same = requantization({"Q4_1": 12}, "Q4_0")  # the same bits: a requantization, not upward
    assert same is not None and not same["upward"]


def test_a_failed_llama_cpp_quantization_leaves_no_partial_file(tmp_path: Path, source: Path) -> None:
    """llama.cpp itself refuses to requantize Q8_0 without allow_requantize, after it began writing the output."""
    q8 = quantized(source, tmp_path / "q8.gguf", "Q8_0")
    out = tmp_path / "out" / "model-Q4_0.gguf"
    out.parent.mkdir()
    with pytest.raises(RecipeError, match=r"quantize Q4_0 of q8\.gguf failed: requantizing from type q8_0 is "
                                          "disabled"):
        recipes.run_quantize(q8, out, recipes.ftype_of("Q4_0"), allow_requantize=False, threads=2, name="Q4_0")
    assert not out.exists() and not list(out.parent.iterdir())


def test_bad_types_and_sources_are_clear_recipe_errors(tmp_path: Path, source: Path) -> None:
    with pytest.raises(RecipeError, match="unknown type 'Q9_X'") as info:
        build(tmp_path / "type", source, type="Q9_X")
    assert "Q4_K_M" in info.value.hint
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(RecipeError, match=r"needs a GGUF source model, got model\.onnx"):
        build(tmp_path / "onnx", tmp_path / "model.onnx", type="Q8_0")
    (tmp_path / "broken.gguf").write_bytes(source.read_bytes()[:4096])
    with pytest.raises(RecipeError, match=r"cannot read .*broken\.gguf as GGUF") as info:
        build(tmp_path / "broken", tmp_path / "broken.gguf", type="Q8_0")
    assert "truncated" in info.value.hint and not list((tmp_path / "broken").iterdir())


@pytest.mark.skipif(("llamacpp", "quantize") not in RECIPES, reason="the RECIPES entry for llamacpp quantize is "
                    "not registered yet (certify/recipes/__init__.py)")
def test_materialize_builds_in_the_child_and_reuses_it(recipe_cache: Path, source: Path) -> None:
    recipe = Recipe("llamacpp", "quantize", "baseline", (("type", "Q4_K_M"),))
    baseline = ModelRef(name="f32", path=source, framework="llamacpp")
    candidate = ModelRef(name="q4", path=None, framework="llamacpp", recipe=recipe)
    model = ModelPlan("tiny", "perplexity", text_dataset(), baseline, (candidate,))
    built = materialize(model, candidate, max_drop=0.05)
    assert built.file.name == "model-Q4_K_M.gguf" and recipe_cache in built.file.parents
    record = made_by(built)
    assert record is not None and record["source"]["sha256"] == model_digest(source).sha256
    assert record["recipe"]["params"] == {"type": "Q4_K_M"} and "llama-cpp-python" in record["versions"]
    assert file_type(built.file) == "Q4_K_M"
    materialize.cache_clear()
    assert materialize(model, candidate, max_drop=0.05).file == built.file
