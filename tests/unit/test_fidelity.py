"""Language-model fidelity, checked against a direct numpy computation from the same logits."""

from __future__ import annotations

import numpy as np

from certify.measure.fidelity import fidelity, token_kl
from certify.metrics import METRICS

RNG = np.random.default_rng(7)
CHUNKS, TOKENS, VOCAB = 3, 20, 50


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits(noise: float, base: np.ndarray | None = None) -> np.ndarray:
    start = RNG.normal(size=(CHUNKS, TOKENS, VOCAB)) * 3 if base is None else base
    return start + RNG.normal(size=start.shape) * noise


def test_kl_matches_the_definition_and_is_zero_for_identical_logits() -> None:
    base = logits(0.0)
    cand = logits(0.5, base)
    p, q = softmax(base), softmax(cand)
    direct = (p * np.log(p / q)).sum(axis=-1)
    assert np.allclose(token_kl(base, cand), direct, atol=1e-12)
    assert np.all(token_kl(base, base) == 0.0)


def test_fidelity_statistics_match_numpy_and_grade_with_noise() -> None:
    base = logits(0.0)
    labels = RNG.integers(0, VOCAB, size=(CHUNKS, TOKENS))
    small, large = fidelity(base, logits(0.1, base), labels), fidelity(base, logits(2.0, base), labels)
    cand = logits(0.7, base)
    report = fidelity(base, cand, labels)
    p, q = softmax(base), softmax(cand)
    kl = (p * np.log(p / q)).sum(axis=-1).reshape(-1)
    assert np.isclose(report["kl_divergence"]["mean"], kl.mean())
    assert np.isclose(report["kl_divergence"]["stderr"], kl.std(ddof=1) / np.sqrt(kl.size))
    assert np.isclose(report["kl_divergence"]["p99"], np.percentile(kl, 99))
    assert np.isclose(report["kl_divergence"]["max"], kl.max()) and report["tokens"] == CHUNKS * TOKENS
    same = (base.argmax(-1) == cand.argmax(-1)).mean()
    assert np.isclose(report["top1_agreement"]["mean"], same)
    nll = lambda x: -np.log(np.take_along_axis(softmax(x), labels[..., None], axis=-1)[..., 0])  # noqa: E731
    assert np.isclose(report["perplexity"]["baseline"], np.exp(nll(base).mean()))
    assert np.isclose(report["perplexity"]["ratio"], np.exp(nll(cand).mean()) / np.exp(nll(base).mean()))
    assert small["kl_divergence"]["mean"] < report["kl_divergence"]["mean"] < large["kl_divergence"]["mean"]
    assert small["top1_agreement"]["mean"] > large["top1_agreement"]["mean"]


def test_language_model_metrics_score_whole_chunks() -> None:
    base = logits(0.0)
    labels = RNG.integers(0, VOCAB, size=(CHUNKS, TOKENS))
    cand = logits(1.0, base)
    agreement = METRICS["token_agreement"]
    per_chunk = agreement.per_sample(cand, labels, base)
    assert per_chunk.shape == (CHUNKS,)
    assert np.isclose(agreement.value(cand, labels, base), (base.argmax(-1) == cand.argmax(-1)).mean())
    assert agreement.value(base, labels, base) == 1.0
    ppl = METRICS["perplexity"]
    expected = np.exp(-np.log(np.take_along_axis(softmax(cand), labels[..., None], axis=-1)).mean())
    assert np.isclose(ppl.value(cand, labels, base), expected) and not ppl.higher_is_better
