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

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from certify.errors import CertifyError, did_you_mean

Scores = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], np.ndarray]
# a set-level metric (mAP, F1, WER): prepared once from (outputs, labels, baseline), then value(sample indices)
Corpus = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], Callable[[np.ndarray], float]]


class MetricError(CertifyError):
    """A metric that does not exist, takes other parameters, or cannot judge these outputs."""

    def __init__(self, message: str, hint: str = "", key: str = "") -> None:
        super().__init__(message, hint=hint)
        self.key = key


@dataclass(frozen=True)
class Metric:
    """A quality measure: a mean of ``per_sample`` scores, or a ``corpus`` value over a set of samples.

    ``outputs``/``baseline`` hold the scored output(s) with the samples on axis 0."""

    name: str
    per_sample: Scores | None = None
    higher_is_better: bool = True
    needs_labels: bool = False
    finish: str = ""  # "sqrt": rmse from mean squared errors; "exp": perplexity from mean log-likelihoods
    language_model: bool = False  # outputs are next-token logits [chunks, tokens, vocab]
    corpus: Corpus | None = None
    describe: str = ""
    argmax: bool = False  # scores the top class of a class-score vector: meaningless on one column or a map

    def reduce(self, scores: np.ndarray, axis: int = -1) -> np.ndarray:
        """Mean over samples (vectorised over bootstrap rows when scores is 2-D), then ``finish``."""
        mean = scores.mean(axis=axis)
        return np.asarray(np.sqrt(mean) if self.finish == "sqrt" else np.exp(mean) if self.finish == "exp" else mean)

    def value(self, outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> float:
        if self.corpus is not None:
            return float(self.corpus(outputs, labels, baseline)(np.arange(len(outputs))))
        assert self.per_sample is not None
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
    return np.asarray((outputs["top1"] == baseline["top1"]).mean(axis=-1), dtype=np.float64)


def _nll(outputs: np.ndarray, labels: np.ndarray | None, _: np.ndarray) -> np.ndarray:
    return np.asarray(-outputs["label"].mean(axis=-1), dtype=np.float64)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("top1_accuracy", _top1, needs_labels=True, argmax=True),
        Metric("top5_accuracy", _top5, needs_labels=True, argmax=True),
        Metric("top1_agreement", _agreement, argmax=True),
        Metric("cosine_similarity", _cosine),
        Metric("rmse", _squared_error, higher_is_better=False, needs_labels=True, finish="sqrt"),
        Metric("token_agreement", _token_agreement, language_model=True),
        Metric("perplexity", _nll, higher_is_better=False, needs_labels=True, finish="exp", language_model=True),
    )
}


def metric_for(name: str, params: Mapping[str, Any]) -> Metric:
    """The metric a plan names: built-in (no parameters), a task metric (``certify.task_metrics``, with its
    parameters), or the user's ``module:function`` (``higher_is_better``, ``needs_labels``), imported when scored."""
    if ":" in name:
        return _user_metric(name, params)
    from certify.task_metrics import TASK_METRICS

    if name in METRICS:
        if params:
            raise MetricError(f"metric {name!r} takes no parameters (got {', '.join(sorted(params))})",
                              hint="write metric = " + repr(name), key=next(iter(sorted(params))))
        return METRICS[name]
    if name in TASK_METRICS:
        try:
            return TASK_METRICS[name](params)
        except CertifyError as exc:
            raise MetricError(exc.message, hint=exc.hint, key=str(getattr(exc, "key", "") or "")) from None
    known = [*METRICS, *TASK_METRICS]
    raise MetricError(f"unknown metric {name!r}{did_you_mean(name, known)}", key="name",
                      hint=f"known metrics: {', '.join(known)}; or your own 'package.module:function'")


USER_METRIC_PARAMS = {"higher_is_better": bool, "needs_labels": bool}


