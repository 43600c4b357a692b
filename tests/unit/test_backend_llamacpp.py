"""The llama.cpp backend, for real, on the tiny trained LLaMA: per-position logits, decoding, tokenizing, what it
records, and clear errors for broken files and over-long prompts, directly and through an isolated worker."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from certify.fixtures import tinyllama

from certify.backends import resolve_backend
from certify.backends.base import LanguageModel, prepare_feeds
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.tinyllama import quantized, tiny_llama, truncated, unknown_architecture

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
pytest.importorskip("torch")

TEXT = ("Return a new list of the items, sorted.  Raise ValueError when the key is\tmissing; "
        "naïve café — ✓ done\n\nSee also: functools.cmp_to_key().")
TOLERANCE = {"f32": 1e-3, "q8_0": 2e-2}  # single-token decode vs batched prompt kernels


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder, out = tiny_llama(), tmp_path_factory.mktemp("llamacpp")
    f32 = folder / tinyllama.MODEL_FILE
    return {"f32": f32, "q8_0": quantized(f32, out / "q8_0.gguf", "Q8_0"), "text": folder / tinyllama.EVAL_FILE,
            "truncated": truncated(f32, out / "truncated.gguf"), "arch": unknown_architecture(out / "arch.gguf")}


def ref(path: Path, **options: object) -> ModelRef:
    return ModelRef(name="m", path=path, framework="llamacpp", threads=2, options=tuple(options.items()))


def loaded(path: Path, **options: object) -> LanguageModel:
    backend = resolve_backend("llamacpp")(ref(path, **options))
    backend.load()
    assert isinstance(backend, LanguageModel)
    return backend


def windows(models: dict[str, Path], rows: int, n: int) -> np.ndarray:
    tokens = tinyllama.encode(models["text"].read_text(encoding="utf-8"))[: rows * n]
    return tokens.astype(np.int32).reshape(rows, n)


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_infer_gives_each_positions_logits_from_an_empty_context(models: dict[str, Path], kind: str) -> None:
    backend = loaded(models[kind])
    tokens = windows(models, 2, 96)
    first = backend.infer(prepare_feeds(backend.input_specs(), {"": tokens.astype(np.int64)}))[0]
    assert first.shape == (2, 96, tinyllama.N_VOCAB) and first.dtype == np.float32
    again = backend.infer({"tokens": tokens})[0]
    np.testing.assert_array_equal(first, again)  # each row from an empty context: nothing carries over
    plain = llama_cpp.Llama(str(models[kind]), n_ctx=512, n_threads=2, n_threads_batch=2, logits_all=True,
                            use_mmap=False, verbose=False)
    plain.eval(tokens[1].tolist())
    np.testing.assert_allclose(first[1], np.asarray(plain.scores[:96]), atol=1e-4)
    plain.close()
    backend.close()


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_decode_step_continues_the_context_like_a_longer_prompt(models: dict[str, Path], kind: str) -> None:
    backend = loaded(models[kind])
    tokens = windows(models, 1, 48)[0]
    for count, token in enumerate(tokens, start=1):
        backend.decode_step(int(token))
        if count in (1, 17, 48):
            expected = backend.infer({"tokens": tokens[None, :count]})[0][0, -1]
            np.testing.assert_allclose(backend.last_logits(), expected, atol=TOLERANCE[kind])  # type: ignore[attr-defined]
            for earlier in tokens[:count]:  # infer ended the running context: rebuild it
                backend.decode_step(int(earlier))
    backend.close()


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_prefill_gives_the_greedy_first_token_and_decoding_continues_after_the_prompt(
        models: dict[str, Path], kind: str) -> None:
    backend = loaded(models[kind], n_batch=16)  # a 40-token prompt in three chunks
    tokens = windows(models, 1, 41)[0]
    full = backend.infer({"tokens": tokens[None, :]})[0][0]
    first = backend.prefill(tokens[:40])
    assert first == int(np.argmax(full[39]))
    np.testing.assert_allclose(backend.last_logits(), full[39], atol=TOLERANCE[kind])  # type: ignore[attr-defined]
    backend.decode_step(int(tokens[40]))  # position 40: right after the prompt
    np.testing.assert_allclose(backend.last_logits(), full[40], atol=TOLERANCE[kind])  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match="n_ctx"):
        backend.prefill(np.zeros(600, dtype=np.int32))
    backend.close()


def test_decode_step_restarts_when_the_context_is_full(models: dict[str, Path]) -> None:
    backend = loaded(models["f32"], n_ctx=32)
    tokens = windows(models, 1, 40)[0]
    for token in tokens[:33]:
        backend.decode_step(int(token))  # the 33rd token starts a new context at position 0
    alone = backend.infer({"tokens": tokens[None, 32:33]})[0][0, -1]
    np.testing.assert_allclose(backend.last_logits(), alone, atol=1e-3)  # type: ignore[attr-defined]


def test_tokenize_is_the_byte_vocabulary_and_round_trips(models: dict[str, Path]) -> None:
    backend = loaded(models["f32"])
    tokens = backend.tokenize(TEXT)
    assert tokens == tinyllama.encode(TEXT).tolist()
    assert tokens[:2] == [ord("R") + tinyllama.BYTE_OFFSET, ord("e") + tinyllama.BYTE_OFFSET]  # no BOS, no "▁"
    assert tokens.count(tinyllama.SPACE_TOKEN) == TEXT.count(" ")
    assert len(tokens) == len(TEXT.encode("utf-8"))
    assert backend.detokenize(tokens) == TEXT  # type: ignore[attr-defined]


def test_info_records_versions_system_and_settings(models: dict[str, Path]) -> None:
    backend = loaded(models["q8_0"])
    info = backend.info()
    assert info["version"] == metadata.version("llama-cpp-python")
    assert "CPU" in info["system_info"] and info["devices"][0]["type"] == "CPU"
    assert info["use_mmap"] is False and info["n_ctx"] == 512 and info["n_batch"] == 512
    assert info["threads"] == info["threads_batch"] == 2
    assert info["n_gpu_layers_requested"] == 0 and info["n_gpu_layers_effective"] == 0
    assert backend.executed_device() == "CPU" and info["device"] == "cpu"
    model = info["model"]
    assert model["architecture"] == "llama" and model["file_type"] == "Q8_0"
    assert model["n_vocab"] == tinyllama.N_VOCAB and model["n_layer"] == tinyllama.Dims().n_layer
    assert model["n_params"] == sum(n * m for n, m in _matrix_shapes()) + _norm_params()
    assert backend.input_specs()[0].name == "tokens"


def _matrix_shapes() -> list[tuple[int, int]]:
    d = tinyllama.Dims()
    per_layer = [(d.n_embd, d.n_embd)] * 4 + [(d.n_ff, d.n_embd)] * 3
    return [(d.n_vocab, d.n_embd)] * 2 + per_layer * d.n_layer


def _norm_params() -> int:
    d = tinyllama.Dims()
    return d.n_embd * (2 * d.n_layer + 1)


def test_options_are_checked_and_mmap_can_be_turned_on(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"options\.n_ctx = 'big' must be a positive integer"):
        loaded(models["f32"], n_ctx="big")
    with pytest.raises(ModelError, match="kv_cache_type = 'q5' is not one of"):
        loaded(models["f32"], kv_cache_type="q5")
    backend = loaded(models["f32"], use_mmap=True, n_ctx=128, kv_cache_type="q8_0")
    info = backend.info()
    assert info["use_mmap"] is True and info["n_ctx"] == 128 and info["kv_cache_type"] == "q8_0"
    assert info["n_ctx_allocated"] >= 128  # llama.cpp pads it (to 256 with flash attention)
    assert backend.infer({"tokens": windows(models, 1, 16)})[0].shape == (1, 16, tinyllama.N_VOCAB)


def test_prompt_longer_than_the_context_is_a_clear_error_and_the_model_keeps_serving(
        models: dict[str, Path]) -> None:
    backend = loaded(models["f32"], n_ctx=64)
    with pytest.raises(ModelError, match=r"the prompt has 65 tokens but the context holds n_ctx = 64") as info:
        backend.infer({"tokens": windows(models, 1, 65)})
    assert "raise options.n_ctx to at least 65" in info.value.hint
    with pytest.raises(ModelError, match=r"token ids must lie in 0\.\.259"):
        backend.infer({"tokens": np.full((1, 4), 999, np.int32)})
    with pytest.raises(ModelError, match="n >= 1"):
        backend.infer({"tokens": np.zeros((1, 0), np.int32)})
    assert backend.infer({"tokens": windows(models, 1, 64)})[0].shape == (1, 64, tinyllama.N_VOCAB)


def test_broken_files_are_model_errors_with_llama_cpps_reason(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not within the file bounds") as info:
        loaded(models["truncated"])
    assert str(models["truncated"]) in info.value.message and "truncated" in info.value.hint
    with pytest.raises(ModelError, match="unknown model architecture: 'nosucharch'") as info:
        loaded(models["arch"])
    assert "architecture" in info.value.hint
    with pytest.raises(ModelError, match="no such file"):
        loaded(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ModelError, match="invalid magic"):
        loaded(tmp_path / "text.gguf")


def test_a_gpu_device_without_a_gpu_build_is_reported_not_faked(models: dict[str, Path]) -> None:
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build can offload to a GPU")
    gpu = ModelRef(name="m", path=models["f32"], framework="llamacpp", device="gpu")
    ok, detail = resolve_backend("llamacpp").available_devices(gpu)
    assert not ok and "no GPU offload" in detail and "GGML_CUDA" in detail
    backend = resolve_backend("llamacpp")(gpu)
    backend.load()  # llama.cpp itself falls back to the CPU: the record must say so
    assert backend.executed_device() == "CPU"
    assert backend.info()["n_gpu_layers_requested"] == -1 and backend.info()["n_gpu_layers_effective"] == 0


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_worker_runs_the_model_in_isolation(models: dict[str, Path], kind: str) -> None:
    tokens = windows(models, 3, 64)
    with WorkerClient("candidate", ref(models[kind]), 120) as worker:
        answer = worker.call("load", ref=ref(models[kind]))
        assert answer["executed_device"] == "CPU" and answer["info"]["use_mmap"] is False
        assert answer["inputs"] == [{"name": "tokens", "shape": ("batch", "sequence"), "dtype": "int32"}]
        assert worker.call("tokenize", text=TEXT) == tinyllama.encode(TEXT).tolist()
        assert worker.call("feeds", key="k", arrays={"": tokens.astype(np.int64)}) == {"tokens": [3, 64]}
        logits = worker.call("predict", key="k", batch_size=2)["scored"]
        decode_times = worker.call("run", key="k", iterations=20, mode="decode")
        prompt_times = worker.call("run", key="k", iterations=3)
        memory = worker.call("memory")
    direct = loaded(models[kind]).infer({"tokens": tokens})[0]
    np.testing.assert_array_equal(logits, direct)
    assert decode_times.shape == (20,) and (decode_times > 0).all() and prompt_times.shape == (3,)
    assert memory["peak"] - memory["rss_before"] >= 0.9 * models[kind].stat().st_size  # mmap off: weights resident


@pytest.mark.parametrize("use_mmap", [False, True])
def test_worker_times_prompts_and_reports_the_mapped_weights(models: dict[str, Path], use_mmap: bool) -> None:
    model = ref(models["f32"], use_mmap=use_mmap)
    with WorkerClient("candidate", model, 120) as worker:
        worker.call("load", ref=model)
        worker.call("feeds", key="k", arrays={"": windows(models, 2, 32)})
        prompt_times = worker.call("run", key="k", iterations=4, rewarm=1, mode="prompt")
        memory = worker.call("memory")
    size = models["f32"].stat().st_size
    assert prompt_times.shape == (4,) and (prompt_times > 0).all()
    if use_mmap:  # the weights are the file's pages: resident, counted in the peak, and reported as mapped
        assert memory["mapped_model"] >= 0.9 * size
        assert memory["peak"] - memory["rss_before"] >= 0.9 * size
    else:
        assert memory["mapped_model"] < 0.01 * size


def test_worker_load_failure_has_no_traceback(models: dict[str, Path]) -> None:
    with WorkerClient("candidate", ref(models["arch"]), 60) as worker, pytest.raises(ModelError) as info:
        worker.call("load", ref=ref(models["arch"]))
    assert "unknown model architecture" in info.value.message and "Traceback" not in info.value.message
