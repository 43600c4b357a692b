"""Time to verdict: the adaptive stop (the demo plan's min/max duration, stop as soon as the speedup interval clears
the threshold) against a fixed long run of the same pair (min = max duration, ``CERTIFY_BENCH_FIXED_S``, default
30 s), for every demo candidate that can run on this host: seconds to a decisive verdict, and whether both reach
the same conclusion. Each candidate's two runs hold the benchmark lock together. Writes
``reports/benchmarks/time_to_verdict.json``.

Besides the wall time (worker start, load, warm-up, measurement, final bootstrap) it records how long the interim
decisiveness checks and the final bootstrap took: both grow with the number of samples, so a long run pays for its
samples twice.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.helpers_repro import (
    bench_lock,
    env_number,
    interval_side,
    load_average,
    spread,
    verdict_class,
    write_report,
)
from certify.cases import Case
from certify.gates.speed import speed_gate
from certify.hardware import detect_host
from certify.measure import dataset, speed, stats
from certify.plan import Measure, ModelPlan, ModelRef, Plan
from certify.plan.load import load_plan
from certify.recipes import RecipeError
from certify.runner import CertificationRun

FIXED_S = env_number("CERTIFY_BENCH_FIXED_S", 30.0)


class CheckClock:
    """Wraps ``speed._decisive`` to count the interim checks and the seconds they take."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, self.seconds, self._real = 0, 0.0, speed._decisive
        monkeypatch.setattr(speed, "_decisive", self)

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        started = time.perf_counter()
        try:
            return bool(self._real(*args, **kwargs))
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started

    def take(self) -> dict[str, float]:
        figures = {"interim_checks": self.calls, "interim_check_s": self.seconds}
        self.calls, self.seconds = 0, 0.0
        return figures


def runnable_candidates(plan: Plan, folder: Path) -> tuple[list[ModelRef], dict[str, str]]:
    """The demo candidates this host can measure (recipes built, from the cache when present), and why the others
    cannot, using the harness's own rules."""
    run = CertificationRun(plan, folder, detect_host(), "time-to-verdict")
    model, ready, skipped = plan.models[0], [], {}
    for candidate in model.candidates:
        case = Case(model, candidate, "speed")
        reason = run.why_not_evaluated(case)
        built = case if reason else run.built(case)
        if reason or isinstance(built, RecipeError):
            skipped[candidate.name] = reason or str(getattr(built, "message", built))
        else:
            ready.append(built.candidate)
    return ready, skipped


def timed_run(model: ModelPlan, candidate: ModelRef, feeds: dict[str, Any], measure: Measure, plan: Plan,
              clock: CheckClock) -> dict[str, Any]:
    policy = plan.policy_for(candidate)
    started = time.perf_counter()
    run = speed.measure_speed(model.baseline, candidate, feeds, measure, policy.min_speedup, policy.confidence)
    wall = time.perf_counter() - started
    base, cand = np.asarray(run.pop("baseline_ns")), np.asarray(run.pop("candidate_ns"))
    started = time.perf_counter()  # the final bootstrap again, alone, to know its share of the wall time
    stats.ratio_of_medians(base, cand, resamples=measure.bootstrap_resamples, seed=measure.seed,
                           confidence=policy.confidence, block=run["block_iterations"])
    bootstrap_s = time.perf_counter() - started
    result = speed_gate(run, policy, hint="")
    return {"windows": sub_runs(base, cand, run["block_iterations"]),
            "verdict": result.verdict, "verdict_class": verdict_class(result), "speedup": run["speedup"],
            "interval": run["interval"], "side": interval_side(run["interval"], policy.min_speedup),
            "stop_reason": run["stop_reason"], "measuring_s": run["duration_s"], "wall_s": wall,
            "final_bootstrap_s": bootstrap_s, "samples": run["samples"], **clock.take(),
            "preflight_noise": (run.get("preflight") or {}).get("noise"),
            "widened": (run.get("preflight") or {}).get("widened")}


