"""certify.gates: measurements + policy -> verdicts with value, interval, threshold, reason and hint."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from certify import verdict
from certify.gates.accuracy import accuracy_gate
from certify.gates.memory import memory_gate
from certify.gates.speed import speed_gate, stability_gate
from certify.measure import speed, stats
from certify.policy import POLICIES
from certify.verdict import FAIL, PASS, decide

DEFAULT = POLICIES["edge-default"]
POINT = DEFAULT.with_overrides({"decision": "point"})
STRICT = POLICIES["edge-strict"]
HINT = "try a different execution provider"
MIB = 1024 * 1024


def _speedup(value: float, interval: tuple[float, float] | None, policy: Any = DEFAULT) -> verdict.GateResult:
    return decide("speed", "speedup", value, interval, 2.0, policy=policy, unit="x", hint=HINT)


# --- decide ------------------------------------------------------------------------------------------------


def test_decide_policies_differ_only_in_decision() -> None:
    assert DEFAULT.decision == "lower_bound" and POINT.decision == "point"
    assert dataclasses.replace(POINT, decision="lower_bound", name=DEFAULT.name) == DEFAULT


def test_decide_straddling_interval_is_not_decisive_under_lower_bound() -> None:
    result = _speedup(2.2, (1.8, 2.6))
    assert result.verdict == FAIL and not result.passed
    assert "not decisive" in result.reason
    assert "2.2x" in result.reason and "2x" in result.reason and "1.8x" in result.reason
    assert result.hint == HINT


def test_decide_straddling_interval_passes_under_point() -> None:
    result = _speedup(2.2, (1.8, 2.6), POINT)
    assert result.verdict == PASS and result.passed
    assert "not decisive" not in result.reason
    assert result.hint == ""


@pytest.mark.parametrize("policy", [DEFAULT, POINT], ids=["lower_bound", "point"])
def test_decide_clearly_above_passes_under_both_rules(policy: Any) -> None:
    result = _speedup(3.0, (2.8, 3.2), policy)
    assert result.verdict == PASS
    assert "3x" in result.reason and ">= 2x" in result.reason
    assert (result.value, result.interval, result.threshold, result.comparison) == (3.0, (2.8, 3.2), 2.0, ">=")


@pytest.mark.parametrize("policy", [DEFAULT, POINT], ids=["lower_bound", "point"])
def test_decide_clearly_below_fails_under_both_rules(policy: Any) -> None:
    result = _speedup(1.5, (1.3, 1.7), policy)
    assert result.verdict == FAIL
    assert "required >= 2x" in result.reason and "1.5x" in result.reason
    assert "not decisive" not in result.reason
    assert result.hint == HINT


def test_decide_interval_exactly_on_threshold_passes() -> None:
    assert _speedup(2.5, (2.0, 3.0)).verdict == PASS


def test_decide_without_interval_uses_the_point_estimate() -> None:
    assert _speedup(2.1, None).verdict == PASS
    assert _speedup(1.9, None).verdict == FAIL


def _latency(value: float, interval: tuple[float, float], policy: Any = DEFAULT) -> verdict.GateResult:
    return decide("latency", "p50", value, interval, 10.0, policy=policy, unit="ms", higher_is_better=False,
                  hint=HINT)


def test_decide_lower_is_better_uses_the_upper_bound() -> None:
    ok = _latency(9.0, (8.0, 9.5))
    assert ok.verdict == PASS and ok.comparison == "<=" and "<= 10ms" in ok.reason
    straddle = _latency(9.0, (8.0, 11.0))
    assert straddle.verdict == FAIL and "not decisive" in straddle.reason
    assert _latency(9.0, (8.0, 11.0), POINT).verdict == PASS
    for policy in (DEFAULT, POINT):
        bad = _latency(12.0, (11.0, 13.0), policy)
        assert bad.verdict == FAIL and "required <= 10ms" in bad.reason


def test_decide_reason_shows_the_policy_confidence() -> None:
    policy = DEFAULT.with_overrides({"confidence": 0.9})
    assert "90% CI 2.8x to 3.2x" in _speedup(3.0, (2.8, 3.2), policy).reason


def test_gate_result_message_and_dict() -> None:
    failed = _speedup(1.5, (1.3, 1.7))
    assert failed.message().startswith("speed gate FAIL: ")
    assert failed.message().endswith(f"\n  hint: {HINT}")
    passed = _speedup(3.0, (2.8, 3.2))
    assert passed.message().startswith("speed gate PASS: ") and "hint" not in passed.message()
    data = failed.to_dict()
    assert data["interval"] == [1.3, 1.7] and data["verdict"] == FAIL and data["hint"] == HINT
    assert verdict.not_evaluated("speed", "no gpu").verdict == verdict.NOT_EVALUATED
    assert verdict.errored("speed", "boom", "fix it").message() == "speed gate ERROR: boom\n  hint: fix it"


# --- accuracy_gate -----------------------------------------------------------------------------------------


def _acc(retention: float, interval: tuple[float, float]) -> dict[str, Any]:
    """Shaped like certify.measure.accuracy.evaluate's result."""
    return {"metric": "top1_accuracy", "higher_is_better": True, "baseline": 0.9, "candidate": 0.9 * retention,
            "retention": retention, "interval": list(interval), "confidence": 0.95, "top1_agreement": 0.97,
            "samples": 1000}


