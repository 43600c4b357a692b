"""The MLX backend on mlx-lm model folders, for real on the MLX CPU backend: a tiny llama folder loaded by mlx-lm,
decode and prefill through mlx-lm's KV cache equal to full-sequence ``infer``, the folder's tokenizer, the
quantize recipe on mlx-lm folders, and clear errors for over-long prompts and broken configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import LanguageModel
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import Dataset, ModelRef
from certify.recipes import Recipe, RecipeError
from certify.recipes.build import BuildContext
from certify.recipes.child import Calibration
from tests.helpers.tinyllama import mean_kl

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
from certify.recipes import mlx as recipes  # noqa: E402
from tests.helpers.mlx_lm_models import CONFIG, mlx_lm_folder  # noqa: E402


def ref(path: Path, **options: Any) -> ModelRef:
    return ModelRef(name="m", path=path, framework="mlx", options=tuple(options.items()))


def loaded(path: Path, **options: Any) -> Any:
    backend = resolve_backend("mlx")(ref(path, **options))
    backend.load()
    return backend


def quantized(out: Path, source: Path, **params: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    recipe = Recipe("mlx", "quantize", "baseline", tuple(sorted(params.items())))
    context = BuildContext(recipe, source, Dataset(None, None, (), None), "accuracy", 0.05, 0, out)
    return recipes.quantize(context, Calibration(context))


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return mlx_lm_folder(tmp_path_factory.mktemp("mlxlm") / "llama")


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 40)).astype(np.int32)


def test_loads_with_mlx_lm_and_reports_it(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0] / "config.json")  # the folder, or its config.json
    assert isinstance(backend, LanguageModel)
    assert [(s.name, s.shape, s.dtype) for s in backend.input_specs()] == [("tokens", ("batch", "sequence"), "int32")]
    info = backend.info()
    assert info["kind"] == "mlx_lm" and info["model_type"] == "llama" and info["kv_cache"] is True
    assert info["vocab"] == 256 and info["n_ctx"] == CONFIG["max_position_embeddings"]
    assert info["quantization"] is None and info["quantized_layers"] == 0
    assert info["n_params"] == info["parameter_count"] > 0 and info["stored_bytes"] == 4 * info["n_params"]
    assert info["weights"] == ["model.safetensors"] and info["tokenizer"] == "tokenizer.json"
    assert info["threads"] == "not configurable in MLX" and info["device"] == "cpu"
    assert backend.executed_device() == "cpu"


def test_infer_equals_the_mlx_lm_model_run_directly(lm: tuple[Path, Any], tokens: np.ndarray) -> None:
    folder, model = lm
    logits = loaded(folder).infer({"tokens": tokens})[0]
    assert logits.shape == (3, 40, 256) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, np.array(model(mx.array(tokens))), rtol=1e-5, atol=1e-5)


def test_kv_cache_decode_matches_infer(lm: tuple[Path, Any], tokens: np.ndarray) -> None:
    backend = loaded(lm[0])
    logits = backend.infer({"tokens": tokens})[0]
    for i, token in enumerate(tokens[2]):
        backend.decode_step(int(token))
        np.testing.assert_allclose(backend.last_logits(), logits[2, i], rtol=1e-4, atol=1e-4)
    assert backend._position == tokens.shape[1]  # one cache grew by one token a step, never re-run


def test_prefill_returns_the_greedy_token_and_decode_continues(lm: tuple[Path, Any], tokens: np.ndarray) -> None:
    backend = loaded(lm[0])
    logits = backend.infer({"tokens": tokens})[0]
    for prompt_length in (1, 25):
        first = backend.prefill(tokens[0, :prompt_length])
        assert first == int(np.argmax(logits[0, prompt_length - 1]))
        np.testing.assert_allclose(backend.last_logits(), logits[0, prompt_length - 1], rtol=1e-4, atol=1e-4)
        for i in range(prompt_length, prompt_length + 5):  # the context continues after the prompt
            backend.decode_step(int(tokens[0, i]))
            np.testing.assert_allclose(backend.last_logits(), logits[0, i], rtol=1e-4, atol=1e-4)


def test_a_long_prompt_fills_the_cache_in_steps(lm: tuple[Path, Any], tokens: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.backends import mlx as backend_module

    backend = loaded(lm[0])
    logits = backend.infer({"tokens": tokens})[0]
    monkeypatch.setattr(backend_module, "PREFILL_STEP", 7)  # 39 cached tokens in 6 steps, then the last one
    assert backend.prefill(tokens[1]) == int(np.argmax(logits[1, -1]))
    np.testing.assert_allclose(backend.last_logits(), logits[1, -1], rtol=1e-4, atol=1e-4)


def test_decode_context_restarts_when_full(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0], n_ctx=4)
    alone = backend.infer({"tokens": np.array([[5]], np.int32)})[0][0, -1]
    assert backend.prefill(np.array([1, 2, 3, 4], np.int32)) >= 0
    backend.decode_step(5)  # the context is full: it restarts from this token
    np.testing.assert_allclose(backend.last_logits(), alone, rtol=1e-5, atol=1e-5)


def test_over_long_and_bad_prompts_are_model_errors(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0], n_ctx=8)
    with pytest.raises(ModelError, match="the prompt has 9 tokens but the context holds n_ctx = 8") as info:
        backend.prefill(np.zeros(9, np.int32))
    assert "shorter prompts" in info.value.hint
    with pytest.raises(ModelError, match="n_ctx = 8"):
        backend.infer({"tokens": np.zeros((1, 9), np.int32)})
    with pytest.raises(ModelError, match="1-D prompt"):
        backend.prefill(np.zeros((1, 4), np.int32))
    with pytest.raises(ModelError, match=r"token ids must lie in 0..255"):
        backend.prefill(np.array([1, 256], np.int32))
    with pytest.raises(ModelError, match="outside the vocabulary"):
        backend.decode_step(256)
    assert backend.prefill(np.zeros(8, np.int32)) >= 0  # still serving


def test_tokenizer_from_the_folder(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0])
    assert backend.tokenize("hé, MLX") == list("hé, MLX".encode())  # byte-level, no BOS
    assert backend.detokenize(backend.tokenize("hé, MLX")) == "hé, MLX"


def test_a_folder_without_tokenizer_runs_tokens_but_not_text(tmp_path: Path, tokens: np.ndarray) -> None:
    folder, _ = mlx_lm_folder(tmp_path / "notok", tokenizer=False)
    backend = loaded(folder)
    assert backend.info()["tokenizer"] is None
    assert backend.infer({"tokens": tokens[:1]})[0].shape == (1, 40, 256)
    with pytest.raises(ModelError, match=r"notok has no tokenizer, so it cannot tokenize text") as info:
        backend.tokenize("hello")
    assert "tokenizer.json" in info.value.hint


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.pop("model_type"), r"config\.json: 'model_type' must name an mlx-lm architecture"),
    (lambda c: c.update(model_type="no_such_arch"), r"config\.json: model_type 'no_such_arch' is not an "
                                                   r"architecture of mlx-lm"),
    (lambda c: c.update(model_type="../llama"), r"'model_type' must name an mlx-lm architecture"),
    (lambda c: c.pop("hidden_size"), r"broken/config\.json \(model_type 'llama'\) does not load with mlx-lm .*"
                                     r"TypeError: .* missing 1 required positional argument: 'hidden_size'"),
    (lambda c: c.update(hidden_size=32), r"broken/config\.json \(model_type 'llama'\) does not load with .*"
                                         r"Expected shape"),
])
def test_a_broken_config_is_a_model_error_naming_the_file(tmp_path: Path, lm: tuple[Path, Any], edit: Any,
                                                          message: str) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(lm[0], folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message):
        loaded(folder)


def test_missing_weights_and_invalid_json_are_model_errors(tmp_path: Path, lm: tuple[Path, Any]) -> None:
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(lm[0] / "config.json", folder)
    with pytest.raises(ModelError, match=r"no weights in .*noweights \(looked for model\*\.safetensors\)"):
        loaded(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json is not valid JSON"):
        loaded(folder)


def test_quantize_recipe_makes_a_close_quantized_mlx_lm_folder(tmp_path: Path, lm: tuple[Path, Any],
                                                               tokens: np.ndarray) -> None:
    reference = loaded(lm[0]).infer({"tokens": tokens})[0]
    kl, size = {}, {}
    for bits in (8, 4, 2):
        out = quantized(tmp_path / f"q{bits}", lm[0], bits=bits, group_size=32)
        assert out.name == f"mlx-q{bits}-g32" and (out / "model.safetensors").is_file()
        assert (out / "tokenizer.json").is_file()  # the source's other files come along
        config = json.loads((out / "config.json").read_text())
        assert config["quantization"] == {"group_size": 32, "bits": bits, "mode": "affine"}
        backend = loaded(out)
        info = backend.info()
        assert info["quantization"] == {"group_size": 32, "bits": bits, "mode": "affine"}
        assert info["quantized_layers"] > 0 and info["kv_cache"] is True
        logits = backend.infer({"tokens": tokens})[0]
        kl[bits] = mean_kl(reference, logits)
        size[bits] = info["stored_bytes"] / (4 * info["n_params"])
        backend.decode_step(int(tokens[0, 0]))  # the quantized model decodes through the KV cache too
        np.testing.assert_allclose(backend.last_logits(), logits[0, 0], rtol=1e-4, atol=1e-4)
    print(f"\nmlx-lm tiny llama vs float: KL {kl}, stored size {size}")
    assert 0 < kl[8] < 1e-3 and kl[8] < kl[4] < kl[2]
    assert size[8] < 0.35 and size[4] < size[8]


def test_quantize_recipe_refuses_a_quantized_source_and_a_broken_one(tmp_path: Path, lm: tuple[Path, Any]) -> None:
    once = quantized(tmp_path / "once", lm[0], bits=8, group_size=64)
    with pytest.raises(RecipeError, match="already quantized"):
        quantized(tmp_path / "twice", once, bits=4)
    broken = tmp_path / "broken"
    shutil.copytree(lm[0], broken)
    (broken / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(RecipeError, match=r"cannot load the source: .*'model_type' must name"):
        quantized(tmp_path / "none", broken)
    assert not (tmp_path / "none").exists() or list((tmp_path / "none").iterdir()) == []


def test_through_the_worker(lm: tuple[Path, Any], tokens: np.ndarray) -> None:
    with WorkerClient("baseline", ref(lm[0]), 120) as worker:
        answer = worker.call("load", ref=ref(lm[0]))
        assert answer["info"]["kind"] == "mlx_lm" and answer["info"]["kv_cache"] is True
        assert worker.call("tokenize", text="tiny") == list(b"tiny")
        worker.call("feeds", key="t", arrays={"": tokens[:2, :16]})
        assert worker.call("run", key="t", iterations=6, mode="decode").shape == (6,)
        assert worker.call("run", key="t", iterations=3, mode="prompt").shape == (3,)
        assert worker.call("predict", key="t", batch_size=1)["scored"].shape == (2, 16, 256)
