"""certify.gates.stress and certify.measure.load: the stress decision on synthetic figures (each check passing and
failing), the window, slope and thinning computations, and one real load run in a worker on a small ORT model."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.gates import stress
from certify.measure import load
from certify.policy import POLICIES
from certify.verdict import FAIL, PASS

DEFAULT = POLICIES["edge-default"]
HINT = "framework advice"


def figures(**changes: Any) -> dict[str, Any]:
    """Figures of a run that passes every check under ``edge-default``; ``changes`` are dotted paths."""
    phase = {"p99_ms": 12.0, "reference_p99_ms": 6.0, "p99_ratio": 2.0, "duration_s": 6.0, "requests_per_s": 300.0,
             "windows_per_s": [300.0, 290.0, 295.0], "throughput_decay": 1 - 295 / 300,
             "first_window_completions": 600}
    base: dict[str, Any] = {
        "clients": 2, "served_one_at_a_time": False, "executed_device": "CPUExecutionProvider",
        "requests": 3600, "errors": 0, "hung": 0, "first_errors": [], "p99_ratio": 2.0,
        "isolated": {"p99_ms": 6.0}, "closed_loop": phase,
        "memory": {"slope_mib_per_min": 1.5, "interval": [0.5, 40.0], "blocks": 20, "requests_after_warmup": 2400,
                   "after_s": 2.0},
        "outputs": {"compared": 720, "mismatched": 0, "max_abs_diff": 0.0},
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = base
        for key in parents:
            node = node[key]
        node[leaf] = value
    return base


def test_every_check_passing_passes_with_every_figure_in_the_reason() -> None:
    result = stress.stress_gate(figures(), DEFAULT, HINT)
    assert result.verdict == PASS and result.gate == "stress" and result.hint == ""
    assert (result.value, result.threshold, result.comparison, result.unit) == (2.0, 4.0, "<=", "x")
    for words in ("2 clients for 6 s", "300 requests/s", "0 of 3600 requests failed", "12 ms vs 6 ms isolated",
                  "2x", "throughput decay 1.7%", "memory slope 1.5 MiB/min [0.5, 40] (Theil-Sen over 20 blocks of "
                  "the 2400 requests after a 2 s warm-up; a leak when the 95% lower bound exceeds 32)",
                  "0 of 720 sampled outputs differ"):
        assert words in result.reason, words
    assert result.details["broken"] == []


@pytest.mark.parametrize(("changes", "check", "words"), [
    ({"errors": 3, "first_errors": ["RuntimeError: boom", "RuntimeError: again"]}, "errors",
     "3 of 3600 requests failed: RuntimeError: boom; RuntimeError: again"),
    ({"hung": 1}, "errors", "1 of 3600 requests failed (1 hung)"),
    ({"closed_loop.p99_ratio": 4.5, "closed_loop.p99_ms": 27.0}, "p99", "closed loop p99 27 ms vs 6 ms isolated: 4.5x"),
    ({"closed_loop.p99_ratio": 5.0, "isolated.other_processes_cores": 0.1,
      "closed_loop.other_processes_cores": [1.0, 1.5, 2.0]}, "p99",
     "(max 4x; other processes kept 0.1 cores busy in isolation, 1.5 under load)"),
    ({"closed_loop.throughput_decay": 0.35, "closed_loop.windows_per_s": [300.0, 250.0, 195.0]}, "decay",
     "throughput decay 35.0% (max 20%; 300 -> 250 -> 195 requests/s)"),
    ({"closed_loop.throughput_decay": 0.35, "closed_loop.other_processes_cores": [0.1, 0.5, 1.2], "host_cpus": 2},
     "decay", "requests/s; other processes kept 0.1 -> 1.2 of 2 cores busy)"),
    ({"closed_loop.first_window_completions": 4}, "decay", "not decisive, 4 completions in the first window"),
    ({"memory.slope_mib_per_min": 40.0, "memory.interval": [33.0, 50.0]}, "memory", "memory slope 40 MiB/min [33, 50]"),
    ({"memory.blocks": 5}, "memory", "not decisive, fewer than 6 blocks of 2 requests (run longer)"),
    ({"memory.interval": [float("nan"), float("nan")]}, "memory", "not decisive"),
    ({"outputs.mismatched": 7, "outputs.max_abs_diff": 0.5}, "outputs", "7 of 720 sampled outputs differ"),
    ({"outputs.compared": 0}, "outputs", "0 of 0 sampled outputs"),
])
def test_each_broken_check_fails_and_says_why(changes: dict[str, Any], check: str, words: str) -> None:
    result = stress.stress_gate(figures(**changes), DEFAULT, HINT)
    assert result.verdict == FAIL
    assert result.details["broken"] == [check]
    assert words in result.reason, result.reason
    assert result.hint.startswith(HINT) and stress.CHECK_HINTS[check] in result.hint


def test_several_broken_checks_are_all_listed() -> None:
    result = stress.stress_gate(figures(**{"errors": 2, "memory.interval": [90.0, 110.0],
                                           "outputs.mismatched": 1}), DEFAULT, "")
    assert result.details["broken"] == ["errors", "memory", "outputs"]
    assert result.reason.count(";") >= 2 and result.hint.startswith(stress.CHECK_HINTS["errors"])


def test_open_loop_p99_is_checked_against_isolation_plus_host_wake_up() -> None:
    opened = {**figures()["closed_loop"], "p99_ms": 60.0, "reference_p99_ms": 7.0, "p99_ratio": 60 / 7,
              "wake_lateness_p99_ms": 1.0, "rate": 50.0}
    result = stress.stress_gate(figures(open_loop=opened), DEFAULT, "")
    assert result.verdict == FAIL and result.details["broken"] == ["p99"]
    both = stress.stress_gate(figures(**{"open_loop": opened, "closed_loop.p99_ratio": 5.0}), DEFAULT, "")
    assert both.details["broken"] == ["p99"] and "closed loop p99" in both.reason and "open loop p99" in both.reason
    assert "open loop p99 60 ms vs 6 ms isolated + 1 ms host wake-up: 8.57x" in result.reason
    assert "open loop at 50/s" in result.reason


def test_a_stricter_policy_fails_what_the_default_passes() -> None:
    result = stress.stress_gate(figures(**{"memory.interval": [18.0, 22.0]}), POLICIES["edge-strict"], "")
    assert result.verdict == FAIL and result.details["broken"] == ["memory"]


def test_serialized_backends_say_so() -> None:
    result = stress.stress_gate(figures(served_one_at_a_time=True), DEFAULT, "")
    assert result.verdict == PASS and "served one at a time through a lock" in result.reason


# --- the computations ----------------------------------------------------------------------------------------


def test_throughput_windows_sum_whole_buckets() -> None:
    completions = np.array([1, 2, 3, 4, 5, 6])
    assert stress.throughput_windows(completions, 3, 0.5) == [3.0, 7.0, 11.0]  # 2 buckets of 0.5 s a window
    assert stress.throughput_decay([10.0, 9.0, 8.0]) == pytest.approx(0.2)
    assert stress.throughput_decay([10.0, 12.0]) == pytest.approx(-0.2)
    assert stress.throughput_decay([0.0, 5.0]) == 0.0


MIB = stress.MIB
T = np.arange(0.0, 30.0, load.SAMPLE_S)  # a 30 s run sampled as the worker samples it, warm-up the first 10 s


def trend(rss_mib: np.ndarray, requests: int = 40) -> dict[str, Any]:
    noise = np.random.default_rng(7).normal(0.0, 0.3, T.size)  # allocator and page-cache jitter
    return stress.memory_trend(T, (rss_mib + noise) * MIB, requests, after_s=10.0, end_s=30.0)


def judged(memory: dict[str, Any]) -> bool:
    """True when the memory check holds (the gate would pass it)."""
    return not stress.stress_gate(figures(memory=memory), DEFAULT, "").details["broken"]


def test_a_large_per_request_sawtooth_is_no_leak() -> None:
    # a language model's logits buffer: +180 MiB while a request runs (0.35 s of every 0.5 s), freed after it
    phase = (T % 0.5) < 0.35
    memory = trend(520.0 + 180.0 * phase)
    assert memory["blocks"] == 20 and judged(memory), memory
    assert memory["interval"][0] <= 0.0 <= memory["interval"][1]


def test_a_warm_up_that_levels_off_is_no_leak() -> None:
    # arenas filling: 40 MiB in the first seconds, then a slow approach to the plateau and one late 8 MiB step
    warm = 100.0 + 40.0 * (1.0 - np.exp(-T / 2.5)) + np.where(T > 17.0, 8.0, 0.0)
    memory = trend(warm)
    assert judged(memory), memory
    assert stress.memory_trend(T, warm * MIB, 40, after_s=0.0, end_s=30.0)["interval"][0] > 0.0  # had it counted


def test_a_linear_leak_fails_through_the_sawtooth() -> None:
    phase = (T % 0.5) < 0.35
    memory = trend(520.0 + 180.0 * phase + T * (64.0 / 60.0))  # 64 MiB/min under the same sawtooth
    assert memory["interval"][0] > DEFAULT.max_memory_growth_mib_per_min, memory
    assert memory["slope_mib_per_min"] == pytest.approx(64.0, rel=0.25) and not judged(memory)


def test_too_few_requests_after_the_warm_up_are_not_decisive() -> None:
    memory = trend(np.full(T.size, 100.0), requests=10)  # 5 blocks of 2 requests
    assert memory["blocks"] == 5 and not judged(memory)
    assert "not decisive" in stress.stress_gate(figures(memory=memory), DEFAULT, "").reason


def test_a_slow_models_closed_loop_grows_to_hold_its_windows() -> None:
    assert load.grown_duration(6.0, 3, isolated_rate=1000.0) == 6.0  # fast: the plan's duration
    assert load.grown_duration(6.0, 3, isolated_rate=2.0) == pytest.approx(3 * 10 * 1.5 / 2.0)  # 22.5 s
    assert load.grown_duration(6.0, 3, isolated_rate=0.1) == load.MAX_GROWN_S  # bounded
    assert load.grown_duration(300.0, 3, isolated_rate=0.1) == 300.0  # a soak is never shortened
    assert load.grown_duration(6.0, 3, isolated_rate=0.0) == 6.0


def test_a_grown_run_says_so() -> None:
    result = stress.stress_gate(figures(**{"closed_loop.duration_s": 22.5, "closed_loop.planned_duration_s": 6.0}),
                                DEFAULT, "")
    assert "2 clients for 22.5 s (grown from 6 s for 10 requests a window)" in result.reason


def test_other_processes_cores_is_the_host_busy_time_minus_this_worker_own() -> None:
    t = np.arange(0.0, 3.0001, 0.05)
    host_ms = np.where(t < 1.0, 1500.0 * t, 1500.0 + 2000.0 * (t - 1.0))  # 1.5 busy cores, then 2
    own_ns = 1e9 * t  # this worker used one core throughout
    samples = np.c_[t * 1e9, np.zeros_like(t), host_ms, own_ns]
    assert stress.other_processes_cores(samples, 3, 3.0) == [0.5, 1.0, 1.0]
    samples[:, 2] = -1  # the host's CPU time is unknown here
    assert stress.other_processes_cores(samples, 3, 3.0) is None


def test_p99_ratio_counts_sub_millisecond_tails_as_one_millisecond() -> None:
    assert stress.p99_ratio(12.0, 4.0) == 3.0
    assert stress.p99_ratio(0.09, 0.01) == 1.0  # scheduler noise, not a 9x slowdown
    assert stress.p99_ratio(3.0, 0.01) == 3.0
    assert stress.p99_ratio(float("nan"), 1.0) == float("inf")


def test_distinct_requests_are_consecutive_batches() -> None:
    x = np.arange(40).reshape(20, 2)
    requests = stress.distinct_requests({"x": x}, 4)
    assert len(requests) == 5 and [r["x"][0, 0] for r in requests] == [0, 8, 16, 24, 32]
    assert len(stress.distinct_requests({"x": x}, 1)) == stress.MAX_DISTINCT_REQUESTS
    assert stress.distinct_requests({"x": x[:3]}, 8)[0]["x"].shape == (3, 2)


def test_thinned_records_keep_a_uniform_sample_of_any_length() -> None:
    record = load.Thinned(8, 1)
    for i in range(100):
        record.add(i)
    kept = record.table()[:, 0]
    assert record.stride == 16 and kept.tolist() == list(range(0, 100, 16))
    assert stress.thin(np.arange(1000), 5).tolist() == [0, 250, 500, 749, 999]


def test_max_abs_diff_and_same_outputs() -> None:
    a = [np.array([1.0, np.nan, 3.0])]
    assert load.max_abs_diff(a, [np.array([1.0, np.nan, 3.5])]) == 0.5
    assert load.max_abs_diff(a, [np.array([1.0, 2.0, 3.0])]) == float("inf")
    assert load.max_abs_diff(a, [np.zeros(2)]) == float("inf") and load.max_abs_diff(a, []) == float("inf")
    assert load.same_outputs(a, [np.array([1.0 + 1e-7, np.nan, 3.0])])
    assert not load.same_outputs(a, [np.array([1.0, np.nan, 3.01])])


class _Racy:
    """An in-process backend stand-in: the outputs of whichever call finished last (a shared slot)."""

    thread_safe = True

    def __init__(self) -> None:
        self.slot: list[np.ndarray] = []

    def infer(self, feeds: Any) -> list[np.ndarray]:
        self.slot = [np.asarray(feeds["x"]) * 2.0]
        time.sleep(0.001)
        return [np.array(self.slot[0])]


def test_load_phases_find_racy_outputs_and_a_lock_hides_them() -> None:
    requests = [{"x": np.full((1, 3), float(i))} for i in range(4)]
    racy = _Racy()
    run = load.Load(racy.infer, requests, sample_every=1)
    assert run.reference() == 0.0
    closed = run.closed_loop(clients=2, duration_s=0.3, windows=3, drain_s=5.0)
    assert closed["mismatched"] > 0 and closed["errors"] == 0 and closed["hung"] == 0
    assert closed["completions"].shape == (3 * load.BUCKETS_PER_WINDOW,)
    assert closed["memory"].shape[1] == len(load.SAMPLE_COLUMNS)
    locked = load.Load(load.serialized(racy.infer), requests, sample_every=1)
    locked.reference()
    assert locked.closed_loop(clients=2, duration_s=0.3, windows=3, drain_s=5.0)["mismatched"] == 0


def test_open_loop_serves_poisson_arrivals_and_counts_failures() -> None:
    calls = iter(range(10**6))

    def flaky(feeds: Any) -> list[np.ndarray]:
        if next(calls) % 7 == 6:
            raise ValueError("bad luck\nsecond line")
        return [np.asarray(feeds["x"])]

    run = load.Load(flaky, [{"x": np.ones(2)}], sample_every=2)
    run.reference()
    opened = run.open_loop(clients=2, duration_s=0.5, rate=200.0, windows=2, seed=0, drain_s=5.0)
    assert 50 < opened["requests"] < 160 and opened["unserved_wait_ns"].size == 0
    assert opened["errors"] > 0 and run.first_errors[0] == "ValueError: bad luck"
    assert len(opened["records"]) == opened["requests"] - opened["errors"]


def test_a_model_failing_alone_is_a_model_error_before_any_load() -> None:
    from certify.errors import ModelError

    def broken(feeds: Any) -> list[np.ndarray]:
        raise RuntimeError("no kernel for this shape\ndetails")

    with pytest.raises(ModelError, match=r"fails even alone, before any load: RuntimeError: no kernel for this shape$"):
        load.Load(broken, [{"x": np.ones(2)}], sample_every=1).reference()


def test_a_hung_request_is_counted_and_the_phase_still_ends() -> None:
    release = threading.Event()

    def hangs_once(feeds: Any) -> list[np.ndarray]:
        if threading.current_thread().name == "stress-client-1":
            release.wait(30)
        return [np.asarray(feeds["x"])]

    run = load.Load(hangs_once, [{"x": np.ones(2)}], sample_every=1)
    run.reference()
    started = time.monotonic()
    closed = run.closed_loop(clients=2, duration_s=0.2, windows=2, drain_s=0.3)
    release.set()
    assert closed["hung"] == 1 and time.monotonic() - started < 5


# --- one real run --------------------------------------------------------------------------------------------


def test_a_real_run_of_a_small_onnx_model_passes(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from certify.cases import cases_for
    from certify.hardware import detect_host
    from certify.plan.load import load_plan
    from certify.runner import CertificationRun
    from tests.helpers.models import PLAN, candidate, mlp_project

    mlp_project(tmp_path, (16, 64, 4))
    plan_file = tmp_path / "certify.toml"
    # the decisions are the synthetic tests' subject; here a shared host's load swings may move the throughput of
    # 0.5 s windows, so the decay limit is loosened: what is checked is the run itself, end to end
    plan_file.write_text(PLAN + "\n[stress]\nduration_s = 1.5\nclients = 2\nsample_every = 3\n"
                         + candidate("fp32", "fp32.onnx", extra="policy = { max_throughput_decay = 0.6 }"))
    plan = load_plan(plan_file)
    case = cases_for(plan, "stress")[0]
    ctx = CertificationRun(plan, tmp_path / "run", detect_host(), "run").context(case)
    result, measurement = stress.evaluate(ctx), ctx.measurement
    closed = measurement["closed_loop"]
    assert result.verdict == PASS, (result.reason, copy.deepcopy(measurement["memory"]))
    assert measurement["errors"] == 0 and measurement["outputs"]["mismatched"] == 0
    assert measurement["outputs"]["compared"] > 10 and measurement["clients"] == 2
    assert closed["requests"] > 100 and len(closed["windows_per_s"]) == 3
    assert measurement["executed_device"] == "CPUExecutionProvider" and not measurement["served_one_at_a_time"]
    assert "open_loop" not in measurement and measurement["memory"]["blocks"] >= stress.MIN_MEMORY_BLOCKS


def test_only_timing_failures_on_a_busy_host_are_measured_again() -> None:
    busy = figures(**{"closed_loop.throughput_decay": 0.5, "closed_loop.other_processes_cores": [0.1, 0.2, 1.2]})
    result = stress.stress_gate(busy, DEFAULT, HINT)
    assert result.details["broken"] == ["decay"] and stress.host_may_explain(result, busy)
    quiet = figures(**{"closed_loop.throughput_decay": 0.5, "closed_loop.other_processes_cores": [0.0, 0.0, 0.1]})
    assert not stress.host_may_explain(stress.stress_gate(quiet, DEFAULT, HINT), quiet)  # the model's own decay
    leak = figures(**{"memory.interval": [450.0, 550.0], "closed_loop.other_processes_cores": [1.5, 1.5, 1.5]})
    assert not stress.host_may_explain(stress.stress_gate(leak, DEFAULT, HINT), leak)  # a leak is never re-measured
    unknown = figures(**{"closed_loop.throughput_decay": 0.5})  # no host figures: nothing explains it
    assert not stress.host_may_explain(stress.stress_gate(unknown, DEFAULT, HINT), unknown)
