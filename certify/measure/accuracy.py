"""Quality of a candidate against its baseline on the same data, with paired bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from certify.errors import CertifyError
from certify.measure import stats
from certify.measure.client import WorkerClient, open_worker
from certify.measure.fidelity import fidelity
from certify.metrics import Metric
from certify.plan import Measure, ModelRef
from certify.records import AccuracyFigures

CORPUS_RESAMPLES = 200  # a set-level metric (mAP, WER) is recomputed per resample: fewer, each costs a full evaluation


def predict(role: str, ref: ModelRef, inputs: dict[str, np.ndarray], batch_size: int, measure: Measure,
            check: Callable[[WorkerClient], None] | None = None, tokens: dict[str, Any] | None = None
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """The model's scored output over the whole dataset (samples on axis 0), from a fresh worker, plus where it
    ran and how it was batched (``certify.measure.worker.Worker.cmd_predict``). ``check`` runs on the loaded
    worker first (a language model's tokenization compared with the baseline's) and may raise to stop there;
    ``tokens`` asks a language model for compact records instead of logits (``language_model_scoring``)."""
    with open_worker(role, ref, measure.timeout_s) as worker:
        loaded = worker.call("load", ref=ref)
        if check is not None:
            check(worker)
        worker.call("feeds", key="data", arrays=inputs, whole=True)
        answer = worker.call("predict", key="data", batch_size=batch_size, tokens=tokens)
    return answer["scored"], {"executed_device": loaded["executed_device"], "info": loaded["info"],
                              "batching": answer["batching"]}


def language_model_scoring(labels: np.ndarray | None, baseline: np.ndarray | None = None) -> dict[str, Any]:
    """What a language model's worker needs to return records (``certify.measure.logprobs``): the next tokens,
    and for a candidate the baseline's records, whose token ids it is scored on."""
    if labels is None:
        raise CertifyError("a language model's dataset has no next tokens to score")
    return {"labels": labels, "ids": None if baseline is None else baseline["ids"]}


def retention(metric: Metric, base_value: np.ndarray, cand_value: np.ndarray) -> np.ndarray:
    """Share of the baseline's quality the candidate keeps (1.0 = all of it; equal values, even 0 and 0, are 1.0)."""
    num, den = (cand_value, base_value) if metric.higher_is_better else (base_value, cand_value)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(num == den, 1.0, num / den), dtype=np.float64)


def evaluate(metric: Metric, base_out: np.ndarray, cand_out: np.ndarray, labels: np.ndarray | None,
             measure: Measure, confidence: float) -> AccuracyFigures:
    if metric.corpus is not None:
        base_value, cand_value, kept, interval = _corpus(metric, base_out, cand_out, labels, measure, confidence)
    else:
        assert metric.per_sample is not None
        base_scores = metric.per_sample(base_out, labels, base_out)
        cand_scores = metric.per_sample(cand_out, labels, base_out)
        kept, interval = stats.paired_statistic(
            metric.reduce, base_scores, cand_scores, lambda b, c: retention(metric, b, c),
            resamples=measure.bootstrap_resamples, seed=measure.seed, confidence=confidence)
        base_value, cand_value = float(metric.reduce(base_scores)), float(metric.reduce(cand_scores))
    result: AccuracyFigures = {
        "metric": metric.name, "higher_is_better": metric.higher_is_better,
        "baseline": base_value, "candidate": cand_value,
        "retention": kept, "interval": list(interval), "confidence": confidence, "samples": len(base_out),
        "identical_outputs": bool(base_out.dtype == cand_out.dtype and np.array_equal(base_out, cand_out)),
    }
    if metric.language_model:
        report = fidelity(base_out, cand_out, labels)
        result["top1_agreement"], result["fidelity"] = report["top1_agreement"]["mean"], report
        return result
    if metric.argmax:  # a class-score vector per sample (refusal() has ruled out one column and maps)
        result["top1_agreement"] = float((base_out.reshape(len(base_out), -1).argmax(1)
                                          == cand_out.reshape(len(cand_out), -1).argmax(1)).mean())
    return result


def _corpus(metric: Metric, base_out: np.ndarray, cand_out: np.ndarray, labels: np.ndarray | None,
            measure: Measure, confidence: float) -> tuple[float, float, float, tuple[float, float]]:
    """A set-level metric: both models scored on the same resampled sample sets (a paired bootstrap)."""
    assert metric.corpus is not None
    base_fn, cand_fn = metric.corpus(base_out, labels, base_out), metric.corpus(cand_out, labels, base_out)
    everything = np.arange(len(base_out))
    base_value, cand_value = base_fn(everything), cand_fn(everything)
    kept = float(retention(metric, np.asarray(base_value), np.asarray(cand_value)))
    rng = np.random.default_rng(measure.seed)
    estimates = []
    for _ in range(min(measure.bootstrap_resamples, CORPUS_RESAMPLES)):
        idx = rng.integers(0, len(base_out), size=len(base_out))
        estimates.append(float(retention(metric, np.asarray(base_fn(idx)), np.asarray(cand_fn(idx)))))
    finite = np.asarray([e for e in estimates if np.isfinite(e)])
    interval = stats.percentile_interval(finite, confidence) if finite.size else (kept, kept)
    return float(base_value), float(cand_value), kept, interval
