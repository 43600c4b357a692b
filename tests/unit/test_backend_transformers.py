"""The transformers backend on a real Hugging Face checkpoint (``certify.fixtures.hf_llama``, trained here): the KV
cache path equals full-sequence evaluation, the tokenizer's BOS policy is read from the folder, and folders that
would run custom code or lack their parts are refused in one line."""

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
from certify.plan import ModelRef

pytest.importorskip("torch")
pytest.importorskip("transformers")
from certify.fixtures import hf_llama


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    try:
        return hf_llama.ensure_checkpoint()
    except hf_llama.FixtureUnavailable as exc:
        pytest.skip(str(exc))


def loaded(path: Path, **options: Any) -> Any:
    backend = resolve_backend("transformers")(ModelRef(name="m", path=path, framework="transformers", threads=2,
                                                       options=tuple(options.items())))
    backend.load()
    return backend


def test_cached_generation_equals_full_evaluation(checkpoint: Path) -> None:
    backend = loaded(checkpoint)
    assert isinstance(backend, LanguageModel)
    ids = backend.tokenize((checkpoint / hf_llama.EVAL_FILE).read_text()[:300])
    tokens = np.array([[1, *ids[:47]]], dtype=np.int32)
    full = backend.infer({"tokens": tokens})[0]
    assert full.shape == (1, 48, hf_llama.VOCAB) and full.dtype == np.float32
    assert backend.prefill(tokens[0, :24]) == int(np.argmax(full[0, 23]))
    np.testing.assert_allclose(backend.last_logits(), full[0, 23], atol=1e-4)
    for at in range(24, 48):
        backend.decode_step(int(tokens[0, at]))
        np.testing.assert_allclose(backend.last_logits(), full[0, at], atol=1e-4)
    info = backend.info()
    assert info["device"] == backend.executed_device() == "cpu" and info["dtype"] == "float32"
    assert info["threads"] == 2 and info["n_ctx"] == 512


def test_tokenizer_policy_comes_from_the_folder(checkpoint: Path) -> None:
    backend = loaded(checkpoint)
    special = backend.special_tokens()
    assert special["add_bos"] is True and special["bos"] == 1 and special["add_eos"] is False
    text = "Return the value of x.\nSee also: the path."
    ids = backend.tokenize(text)
    assert ids[0] != 1 and backend.detokenize(ids) == text


def test_bfloat16_differs_and_bad_options_are_named(checkpoint: Path) -> None:
    tokens = np.array([[1, 300, 301, 302, 303]], dtype=np.int32)
    f32, bf16 = loaded(checkpoint).infer({"tokens": tokens})[0], loaded(checkpoint, dtype="bfloat16")
    assert bf16.info()["dtype"] == "bfloat16"
    assert 0 < np.abs(bf16.infer({"tokens": tokens})[0] - f32).max() < 1.0
    with pytest.raises(ModelError, match=r"options\.dtype = 'int3'"):
        loaded(checkpoint, dtype="int3")
    with pytest.raises(ModelError, match="n_ctx = 8"):
        loaded(checkpoint, n_ctx=8).infer({"tokens": np.ones((1, 9), np.int32)})
    with pytest.raises(ModelError, match=r"outside the vocabulary|must lie in"):
        loaded(checkpoint).infer({"tokens": np.array([[1, 512]], np.int32)})


def test_folders_that_run_code_or_lack_parts_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.Model"}}))
    with pytest.raises(ModelError, match="custom model code"):
        loaded(copy)
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds no weights"):
        loaded(copy)
    with pytest.raises(ModelError, match=r"no config\.json"):
        loaded(tmp_path)


def test_devices_it_cannot_reach_are_said() -> None:
    cls = resolve_backend("transformers")
    ok, detail = cls.available_devices(ModelRef(name="m", path=Path("."), framework="transformers", device="npu"))
    assert not ok and "NPU" in detail
