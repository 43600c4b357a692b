"""Noise-aware preflight: how quiet is this host right now, measured just before a paired speed run (~0.6 s).

It times a fixed pure-Python loop (no I/O, no allocation, one thread; sized by a short probe to ~2.5 ms a
repetition) up to 200 times in 0.6 s, and around that same window samples the host: the busiest other processes
(``/proc/*/stat`` before and after, our own process tree left out), the CPU all other work used (``/proc/stat``
busy time minus ours, which also sees processes too short-lived for the snapshots), the share of time tasks
waited for a CPU (``/proc/pressure/cpu``), hypervisor steal, the load average against the core count, and the
CPU frequency governor and current/max frequency where cpufreq is exposed.

The loop's figures say what a measurement would suffer: ``robust_cv`` (1.4826 MAD / median: typical jitter),
``p90_over_p50`` (a tenth of the repetitions stalled: time-slicing with other work on our core) and ``slowdown``
(median repetition / the probe's best: evenly slowed repetitions, which the spread alone misses). ``p99_over_p50``
is recorded but not classified: with 200 repetitions it is the second-slowest one, and a single stray preemption
moved it between 1.10 and 2.96 even on the quietest host seen. The load average is recorded, not classified: it
lags by a minute and counts our own previous measurements.

Thresholds (``THRESHOLDS``: noisy from, too noisy from), chosen from 110 preflights on the 2-core shared VM this
was written on, where other engineers' processes always kept about one core busy (a fully idle host never
occurred there); ranges are min-max (median):

- quietest seen (one other process busy on the other core, CPU pressure < 0.2; 17 samples): robust CV
  0.011-0.153 (0.031), p90/p50 1.03-1.69 (1.09), p99/p50 1.10-2.96 (1.49), slowdown 0.73-1.17, load 1.24-2.48;
- contended by other work (~1.3 cores busy elsewhere, CPU pressure 0.32-1.0; 45 samples): robust CV
  0.022-0.86 (0.074), p90/p50 1.10-2.98 (2.57), p99/p50 1.77-4.66, slowdown 0.81-2.59, load 1.24-5.52;
- the same plus one or two detached ``python -c "while True: pass"`` spinners (48 samples): robust CV
  0.002-1.19 (0.43), p90/p50 1.0-6.2 (1.30), p99/p50 1.03-8.98, slowdown 0.6-9.1 (4.1), CPU pressure 0.5-1.0.

So ``noisy`` starts at the quietest samples' median robust CV (0.03) and above their usual p90/p50 (1.15) and
slowdown (1.3), or when other work uses a quarter of the cores or tasks wait for a CPU a quarter of the time;
``too_noisy`` needs the loop itself to suffer (robust CV 0.10, p90/p50 1.5, slowdown 2: half a core or less was
ours). These classify the quietest samples 14 noisy / 3 too noisy, the contended ones 44 too noisy / 1 noisy and
the spinner ones 48/48 too noisy. Paired speed runs of the demo's fp32 vs int8-dynamic (1-4 s bounds) under those
conditions: quietest, 4.79x (95% CI 4.67-4.90) decisive in 1.9 s; contended, 4.2x to 8.7x across runs with
intervals that exclude each other (the fp32 model slows more under contention than the int8 one: noise moves the
estimate, not only its spread); with spinners, 11 of 14 runs hit the 4 s limit before they could stop as decisive,
with intervals up to 55% of the estimate wide. A preflight is a snapshot: one run classified noisy still drifted
to 7.4x (6.5-11.2) as the load changed during it.

What happens: ``quiet`` measures as planned; ``noisy`` widens the run (``widen``: duration bounds and iteration
cap doubled, and no decisive stop before ``NOISY_MIN_DECISIVE_S``, so each of the speed interval's windows spans
a second or more of the host's changing states) and says so in the evidence and the verdict's details;
``too_noisy`` also widens, and the speed verdict's reason warns "host too noisy for the requested confidence:
..."; under ``measure.noise = "refuse"`` the gate is an ERROR instead (``HostTooNoisy``), with nothing
measured; ``"ignore"`` neither widens nor warns.
The preflight is recorded in every speed run's evidence whatever the option.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from certify.errors import CertifyError
from certify.measure import stats
from certify.plan import Measure

QUIET, NOISY, TOO_NOISY = "quiet", "noisy", "too_noisy"
CALIBRATION_REPS = 200
CALIBRATION_BUDGET_S = 0.6
REP_TARGET_S = 0.0025  # one timed repetition of the loop lasts about this long on this host
TOP_PROCESSES = 5
WIDEN_FACTOR = 2.0
NOISY_MIN_DECISIVE_S = 8.0  # the speed interval's 8 windows of at least 1 s each
INF = float("inf")
# figure -> (noisy from, too noisy from); the module docstring says where the numbers come from
THRESHOLDS: dict[str, tuple[float, float]] = {
    "robust_cv": (0.03, 0.10),
    "p90_over_p50": (1.15, 1.50),
    "slowdown": (1.3, 2.0),
    "others_cpu_share": (0.25, INF),
    "cpu_pressure_share": (0.25, INF),
}
LABELS = {"robust_cv": "calibration robust CV", "p90_over_p50": "calibration p90/p50",
          "slowdown": "calibration median / its best speed", "others_cpu_share": "other processes' share of the cores",
          "cpu_pressure_share": "share of time tasks waited for a CPU"}
CPUFREQ_ROOT = Path("/sys/devices/system/cpu")
PROC_ROOT = Path("/proc")


class HostTooNoisy(CertifyError):
    """The preflight found the host too noisy and the plan asks to refuse (``measure.noise = "refuse"``)."""

    def __init__(self, message: str, *, hint: str, preflight: dict[str, Any]) -> None:
        super().__init__(message, hint=hint)
        self.preflight = preflight


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def _timed(n: int) -> int:
    start = time.perf_counter_ns()
    _spin(n)
    return time.perf_counter_ns() - start


def _loop_size() -> tuple[int, float]:
    """Iterations of ``_spin`` that take about ``REP_TARGET_S`` here (probed, so every host times a few ms), and
    the nanoseconds they take at the probe's best speed."""
    n = 2048
    while True:
        took = min(_timed(n) for _ in range(3))  # the fastest of three: a preempted probe would shrink the loop
        if took >= 250_000 or n >= 1 << 24:
            size = max(1000, int(n * REP_TARGET_S * 1e9 / max(took, 1)))
            return size, size * max(took, 1) / n
        n *= 4


