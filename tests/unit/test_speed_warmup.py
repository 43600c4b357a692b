"""The speed run's warm-up: the plan's count for short iterations, cut to about WARMUP_BUDGET_S for long ones (a
language model's long prompt), never below MIN_WARMUP; what was done is recorded per worker."""

from __future__ import annotations

from typing import Any

import numpy as np

from certify.measure.speed import MIN_WARMUP, WARMUP_BUDGET_S, SpeedRun, _warm_up


class TimedWorker:
    """Answers ``run`` with iterations of a fixed latency, and counts them (the worker's timing is not under
    test here: how many untimed iterations the run asks for is)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_ns, self.iterations = latency_s * 1e9, 0

    def call(self, command: str, **kwargs: Any) -> list[float]:
        assert command == "run" and kwargs["key"] == "speed"
        self.iterations += kwargs["iterations"]
        return [self.latency_ns] * kwargs["iterations"]


def test_short_iterations_warm_up_the_plans_count() -> None:
    run, worker = SpeedRun(), TimedWorker(0.001)
    assert _warm_up(worker, 10, run) == 1e6  # type: ignore[arg-type]
    assert worker.iterations == 10 and run.warmups == [10]


def test_long_iterations_warm_up_within_the_budget() -> None:
    run, worker = SpeedRun(), TimedWorker(0.45)  # Gemma 3 270M, a 256-token prompt
    _warm_up(worker, 10, run)  # type: ignore[arg-type]
    assert worker.iterations == int(WARMUP_BUDGET_S / 0.45) == 4 and run.warmups == [4]
    assert worker.iterations * 0.45 <= WARMUP_BUDGET_S


def test_very_long_iterations_still_warm_up_twice() -> None:
    run, worker = SpeedRun(), TimedWorker(5.0)
    _warm_up(worker, 10, run)  # type: ignore[arg-type]
    assert worker.iterations == MIN_WARMUP and run.warmups == [MIN_WARMUP]
    assert np.isfinite(_warm_up(TimedWorker(0.01), 1, SpeedRun()))  # type: ignore[arg-type]
