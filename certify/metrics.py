"""Quality metrics. Each is a per-sample score plus a reduction, so bootstrap intervals are cheap.

Metrics compare a model's outputs with the labels (``top1_accuracy``, ``top5_accuracy``, ``rmse``) or with
the baseline's outputs on the same inputs (``top1_agreement``, ``cosine_similarity``).

Language models (outputs: next-token logits ``[chunks, tokens, vocab]``, labels: the next tokens
``[chunks, tokens]``) have their own, scored per chunk so intervals resample whole chunks:
``token_agreement`` (share of positions where the candidate's top token is the baseline's; the baseline scores
1.0, so retention is the agreement itself) and ``perplexity`` (exp of the mean negative log-likelihood of the
true next tokens; lower is better, so retention is baseline / candidate perplexity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Scores = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Metric:
    name: str
    per_sample: Scores
    higher_is_better: bool = True
    needs_labels: bool = False
    finish: str = ""  # "sqrt": rmse from mean squared errors; "exp": perplexity from mean log-likelihoods
    language_model: bool = False  # outputs are next-token logits [chunks, tokens, vocab]

    def reduce(self, scores: np.ndarray, axis: int = -1) -> np.ndarray:
        """Mean over samples (vectorised over bootstrap rows when scores is 2-D), then ``finish``."""
        mean = scores.mean(axis=axis)
        return np.asarray(np.sqrt(mean) if self.finish == "sqrt" else np.exp(mean) if self.finish == "exp" else mean)

    def value(self, outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> float:
        return float(self.reduce(self.per_sample(outputs, labels, baseline)))


def _flat(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs.reshape(outputs.shape[0], -1), dtype=np.float64)


def _top1(outputs: np.ndarray, labels: np.ndarray | None, _: np.ndarray) -> np.ndarray:
    assert labels is not None
    return np.asarray(_flat(outputs).argmax(axis=1) == labels.reshape(-1), dtype=np.float64)


def _top5(outputs: np.ndarray, labels: np.ndarray | None, _: np.ndarray) -> np.ndarray:
    assert labels is not None
    top = np.argsort(-_flat(outputs), axis=1)[:, :5]
    return np.asarray((top == labels.reshape(-1, 1)).any(axis=1), dtype=np.float64)


def _agreement(outputs: np.ndarray, _: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
    return np.asarray(_flat(outputs).argmax(axis=1) == _flat(baseline).argmax(axis=1), dtype=np.float64)


def _cosine(outputs: np.ndarray, _: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
    a, b = _flat(outputs), _flat(baseline)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    return np.asarray(np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), (a == b).all(axis=1)), np.float64)


def _squared_error(outputs: np.ndarray, labels: np.ndarray | None, _: np.ndarray) -> np.ndarray:
    assert labels is not None
    diff = _flat(outputs) - labels.reshape(labels.shape[0], -1).astype(np.float64)
    return np.asarray((diff**2).mean(axis=1), dtype=np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities over the last axis, in float64 (full precision, as the field computes them)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def _token_agreement(outputs: np.ndarray, _: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
    return np.asarray((outputs.argmax(axis=-1) == baseline.argmax(axis=-1)).mean(axis=-1), dtype=np.float64)


def token_nll(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each true next token: ``[chunks, tokens]``, one chunk at a time (memory)."""
    return np.stack([-np.take_along_axis(log_softmax(chunk), label[:, None].astype(np.int64), axis=-1)[:, 0]
                     for chunk, label in zip(outputs, labels, strict=True)])


def _nll(outputs: np.ndarray, labels: np.ndarray | None, _: np.ndarray) -> np.ndarray:
    assert labels is not None
    return np.asarray(token_nll(outputs, labels).mean(axis=-1), dtype=np.float64)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("top1_accuracy", _top1, needs_labels=True),
        Metric("top5_accuracy", _top5, needs_labels=True),
        Metric("top1_agreement", _agreement),
        Metric("cosine_similarity", _cosine),
        Metric("rmse", _squared_error, higher_is_better=False, needs_labels=True, finish="sqrt"),
        Metric("token_agreement", _token_agreement, language_model=True),
        Metric("perplexity", _nll, higher_is_better=False, needs_labels=True, finish="exp", language_model=True),
    )
}