def calibrate(reps: int = CALIBRATION_REPS, budget_s: float = CALIBRATION_BUDGET_S) -> dict[str, Any]:
    """Time the fixed loop ``reps`` times (fewer if the budget ends first): its spread is the host's noise."""
    (n, best_ns), times = _loop_size(), list[int]()
    deadline = time.perf_counter() + budget_s
    while len(times) < reps and time.perf_counter() < deadline:
        times.append(_timed(n))
    ns = np.asarray(times, dtype=np.float64)
    summary = stats.summarize(ns)
    p50 = summary["p50_ms"]
    return {"workload": f"pure-Python integer loop of {n} additions", "reps": int(ns.size), "median_ms": p50,
            "robust_cv": summary["robust_cv"], "p90_over_p50": summary["p90_ms"] / p50,
            "p99_over_p50": summary["p99_ms"] / p50, "max_over_p50": summary["max_ms"] / p50,
            "slowdown": p50 * 1e6 / best_ns}


def _proc_stats(root: Path = PROC_ROOT) -> dict[int, tuple[str, int, int]]:
    """pid -> (command name, parent pid, user+system CPU ticks) for every readable process."""
    found: dict[int, tuple[str, int, int]] = {}
    for entry in root.iterdir() if root.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        if len(fields) > 12:
            found[int(entry.name)] = (head.partition("(")[2], int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def _host_counters(root: Path = PROC_ROOT) -> dict[str, float]:
    """Cumulative host-wide counters: all CPU ticks, the busy ones (not idle or waiting for I/O), those stolen by the
    hypervisor, and the microseconds some runnable task waited for a CPU (pressure stall information), where the
    kernel exposes them."""
    counters: dict[str, float] = {}
    try:
        fields = [int(v) for v in (root / "stat").read_text(encoding="utf-8").split("\n", 1)[0].split()[1:]]
        ticks = float(sum(fields[:8]))
        counters.update(ticks=ticks, busy=ticks - fields[3] - fields[4], steal=float(fields[7]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        some = (root / "pressure" / "cpu").read_text(encoding="utf-8").split("\n", 1)[0]
        counters["pressure_us"] = float(some.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return counters


def _host_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float | None]:
    """CPU the whole host used (in cores), the share of CPU time stolen by the hypervisor, and the share of wall
    time some task waited for a CPU; None for what the kernel does not expose."""
    ticks = after.get("ticks", 0.0) - before.get("ticks", 0.0)
    known = ticks > 0 and seconds > 0 and "ticks" in before
    busy = (after["busy"] - before["busy"]) / _clock_ticks() / seconds if known else None
    steal = (after["steal"] - before["steal"]) / ticks if known else None
    waited = (after["pressure_us"] - before["pressure_us"]) / 1e6 / seconds \
        if "pressure_us" in after and "pressure_us" in before and seconds > 0 else None
    return {"host_busy_cores": None if busy is None else round(busy, 3),
            "steal_share": None if steal is None else round(steal, 4),
            "cpu_pressure_share": None if waited is None else round(waited, 4)}


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _own_tree(procs: dict[int, tuple[str, int, int]], me: int) -> set[int]:
    """This process and its descendants (our measurement workers are not background load)."""
    tree, grew = {me}, True
    while grew:
        more = {pid for pid, (_, parent, _) in procs.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def busy_processes(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]],
                   seconds: float, me: int | None = None) -> tuple[list[dict[str, Any]], float, float]:
    """The busiest other processes between two ``/proc`` snapshots (share 1.0 = one full core), the CPU those
    other processes used together and the CPU our own process tree used, in cores. Processes that started or ended
    between the snapshots are not seen here (the host's busy time counts them)."""
    mine = _own_tree(after, os.getpid() if me is None else me)
    used = [(pid, after[pid][0], (after[pid][2] - before[pid][2]) / _clock_ticks() / seconds)
            for pid in after if pid in before and seconds > 0]
    others = sorted((u for u in used if u[2] > 0 and u[0] not in mine), key=lambda u: -u[2])
    top = [{"pid": pid, "comm": comm, "share": round(share, 3)} for pid, comm, share in others[:TOP_PROCESSES]]
    return top, sum(u[2] for u in others), sum(u[2] for u in used if u[0] in mine)


def cpu_frequency(root: Path = CPUFREQ_ROOT) -> dict[str, Any]:
    """Governor and current/max frequency of each CPU where the cpufreq driver exposes them."""
    cpus = sorted(root.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:]))
    if not cpus:
        return {"readable": False, "reason": f"not readable here: no {root}/cpu*/cpufreq (no cpufreq driver "
                "exposed, as in most VMs; the calibration loop still measures its effect)"}

    def read(path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError:
            return None

    def khz(path: Path) -> float | None:
        value = read(path)
        return int(value) / 1000.0 if value and value.isdigit() else None

    governors = sorted({g for c in cpus if (g := read(c / "scaling_governor"))})
    return {"readable": True, "governors": governors,
            "cur_mhz": [khz(c / "scaling_cur_freq") for c in cpus],
            "max_mhz": [khz(c / "cpuinfo_max_freq") or khz(c / "scaling_max_freq") for c in cpus]}


def classify(figures: dict[str, Any]) -> tuple[str, list[str]]:
    """quiet / noisy / too_noisy from the calibration loop's figures plus ``others_cpu_share`` and
    ``cpu_pressure_share`` (None where the kernel has no pressure information), with the findings that made it so."""
    level, findings = 0, []
    for key, (noisy, too_noisy) in THRESHOLDS.items():
        value = figures.get(key)
        if value is None or value < noisy:
            continue
        worst = 2 if value >= too_noisy else 1
        level = max(level, worst)
        findings.append(f"{LABELS[key]} {value:.3g} >= {too_noisy if worst == 2 else noisy:g}")
    return (QUIET, NOISY, TOO_NOISY)[level], findings


def _sample_window() -> dict[str, Any]:
    """Time the calibration loop while watching the other processes and the host's counters over that window."""
    procs, counters, started = _proc_stats(), _host_counters(), time.monotonic()
    calibration = calibrate()
    procs_after, counters_after, seconds = _proc_stats(), _host_counters(), time.monotonic() - started
    top, listed, ours = busy_processes(procs, procs_after, seconds)
    host = _host_shares(counters, counters_after, seconds)
    # the host's busy time minus ours also counts the short-lived processes the two snapshots cannot see
    others = listed if host["host_busy_cores"] is None else max(listed, host["host_busy_cores"] - ours)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"calibration": calibration, "busiest_processes": top, "cores": cores, "others_cpu_cores": round(others, 3),
            "others_cpu_share": round(others / cores, 3), "own_cpu_cores": round(ours, 3), **host}


