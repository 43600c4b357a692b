"""Language-model fidelity, checked against a direct numpy computation from the same logits, and the compact
records it is computed from (``certify.measure.logprobs``)."""

from __future__ import annotations

import numpy as np
import pytest

from certify.measure import logprobs
from certify.measure.fidelity import fidelity
from certify.metrics import METRICS

RNG = np.random.default_rng(7)
CHUNKS, TOKENS, VOCAB = 3, 20, 50


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits(noise: float, base: np.ndarray | None = None) -> np.ndarray:
    start = RNG.normal(size=(CHUNKS, TOKENS, VOCAB)) * 3 if base is None else base
    return start + RNG.normal(size=start.shape) * noise


def records(base: np.ndarray, cand: np.ndarray, labels: np.ndarray, top_k: int = logprobs.TOP_K
            ) -> tuple[np.ndarray, np.ndarray]:
    kept = logprobs.token_scores(base, labels, top_k=top_k)
    return kept, logprobs.token_scores(cand, labels, kept["ids"])


def test_kl_matches_the_definition_and_is_zero_for_identical_logits() -> None:
    base = logits(0.0)
    cand = logits(0.5, base)
    labels = RNG.integers(0, VOCAB, size=(CHUNKS, TOKENS))
    p, q = softmax(base), softmax(cand)
    direct = (p * np.log(p / q)).sum(axis=-1)
    b, c = records(base, cand, labels)  # the whole vocabulary kept: exact
    assert np.allclose(logprobs.token_kl(b, c), direct, atol=1e-12)
    assert np.all(logprobs.token_kl(b, b) == 0.0) and np.all(logprobs.outside_mass(b) == 0.0)


def test_kept_tokens_give_a_lower_bound_that_tightens_with_more_of_them() -> None:
    """Over the baseline's top k tokens plus one bin for the rest, KL can only shrink (merging outcomes never
    raises it), and comes close once the merged mass is small; records hold k ids, not the vocabulary."""
    vocab = 2000
    base = RNG.normal(size=(2, 10, vocab)) * 4
    cand = base + RNG.normal(size=base.shape) * 0.4
    labels = RNG.integers(0, vocab, size=(2, 10))
    p, q = softmax(base), softmax(cand)
    full = (p * np.log(p / q)).sum(axis=-1)
    figures = []
    for k in (8, 64, 512):
        b, c = records(base, cand, labels, top_k=k)
        kl = logprobs.token_kl(b, c)
        assert np.all(kl <= full + 1e-12) and b["ids"].shape == (2, 10, k)
        figures.append((float(kl.mean()), float(logprobs.outside_mass(b).mean())))
    assert figures[0][0] < figures[1][0] < figures[2][0] <= full.mean()
    assert figures[2][0] > 0.97 * full.mean() and figures[2][1] < figures[0][1]
    assert np.allclose(b["label"], np.log(np.take_along_axis(p, labels[..., None], axis=-1))[..., 0])
    assert np.array_equal(b["top1"], base.argmax(-1))


def test_a_candidate_scored_on_other_ids_is_refused() -> None:
    base, labels = logits(0.0), RNG.integers(0, VOCAB, size=(CHUNKS, TOKENS))
    b = logprobs.token_scores(base, labels, top_k=5)
    other = logprobs.token_scores(logits(1.0, base), labels, top_k=5)
    with pytest.raises(ValueError, match="not scored on the baseline's token ids"):
        logprobs.token_kl(b, other)


def test_fidelity_statistics_match_numpy_and_grade_with_noise() -> None:
    base = logits(0.0)
    labels = RNG.integers(0, VOCAB, size=(CHUNKS, TOKENS))
    small, large = fidelity(*records(base, logits(0.1, base), labels), labels), \
        fidelity(*records(base, logits(2.0, base), labels), labels)
    cand = logits(0.7, base)
    report = fidelity(*records(base, cand, labels), labels)
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
    b, c = records(base, cand, labels)
    per_chunk = agreement.per_sample(c, labels, b)
    assert per_chunk.shape == (CHUNKS,)
    assert np.isclose(agreement.value(c, labels, b), (base.argmax(-1) == cand.argmax(-1)).mean())
    assert agreement.value(b, labels, b) == 1.0
    ppl = METRICS["perplexity"]
    expected = np.exp(-np.log(np.take_along_axis(softmax(cand), labels[..., None], axis=-1)).mean())
    assert np.isclose(ppl.value(c, labels, b), expected) and not ppl.higher_is_better
