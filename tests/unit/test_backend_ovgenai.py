"""The OpenVINO GenAI backend, for real, on the tiny Hugging Face Llama exported by ``optimum-cli export openvino``:
FP32 logits equal transformers', prefill and KV-cache decode equal full-sequence ``infer``, the folder's
openvino-tokenizers tokenizer equals the Hugging Face one, INT8 and INT4 weights graded by KL, what ``info()``
records (the precision really in force), clear errors for over-long prompts and incomplete folders, devices that
are absent here, and the backend through an isolated worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.backends import resolve_backend
from certify.backends.base import LanguageModel
from certify.backends.openvino import DEVICE_DRIVERS
from certify.errors import ModelError
from certify.measure.client import WorkerClient
from certify.plan import ModelRef
from tests.helpers.tinyllama import mean_kl

ov = pytest.importorskip("openvino")
pytest.importorskip("openvino_genai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from certify.fixtures import hf_llama  # noqa: E402

TEXT = "Return a new list of the items, sorted.  naïve café — ✓ done\n\nSee also: functools.cmp_to_key()."
EXACT = {"precision": "f32", "kv_cache_precision": "f32"}  # the IR's own numbers, nothing rounded on the way


def exported(setting: str) -> Path:
    try:
        return Path(hf_llama.exported("openvino", setting))
    except hf_llama.FixtureUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    try:
        return Path(hf_llama.ensure_checkpoint())
    except hf_llama.FixtureUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def fp32() -> Path:
    return exported("fp32")


@pytest.fixture(scope="module")
def tokens(checkpoint: Path) -> np.ndarray:
    """Two windows of the held-out text, each starting with BOS (the regime the tokenizer asks for)."""
    text = (checkpoint / hf_llama.EVAL_FILE).read_text(encoding="utf-8")
    ids = hf_llama.load_tokenizer(checkpoint)(text[:500], add_special_tokens=False).input_ids
    rows = np.array(ids[:2 * 63], dtype=np.int32).reshape(2, 63)
    return np.concatenate([np.ones((2, 1), np.int32), rows], axis=1)


@pytest.fixture(scope="module")
def reference(checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits for ``tokens`` (torch CPU, float32)."""
    model = transformers.LlamaForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).eval()
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy())


def ref(path: Path, device: str = "cpu", **options: Any) -> ModelRef:
    return ModelRef(name="m", path=path, framework="ovgenai", device=device, threads=2,
                    options=tuple(options.items()))


def loaded(path: Path, **options: Any) -> Any:
    backend = resolve_backend("ovgenai")(ref(path, **options))
    backend.load()
    assert isinstance(backend, LanguageModel)
    return backend


def test_fp32_ir_at_f32_equals_transformers(fp32: Path, tokens: np.ndarray, reference: np.ndarray) -> None:
    exact = loaded(fp32, precision="f32")
    logits = exact.infer({"tokens": tokens})[0]
    assert logits.shape == (2, 64, 512) and logits.dtype == np.float32
    np.testing.assert_array_equal(exact.infer({"tokens": tokens})[0], logits)  # each row from an empty context
    default = loaded(fp32).infer({"tokens": tokens})[0]
    diff, default_diff = float(np.abs(logits - reference).max()), float(np.abs(default - reference).max())
    print(f"\nFP32 IR vs transformers: max |logit diff| {diff:.2e} at f32, {default_diff:.2e} at the default "
          f"precision; KL {mean_kl(reference, logits):.2e} / {mean_kl(reference, default):.2e}")
    assert diff < 1e-3
    assert default_diff < 0.2  # bf16 on an AVX512-BF16/AMX CPU: close, not equal