def test_accuracy_gate_passes_a_retained_model() -> None:
    result = accuracy_gate(_acc(0.98, (0.965, 0.995)), DEFAULT, HINT)
    assert result.verdict == PASS and result.gate == "accuracy" and result.unit == "%"
    assert result.threshold == DEFAULT.min_accuracy_retention
    assert "98.0%" in result.reason and "95.0%" in result.reason and "top1_accuracy retention" in result.reason
    assert result.hint == "" and "hint" not in result.message()
    assert result.details == {"metric": "top1_accuracy", "baseline": 0.9, "candidate": pytest.approx(0.882),
                              "top1_agreement": 0.97, "samples": 1000}


def test_accuracy_gate_fails_a_degraded_model_with_value_threshold_and_hint() -> None:
    result = accuracy_gate(_acc(0.8, (0.76, 0.84)), DEFAULT, HINT)
    assert result.verdict == FAIL
    message = result.message()
    assert "80.0%" in message and "95.0%" in message and HINT in message
    assert "0.72 vs baseline 0.9" in message


def test_accuracy_gate_straddle_and_strict_policy() -> None:
    straddle = _acc(0.96, (0.94, 0.98))
    assert accuracy_gate(straddle, DEFAULT, HINT).verdict == FAIL
    assert "not decisive" in accuracy_gate(straddle, DEFAULT, HINT).reason
    assert accuracy_gate(straddle, POINT, HINT).verdict == PASS
    assert accuracy_gate(_acc(0.98, (0.965, 0.995)), STRICT, HINT).verdict == FAIL  # needs 99%


# --- speed_gate --------------------------------------------------------------------------------------------


def _speed(speedup: float, interval: tuple[float, float], base_ns: np.ndarray | None = None,
           cand_ns: np.ndarray | None = None) -> dict[str, Any]:
    """Shaped like certify.measure.speed.measure_speed's result."""
    rng = np.random.default_rng(0)
    base_ns = 1e6 * speedup * rng.lognormal(0, 0.05, 400) if base_ns is None else base_ns
    cand_ns = 1e6 * rng.lognormal(0, 0.05, 400) if cand_ns is None else cand_ns

    def side(ns: np.ndarray) -> dict[str, Any]:
        return {"latency": stats.summarize(ns), "drift": stats.drift(ns), "executed_device": "cpu",
                "info": {}, "load_s": 0.01}

    return {"speedup": speedup, "interval": list(interval), "confidence": 0.95, "stop_reason": "decisive",
            "duration_s": 1.5, "rounds": 10, "block_iterations": 20, "order": "ABBA",
            "block_rewarm_iterations": 2, "samples": int(base_ns.size), "warmup_iterations": 10,
            "baseline": side(base_ns), "candidate": side(cand_ns),
            "baseline_ns": base_ns.tolist(), "candidate_ns": cand_ns.tolist()}


def test_speed_gate_passes_a_fast_candidate() -> None:
    result = speed_gate(_speed(3.0, (2.8, 3.2)), DEFAULT, HINT)
    assert result.verdict == PASS and result.gate == "speed" and result.threshold == DEFAULT.min_speedup
    assert "400 paired samples" in result.reason and "3x" in result.reason and result.hint == ""
    assert result.details["samples"] == 400 and result.details["executed_device"] == "cpu"
    assert result.details["baseline_p50_ms"] == pytest.approx(3.0, rel=0.02)
    assert result.details["candidate_p50_ms"] == pytest.approx(1.0, rel=0.02)


def test_speed_gate_fails_a_slow_candidate_with_value_threshold_and_hint() -> None:
    result = speed_gate(_speed(1.5, (1.4, 1.6)), DEFAULT, HINT)
    assert result.verdict == FAIL
    assert "1.5x" in result.reason and "required >= 2x" in result.reason
    assert result.message().endswith(f"hint: {HINT}")


