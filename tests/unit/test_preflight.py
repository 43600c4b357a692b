"""The noise-aware preflight before speed runs: host sampling on fake /proc and /sys trees, classification
against the documented thresholds, widening, the plan's ``measure.noise`` option, and what the verdicts say."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify import verdict
from certify.errors import PlanError
from certify.gates.speed import speed_gate, stability_gate
from certify.measure import preflight, stats
from certify.plan import Measure
from certify.plan.load import load_plan
from certify.policy import POLICIES

QUIET_LOOP = {"robust_cv": 0.008, "p90_over_p50": 1.02, "p99_over_p50": 1.1, "max_over_p50": 1.5, "slowdown": 0.95,
              "median_ms": 2.5, "reps": 200, "workload": "fake"}


def loop(**figures: float) -> dict[str, Any]:
    return {**QUIET_LOOP, **figures}


@pytest.mark.parametrize(("figures", "noise"), [
    ({}, "quiet"),
    ({"others_cpu_share": 0.2, "cpu_pressure_share": 0.1}, "quiet"),
    ({"cpu_pressure_share": None}, "quiet"),  # a kernel without pressure information
    ({"others_cpu_share": 0.5}, "noisy"),  # half the machine busy elsewhere: widen, even when the loop was lucky
    ({"cpu_pressure_share": 0.9}, "noisy"),
    ({"robust_cv": 0.05}, "noisy"),
    ({"p90_over_p50": 1.2}, "noisy"),
    ({"slowdown": 1.5}, "noisy"),
    ({"robust_cv": 0.12}, "too_noisy"),
    ({"p90_over_p50": 2.5}, "too_noisy"),  # a tenth of the loop's repetitions lost half their time or more
    ({"slowdown": 4.0, "robust_cv": 0.002}, "too_noisy"),  # evenly slowed: the spread alone would miss it
    ({"others_cpu_share": 1.0, "cpu_pressure_share": 1.0}, "noisy"),  # the loop decides what is too noisy
])
def test_noise_levels_follow_the_documented_thresholds(figures: dict[str, float], noise: str) -> None:
    level, findings = preflight.classify(loop(**figures))
    assert level == noise
    assert bool(findings) == (noise != "quiet")


def test_findings_name_the_figure_and_its_limit() -> None:
    _, findings = preflight.classify(loop(robust_cv=0.2, others_cpu_share=0.6))
    assert findings == ["calibration robust CV 0.2 >= 0.1", "other processes' share of the cores 0.6 >= 0.25"]


def write_stat(root: Path, pid: int, comm: str, ppid: int, ticks: int) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(ticks), "0"] + ["0"] * 30  # utime, stime = fields 14, 15
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")


def test_busy_processes_rank_others_and_skip_our_own_tree(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    for pid, comm, ppid in ((1, "init", 0), (10, "me", 1), (11, "my worker", 10), (12, "worker's child", 11),
                            (20, "a (weird) name", 1), (21, "idle", 1), (22, "busy", 1)):
        write_stat(tmp_path, pid, comm, ppid, 0)
    (tmp_path / "self").mkdir()  # not a pid: ignored
    before = preflight._proc_stats(tmp_path)
    assert before[20] == ("a (weird) name", 1, 0)
    for pid, used in ((10, 1.0), (11, 1.0), (12, 1.0), (20, 0.25), (22, 0.5)):
        write_stat(tmp_path, pid, before[pid][0], before[pid][1], int(used * tick))
    top, others, ours = preflight.busy_processes(before, preflight._proc_stats(tmp_path), 1.0, me=10)
    assert [(p["pid"], p["comm"]) for p in top] == [(22, "busy"), (20, "a (weird) name")]
    assert top[0]["share"] == pytest.approx(0.5, abs=0.01) and others == pytest.approx(0.75, abs=0.02)
    assert ours == pytest.approx(3.0, abs=0.03)


def test_cpu_frequency_where_readable_and_the_reason_where_not(tmp_path: Path) -> None:
    for cpu, cur in ((0, 2_400_000), (1, 800_000)):
        folder = tmp_path / f"cpu{cpu}" / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_governor").write_text("powersave\n")
        (folder / "scaling_cur_freq").write_text(f"{cur}\n")
        (folder / "cpuinfo_max_freq").write_text("4000000\n")
    freq = preflight.cpu_frequency(tmp_path)
    assert freq == {"readable": True, "governors": ["powersave"], "cur_mhz": [2400.0, 800.0],
                    "max_mhz": [4000.0, 4000.0]}
    missing = preflight.cpu_frequency(tmp_path / "none")
    assert missing["readable"] is False and missing["reason"].startswith("not readable here")


def test_steal_and_cpu_pressure_shares(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()

    def write(busy: int, idle: int, steal: int, waited_us: int) -> dict[str, float]:
        (tmp_path / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3\n")
        (tmp_path / "pressure" / "cpu").write_text(f"some avg10=1.00 avg60=0 avg300=0 total={waited_us}\n"
                                                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        return preflight._host_counters(tmp_path)

    tick = os.sysconf("SC_CLK_TCK")
    before = write(100, 900, 0, 0)
    after = write(100 + tick, 1000, 50, 250_000)  # one core busy for a second, 50 ticks stolen
    shares = preflight._host_shares(before, after, 0.5)
    assert shares == {"host_busy_cores": pytest.approx(2.0 + 100 / tick, abs=0.01),
                      "steal_share": pytest.approx(50 / (tick + 150)), "cpu_pressure_share": pytest.approx(0.5)}
    assert set(preflight._host_shares({}, {}, 0.5).values()) == {None}


def test_the_preflight_for_real_is_quick_and_complete() -> None:
    started = time.monotonic()
    record = preflight.run_preflight("warn", 0.95)
    assert time.monotonic() - started < 2.0
    cal = record["calibration"]
    assert 20 <= cal["reps"] <= preflight.CALIBRATION_REPS and cal["median_ms"] > 0 and cal["robust_cv"] >= 0
    assert cal["p99_over_p50"] >= cal["p90_over_p50"] >= 1.0
    assert record["noise"] in ("quiet", "noisy", "too_noisy") and record["option"] == "warn"
    assert record["cores"] >= 1 and len(record["load_average"]) == 3 and record["load_per_core"] >= 0
    assert all(p["pid"] != os.getpid() for p in record["busiest_processes"])
    assert len(record["busiest_processes"]) <= preflight.TOP_PROCESSES
    assert "readable" in record["cpu_frequency"] and record["thresholds"]["robust_cv"]["too_noisy"] == 0.1
    assert record["others_cpu_share"] >= 0 and cal["slowdown"] > 0
    assert "calibration p99/p50" in record["summary"] and f"on {record['cores']} cores" in record["summary"]
    assert bool(record["warning"]) == (record["noise"] == "too_noisy")


def record_of(noise: str, option: str = "warn") -> dict[str, Any]:
    record = {"noise": noise, "option": option, "findings": ["calibration robust CV 0.2 >= 0.1"],
              "summary": "calibration robust CV 0.2 >= 0.1; ...", "busiest_processes": []}
    record["warning"] = "host too noisy for the requested confidence: ..." if noise == "too_noisy" else ""
    return record


def test_a_noisy_host_widens_the_run_unless_ignored() -> None:
    measure = Measure(min_duration_s=1.0, max_duration_s=4.0, max_iterations=1000)
    assert preflight.widen(measure, record_of("quiet")) == (measure, {})
    assert preflight.widen(measure, record_of("too_noisy", "ignore")) == (measure, {})
    wider, widened = preflight.widen(measure, record_of("noisy"))
    assert (wider.min_duration_s, wider.max_duration_s, wider.max_iterations) == (8.0, 8.0, 2000)
    assert widened == {"min_duration_s": [1.0, 8.0], "max_duration_s": [4.0, 8.0], "max_iterations": [1000, 2000]}
    assert wider.min_iterations == measure.min_iterations
    long = Measure(min_duration_s=5.0, max_duration_s=30.0)
    assert preflight.widen(long, record_of("noisy"))[0].min_duration_s == 10.0  # doubled when that is longer
    short = Measure(min_duration_s=0.5, max_duration_s=3.0)  # the windows need 8 s: the run may not stop before
    assert preflight.widen(short, record_of("noisy"))[0].min_duration_s == 6.0  # its widened maximum


def test_refuse_raises_only_on_a_too_noisy_host() -> None:
    for noise, option in (("noisy", "refuse"), ("too_noisy", "warn"), ("too_noisy", "ignore")):
        preflight.check(record_of(noise, option))
    with pytest.raises(preflight.HostTooNoisy) as info:
        preflight.check(record_of("too_noisy", "refuse"))
    assert info.value.message.startswith("host too noisy for the requested confidence: ")
    assert "rerun on a quiet host" in info.value.hint and info.value.preflight["noise"] == "too_noisy"


# --- the plan option --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from tests.helpers.models import tiny_project

    return tiny_project(tmp_path_factory.mktemp("preflight"))


def plan_text(noise: str) -> str:
    from tests.helpers.models import PLAN, candidate

    return PLAN.replace("threads = 1", f"threads = 1\nnoise = {noise}") + candidate("int8", "int8.onnx")


def test_plan_measure_noise_defaults_to_wait_and_is_validated(project: Path) -> None:
    (project / "certify.toml").write_text(plan_text('"refuse"'))
    assert load_plan(project / "certify.toml").measure.noise == "refuse"
    assert Measure().noise == "wait" and Measure().noise_wait_s == 120.0
    (project / "certify.toml").write_text(plan_text('"refuse-it"'))
    with pytest.raises(PlanError) as info:
        load_plan(project / "certify.toml")
    assert info.value.key == "measure.noise" and "did you mean 'refuse'" in info.value.message
    assert "'wait', 'refuse', 'warn' or 'ignore'" in info.value.message and "ERROR" in info.value.hint
    (project / "certify.toml").write_text(plan_text("1"))
    with pytest.raises(PlanError, match="expected str"):
        load_plan(project / "certify.toml")


# --- what the speed runs and verdicts say -----------------------------------------------------------------


def speed_run(pre: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    base, cand = 3e6 * rng.lognormal(0, 0.05, 400), 1e6 * rng.lognormal(0, 0.05, 400)
    side = {"executed_device": "cpu", "info": {}, "load_s": 0.0}
    return {"speedup": 3.0, "interval": [2.8, 3.2], "confidence": 0.95, "stop_reason": "decisive",
            "duration_s": 2.0, "samples": 400, "baseline": {"latency": stats.summarize(base), **side},
            "candidate": {"latency": stats.summarize(cand), **side}, "preflight": pre,
            "energy": {"available": False, "reason": "no energy counter readable here: RAPL: ..."}}


def test_the_speed_verdict_warns_on_a_too_noisy_host_and_says_what_was_widened() -> None:
    pre = {**record_of("too_noisy"), "widened": {"min_duration_s": [1.0, 2.0], "max_duration_s": [4.0, 8.0]}}
    result = speed_gate(speed_run(pre), POLICIES["edge-default"], "")
    assert result.verdict == verdict.PASS
    assert "; host too noisy for the requested confidence: " in result.reason
    assert "(the run was widened: min_duration_s 1 -> 2, max_duration_s 4 -> 8)" in result.reason
    assert result.details["preflight"]["widened"] == "min_duration_s 1 -> 2, max_duration_s 4 -> 8"
    assert result.details["energy"] == {"available": False, "reason": "no energy counter readable here: RAPL: ..."}
    noisy = speed_gate(speed_run({**record_of("noisy"), "widened": {"max_iterations": [10, 20]}}),
                             POLICIES["edge-default"], "")
    assert "too noisy" not in noisy.reason and noisy.details["preflight"]["widened"] == "max_iterations 10 -> 20"
    ignored = speed_gate(speed_run({**record_of("too_noisy", "ignore"), "widened": {}}),
                               POLICIES["edge-default"], "")
    assert "too noisy" not in ignored.reason and ignored.details["preflight"]["widened"] == "nothing"


def test_a_stability_failure_on_a_noisy_host_says_the_host_was_noisy() -> None:
    run = speed_run({**record_of("noisy"), "widened": {}})
    run["candidate"]["latency"].update(p50_ms=1.0, p99_ms=9.0)  # p99/p50 9 > 3
    run["candidate"]["drift"] = run["baseline"]["drift"] = 0.0
    failed = stability_gate(run, POLICIES["edge-default"], "")
    assert failed.verdict == verdict.FAIL and failed.details["host_noise"] == "noisy"
    assert failed.reason.endswith("(the host was noisy when measured: calibration robust CV 0.2 >= 0.1; ...)")
    quiet = stability_gate({**run, "preflight": record_of("quiet")}, POLICIES["edge-default"], "")
    assert quiet.verdict == verdict.FAIL and "host was" not in quiet.reason and quiet.details["host_noise"] == "quiet"


def too_noisy_loop(*_: Any, **__: Any) -> dict[str, Any]:
    return loop(robust_cv=0.3, p90_over_p50=2.6)


def test_refuse_on_a_too_noisy_host_is_an_error_for_speed_and_stability(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.cases import cases_for
    from certify.hardware import detect_host
    from certify.runner import CertificationRun

    (project / "certify.toml").write_text(plan_text('"refuse"'))
    plan = load_plan(project / "certify.toml")
    monkeypatch.setattr(preflight, "calibrate", too_noisy_loop)
    run = CertificationRun(plan, tmp_path / "run", detect_host(), "run")
    for gate in ("speed", "stability"):
        result, record = run.evaluate(cases_for(plan, gate)[0])
        assert result.verdict == verdict.ERROR, result
        assert result.reason.startswith("host too noisy for the requested confidence: calibration robust CV 0.3 "
                                        ">= 0.1; calibration p90/p50 2.6 >= 1.5; ")
        assert "nothing was measured" in result.reason and "rerun on a quiet host" in result.hint
        assert record["measurement"]["preflight"]["noise"] == "too_noisy"


def test_a_noisy_host_widens_a_real_speed_run_and_records_it(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.measure import speed
    from certify.plan import ModelRef

    monkeypatch.setattr(preflight, "calibrate", lambda *a, **k: loop(robust_cv=0.05))
    refs = [ModelRef(name=n, path=project / f"{n}.onnx", framework="onnxruntime", threads=1) for n in ("fp32", "int8")]
    measure = Measure(warmup_iterations=5, min_iterations=20, max_iterations=10**8, min_duration_s=0.2,
                      max_duration_s=0.3, bootstrap_resamples=200, threads=1)
    run = speed.measure_speed(refs[0], refs[1], {"": np.zeros((1, 16), np.float32)}, measure, 1.0, 0.95)
    assert run["preflight"]["noise"] == "noisy" and run["preflight"]["option"] == "wait"
    assert run["conditions"]["noise"] == "noisy" and run["preflight_after"]["noise"] == "noisy"
    assert run["preflight"]["widened"]["max_duration_s"] == [0.3, 0.6]
    assert run["bounds"]["max_duration_s"] == 0.6 and run["bounds"]["min_duration_s"] == 0.6
    assert run["duration_s"] >= 0.6 and run["stop_reason"] in ("max_duration", "max_iterations") and "energy" in run


def test_a_tight_iteration_cap_still_leaves_the_rounds_a_decision_needs(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.measure import speed
    from certify.plan import ModelRef

    monkeypatch.setattr(preflight, "calibrate", lambda *a, **k: loop())
    refs = [ModelRef(name=n, path=project / f"{n}.onnx", framework="onnxruntime", threads=1) for n in ("fp32", "int8")]
    measure = Measure(warmup_iterations=5, min_iterations=20, max_iterations=320, min_duration_s=0.1,
                      max_duration_s=30.0, bootstrap_resamples=200, threads=1, noise="ignore")
    run = speed.measure_speed(refs[0], refs[1], {"": np.zeros((1, 16), np.float32)}, measure, 1.0, 0.95)
    assert run["block_iterations"] <= 320 // (2 * speed.MIN_ROUNDS_TO_DECIDE)  # a µs model would get ~1000s
    assert run["rounds"] >= speed.MIN_ROUNDS_TO_DECIDE or run["stop_reason"] == "decisive"


# --- noise = "wait" (the default): wait for quiet, and too-noisy evidence is not judged -----------------------


def conditions_of(noise: str, option: str = "wait", waited: float = 0.0) -> dict[str, Any]:
    return preflight.conditions({**record_of(noise, option), "others_cpu_share": 0.7, "waited_s": waited}, None)


class FakeClock:
    """Sleeping advances it: a wait of minutes in no time."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []  # type: ignore[var-annotated]

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept.append(seconds)

    def __call__(self) -> float:
        return self.now


