"""The ONNX Runtime GenAI backend, for real, on the tiny trained Llama exported by onnxruntime-genai's own model
builder (``certify.fixtures.hf_llama``, fp32 and int4): logits equal transformers', the generator's prefill and
decode equal full-prompt evaluation, the folder's tokenizer and BOS policy, what it records, clear errors for broken
folders and over-long prompts, devices it cannot reach, and the backend in an isolated worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import LanguageModel, prepare_feeds
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.tinyllama import mean_kl

pytest.importorskip("onnxruntime_genai")
from certify.fixtures import hf_llama

TEXT = ("Return a new list of the items, sorted.  Raise ValueError when the key is\tmissing; "
        "naïve café — ✓ done\n\nSee also: functools.cmp_to_key().")


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    try:
        return {"fp32": hf_llama.exported("ortgenai", "fp32"), "int4": hf_llama.exported("ortgenai", "int4"),
                "hf": hf_llama.ensure_checkpoint()}
    except hf_llama.FixtureUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tokens(models: dict[str, Path]) -> np.ndarray:
    """Two windows of the held-out text as the checkpoint's tokenizer gives them, each after BOS."""
    pytest.importorskip("transformers")
    text = (models["hf"] / hf_llama.EVAL_FILE).read_text(encoding="utf-8")
    ids = hf_llama.load_tokenizer(models["hf"])(text[:4000], add_special_tokens=False).input_ids
    return np.array([[1, *ids[:63]], [1, *ids[63:126]]], dtype=np.int32)


def ref(path: Path, device: str = "cpu", **options: Any) -> ModelRef:
    return ModelRef(name="m", path=path, framework="ortgenai", device=device, threads=2,
                    options=tuple(options.items()))


def loaded(path: Path, **options: Any) -> Any:
    backend = resolve_backend("ortgenai")(ref(path, **options))
    backend.load()
    assert isinstance(backend, LanguageModel)
    return backend


def copy_folder(source: Path, target: Path, link: bool = True) -> Path:
    """The folder's small files copied (to edit them), its ONNX files linked (or copied: onnxruntime resolves a
    linked model.onnx to its real folder and looks for model.onnx.data there)."""
    target.mkdir()
    for file in source.iterdir():
        if link and file.suffix in (".onnx", ".data"):
            (target / file.name).symlink_to(file)
        else:
            shutil.copy(file, target / file.name)
    return target


def test_loads_and_records_what_ran(models: dict[str, Path]) -> None:
    backend = loaded(models["fp32"] / "genai_config.json")  # the folder, or a file in it
    assert [(s.name, s.shape, s.dtype) for s in backend.input_specs()] == [("tokens", ("batch", "sequence"), "int32")]
    assert backend.executed_device() == "CPUExecutionProvider"
    info = backend.info()
    assert info["framework"] == "onnxruntime-genai" and info["version"] and info["onnxruntime_version"] != "missing"
    assert info["provider"] == info["provider_requested"] == "CPUExecutionProvider" and info["device"] == "cpu"
    assert info["providers_in_config"] == ["cpu (none named)"]  # the CPU builder names no provider
    assert info["model_type"] == "llama" and info["vocab"] == hf_llama.VOCAB
    assert info["n_ctx"] == info["context_length"] == 512 and info["threads"] == 2
    assert info["precision"] == "fp32" and info["decoder"] == "model.onnx"
    assert set(info["onnx_files"]) == {"model.onnx", "model.onnx.data"}
    assert info["stored_bytes"] > 4 * 3_000_000  # ~3.4 M float32 parameters
    int4 = loaded(models["int4"]).info()
    assert int4["precision"] == "int4" and int4["stored_bytes"] < info["stored_bytes"] / 3