def _user_metric(target: str, params: Mapping[str, Any]) -> Metric:
    """``function(outputs, baseline, labels) -> per-sample scores``: the user's own task metric."""
    for key, value in params.items():
        if key not in USER_METRIC_PARAMS:
            raise MetricError(f"unknown parameter {key!r} for a user metric{did_you_mean(key, USER_METRIC_PARAMS)}",
                              hint="a user metric takes higher_is_better and needs_labels", key=key)
        if not isinstance(value, bool):
            raise MetricError(f"{key} must be true or false, got {value!r}", key=key)
    module, _, function = target.partition(":")
    if not module or not function:
        raise MetricError(f"expected 'package.module:function', got {target!r}", key="name")

    def scores(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
        try:
            fn = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise MetricError(f"metric {target!r} cannot be imported: {type(exc).__name__}: {exc}",
                              hint="the module must be importable from the project (its folder on sys.path)") from None
        got = np.asarray(fn(outputs, baseline, labels), dtype=np.float64)
        if got.shape != (len(outputs),) or not np.isfinite(got).all():
            raise MetricError(f"metric {target!r} must return one finite score per sample ({len(outputs)}), got "
                              f"shape {got.shape}" + ("" if np.isfinite(got).all() else " with non-finite values"),
                              hint="return a 1-D array: the score of each sample")
        return got

    return Metric(target, scores, higher_is_better=bool(params.get("higher_is_better", True)),
                  needs_labels=bool(params.get("needs_labels", False)), describe=f"user metric {target}")


def refusal(metric: Metric, baseline: np.ndarray, labels: np.ndarray | None, *, chunked: bool = False
            ) -> tuple[str, str]:
    """Why ``metric`` cannot discriminate on the baseline's outputs (and what to use), or ('', ''). ``chunked``:
    a streaming model's outputs, ``[sequences, chunks, ...]``: a class vector is what one chunk step outputs."""
    if metric.language_model or len(baseline) == 0:
        return "", ""
    per_sample = baseline.reshape(len(baseline), -1)
    if chunked and baseline.ndim > 1 and metric.argmax:  # judge what one call outputs, not the chunk sequence
        per_sample = baseline.reshape(baseline.shape[0] * baseline.shape[1], -1)
    squeezed = [d for d in baseline.shape[2 if chunked else 1:] if d != 1]
    if metric.argmax and per_sample.shape[1] == 1:
        return (f"{metric.name} takes the argmax of one value per sample, which is always the same: it scores "
                "100% whatever the candidate does",
                "for a probability or score output use binary_agreement or binary_f1 (a threshold), or rmse")
    if metric.argmax and len(squeezed) > 1:
        return (f"{metric.name} takes the argmax over a flattened map {tuple(baseline.shape[1:])}, which is not a "
                "class-score vector", "for a probability map use mask_iou; for detector heads map (with a decoder)")
    if metric.name == "top5_accuracy" and per_sample.shape[1] <= 5:
        return (f"top5_accuracy over {per_sample.shape[1]} classes is always 100%", "use top1_accuracy")
    if metric.name == "cosine_similarity" and per_sample.shape[1] == 1:
        return ("cosine_similarity of one value per sample is only its sign (+1 or -1)",
                "use binary_agreement (a threshold) or rmse")
    if len(per_sample) > 1 and np.array_equal(per_sample.min(axis=0), per_sample.max(axis=0)):
        return ("the baseline's outputs are the same for every sample: no metric can tell a good candidate from a "
                "bad one on this data", "check the dataset and its inputs mapping (and the model's preprocessing)")
    if metric.name == "top1_accuracy" and labels is not None:
        accuracy = float(_top1(baseline, labels, baseline).mean())
        _, counts = np.unique(labels.reshape(-1), return_counts=True)
        chance = float(counts.max() / counts.sum())
        if accuracy <= chance and len(counts) > 1:
            return (f"the baseline scores {accuracy:.1%} top-1 accuracy, no better than always answering the most "
                    f"frequent label ({chance:.1%}): the labels do not match the model's classes or inputs",
                    "check the labels and preprocessing, or score against the baseline (top1_agreement)")
    return "", ""