def test_speed_gate_with_a_real_paired_interval() -> None:
    rng = np.random.default_rng(5)
    base, cand = 2.1e6 * rng.lognormal(0, 0.3, 200), 1e6 * rng.lognormal(0, 0.3, 200)
    speedup, interval = stats.ratio_of_medians(base, cand, resamples=500, seed=0, confidence=0.95)
    run = _speed(speedup, interval, base, cand)
    assert interval[0] < 2.0 < interval[1]  # too few samples to be sure
    assert speed_gate(run, DEFAULT, HINT).verdict == FAIL
    assert "not decisive" in speed_gate(run, DEFAULT, HINT).reason
    assert speed_gate(run, POINT, HINT).verdict == PASS


def _lm_speed(mode: str) -> dict[str, Any]:
    """A language model's paired runs: generation at 2 -> 4 ms per token, 64-token prompts at 40 -> 10 ms."""
    rng = np.random.default_rng(1)
    generation = _speed(2.0, (1.9, 2.1), 2e6 * rng.lognormal(0, 0.02, 300), 1e6 * rng.lognormal(0, 0.02, 300))
    generation["baseline"], generation["candidate"] = generation["candidate"], generation["baseline"]
    generation.update(speedup=0.5, interval=[0.48, 0.52], mode="decode")
    prompt = _speed(4.0, (3.8, 4.2), 40e6 * rng.lognormal(0, 0.02, 300), 10e6 * rng.lognormal(0, 0.02, 300))
    prompt["mode"] = "prompt"
    figures = speed.language_model_figures(prompt, generation, 64)
    return {**(generation if mode == "decode" else prompt), "language_model": figures}


def test_language_model_figures_are_tokens_per_second_and_time_to_first_token() -> None:
    lm = _lm_speed("decode")["language_model"]
    assert lm["baseline"]["generation_tokens_per_s"] == pytest.approx(1000, rel=0.02)
    assert lm["candidate"]["generation_tokens_per_s"] == pytest.approx(500, rel=0.02)
    assert lm["baseline"]["prompt_tokens_per_s"] == pytest.approx(64 / 0.040, rel=0.02)
    assert lm["candidate"]["time_to_first_token_ms"]["p50"] == pytest.approx(10, rel=0.02)
    assert lm["prompt_speedup"]["value"] == 4.0 and lm["generation_speedup"]["interval"] == [0.48, 0.52]


def test_speed_gate_on_generation_fails_a_slower_generator_and_reports_its_prompt_speed() -> None:
    result = speed_gate(_lm_speed("decode"), DEFAULT, HINT)
    assert result.verdict == FAIL and "generation speedup" in result.reason
    assert re.search(r"prompt processing 1[56]\d\d -> 6[34]\d\d tokens/s", result.reason)
    assert "not gated" in result.reason
    assert result.details["candidate_tokens_per_s"] == pytest.approx(500, rel=0.02)


def test_speed_gate_on_prompts_passes_a_faster_prompt_processor() -> None:
    result = speed_gate(_lm_speed("prompt"), DEFAULT, HINT)
    assert result.verdict == PASS and result.reason.startswith("prompt processing speedup")
    assert re.search(r"time to first token (39\.\d|40\.\d) -> (9\.9\d|10\.\d) ms", result.reason)
    assert result.details["candidate_tokens_per_s"] == pytest.approx(6400, rel=0.02)


# --- memory_gate -------------------------------------------------------------------------------------------