def test_fp32_logits_equal_transformers(models: dict[str, Path], tokens: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    backend = loaded(models["fp32"])
    logits = backend.infer(prepare_feeds(backend.input_specs(), {"": tokens.astype(np.int64)}))[0]
    assert logits.shape == (2, 64, hf_llama.VOCAB) and logits.dtype == np.float32
    np.testing.assert_array_equal(backend.infer({"tokens": tokens[1:]})[0][0], logits[1])  # rows start empty
    torch.set_num_threads(2)
    model = LlamaForCausalLM.from_pretrained(str(models["hf"]), local_files_only=True)  # in eval mode
    with torch.inference_mode():
        expected = model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    print(f"\nortgenai fp32 vs transformers: max |logit diff| {np.abs(logits - expected).max():.2e}")
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["fp32", "int4"])
def test_prefill_and_decode_equal_infer(models: dict[str, Path], tokens: np.ndarray, kind: str) -> None:
    backend = loaded(models[kind])
    logits = backend.infer({"tokens": tokens})[0]
    worst = 0.0
    for prompt_length in (1, 40):
        first = backend.prefill(tokens[0, :prompt_length])
        assert first == int(np.argmax(logits[0, prompt_length - 1]))
        for at in range(prompt_length, prompt_length + 8):  # the context continues after the prompt
            backend.decode_step(int(tokens[0, at]))
            worst = max(worst, float(np.abs(backend.last_logits() - logits[0, at]).max()))
    backend.infer({"tokens": tokens[:1, :3]})  # ends the decode context: the next step starts an empty one
    with pytest.raises(ModelError, match="no decode_step or prefill"):
        backend.last_logits()
    for at in range(64):
        backend.decode_step(int(tokens[1, at]))
    worst = max(worst, float(np.abs(backend.last_logits() - logits[1, -1]).max()))
    print(f"\nortgenai {kind}: max |decode - infer| {worst:.2e}")
    assert worst < 1e-4  # one-token steps and whole prompts run the same kernels here


def test_decode_context_restarts_when_full(models: dict[str, Path]) -> None:
    backend = loaded(models["fp32"], n_ctx=4)
    alone = backend.infer({"tokens": np.array([[5]], np.int32)})[0][0, -1]
    assert backend.prefill(np.array([1, 2, 3, 4], np.int32)) >= 0
    backend.decode_step(5)  # the context is full: it restarts from this token
    np.testing.assert_allclose(backend.last_logits(), alone, atol=1e-5)


def test_int4_differs_from_fp32_but_stays_close(models: dict[str, Path], tokens: np.ndarray) -> None:
    fp32 = loaded(models["fp32"]).infer({"tokens": tokens})[0]
    int4 = loaded(models["int4"]).infer({"tokens": tokens})[0]
    kl = mean_kl(fp32, int4)
    agreement = float((fp32.argmax(-1) == int4.argmax(-1)).mean())
    print(f"\nortgenai int4 vs fp32: mean KL {kl:.2e}, max |logit diff| {np.abs(fp32 - int4).max():.3f}, "
          f"top-1 agreement {agreement:.3f}")
    assert 0 < kl < 0.05 and agreement > 0.9


def test_tokenizer_equals_the_checkpoints_without_bos(models: dict[str, Path]) -> None:
    pytest.importorskip("transformers")
    hf = hf_llama.load_tokenizer(models["hf"])
    backend = loaded(models["fp32"])
    ids = backend.tokenize(TEXT)
    assert ids == hf.encode(TEXT, add_special_tokens=False) and ids[0] != 1
    assert backend.detokenize(ids) == TEXT == hf.decode(ids)  # the SentencePiece prefix space is stripped
    text = (models["hf"] / hf_llama.EVAL_FILE).read_text(encoding="utf-8")[:20_000]
    assert backend.tokenize(text) == hf.encode(text, add_special_tokens=False)


def test_special_tokens_come_from_the_folder(models: dict[str, Path], tmp_path: Path) -> None:
    special = loaded(models["fp32"]).special_tokens()
    assert (special["add_bos"], special["bos"], special["add_eos"], special["eos"]) == (True, 1, False, 2)
    assert "tokenizer.json post_processor adds BOS" in special["source"]
    folder = copy_folder(models["fp32"], tmp_path / "said")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False,
                                                              "add_eos_token": True}))
    special = loaded(folder).special_tokens()
    assert (special["add_bos"], special["add_eos"], special["eos"]) == (False, True, 2)
    assert "tokenizer_config.json add_bos_token = false" in special["source"]
    assert "tokenizer_config.json add_eos_token = true" in special["source"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    spec = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps({**spec, "post_processor": None}))
    special = loaded(folder).special_tokens()  # no file says: what the og tokenizer adds with its specials on
    assert (special["add_bos"], special["bos"], special["add_eos"]) == (True, 1, False)
    assert "add_bos_token said nowhere" in special["source"]


