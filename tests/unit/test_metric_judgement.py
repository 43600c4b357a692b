"""Metrics that cannot judge are refused, a recipe that changed nothing is caught, and user metrics work."""

from __future__ import annotations

import numpy as np
import pytest

from certify import verdict
from certify.errors import CertifyError
from certify.gates.accuracy import accuracy_gate
from certify.measure.accuracy import evaluate
from certify.metrics import METRICS, MetricError, metric_for, refusal
from certify.plan import Measure
from certify.policy import POLICIES

MEASURE = Measure(bootstrap_resamples=300)
RNG = np.random.default_rng(0)


def test_argmax_of_one_column_is_refused_and_names_the_metric_to_use() -> None:
    probability = RNG.uniform(size=(64, 1)).astype(np.float32)
    for name in ("top1_accuracy", "top1_agreement"):
        reason, use = refusal(METRICS[name], probability, np.zeros(64, np.int64))
        assert "always the same" in reason and "binary_agreement" in use
    reason, use = refusal(METRICS["cosine_similarity"], probability, None)
    assert "only its sign" in reason and "binary_agreement" in use
    # what the refusal prevents: any candidate, even a random one, scores 100%
    assert METRICS["top1_agreement"].value(RNG.uniform(size=(64, 1)), None, probability) == 1.0


def test_argmax_over_a_stream_of_one_column_chunks_is_refused() -> None:
    streamed = RNG.uniform(size=(16, 6, 1)).astype(np.float32)  # [sequences, chunks, 1]
    reason, use = refusal(METRICS["top1_agreement"], streamed, None, chunked=True)
    assert "always the same" in reason and "binary_agreement" in use


def test_argmax_over_a_probability_map_is_refused() -> None:
    maps = RNG.uniform(size=(8, 1, 32, 32)).astype(np.float32)
    reason, use = refusal(METRICS["top1_agreement"], maps, None)
    assert "flattened map (1, 32, 32)" in reason and "mask_iou" in use


def test_constant_outputs_and_a_baseline_at_chance_are_refused() -> None:
    constant = np.tile(RNG.standard_normal((1, 10)), (32, 1))
    assert "same for every sample" in refusal(METRICS["cosine_similarity"], constant, None)[0]
    logits = RNG.standard_normal((200, 10))
    labels = RNG.integers(0, 10, 200)  # labels that have nothing to do with the outputs
    reason, use = refusal(METRICS["top1_accuracy"], logits, labels)
    assert "no better than always answering the most frequent label" in reason and "top1_agreement" in use


def test_a_real_classifier_is_not_refused() -> None:
    labels = RNG.integers(0, 10, 200)
    logits = RNG.standard_normal((200, 10)) + 4.0 * np.eye(10)[labels]
    for name in ("top1_accuracy", "top1_agreement", "cosine_similarity", "top5_accuracy"):
        assert refusal(METRICS[name], logits, labels) == ("", ""), name
    assert refusal(metric_for("binary_agreement", {}), RNG.uniform(size=(64, 1)), None) == ("", "")


def figures(base: np.ndarray, cand: np.ndarray) -> dict:
    return dict(evaluate(METRICS["cosine_similarity"], base, cand, None, MEASURE, 0.95))


def test_bit_identical_outputs_fail_a_recipe_and_are_said_of_any_other_candidate() -> None:
    base = RNG.standard_normal((40, 10)).astype(np.float32)
    same = figures(base, base.copy())
    assert same["identical_outputs"] is True
    made = accuracy_gate(same, POLICIES["edge-default"], "hint", made_by_recipe=True)  # type: ignore[arg-type]
    assert made.verdict == verdict.FAIL and made.reason.startswith("the recipe changed nothing: its outputs are "
                                                                   "bit-identical to the baseline's on all 40")
    given = accuracy_gate(same, POLICIES["edge-default"], "hint")  # type: ignore[arg-type]
    assert given.verdict == verdict.PASS and "computes exactly what the baseline does" in given.reason
    moved = figures(base, base + np.float32(1e-3))
    assert moved["identical_outputs"] is False
    assert accuracy_gate(moved, POLICIES["edge-default"], "", made_by_recipe=True).verdict == verdict.PASS  # type: ignore[arg-type]


def test_a_user_metric_scores_per_sample_and_decides_both_ways() -> None:
    metric = metric_for("tests.helpers.user_metrics:within_tolerance", {"higher_is_better": True})
    base = RNG.uniform(size=(50, 8))
    close = figures_of(metric, base, base + RNG.normal(0, 0.005, base.shape))
    far = figures_of(metric, base, base + RNG.normal(0, 0.2, base.shape))
    policy = POLICIES["edge-default"]
    assert accuracy_gate(close, policy, "").verdict == verdict.PASS  # type: ignore[arg-type]
    assert accuracy_gate(far, policy, "").verdict == verdict.FAIL  # type: ignore[arg-type]


def figures_of(metric: object, base: np.ndarray, cand: np.ndarray) -> dict:
    return dict(evaluate(metric, base, cand, None, MEASURE, 0.95))  # type: ignore[arg-type]


def test_user_metric_mistakes_are_one_clear_line() -> None:
    with pytest.raises(MetricError) as info:
        metric_for("tests.helpers.user_metrics:within_tolerance", {"higher_is_beter": True})
    assert "did you mean 'higher_is_better'" in info.value.message
    wrong = metric_for("tests.helpers.user_metrics:one_number", {})
    with pytest.raises(CertifyError) as raised:
        wrong.value(np.zeros((4, 2)), None, np.zeros((4, 2)))
    assert "one finite score per sample (4)" in raised.value.message
    missing = metric_for("tests.helpers.no_such_module:f", {})
    with pytest.raises(CertifyError) as raised:
        missing.value(np.zeros((4, 2)), None, np.zeros((4, 2)))
    assert "cannot be imported" in raised.value.message


def test_the_baseline_s_own_file_as_a_candidate_is_said() -> None:
    base = RNG.standard_normal((40, 10)).astype(np.float32)
    same = {**figures(base, base + np.float32(1e-3)), "same_file_as_baseline": True}
    given = accuracy_gate(same, POLICIES["edge-default"], "")  # type: ignore[arg-type]
    assert given.verdict == verdict.PASS and "its model file is the baseline's (the same sha256)" in given.reason
