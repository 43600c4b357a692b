"""The tiny LLaMA fixture: built from stdlib docstrings with a short training run, cached by content hash, and a GGUF
that llama.cpp tokenizes and runs exactly as the torch model that was trained."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from certify.fixtures import tinyllama

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")

STEPS = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("tinyllama")
    started = time.perf_counter()
    folder = tinyllama.ensure_built(root, steps=STEPS)
    return folder, time.perf_counter() - started


def test_the_build_writes_the_model_the_text_and_its_facts(built: tuple[Path, float]) -> None:
    folder, _ = built
    facts = json.loads((folder / tinyllama.FACTS_FILE).read_text())
    dims = tinyllama.Dims()
    assert facts["training"]["steps"] == STEPS and facts["dims"]["n_embd"] == dims.n_embd == 256
    assert facts["first_loss"] > facts["final_loss"] and np.isfinite(facts["eval_loss"])
    assert facts["first_loss"] == pytest.approx(np.log(tinyllama.N_VOCAB), abs=0.5)  # starts near uniform
    assert facts["n_params"] > 3_000_000 and facts["versions"]["torch"] != "missing"
    eval_text = (folder / tinyllama.EVAL_FILE).read_text(encoding="utf-8")
    assert facts["eval_bytes"] == len(eval_text.encode()) > 20_000
    assert 0.05 < facts["eval_bytes"] / facts["train_bytes"] < 0.2
    reader = gguf.GGUFReader(str(folder / tinyllama.MODEL_FILE))
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    assert all(int(t.shape[0]) % 256 == 0 for t in reader.tensors)  # every row fits K-quant super-blocks


def test_the_corpus_is_deterministic_and_the_evaluation_text_is_held_out() -> None:
    train, held_out = tinyllama.corpus()
    assert (train, held_out) == tinyllama.corpus()
    first_held_out = held_out.split("\n\n")[0]
    assert first_held_out and first_held_out not in train
    tokens, _, types = tinyllama.vocabulary()
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[258] == "<0xFF>" and len(tokens) == 260
    assert types[:4] == [2, 3, 3, 6] and types[-1] == 1


def test_training_is_reproducible() -> None:
    tokens = tinyllama.encode(tinyllama.corpus()[0])
    first, losses = tinyllama.train(tokens, tinyllama.Training(steps=2, batch=4), tinyllama.Dims())
    second, again = tinyllama.train(tokens, tinyllama.Training(steps=2, batch=4), tinyllama.Dims())
    assert losses == again and all(np.array_equal(first[name], second[name]) for name in first)


def test_the_build_is_cached_by_content_hash(built: tuple[Path, float]) -> None:
    folder, first_seconds = built
    facts = (folder / tinyllama.FACTS_FILE).stat().st_mtime_ns
    started = time.perf_counter()
    again = tinyllama.ensure_built(folder.parent, steps=STEPS)
    assert again == folder and (again / tinyllama.FACTS_FILE).stat().st_mtime_ns == facts
    assert time.perf_counter() - started < 1.0 < first_seconds
    assert folder.name == f"tinyllama-{tinyllama.content_hash(STEPS)}"
    assert tinyllama.content_hash(STEPS) != tinyllama.content_hash(STEPS + 1)


def test_llama_cpp_tokenizes_and_computes_what_torch_computes(built: tuple[Path, float]) -> None:
    folder, _ = built
    text = (folder / tinyllama.EVAL_FILE).read_text(encoding="utf-8")
    f32 = 0  # GGML_TYPE_F32 KV cache: llama.cpp's default F16 cache alone differs by ~5e-3 on trained logits
    llm = llama_cpp.Llama(str(folder / tinyllama.MODEL_FILE), n_ctx=256, n_threads=2, logits_all=True,
                          use_mmap=False, type_k=f32, type_v=f32, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert tokens == tinyllama.encode(text).tolist()
    assert llm.detokenize(tokens[:2000]).decode("utf-8") == tinyllama.decode(tokens[:2000])
    window = np.asarray(tokens[1000:1256])
    llm.eval(window.tolist())
    from_llama = np.asarray(llm.scores[:256])
    from_torch = tinyllama.torch_logits(folder, window)
    assert np.abs(from_llama - from_torch).max() < 1e-3  # same rope convention, norms, attention and FFN
    assert (from_llama.argmax(-1) == from_torch.argmax(-1)).all()
    llm.close()