def sub_runs(base: np.ndarray, cand: np.ndarray, block: int) -> dict[str, Any]:
    """The run cut into consecutive windows as long as the shortest decisive run (``MIN_ROUNDS_TO_DECIDE`` rounds):
    each window's speedup and the two models' median latencies. Their spread within one run shows how much the
    host's state moves the ratio over seconds, which a short run's interval cannot see."""
    size = speed.MIN_ROUNDS_TO_DECIDE * 2 * block
    count = min(base.size, cand.size) // size
    if count < 2:
        return {}
    b = [float(np.median(base[i * size:(i + 1) * size])) for i in range(count)]
    c = [float(np.median(cand[i * size:(i + 1) * size])) for i in range(count)]
    return {"count": count, "speedup": spread([x / y for x, y in zip(b, c, strict=True)]),
            "baseline_p50_ms": spread([x / 1e6 for x in b]), "candidate_p50_ms": spread([y / 1e6 for y in c])}


def test_time_to_verdict(demo_plan_path, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    plan = load_plan(demo_plan_path)
    model = plan.models[0]
    feeds = dataset.speed_batch(dataset.load_dataset(model.dataset)[0], model.dataset.speed_batch_size)
    fixed = replace(plan.measure, min_duration_s=FIXED_S, max_duration_s=FIXED_S, max_iterations=10**9,
                    **({"noise": "ignore"} if hasattr(plan.measure, "noise") else {}))  # exactly FIXED_S, never widened
    candidates, skipped = runnable_candidates(plan, tmp_path)
    clock, rows = CheckClock(monkeypatch), {}
    for candidate in candidates:
        with bench_lock():
            load = load_average()
            adaptive = timed_run(model, candidate, feeds, plan.measure, plan, clock)
            long_run = timed_run(model, candidate, feeds, fixed, plan, clock)
        rows[candidate.name] = {"adaptive": adaptive, "fixed": long_run, "load_average_1m": load,
                                "same_conclusion": adaptive["verdict"] == long_run["verdict"],
                                "intervals_overlap": adaptive["interval"][0] <= long_run["interval"][1]
                                and long_run["interval"][0] <= adaptive["interval"][1],
                                "wall_saved_s": long_run["wall_s"] - adaptive["wall_s"]}
    adaptive_s = sum(r["adaptive"]["wall_s"] for r in rows.values())
    fixed_s = sum(r["fixed"]["wall_s"] for r in rows.values())
    figures = {"adaptive_measure": vars(plan.measure), "fixed_measure": vars(fixed), "candidates": rows,
               "not_measured_here": skipped,
               "total": {"adaptive_wall_s": adaptive_s, "fixed_wall_s": fixed_s, "saved_s": fixed_s - adaptive_s,
                         "saved_share": 1 - adaptive_s / fixed_s if fixed_s else 0.0,
                         "same_conclusion": sum(r["same_conclusion"] for r in rows.values()),
                         "intervals_overlap": sum(r["intervals_overlap"] for r in rows.values()),
                         "candidates": len(rows)}}
    print(f"\ntime to verdict: adaptive (min {plan.measure.min_duration_s:g} s, max {plan.measure.max_duration_s:g} s)"
          f" vs fixed {FIXED_S:g} s\n{'candidate':<22}{'adaptive':>24}{'fixed':>24}  same  wall s (adaptive/fixed)")
    for name, r in rows.items():
        a, f = r["adaptive"], r["fixed"]
        print(f"{name:<22}{a['speedup']:>7.3f} [{a['interval'][0]:.3f}, {a['interval'][1]:.3f}] {a['verdict']:<4}"
              f"{f['speedup']:>7.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}] {f['verdict']:<4}"
              f"  {'yes' if r['same_conclusion'] else 'NO':<4}  {a['wall_s']:.1f} / {f['wall_s']:.1f}")
    for name, r in rows.items():
        w = r["fixed"]["windows"]
        if w:
            print(f"{name:<22}fixed run cut in {w['count']} windows of {speed.MIN_ROUNDS_TO_DECIDE} rounds: speedup "
                  f"{w['speedup']['min']:.3f}..{w['speedup']['max']:.3f} (CV {w['speedup']['cv']:.1%}); p50 CV "
                  f"baseline {w['baseline_p50_ms']['cv']:.1%}, candidate {w['candidate_p50_ms']['cv']:.1%}")
    print(f"total {adaptive_s:.1f} s vs {fixed_s:.1f} s ({figures['total']['saved_share']:.0%} saved); "
          f"not measured here: {sorted(skipped)}")
    print(f"wrote {write_report('time_to_verdict.json', figures)}")
    assert rows, f"no demo candidate can run here: {skipped}"
    assert all(r["same_conclusion"] for r in rows.values()), rows