def test_over_long_prompts_and_bad_options_are_model_errors(models: dict[str, Path]) -> None:
    backend = loaded(models["fp32"], n_ctx=8)
    with pytest.raises(ModelError, match="the prompt has 9 tokens but the context holds n_ctx = 8") as info:
        backend.prefill(np.zeros(9, np.int32))
    assert "raise options.n_ctx" in info.value.hint
    with pytest.raises(ModelError, match="n_ctx = 8"):
        backend.infer({"tokens": np.zeros((1, 9), np.int32)})
    with pytest.raises(ModelError, match="1-D prompt"):
        backend.prefill(np.zeros((1, 4), np.int32))
    with pytest.raises(ModelError, match=r"token ids must lie in 0\.\.511"):
        backend.prefill(np.array([1, 512], np.int32))
    with pytest.raises(ModelError, match="outside the vocabulary"):
        backend.decode_step(512)
    assert backend.prefill(np.zeros(8, np.int32)) >= 0  # still serving
    with pytest.raises(ModelError, match="exceeds the model's context_length = 512") as info:
        loaded(models["fp32"], n_ctx=4096)
    assert "at most 512" in info.value.hint
    with pytest.raises(ModelError, match="must be a positive integer"):
        loaded(models["fp32"], n_ctx="long")


def test_broken_folders_are_one_line_model_errors(models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_folder(models["int4"], tmp_path / "broken", link=False)
    config = (folder / "genai_config.json").read_text()
    (folder / "genai_config.json").unlink()
    with pytest.raises(ModelError, match=r"broken has no genai_config\.json, so it is not an ONNX Runtime GenAI") \
            as info:
        loaded(folder)
    assert "builder" in info.value.hint
    (folder / "genai_config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"genai_config\.json is not valid JSON"):
        loaded(folder)
    (folder / "genai_config.json").write_text(config.replace('"llama"', '"no_such_type"'))
    with pytest.raises(ModelError, match=r"Unsupported model_type in config\.json: no_such_type") as info:
        loaded(folder)
    assert "upgrade onnxruntime-genai" in info.value.hint and "\n" not in info.value.message
    (folder / "genai_config.json").write_text(config)
    (folder / "model.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"could not load .*External data path does not exist") as info:
        loaded(folder)
    assert "model.onnx.data" in info.value.hint
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model\.onnx \(model\.decoder\.filename in genai_config\.json\) does not "):
        loaded(folder)


def test_a_folder_without_tokenizer_runs_tokens_but_not_text(models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_folder(models["fp32"], tmp_path / "notok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    backend = loaded(folder)
    assert backend.infer({"tokens": np.array([[1, 2, 3]], np.int32)})[0].shape == (1, 3, hf_llama.VOCAB)
    with pytest.raises(ModelError, match="notok has no tokenizer, so it cannot tokenize text"):
        backend.tokenize("hello")


def test_devices_it_cannot_reach_are_said(models: dict[str, Path]) -> None:
    cls = resolve_backend("ortgenai")
    ok, detail = cls.available_devices(ref(models["fp32"]))
    assert ok and "CPUExecutionProvider" in detail
    for device, provider in (("gpu", "CUDAExecutionProvider"), ("npu", "QNNExecutionProvider")):
        ok, detail = cls.available_devices(ref(models["fp32"], device=device))
        if ok:
            pytest.skip(f"{provider} is available here: {detail}")
        assert f"{provider} (device '{device}') is not available" in detail and "providers here" in detail
    with pytest.raises(ModelError, match="onnxruntime-genai could not load") as info:
        backend = cls(ref(models["fp32"], device="gpu"))
        backend.load()
    assert "onnxruntime-genai-cuda" in info.value.hint


def test_through_the_worker(models: dict[str, Path], tokens: np.ndarray) -> None:
    model = ref(models["int4"])
    with WorkerClient("candidate", model, 120) as worker:
        answer = worker.call("load", ref=model)
        assert answer["executed_device"] == "CPUExecutionProvider" and answer["info"]["precision"] == "int4"
        text = worker.call("text_tokens", text=TEXT)
        assert text["tokens"][0] != 1 and text["special"]["add_bos"] is True and text["special"]["bos"] == 1
        assert worker.call("detokenize", tokens=text["tokens"]) == TEXT
        worker.call("feeds", key="t", arrays={"": tokens[:, :16]})
        assert worker.call("run", key="t", iterations=6, mode="decode").shape == (6,)
        assert worker.call("run", key="t", iterations=3, mode="prompt").shape == (3,)
        assert worker.call("predict", key="t", batch_size=1)["scored"].shape == (2, 16, hf_llama.VOCAB)
