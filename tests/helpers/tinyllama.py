"""The tiny trained LLaMA of ``certify.fixtures.tinyllama`` for the harness's own tests: a short training run
(seconds), cached like the demo, plus quantized copies and deliberately broken GGUF files."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
from certify.fixtures import tinyllama

TEST_STEPS = 24  # enough for quantization error to be graded (KL Q8_0 << Q4_K_M << Q2_K), ~20 s to build


@functools.lru_cache(maxsize=1)
def tiny_llama() -> Path:
    """The folder with ``tiny-llama-f32.gguf``, ``eval.txt`` and ``facts.json`` (built once per content, in the
    cache in force at the first call: a test that points CERTIFY_CACHE_DIR elsewhere later does not rebuild it)."""
    return tinyllama.ensure_built(steps=TEST_STEPS)


def quantized(source: Path, out: Path, kind: str) -> Path:
    """``source`` quantized to ``kind`` (e.g. 'Q8_0') with llama.cpp directly, independent of the recipe."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    assert code == 0, f"llama_model_quantize {kind} returned {code}"
    return out


def truncated(source: Path, out: Path) -> Path:
    out.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return out


def unknown_architecture(out: Path) -> Path:
    """A well-formed GGUF whose architecture llama.cpp does not know."""
    import gguf

    writer = gguf.GGUFWriter(str(out), "nosucharch")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(reference || candidate) over positions, in nats, from logits [..., vocab]."""
    p, q = log_softmax(reference), log_softmax(candidate)
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    logp = log_softmax(logits)
    picked = np.take_along_axis(logp, targets[..., None].astype(np.int64), axis=-1)
    return float(np.exp(-picked.mean()))