def run_preflight(option: str = "warn", confidence: float = 0.95) -> dict[str, Any]:
    """Sample the host and time the calibration loop (about 0.6 s). ``option`` is the plan's ``measure.noise``,
    ``confidence`` the policy's (it only words the warning)."""
    started = time.monotonic()
    window = _sample_window()
    noise, findings = classify({**window["calibration"], **window})
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    record = {"noise": noise, "findings": findings, "option": option, **window,
              "load_average": [round(x, 2) for x in load], "load_per_core": round(load[0] / window["cores"], 3),
              "cpu_frequency": cpu_frequency(), "seconds": round(time.monotonic() - started, 3),
              "thresholds": {k: {"noisy": v[0], "too_noisy": v[1]} for k, v in THRESHOLDS.items()}}
    summary = describe(record)
    warning = (f"host too noisy for the requested confidence: {summary} (at {confidence:.0%} confidence the "
               "interval would reflect the host's noise, not only the models')") if noise == TOO_NOISY else ""
    return {**record, "summary": summary, "warning": warning}


def describe(preflight: dict[str, Any]) -> str:
    """One line for a verdict: why the host is noisy (or how quiet it is), its load and its busiest processes."""
    cal = preflight["calibration"]
    top = ", ".join(f"{p['comm']} (pid {p['pid']}) {p['share']:.0%} of a core"
                    for p in preflight["busiest_processes"][:3])
    found = "; ".join(preflight["findings"]) or (f"quiet: calibration robust CV {cal['robust_cv']:.3g}, "
                                                  f"p90/p50 {cal['p90_over_p50']:.3g}")
    return (f"{found}; calibration p99/p50 {cal['p99_over_p50']:.3g}; load average "
            f"{preflight['load_average'][0]:.2f} on {preflight['cores']} cores" + (f"; busiest: {top}" if top else ""))


