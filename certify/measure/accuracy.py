"""Quality of a candidate against its baseline on the same data, with paired bootstrap intervals."""

from __future__ import annotations

from typing import Any

import numpy as np

from certify.measure import stats
from certify.measure.client import WorkerClient
from certify.measure.fidelity import fidelity
from certify.metrics import Metric
from certify.plan import Measure, ModelRef
from certify.records import AccuracyFigures


def predict(role: str, ref: ModelRef, inputs: dict[str, np.ndarray], batch_size: int,
            measure: Measure) -> tuple[np.ndarray, dict[str, Any]]:
    """The model's first output over the whole dataset, from a fresh worker, plus where it ran."""
    with WorkerClient(role, ref, measure.timeout_s) as worker:
        loaded = worker.call("load", ref=ref)
        worker.call("feeds", key="data", arrays=inputs)
        outputs = worker.call("predict", key="data", batch_size=batch_size)
    return outputs, {"executed_device": loaded["executed_device"], "info": loaded["info"]}


def retention(metric: Metric, base_value: np.ndarray, cand_value: np.ndarray) -> np.ndarray:
    """Share of the baseline's quality the candidate keeps (1.0 = all of it; equal values, even 0 and 0, are 1.0)."""
    num, den = (cand_value, base_value) if metric.higher_is_better else (base_value, cand_value)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(num == den, 1.0, num / den), dtype=np.float64)


def evaluate(metric: Metric, base_out: np.ndarray, cand_out: np.ndarray, labels: np.ndarray | None,
             measure: Measure, confidence: float) -> AccuracyFigures:
    base_scores = metric.per_sample(base_out, labels, base_out)
    cand_scores = metric.per_sample(cand_out, labels, base_out)
    kept, interval = stats.paired_statistic(
        metric.reduce, base_scores, cand_scores, lambda b, c: retention(metric, b, c),
        resamples=measure.bootstrap_resamples, seed=measure.seed, confidence=confidence)
    result: AccuracyFigures = {
        "metric": metric.name, "higher_is_better": metric.higher_is_better,
        "baseline": float(metric.reduce(base_scores)), "candidate": float(metric.reduce(cand_scores)),
        "retention": kept, "interval": list(interval), "confidence": confidence, "samples": int(base_scores.size),
    }
    if metric.language_model:
        report = fidelity(base_out, cand_out, labels)
        result["top1_agreement"], result["fidelity"] = report["top1_agreement"]["mean"], report
        return result
    result["top1_agreement"] = float((base_out.reshape(len(base_out), -1).argmax(1)
                                      == cand_out.reshape(len(cand_out), -1).argmax(1)).mean())
    return result
