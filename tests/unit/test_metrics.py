"""certify.metrics and certify.measure.accuracy: per-sample scores, reductions, retention with intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from certify import verdict
from certify.gates.accuracy import accuracy_gate
from certify.measure import accuracy
from certify.metrics import METRICS
from certify.plan import Measure
from certify.policy import POLICIES

MEASURE = Measure(bootstrap_resamples=1000, seed=0)


# --- metrics -----------------------------------------------------------------------------------------------


def test_top1_accuracy_on_known_logits() -> None:
    outputs = np.array([[5.0, 1.0, 0.0], [0.0, 0.1, 3.0], [0.2, 0.9, 0.1], [2.0, 1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 2, 1, 1])
    metric = METRICS["top1_accuracy"]
    assert metric.per_sample(outputs, labels, outputs).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert metric.value(outputs, labels, outputs) == 0.75
    assert metric.value(outputs, labels.reshape(-1, 1), outputs) == 0.75  # column labels work too
    assert metric.higher_is_better and metric.needs_labels


def test_top5_accuracy_counts_the_five_highest_classes() -> None:
    scores = np.arange(7, 0, -1, dtype=np.float64)  # class 0 highest, class 6 lowest
    outputs = np.stack([scores] * 3)
    labels = np.array([4, 5, 0])  # rank 5 (in), rank 6 (out), rank 1 (in)
    metric = METRICS["top5_accuracy"]
    assert metric.per_sample(outputs, labels, outputs).tolist() == [1.0, 0.0, 1.0]
    assert metric.value(outputs, labels, outputs) == pytest.approx(2 / 3)
    assert METRICS["top1_accuracy"].value(outputs, labels, outputs) == pytest.approx(1 / 3)


def test_top5_accuracy_with_fewer_than_five_classes_is_always_right() -> None:
    outputs = np.random.default_rng(0).normal(size=(10, 3))
    labels = np.random.default_rng(1).integers(0, 3, 10)
    assert METRICS["top5_accuracy"].value(outputs, labels, outputs) == 1.0


def test_top1_agreement_compares_argmax_with_the_baseline() -> None:
    baseline = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    outputs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    metric = METRICS["top1_agreement"]
    assert metric.per_sample(outputs, None, baseline).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert metric.value(outputs, None, baseline) == 0.5
    assert metric.value(baseline, None, baseline) == 1.0
    assert not metric.needs_labels


def test_cosine_similarity_on_known_vectors() -> None:
    baseline = np.array([[1.0, 2.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    outputs = np.array([[2.0, 4.0], [0.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [1.0, 0.0], [4.0, 3.0]])
    scores = METRICS["cosine_similarity"].per_sample(outputs, None, baseline)
    # same direction, orthogonal, opposite, both zero, one zero, 24/25
    assert scores == pytest.approx([1.0, 0.0, -1.0, 1.0, 0.0, 0.96])


def test_cosine_similarity_flattens_multi_dimensional_outputs() -> None:
    rng = np.random.default_rng(2)
    baseline = rng.normal(size=(5, 2, 3, 4)).astype(np.float32)
    assert METRICS["cosine_similarity"].value(baseline * 3.0, None, baseline) == pytest.approx(1.0)
    assert METRICS["cosine_similarity"].value(-baseline, None, baseline) == pytest.approx(-1.0)


def test_rmse_is_root_of_mean_squared_error_and_lower_is_better() -> None:
    outputs = np.array([[1.0], [2.0], [3.0], [4.0]])
    labels = np.array([1.0, 2.0, 3.0, 6.0])
    metric = METRICS["rmse"]
    assert metric.per_sample(outputs, labels, outputs).tolist() == [0.0, 0.0, 0.0, 4.0]
    assert metric.value(outputs, labels, outputs) == pytest.approx(1.0)  # sqrt(4 / 4)
    assert not metric.higher_is_better and metric.needs_labels
    # multi-output rows: per-sample error is the mean over the row
    assert metric.value(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]), np.zeros((1, 2))) == pytest.approx(
        np.sqrt(12.5))


def test_reduce_is_vectorised_over_bootstrap_rows() -> None:
    rows = np.array([[0.0, 4.0], [1.0, 1.0], [9.0, 9.0]])
    assert METRICS["top1_accuracy"].reduce(rows).tolist() == [2.0, 1.0, 9.0]
    assert METRICS["rmse"].reduce(rows).tolist() == pytest.approx([np.sqrt(2.0), 1.0, 3.0])


# --- retention ---------------------------------------------------------------------------------------------


def test_retention_direction() -> None:
    assert float(accuracy.retention(METRICS["top1_accuracy"], np.array(0.9), np.array(0.72))) == pytest.approx(0.8)
    # lower is better: a candidate with twice the error keeps half the quality, half the error is 2x
    assert float(accuracy.retention(METRICS["rmse"], np.array(1.0), np.array(2.0))) == 0.5
    assert float(accuracy.retention(METRICS["rmse"], np.array(1.0), np.array(0.5))) == 2.0
    kept = accuracy.retention(METRICS["top1_accuracy"], np.array([1.0, 0.5]), np.array([0.5, 0.5]))
    assert kept.tolist() == [0.5, 1.0]


def test_retention_division_by_zero_is_silent_and_equal_quality_is_full_retention() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = accuracy.retention(METRICS["top1_accuracy"], np.array([0.0, 0.0]), np.array([1.0, 0.0]))
        lower = accuracy.retention(METRICS["rmse"], np.array([0.0, 0.5]), np.array([0.0, 0.0]))
    assert np.isinf(kept[0]) and kept[1] == 1.0
    assert lower[0] == 1.0 and np.isinf(lower[1])


# --- evaluate ----------------------------------------------------------------------------------------------


def _classification(n: int = 500, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    outputs = rng.normal(0, 0.1, (n, classes))
    outputs[np.arange(n), labels] += 5.0  # baseline is always right
    return outputs, labels


def test_evaluate_identical_candidate_keeps_everything() -> None:
    base, labels = _classification()
    result = accuracy.evaluate(METRICS["top1_accuracy"], base, base.copy(), labels, MEASURE, 0.95)
    assert result["retention"] == 1.0 and result["interval"] == [1.0, 1.0]
    assert result["baseline"] == result["candidate"] == 1.0
    assert result["top1_agreement"] == 1.0 and result["samples"] == 500
    assert result["metric"] == "top1_accuracy" and result["higher_is_better"] and result["confidence"] == 0.95
    assert accuracy_gate(result, POLICIES["edge-strict"], "hint").verdict == verdict.PASS


def test_evaluate_candidate_wrong_on_a_fifth_of_samples() -> None:
    base, labels = _classification()
    cand = base.copy()
    wrong = np.random.default_rng(1).choice(500, 100, replace=False)
    cand[wrong] = np.roll(cand[wrong], 1, axis=1)  # argmax moves to another class
    result = accuracy.evaluate(METRICS["top1_accuracy"], base, cand, labels, MEASURE, 0.95)
    assert result["candidate"] == pytest.approx(0.8) and result["retention"] == pytest.approx(0.8)
    low, high = result["interval"]
    assert 0.7 < low < 0.8 < high < 0.95
    assert result["top1_agreement"] == pytest.approx(0.8)
    gate = accuracy_gate(result, POLICIES["edge-default"], "hint")
    assert gate.verdict == verdict.FAIL and "80.0%" in gate.reason
    # agreement with the baseline needs no labels and gives the same answer here
    agreement = accuracy.evaluate(METRICS["top1_agreement"], base, cand, None, MEASURE, 0.95)
    assert agreement["retention"] == pytest.approx(0.8) and agreement["interval"][1] < 0.95


def test_evaluate_is_deterministic_for_a_seed() -> None:
    base, labels = _classification(seed=3)
    cand = base.copy()
    cand[:30] = np.roll(cand[:30], 1, axis=1)
    first = accuracy.evaluate(METRICS["top1_accuracy"], base, cand, labels, MEASURE, 0.95)
    assert first == accuracy.evaluate(METRICS["top1_accuracy"], base, cand, labels, MEASURE, 0.95)
    other = accuracy.evaluate(METRICS["top1_accuracy"], base, cand, labels, Measure(bootstrap_resamples=1000,
                                                                                      seed=1), 0.95)
    assert other["retention"] == first["retention"] and other["interval"] != first["interval"]


def test_evaluate_lower_is_better_metric() -> None:
    rng = np.random.default_rng(4)
    labels = rng.normal(size=200)
    error = rng.normal(0, 0.1, 200)
    base = (labels + error).reshape(-1, 1)
    worse = (labels + 2 * error).reshape(-1, 1)
    better = (labels + 0.5 * error).reshape(-1, 1)
    result = accuracy.evaluate(METRICS["rmse"], base, worse, labels, MEASURE, 0.95)
    assert result["candidate"] == pytest.approx(2 * result["baseline"])
    # every resample has exactly twice the error, so the interval collapses onto 0.5
    assert result["retention"] == pytest.approx(0.5) and result["interval"] == pytest.approx([0.5, 0.5])
    assert not result["higher_is_better"]
    assert accuracy_gate(result, POLICIES["edge-default"], "hint").verdict == verdict.FAIL
    improved = accuracy.evaluate(METRICS["rmse"], base, better, labels, MEASURE, 0.95)
    assert improved["retention"] == pytest.approx(2.0)
    assert accuracy_gate(improved, POLICIES["edge-default"], "hint").verdict == verdict.PASS


def test_evaluate_perfect_rmse_baseline_and_candidate() -> None:
    labels = np.arange(10.0)
    outputs = labels.reshape(-1, 1)
    result = accuracy.evaluate(METRICS["rmse"], outputs, outputs.copy(), labels, MEASURE, 0.95)
    assert result["retention"] == 1.0