def test_info_records_the_precision_in_force(fp32: Path) -> None:
    exact = loaded(fp32, precision="f32").info()
    assert exact["inference_precision"] == "f32" and exact["precision"] == "fp32"
    assert exact["config_requested"]["INFERENCE_PRECISION_HINT"] == "f32"
    compiled = ov.Core().compile_model(str(fp32 / "openvino_model.xml"), "CPU")  # what the device picks itself
    chosen = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    info = loaded(fp32).info()
    assert info["inference_precision"] == chosen and "INFERENCE_PRECISION_HINT" not in info["config_requested"]
    assert info["precision"] == {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[chosen]
    assert info["execution_devices"] == ["CPU"] and info["device_requested"] == "CPU"
    assert info["inference_num_threads"] == 2 and info["threads_requested"] == 2
    assert info["kv_cache_precision"] == str(compiled.get_property("KV_CACHE_PRECISION").get_type_name())
    assert info["n_ctx"] == info["max_position_embeddings"] == 512 and info["vocab"] == 512
    assert info["model_type"] == "llama" and info["logits_head"].startswith("last position only")
    assert set(info["versions"]) == {"openvino", "openvino-genai", "openvino-tokenizers"}
    assert info["weight_compression"]["nncf"] is None and set(info["weight_compression"]["weight_constants"]) == {"f32"}
    assert info["tokenizer"] == "openvino_tokenizer.xml" and info["detokenizer"] == "openvino_detokenizer.xml"
    print(f"\ndefault precision in force: {info['inference_precision']}, KV cache {info['kv_cache_precision']}")


def test_prefill_and_decode_equal_infer(fp32: Path, tokens: np.ndarray) -> None:
    backend = loaded(fp32, **EXACT)
    logits = backend.infer({"tokens": tokens})[0]
    for prompt_length in (1, 30):
        first = backend.prefill(tokens[1, :prompt_length])
        assert first == int(np.argmax(logits[1, prompt_length - 1]))
        assert tuple(backend._request.get_tensor("logits").shape) == (1, 1, 512)  # the head ran for the last only
        np.testing.assert_allclose(backend.last_logits(), logits[1, prompt_length - 1], atol=1e-4)
        for i in range(prompt_length, prompt_length + 12):  # the KV cache continues after the prompt
            backend.decode_step(int(tokens[1, i]))
            np.testing.assert_allclose(backend.last_logits(), logits[1, i], atol=1e-4)
    assert backend.infer({"tokens": tokens[:1]})[0].shape == (1, 64, 512)
    for token in tokens[0]:  # infer ended the running context: decoding restarts from an empty one
        backend.decode_step(int(token))
    np.testing.assert_allclose(backend.last_logits(), logits[0, -1], atol=1e-4)


def test_default_precisions_decode_close_to_infer(fp32: Path, tokens: np.ndarray) -> None:
    backend = loaded(fp32)  # bf16 compute and the IR's f16 KV cache here: close, not equal
    logits = backend.infer({"tokens": tokens[:1]})[0]
    steps = []
    for token in tokens[0]:
        backend.decode_step(int(token))
        steps.append(backend.last_logits())
    diff = float(np.abs(np.array(steps) - logits[0]).max())
    print(f"\ndecode vs infer at the default precisions: max |logit diff| {diff:.3f}")
    assert diff < 0.3
    assert [int(np.argmax(s)) for s in steps[:8]] == [int(np.argmax(x)) for x in logits[0, :8]]


def test_decode_context_restarts_when_full(fp32: Path) -> None:
    backend = loaded(fp32, n_ctx=4, **EXACT)
    alone = backend.infer({"tokens": np.array([[5]], np.int32)})[0][0, -1]
    assert backend.prefill(np.array([1, 2, 3, 4], np.int32)) >= 0
    backend.decode_step(5)  # the context is full: it restarts from this token
    np.testing.assert_allclose(backend.last_logits(), alone, atol=1e-5)
    assert backend.info()["n_ctx"] == 4


def test_tokenizer_equals_the_hugging_face_one(fp32: Path, checkpoint: Path) -> None:
    backend = loaded(fp32)
    hf = hf_llama.load_tokenizer(checkpoint)
    hf.model_max_length = 1 << 30  # tokenizing, not running: no warning about the model's 512 positions
    text = (checkpoint / hf_llama.EVAL_FILE).read_text(encoding="utf-8")[:20000] + TEXT
    assert backend.tokenize(text) == hf(text, add_special_tokens=False).input_ids  # no BOS
    assert backend.detokenize(backend.tokenize(TEXT)) == TEXT
    assert hf(TEXT).input_ids[0] == 1
    special = backend.special_tokens()
    assert special["add_bos"] is True and special["bos"] == 1 and special["add_eos"] is False
    assert "openvino_tokenizer.xml" in special["source"]


def test_int8_and_int4_weights_are_graded(fp32: Path, tokens: np.ndarray) -> None:
    reference = loaded(fp32, **EXACT).infer({"tokens": tokens})[0]
    kl, compression = {}, {}
    for setting in ("int8", "int4"):
        backend = loaded(exported(setting), **EXACT)  # f32 compute: only the weights differ
        logits = backend.infer({"tokens": tokens})[0]
        kl[setting] = mean_kl(reference, logits)
        compression[setting] = backend.info()["weight_compression"]
        backend.decode_step(int(tokens[0, 0]))  # a compressed model decodes through the KV cache too
        np.testing.assert_allclose(backend.last_logits(), logits[0, 0], atol=1e-3)
    print(f"\nOpenVINO weight compression vs FP32 IR: mean KL {kl}")
    assert 0 < kl["int8"] < kl["int4"] < 0.5
    assert compression["int8"]["nncf"]["mode"] == "int8_asym" and "u8" in compression["int8"]["weight_constants"]
    assert compression["int4"]["nncf"]["mode"].startswith("int4")
    assert {"u4", "i4"} & set(compression["int4"]["weight_constants"])


def test_over_long_prompts_and_bad_tokens_are_model_errors(fp32: Path) -> None:
    backend = loaded(fp32, n_ctx=8)
    with pytest.raises(ModelError, match="the prompt has 9 tokens but the context holds n_ctx = 8") as info:
        backend.prefill(np.zeros(9, np.int32))
    assert "shorter prompts" in info.value.hint and "n_ctx" in info.value.hint
    with pytest.raises(ModelError, match="n_ctx = 8"):
        backend.infer({"tokens": np.zeros((1, 9), np.int32)})
    with pytest.raises(ModelError, match="1-D prompt"):
        backend.prefill(np.zeros((1, 4), np.int32))
    with pytest.raises(ModelError, match=r"token ids must lie in 0..511"):
        backend.prefill(np.array([1, 512], np.int32))
    with pytest.raises(ModelError, match="outside the vocabulary"):
        backend.decode_step(512)
    assert backend.prefill(np.zeros(8, np.int32)) >= 0  # still serving


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "int8"}, r"options.precision = 'int8' is not one of f32, bf16, f16"),
    ({"kv_cache_precision": "q4_0"}, r"options.kv_cache_precision = 'q4_0' is not one of"),
    ({"n_ctx": 0}, r"options.n_ctx = 0 must be a positive integer"),
    ({"performance_hint": "FAST"}, r"options.performance_hint = 'FAST'"),
])
def test_bad_options_are_model_errors(fp32: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        loaded(fp32, **options)


def linked(source: Path, target: Path, *, without: str) -> Path:
    """``source``'s files linked into ``target``, but ``without``."""
    target.mkdir()
    for file in source.iterdir():
        if file.name != without:
            (target / file.name).symlink_to(file)
    return target


@pytest.mark.parametrize(("missing", "hint"), [
    ("openvino_tokenizer.xml", "convert_tokenizer"),
    ("openvino_model.xml", "optimum-cli export openvino --task text-generation-with-past"),
])
def test_an_incomplete_folder_is_a_model_error_naming_the_file(tmp_path: Path, fp32: Path, missing: str,
                                                               hint: str) -> None:
    folder = linked(fp32, tmp_path / "incomplete", without=missing)
    with pytest.raises(ModelError, match=rf"incomplete has no {missing}$") as info:
        loaded(folder)
    assert hint in info.value.hint


def test_a_stateless_ir_is_a_model_error(tmp_path: Path, fp32: Path) -> None:
    folder = linked(fp32, tmp_path / "stateless", without="openvino_model.xml")
    (folder / "openvino_model.bin").unlink()
    ids = ov.opset13.parameter([-1, -1], ov.Type.i64, name="input_ids")
    logits = ov.opset13.convert(ids, ov.Type.f32)
    logits.output(0).set_names({"logits"})
    ov.save_model(ov.Model([logits], [ids]), str(folder / "openvino_model.xml"))
    with pytest.raises(ModelError, match="is not a stateful LLM") as info:
        loaded(folder)
    assert "text-generation-with-past" in info.value.hint


def test_a_path_to_the_model_xml_works(fp32: Path) -> None:
    assert loaded(fp32 / "openvino_model.xml").info()["vocab"] == 512


@pytest.mark.parametrize("device", ["npu", "gpu"])
def test_absent_devices_are_reported_unavailable(fp32: Path, device: str) -> None:
    if device.upper() in [d.split(".")[0] for d in ov.Core().available_devices]:
        pytest.skip(f"this host has a {device.upper()}")
    ok, detail = resolve_backend("ovgenai").available_devices(ref(fp32, device=device))
    assert not ok
    assert f"{device.upper()} is not available" in detail and "devices here: CPU" in detail
    assert DEVICE_DRIVERS[device.upper()] in detail  # what to install


def test_through_the_worker(fp32: Path, tokens: np.ndarray) -> None:
    model = ref(fp32, precision="f32")
    with WorkerClient("baseline", model, 120) as worker:
        answer = worker.call("load", ref=model)
        assert answer["executed_device"] == "CPU" and answer["info"]["precision"] == "fp32"
        text = worker.call("text_tokens", text="tiny")
        assert text["special"]["add_bos"] is True and worker.call("detokenize", tokens=text["tokens"]) == "tiny"
        worker.call("feeds", key="t", arrays={"": tokens[:, :16]})
        assert worker.call("run", key="t", iterations=6, mode="decode").shape == (6,)
        assert worker.call("run", key="t", iterations=3, mode="prompt").shape == (3,)
        assert worker.call("predict", key="t", batch_size=1)["scored"].shape == (2, 16, 512)