def test_wait_rechecks_until_the_host_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    levels = iter([loop(robust_cv=0.3, p90_over_p50=2.6), loop(robust_cv=0.3, p90_over_p50=2.6), loop()])
    monkeypatch.setattr(preflight, "calibrate", lambda *a, **k: next(levels))
    clock = FakeClock()
    slept = clock.slept
    settled = preflight.settle(Measure(noise_wait_s=60.0), 0.95, sleep=clock.sleep, clock=clock)
    # (quiet, or noisy when other processes hold the cores now: the loop's figures are faked, /proc is not)
    assert settled["noise"] != "too_noisy" and settled["checks"] == 3 and slept == [preflight.RECHECK_S] * 2


def test_wait_gives_up_after_noise_wait_s_and_refuse_or_warn_never_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "calibrate", too_noisy_loop)
    clock = FakeClock()
    settled = preflight.settle(Measure(noise_wait_s=12.0), 0.95, sleep=clock.sleep, clock=clock)
    assert settled["noise"] == "too_noisy" and settled["checks"] == 3 and clock.slept == [5.0, 5.0]  # +5 > 12
    assert 9.0 < settled["waited_s"] <= 10.0  # less the last check's own time
    for option in ("refuse", "warn", "ignore"):
        clock = FakeClock()
        assert preflight.settle(Measure(noise=option), 0.95, sleep=clock.sleep, clock=clock)["checks"] == 1
        assert not clock.slept


