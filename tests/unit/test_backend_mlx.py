"""The MLX backend, for real on the MLX CPU backend: an MLP classifier and a tiny causal LM as mlx.nn folders,
outputs equal to the module run directly, the language-model protocol, info, clear errors, and the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import LanguageModel
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef

mx = pytest.importorskip("mlx.core")
from tests.helpers.mlx_models import lm_folder, mlp_folder  # noqa: E402


def ref(path: Path, **options: Any) -> ModelRef:
    return ModelRef(name="m", path=path, framework="mlx", options=tuple(options.items()))


def loaded(path: Path, **options: Any) -> Any:
    backend = resolve_backend("mlx")(ref(path, **options))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return mlp_folder(tmp_path_factory.mktemp("mlx") / "mlp")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return lm_folder(tmp_path_factory.mktemp("mlx") / "lm")


def test_array_model_matches_the_module_run_directly(mlp: tuple[Path, Any]) -> None:
    folder, module = mlp
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    backend = loaded(folder)
    assert [(s.name, s.shape, s.dtype) for s in backend.input_specs()] == [("x", ("batch", 64), "float32")]
    out = backend.infer({"x": x})
    assert len(out) == 1 and out[0].shape == (5, 10) and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], np.array(module(mx.array(x))), rtol=1e-5, atol=1e-6)
    assert backend.executed_device() == "cpu"


def test_info_records_version_device_dtype_and_parameters(mlp: tuple[Path, Any]) -> None:
    info = loaded(folder := mlp[0]).info()
    assert info["framework"] == "mlx" and info["version"] == mx.__version__
    assert info["device"] == "cpu" and info["representative_for"] == ["cpu"]
    assert info["weight_dtypes"] == ["float32"] and info["quantization"] is None
    assert info["parameter_count"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert info["stored_bytes"] == 4 * info["parameter_count"] and folder.is_dir()
    assert info["threads"] == "not configurable in MLX" and "vocab" not in info and "kv_cache" not in info


def test_model_json_path_and_npz_weights_load(tmp_path: Path) -> None:
    folder, module = mlp_folder(tmp_path / "npz", seed=3)
    (folder / "weights.safetensors").unlink()
    module.save_weights(str(folder / "weights.npz"))
    x = np.ones((1, 64), np.float32)
    backend = loaded(folder / "model.json")
    assert backend.info()["weights"] == "weights.npz"
    np.testing.assert_allclose(backend.infer({"x": x})[0], np.array(module(mx.array(x))), rtol=1e-5)


def test_language_model_infer_decode_and_tokenize(lm: tuple[Path, Any]) -> None:
    folder, module = lm
    backend = loaded(folder)
    assert isinstance(backend, LanguageModel)
    assert [(s.name, s.shape, s.dtype) for s in backend.input_specs()] == [("tokens", ("batch", "sequence"), "int32")]
    tokens = np.array([backend.tokenize("hello, MLX"), backend.tokenize("edge AI!!!")], dtype=np.int32)
    assert backend.tokenize("hé") == [104, 0xC3, 0xA9] and backend.detokenize(backend.tokenize("hé")) == "hé"
    logits = backend.infer({"tokens": tokens})[0]
    assert logits.shape == (2, 10, 256) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, np.array(module(mx.array(tokens))), rtol=1e-5, atol=1e-5)
    for i, token in enumerate(tokens[1]):
        backend.decode_step(int(token))
        np.testing.assert_allclose(backend.last_logits(), logits[1, i], rtol=1e-4, atol=1e-4)
    info = backend.info()
    assert info["kind"] == "language_model" and info["vocab"] == 256 and info["kv_cache"] is False
    assert info["tokenizer"] == "bytes" and info["n_ctx"] == 128


def test_prefill_returns_the_greedy_token_and_decode_continues(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0])
    tokens = np.array([list(b"prefill, then decode")], np.int32)
    logits = backend.infer({"tokens": tokens})[0][0]
    for prompt_length in (1, 8):
        first = backend.prefill(tokens[0, :prompt_length])
        assert first == int(np.argmax(logits[prompt_length - 1]))
        np.testing.assert_allclose(backend.last_logits(), logits[prompt_length - 1], rtol=1e-4, atol=1e-4)
        for i in range(prompt_length, prompt_length + 4):  # the context continues after the prompt
            backend.decode_step(int(tokens[0, i]))
            np.testing.assert_allclose(backend.last_logits(), logits[i], rtol=1e-4, atol=1e-4)


def test_decode_context_restarts_when_full(lm: tuple[Path, Any]) -> None:
    backend = loaded(lm[0], n_ctx=4)
    for token in (1, 2, 3, 4, 5):
        backend.decode_step(token)
    last = backend.last_logits()
    alone = backend.infer({"tokens": np.array([[5]], np.int32)})[0][0, -1]
    np.testing.assert_allclose(last, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="no decode_step"):  # infer restarted the running context
        backend.last_logits()


@pytest.mark.parametrize(("tokens", "message"), [
    (np.zeros((1, 5), np.int32), "context holds n_ctx = 4"),
    (np.full((1, 2), 300, np.int32), r"token ids must lie in 0..255"),
    (np.zeros((1, 0), np.int32), r"tokens must be \[batch, n\]"),
])
def test_bad_prompts_are_model_errors(lm: tuple[Path, Any], tokens: np.ndarray, message: str) -> None:
    backend = loaded(lm[0], n_ctx=4)
    with pytest.raises(ModelError, match=message):
        backend.infer({"tokens": tokens})
    with pytest.raises(ModelError, match=message):
        backend.prefill(tokens[0])
    with pytest.raises(ModelError, match="outside the vocabulary"):
        backend.decode_step(256)
    with pytest.raises(ModelError, match="1-D prompt"):
        backend.prefill(tokens)
    assert 0 <= backend.prefill(np.zeros(4, np.int32)) < 256  # still serving


def test_missing_factory_is_a_clear_model_error(tmp_path: Path, mlp: tuple[Path, Any]) -> None:
    folder = tmp_path / "nofactory"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes((mlp[0] / "weights.safetensors").read_bytes())
    (folder / "model.json").write_text(json.dumps({"factory": "no_such_pkg.models:mlp"}))
    with pytest.raises(ModelError, match=r"factory 'no_such_pkg.models:mlp' .* cannot be imported") as info:
        loaded(folder)
    assert "install the package" in info.value.hint


def test_missing_weights_and_missing_folder_are_model_errors(tmp_path: Path, mlp: tuple[Path, Any]) -> None:
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "model.json").write_text((mlp[0] / "model.json").read_text())
    with pytest.raises(ModelError, match="no weights in"):
        loaded(folder)
    with pytest.raises(ModelError, match=r"model\.json does not exist"):
        loaded(tmp_path / "absent")


def test_mismatched_weights_name_the_file(tmp_path: Path, mlp: tuple[Path, Any]) -> None:
    folder = tmp_path / "mismatch"
    mlp_folder(folder, hidden=32)  # weights of another width
    (folder / "model.json").write_text((mlp[0] / "model.json").read_text())  # kwargs of the default width
    with pytest.raises(ModelError, match=r"weights .*weights.safetensors do not fit the model") as info:
        loaded(folder)
    assert "another architecture" in info.value.hint
    (folder / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="do not fit the model"):
        loaded(folder)


def test_devices_cpu_always_gpu_only_with_metal(mlp: tuple[Path, Any]) -> None:
    cls = resolve_backend("mlx")
    assert cls.available_devices(ref(mlp[0]))[0] is True
    gpu = ModelRef(name="m", path=mlp[0], framework="mlx", device="gpu")
    ok, detail = cls.available_devices(gpu)
    assert ok is bool(mx.metal.is_available())
    if not ok:
        assert "Metal is not available" in detail
        with pytest.raises(ModelError, match="cannot run on 'gpu'"):
            cls(gpu).load()
    assert cls.available_devices(ModelRef(name="m", path=mlp[0], framework="mlx", device="npu"))[0] is False


def test_through_the_worker(mlp: tuple[Path, Any], lm: tuple[Path, Any]) -> None:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    with WorkerClient("candidate", ref(mlp[0]), 120) as worker:
        answer = worker.call("load", ref=ref(mlp[0]))
        assert answer["executed_device"] == "cpu" and answer["info"]["framework"] == "mlx"
        worker.call("feeds", key="k", arrays={"": x.astype(np.float64)})
        assert worker.call("run", key="k", iterations=5).shape == (5,)
        out = worker.call("predict", key="k", batch_size=3)["scored"]
        with pytest.raises(ModelError, match=r"input 'x': dataset shape \(2, 7\)"):
            worker.call("feeds", key="bad", arrays={"": np.zeros((2, 7), np.float32)})
    np.testing.assert_allclose(out, np.array(mlp[1](mx.array(x))), rtol=1e-5, atol=1e-6)
    with WorkerClient("baseline", ref(lm[0]), 120) as worker:
        worker.call("load", ref=ref(lm[0]))
        tokens = worker.call("tokenize", text="tiny")
        assert tokens == list(b"tiny")
        worker.call("feeds", key="t", arrays={"": np.array([tokens], np.int32)})
        assert worker.call("run", key="t", iterations=6, mode="decode").shape == (6,)
        assert worker.call("run", key="t", iterations=3, mode="prompt").shape == (3,)
        assert worker.call("predict", key="t", batch_size=1)["scored"].shape == (1, 4, 256)