def widen(measure: Measure, preflight: dict[str, Any]) -> tuple[Measure, dict[str, Any]]:
    """The measure bounds to use: on a noisy host (unless the plan says ``ignore``) the run may last twice as long
    and twice as many iterations, and must run twice the minimum duration, and at least ``NOISY_MIN_DECISIVE_S``,
    before it may stop as decisive."""
    if preflight["noise"] == QUIET or preflight["option"] == "ignore":
        return measure, {}
    max_duration = measure.max_duration_s * WIDEN_FACTOR
    wider = replace(measure, min_duration_s=min(max(measure.min_duration_s * WIDEN_FACTOR, NOISY_MIN_DECISIVE_S),
                                                max_duration),
                    max_duration_s=max_duration,
                    max_iterations=int(measure.max_iterations * WIDEN_FACTOR))
    return wider, {key: [getattr(measure, key), getattr(wider, key)]
                   for key in ("min_duration_s", "max_duration_s", "max_iterations")}


RECHECK_S = 5.0  # under noise = "wait": the pause between two preflights while the host is too noisy
NOISE_ORDER = (QUIET, NOISY, TOO_NOISY)
JUDGING_OPTIONS = ("wait", "refuse")  # the options under which too-noisy evidence is not judged


def settle(measure: Measure, confidence: float, sleep: Any = time.sleep, clock: Any = time.monotonic
           ) -> dict[str, Any]:
    """The preflight the measurement starts from: under ``noise = "wait"`` the host is re-checked every
    ``RECHECK_S`` while it is too noisy, up to ``measure.noise_wait_s``; the wait is recorded (``waited_s``)."""
    started = clock()
    checked, checks = run_preflight(measure.noise, confidence), 1
    while checked["noise"] == TOO_NOISY and measure.noise == "wait" \
            and clock() - started + RECHECK_S <= measure.noise_wait_s:
        sleep(RECHECK_S)
        checked, checks = run_preflight(measure.noise, confidence), checks + 1
    return {**checked, "waited_s": round(max(0.0, clock() - started - checked["seconds"]), 3), "checks": checks}


def conditions(before: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
    """The host's conditions over a measurement, from the preflights before and after it: the worse noise level,
    the larger share of the cores other processes held, the plan's option and the wait for quiet."""
    seen = [p for p in (before, after) if p]
    noise = max((p["noise"] for p in seen), key=NOISE_ORDER.index)
    return {"noise": noise, "others_cpu_share": max(float(p.get("others_cpu_share") or 0.0) for p in seen),
            "noise_option": before["option"], "waited_s": float(before.get("waited_s") or 0.0),
            "summary": next(p["summary"] for p in seen if p["noise"] == noise)}


def not_judged(conditions_: dict[str, Any]) -> str:
    """Why a verdict measured under these conditions cannot stand ('' when it can): too noisy under an option
    that judges the host (``wait``, ``refuse``)."""
    if conditions_.get("noise") != TOO_NOISY or conditions_.get("noise_option") not in JUDGING_OPTIONS:
        return ""
    waited = f" after waiting {conditions_['waited_s']:.0f} s for quiet" if conditions_.get("waited_s") else ""
    return (f"the host was too noisy while measuring{waited} ({conditions_['summary']}; other processes held "
            f"{conditions_['others_cpu_share']:.0%} of the cores): the figure is kept in the evidence but cannot "
            "certify")


def check(preflight: dict[str, Any]) -> None:
    """Raise ``HostTooNoisy`` when the host is too noisy and the plan refuses to measure on it."""
    if preflight["noise"] == TOO_NOISY and preflight["option"] == "refuse":
        raise HostTooNoisy(
            f"{preflight['warning']}; measure.noise = 'refuse', so nothing was measured",
            hint="rerun on a quiet host (stop the busy processes listed, use a dedicated machine or CI runner), "
            "or set measure.noise = 'wait' (re-check until quiet) or 'warn' (measure anyway)", preflight=preflight)