def test_conditions_take_the_worse_of_before_and_after() -> None:
    found = preflight.conditions(record_of("quiet", "wait"), {**record_of("too_noisy"), "others_cpu_share": 0.7})
    assert found["noise"] == "too_noisy" and found["others_cpu_share"] == 0.7 and found["noise_option"] == "wait"
    assert preflight.conditions(record_of("noisy"), None)["noise"] == "noisy"


@pytest.mark.parametrize("gate", ["speed", "stability"])
def test_a_pass_measured_too_noisy_is_an_error_that_keeps_its_figures(gate: str) -> None:
    run = {**speed_run({**record_of("too_noisy"), "widened": {}}), "conditions": conditions_of("too_noisy", waited=120)}
    run["candidate"]["drift"] = run["baseline"]["drift"] = 0.0
    judge = speed_gate if gate == "speed" else stability_gate
    result = judge(run, POLICIES["edge-default"], "")  # type: ignore[operator]
    assert result.verdict == verdict.ERROR and result.value is not None, result
    assert result.reason.startswith("not judged: the host was too noisy while measuring after waiting 120 s for "
                                    "quiet (calibration robust CV 0.2 >= 0.1; ...; other processes held 70% of the "
                                    "cores): the figure is kept in the evidence but cannot certify; measured: ")
    assert result.details["conditions"]["noise"] == "too_noisy" and "noise_wait_s" in result.hint