def _mem(median_mib: float, low_mib: float, high_mib: float) -> dict[str, Any]:
    """Shaped like certify.measure.footprint.measure_memory's result."""
    samples = [int(low_mib * MIB), int(median_mib * MIB), int(high_mib * MIB)]
    return {"model_bytes": samples[1], "samples": samples, "min": samples[0], "max": samples[2],
            "rss_before": 50 * MIB, "peak": 50 * MIB + samples[2], "peak_reset": True,
            "file_bytes": samples[1] // 2, "executed_device": "cpu", "method": "VmHWM after reset minus RSS before"}


def test_memory_gate_passes_a_smaller_candidate() -> None:
    result = memory_gate(_mem(100, 98, 102), _mem(40, 39, 41), DEFAULT, HINT)
    assert result.verdict == PASS and result.gate == "memory"
    assert result.value == pytest.approx(0.6)
    assert result.interval == pytest.approx((1 - 41 / 98, 1 - 39 / 102))
    assert "100.0 MiB -> 40.0 MiB" in result.reason and "60.0%" in result.reason and result.hint == ""
    assert result.details["baseline_bytes"] == 100 * MIB and result.details["candidate_bytes"] == 40 * MIB


def test_memory_gate_fails_a_barely_smaller_candidate() -> None:
    result = memory_gate(_mem(100, 98, 102), _mem(80, 79, 81), DEFAULT, HINT)
    assert result.verdict == FAIL
    assert "20.0%" in result.reason and "required >= 50.0%" in result.reason and result.hint == HINT


def test_memory_gate_noisy_repeats_are_not_decisive() -> None:
    base, cand = _mem(100, 98, 102), _mem(48, 45, 55)  # point 52% reduction, worst case 1-55/98 = 44%
    assert memory_gate(base, cand, DEFAULT, HINT).verdict == FAIL
    assert "not decisive" in memory_gate(base, cand, DEFAULT, HINT).reason
    assert memory_gate(base, cand, POINT, HINT).verdict == PASS


def test_memory_gate_counts_mapped_weights_and_reports_the_figure_without_them() -> None:
    cand = {**_mem(40, 39, 41), "mapped_model_bytes": 30 * MIB, "model_bytes_without_mapped": 10 * MIB}
    result = memory_gate(_mem(100, 98, 102), cand, DEFAULT, HINT)
    assert result.value == pytest.approx(0.6) and "30.0 MiB are the candidate's file pages mapped" in result.reason
    assert result.details["candidate_bytes_without_mapped"] == 10 * MIB
    assert "mapped from the model file included" in result.details["counts"]


def test_memory_gate_zero_baseline_fails_without_crashing() -> None:
    result = memory_gate(_mem(0, 0, 0), _mem(10, 10, 10), DEFAULT, HINT)
    assert result.verdict == FAIL and result.value == 0.0


# --- stability_gate ----------------------------------------------------------------------------------------


def _stab(p50: float, p99: float, cv: float, drift: float) -> dict[str, Any]:
    run = _speed(3.0, (2.8, 3.2))
    run["candidate"]["latency"].update(p50_ms=p50, p99_ms=p99, robust_cv=cv, cv=cv * 10)
    run["candidate"]["drift"], run["baseline"]["drift"] = drift, 0.0
    return run


def test_stability_gate_passes_a_steady_candidate() -> None:
    result = stability_gate(_stab(10.0, 15.0, 0.1, 0.05), DEFAULT, HINT)
    assert result.verdict == PASS and result.value == pytest.approx(1.5) and result.hint == ""
    assert "p99/p50 1.5 (max 3)" in result.reason and "robust CV 0.1 (max 0.5)" in result.reason
    assert "unexplained drift 0.05 (max 0.25)" in result.reason
    assert result.details == {"p99_over_p50": 1.5, "robust_cv": 0.1, "cv": 1.0, "drift": pytest.approx(0.05),
                              "candidate_drift": 0.05, "baseline_drift": 0.0, "samples": 400}


@pytest.mark.parametrize(("p99", "cv", "drift", "broken"), [
    (40.0, 0.1, 0.0, "p99/p50 4 > 3"),
    (15.0, 0.6, 0.0, "robust CV 0.6 > 0.5"),
    (15.0, 0.1, 0.3, "unexplained drift 0.3 > 0.25"),
    (15.0, 0.1, -0.3, "unexplained drift 0.3 > 0.25"),  # a run that speeds up is unstable too
])
def test_stability_gate_fails_each_check(p99: float, cv: float, drift: float, broken: str) -> None:
    result = stability_gate(_stab(10.0, p99, cv, drift), DEFAULT, HINT)
    assert result.verdict == FAIL and broken in result.reason and result.hint == HINT
    assert result.reason.startswith("latency unstable: ") and result.reason.count(">") == 1


def test_stability_gate_lists_every_broken_check() -> None:
    result = stability_gate(_stab(10.0, 40.0, 0.6, 0.3), DEFAULT, HINT)
    assert result.reason == "latency unstable: p99/p50 4 > 3; robust CV 0.6 > 0.5; unexplained drift 0.3 > 0.25"


def test_stability_gate_strict_policy_is_stricter() -> None:
    run = _stab(10.0, 25.0, 0.1, 0.0)
    assert stability_gate(run, DEFAULT, HINT).verdict == PASS
    strict = stability_gate(run, STRICT, HINT)
    assert strict.verdict == FAIL and "p99/p50 2.5 > 2" in strict.reason


def test_stability_gate_zero_median_fails() -> None:
    result = stability_gate(_stab(0.0, 1.0, 0.1, 0.0), DEFAULT, HINT)
    assert result.verdict == FAIL and result.value == float("inf")


def test_stability_gate_on_measured_series() -> None:
    rng = np.random.default_rng(8)
    steady = 1e6 * rng.lognormal(0, 0.05, 400)
    assert stability_gate(_speed(3.0, (2.8, 3.2), cand_ns=steady), DEFAULT, HINT).verdict == PASS
    slowing = steady.copy()
    slowing[300:] *= 1.5  # thermal throttling in the last quarter
    result = stability_gate(_speed(3.0, (2.8, 3.2), cand_ns=slowing), DEFAULT, HINT)
    assert result.verdict == FAIL and result.details["drift"] == pytest.approx(0.5, abs=0.03)
    assert result.reason == f"latency unstable: unexplained drift {result.details['drift']:.3g} > 0.25"


def test_host_drift_common_to_both_sides_cancels() -> None:
    rng = np.random.default_rng(5)
    cand = 1e6 * rng.lognormal(0, 0.02, 400)
    base = 3e6 * rng.lognormal(0, 0.02, 400)
    cand[300:] *= 1.4  # the host slowed down in the last quarter: both sides, interleaved, see it
    base[300:] *= 1.4
    result = stability_gate(_speed(3.0, (2.8, 3.2), base_ns=base, cand_ns=cand), DEFAULT, HINT)
    assert result.details["candidate_drift"] == pytest.approx(0.4, abs=0.03)
    assert abs(result.details["drift"]) < 0.03 and result.verdict == PASS


def test_a_disturbed_baseline_does_not_make_a_steady_candidate_drift() -> None:
    rng = np.random.default_rng(6)
    cand = 1e6 * rng.lognormal(0, 0.02, 400)
    base = 3e6 * rng.lognormal(0, 0.02, 400)
    base[:100] *= 2.2  # a noisy neighbour hit only the memory-bound baseline, early in the run
    result = stability_gate(_speed(3.0, (2.8, 3.2), base_ns=base, cand_ns=cand), DEFAULT, HINT)
    assert result.details["baseline_drift"] < -0.5 and abs(result.details["drift"]) < 0.03
    assert result.verdict == PASS


def test_a_candidate_degrading_by_itself_fails_even_when_the_host_moves() -> None:
    rng = np.random.default_rng(7)
    cand = 1e6 * rng.lognormal(0, 0.02, 400)
    base = 3e6 * rng.lognormal(0, 0.02, 400)
    cand[300:] *= 1.6  # e.g. a leak or a growing cache in the candidate's runtime
    base[300:] *= 0.9  # while the host got a little faster
    result = stability_gate(_speed(3.0, (2.8, 3.2), base_ns=base, cand_ns=cand), DEFAULT, HINT)
    assert result.verdict == FAIL and result.details["drift"] == pytest.approx(0.6, abs=0.05)
    assert "unexplained drift" in result.reason


def test_rare_preemption_spikes_inflate_cv_but_not_robust_cv() -> None:
    rng = np.random.default_rng(3)
    times = 1e5 * rng.lognormal(0, 0.02, 2000)
    times[::250] = 5e6  # 0.4% of iterations preempted for 5 ms, as on a shared VM
    result = stability_gate(_speed(3.0, (2.8, 3.2), cand_ns=times), DEFAULT, HINT)
    assert result.details["cv"] > 1.0 and result.details["robust_cv"] < 0.05
    assert result.verdict == PASS  # p99 is not reached by 0.4% of spikes
    times[::50] = 5e6  # 2%: now the tail bound judges them
    result = stability_gate(_speed(3.0, (2.8, 3.2), cand_ns=times), DEFAULT, HINT)
    assert result.verdict == FAIL and "p99/p50" in result.reason


def test_a_result_read_back_from_the_evidence_is_the_same_result() -> None:
    result = speed_gate(_speed(3.0, (2.8, 3.2)), DEFAULT, HINT)
    assert verdict.GateResult.from_dict(result.to_dict()) == result
    assert verdict.GateResult.from_dict(verdict.not_evaluated("memory", "no device").to_dict()).interval is None


def test_a_straddling_interval_is_not_decisive_even_when_the_point_misses() -> None:
    result = decide("speed", "speedup", 1.95, (1.8, 2.1), 2.0, policy=DEFAULT, unit="x")
    assert result.verdict == FAIL and "not decisive" in result.reason  # a truly faster model is still possible
    clear = decide("speed", "speedup", 1.5, (1.4, 1.6), 2.0, policy=DEFAULT, unit="x")
    assert "not decisive" not in clear.reason and "required >= 2x" in clear.reason
