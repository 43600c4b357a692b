"""Quality metrics. Each is a per-sample score plus a reduction, so bootstrap intervals are cheap.

Metrics compare a model's outputs with the labels (``top1_accuracy``, ``top5_accuracy``, ``rmse``) or with
the baseline's outputs on the same inputs (``top1_agreement``, ``cosine_similarity``).
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
    root_mean: bool = False  # rmse: sqrt of the mean of per-sample squared errors

    def reduce(self, scores: np.ndarray, axis: int = -1) -> np.ndarray:
        """Mean over samples (vectorised over bootstrap rows when scores is 2-D)."""
        mean = scores.mean(axis=axis)
        return np.asarray(np.sqrt(mean) if self.root_mean else mean)

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


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("top1_accuracy", _top1, needs_labels=True),
        Metric("top5_accuracy", _top5, needs_labels=True),
        Metric("top1_agreement", _agreement),
        Metric("cosine_similarity", _cosine),
        Metric("rmse", _squared_error, higher_is_better=False, needs_labels=True, root_mean=True),
    )
}