def test_warn_lets_a_too_noisy_pass_stand_and_a_noisy_host_is_judged() -> None:
    base = speed_run({**record_of("too_noisy", "warn"), "widened": {}})
    warned = speed_gate({**base, "conditions": conditions_of("too_noisy", "warn")}, POLICIES["edge-default"], "")
    assert warned.verdict == verdict.PASS and warned.details["conditions"]["noise"] == "too_noisy"
    noisy = speed_gate({**base, "conditions": conditions_of("noisy")}, POLICIES["edge-default"], "")
    assert noisy.verdict == verdict.PASS


def test_the_matrix_cell_shows_the_host_noise() -> None:
    from certify.report.tables import cell_text

    result = {"verdict": "pass", "value": 3.0, "interval": [2.8, 3.2], "comparison": ">=", "unit": "x",
              "details": {"conditions": conditions_of("noisy")}}
    assert cell_text(result) == "PASS 3.00x [2.80x] (noisy)"
    assert cell_text({**result, "verdict": "error", "details": {"conditions": conditions_of("too_noisy")}}) == \
        "ERROR (too noisy)"
    assert cell_text({**result, "details": {}}) == "PASS 3.00x [2.80x]"


def test_wait_on_a_host_that_stays_too_noisy_measures_and_errors_for_real(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.cases import cases_for
    from certify.hardware import detect_host
    from certify.runner import CertificationRun

    (project / "certify.toml").write_text(plan_text('"wait"\nnoise_wait_s = 0.5'))
    plan = load_plan(project / "certify.toml")
    monkeypatch.setattr(preflight, "calibrate", too_noisy_loop)
    monkeypatch.setattr(preflight, "RECHECK_S", 0.1)
    result, record = CertificationRun(plan, tmp_path / "run", detect_host(), "run").evaluate(
        cases_for(plan, "speed")[0])
    assert result.verdict == verdict.ERROR and result.reason.startswith("not judged: the host was too noisy"), result
    measured = record["measurement"]
    assert measured["samples"] > 0 and measured["preflight"]["checks"] >= 2 and measured["conditions"]["waited_s"] > 0
