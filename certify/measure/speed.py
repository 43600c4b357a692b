"""Paired, interleaved, adaptive latency measurement of a baseline and a candidate.

Both models are loaded in their own worker; only one runs at a time. Blocks of iterations run in
A B B A order on identical inputs so slow machine drift hits both sides alike. After the minimum
duration and iteration count the run stops as soon as the speedup interval clears the threshold on
either side (decisive), or when the maximum duration or iteration count is reached.

A run is ``measure.replicates`` such pairs of fresh worker processes, one after the other, each with its share
of the bounds: a process's own state (where its buffers landed, which core its threads took) shifts one model's
speed for as long as the process lives, and within one pair that shift looks like signal. The interval is the
widest of three: a block bootstrap that resamples replicates and then blocks within each (hierarchical, in the
manner of Kalibera & Jones), a t interval over the consecutive windows' speedups (host states lasting seconds),
and a t interval over the replicates' speedups (between processes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from certify.measure import energy, preflight, stats
from certify.measure.client import WorkerClient, measuring_remotely, open_worker
from certify.plan import Measure, ModelRef
from certify.records import LatencySummary, Loaded, PairedSpeed, Preflight

BLOCK_TARGET_S = 0.1  # one block of timed iterations lasts about this long
REWARM_SHARE = 0.1  # untimed iterations at the start of each block, to refill caches the other model evicted
WARMUP_BUDGET_S = 2.0  # warm-up stops after about this long (at least MIN_WARMUP iterations), whatever the plan's count
MIN_WARMUP = 2
CHECK_EVERY_S = 0.5  # how often to test for a decisive verdict
INTERIM_RESAMPLES = 400
MIN_ROUNDS_TO_DECIDE = 8  # 16 blocks a side: too few blocks make a block bootstrap overconfident
MIN_REPLICATE_ROUNDS = 2  # and each replicate at least 4 blocks a side, for its own speedup
INTERVAL_METHOD = ("the widest of a hierarchical block bootstrap (replicates, then blocks), a t interval over "
                   f"{stats.WINDOWS} consecutive windows' speedups and a t interval over the replicates' speedups")


@dataclass
class SpeedRun:
    baseline_ns: list[np.ndarray] = field(default_factory=list)
    candidate_ns: list[np.ndarray] = field(default_factory=list)
    block: int = 1  # timed iterations per block
    rewarm: int = 1  # untimed iterations before each block
    warmups: list[int] = field(default_factory=list)  # untimed warm-up iterations per worker and replicate
    rounds: int = 0  # of the replicate being measured
    starts: list[int] = field(default_factory=list)  # the first block of each replicate
    mode: str = "infer"  # what one iteration is: an inference, or one generated token ("decode")
    meter: energy.Meter | None = None  # energy counters read around each block, where the host has any
    energy_problem: str = ""  # why energy is not reported, when a counter failed during the run
    joules: dict[str, list[list[float]]] = field(default_factory=lambda: {"baseline": [], "candidate": []})
    block_s: dict[str, list[float]] = field(default_factory=lambda: {"baseline": [], "candidate": []})

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.baseline_ns), np.concatenate(self.candidate_ns)

    def read_energy(self) -> list[float] | None:
        if self.meter is None:
            return None
        try:
            return self.meter.read()
        except (OSError, ValueError) as exc:  # a counter that stops reading mid-run: report no energy at all
            self.meter, self.energy_problem = None, f"an energy counter failed during the run: {exc}"
            return None

    def energy_figures(self, unavailable: str) -> dict[str, Any]:
        """The run's energy figures, or why there are none (never an estimate)."""
        if self.meter is None or not self.joules["candidate"]:
            return energy.unavailable(self.energy_problem or unavailable or "no block was measured")
        figures = energy.summarize(self.meter, (self.joules["baseline"], self.block_s["baseline"]),
                                   (self.joules["candidate"], self.block_s["candidate"]), self.block + self.rewarm)
        return {**figures, "per": "token" if self.mode == "decode" else "prompt" if self.mode == "prompt"
                else "inference"}


def measure_speed(baseline: ModelRef, candidate: ModelRef, feeds: dict[str, np.ndarray], measure: Measure,
                  threshold: float, confidence: float, mode: str = "infer") -> PairedSpeed:
    """Returns the evidence of a paired speed run: samples, summaries, speedup with interval, stop reason, the
    host's noise preflight and, where the host has energy counters, joules per inference (else why not).
    ``mode = "decode"`` times language-model generation: one iteration is one token appended to the context.
    Raises ``preflight.HostTooNoisy`` when the host is too noisy and the plan says ``measure.noise = "refuse"``."""
    measure, checked, meter, no_energy = _host_check(baseline, measure, confidence)
    run, replicates = SpeedRun(mode=mode, meter=meter), max(1, measure.replicates)
    stops: list[str] = []
    loaded: dict[str, Any] = {}
    share = _share(measure, replicates)
    started = time.monotonic()
    for _ in range(replicates):
        loaded, stop = _replicate(baseline, candidate, feeds, (measure, share), run, threshold, confidence)
        stops.append(stop)
    elapsed, stop = time.monotonic() - started, stops[-1]  # why the run ended; each replicate's in replicate_stops
    block = run.block
    after = _preflight(baseline, measure, confidence, "preflight")  # the host may have changed during the run
    base_ns, cand_ns = run.arrays()
    found = stats.speedup(base_ns, cand_ns, resamples=measure.bootstrap_resamples, seed=measure.seed,
                          confidence=confidence, block=run.block, starts=run.starts)
    return {
        "speedup": found.value, "interval": list(found.interval), "confidence": confidence, "stop_reason": stop,
        "duration_s": elapsed, "rounds": len(run.baseline_ns) // 2, "block_iterations": block, "order": "ABBA",
        "mode": mode,
        "bootstrap": "paired blocks", "block_rewarm_iterations": run.rewarm,
        "interval_method": INTERVAL_METHOD, "bootstrap_interval": list(found.bootstrap),
        "window_interval": list(found.windows) if found.windows else None, "window_speedups": found.window_ratios,
        "replicates": len(run.starts), "replicate_speedups": found.replicate_ratios,
        "replicate_interval": list(found.replicates) if found.replicates else None, "replicate_stops": stops,
        "samples": int(base_ns.size), "warmup_iterations": measure.warmup_iterations, "warmups": run.warmups,
        "baseline": {"latency": stats.summarize(base_ns), "drift": stats.drift(base_ns), **_where(loaded["baseline"])},
        "candidate": {"latency": stats.summarize(cand_ns), "drift": stats.drift(cand_ns),
                      **_where(loaded["candidate"])},
        "baseline_ns": base_ns.tolist(), "candidate_ns": cand_ns.tolist(),
        "preflight": checked, "preflight_after": after, "conditions": preflight.conditions(checked, after),
        "energy": run.energy_figures(no_energy),
        "bounds": {"min_duration_s": measure.min_duration_s, "max_duration_s": measure.max_duration_s,
                   "min_iterations": measure.min_iterations, "max_iterations": measure.max_iterations},
    }


def _share(measure: Measure, replicates: int) -> Measure:
    """Each replicate's bounds: its share of the run's duration and iteration bounds."""
    return replace(measure, min_duration_s=measure.min_duration_s / replicates,
                   max_duration_s=measure.max_duration_s / replicates,
                   min_iterations=max(1, measure.min_iterations // replicates),
                   max_iterations=max(1, measure.max_iterations // replicates))


def _replicate(baseline: ModelRef, candidate: ModelRef, feeds: dict[str, np.ndarray],
               bounds: tuple[Measure, Measure], run: SpeedRun, threshold: float, confidence: float
               ) -> tuple[dict[str, Any], str]:
    """One pair of fresh workers measured into ``run`` within its share of the run's bounds (the first pair sets
    the block size from the whole run's); the load answers and why it stopped."""
    whole, measure = bounds
    with open_worker("baseline", baseline, measure.timeout_s) as a, \
            open_worker("candidate", candidate, measure.timeout_s) as b:
        loaded = {"baseline": a.call("load", ref=baseline), "candidate": b.call("load", ref=candidate)}
        for worker in (a, b):
            worker.call("feeds", key="speed", arrays=feeds)
        warm = [_warm_up(w, measure.warmup_iterations, run) for w in (a, b)]
        if not run.starts:  # ~0.1 s blocks, but small enough that max_iterations still allows a decision's rounds
            run.block = max(1, min(int(BLOCK_TARGET_S * 1e9 / max(max(warm), 1.0)),
                                   whole.max_iterations // (2 * MIN_ROUNDS_TO_DECIDE)))
            # an iteration longer than a block (a long prompt) is not measurably slowed by the other model's
            # leftovers in the caches: re-warming it would double the run for nothing
            run.rewarm = 0 if min(warm) >= BLOCK_TARGET_S * 1e9 else max(1, int(run.block * REWARM_SHARE))
        run.starts.append(len(run.baseline_ns))
        run.rounds = 0
        return loaded, _interleave(a, b, run, measure, threshold, confidence, time.monotonic())


def _warm_up(worker: WorkerClient, iterations: int, run: SpeedRun) -> float:
    """Untimed warm-up of one worker: the plan's ``warmup_iterations``, cut to about ``WARMUP_BUDGET_S`` when one
    iteration is long (a language model's 256-token prompt: 10 of them per worker and replicate took 30 s of a
    Gemma plan's speed run), never below ``MIN_WARMUP``; the median latency of the last warm-up call (ns)."""
    done = max(1, min(MIN_WARMUP, iterations))
    latency = float(np.median(worker.call("run", key="speed", iterations=done, mode=run.mode)))
    more = min(iterations, max(MIN_WARMUP, int(WARMUP_BUDGET_S * 1e9 / max(latency, 1.0)))) - done
    if more > 0:
        latency = float(np.median(worker.call("run", key="speed", iterations=more, mode=run.mode)))
        done += more
    run.warmups.append(done)
    return latency


def _host_check(ref: ModelRef, measure: Measure, confidence: float
                ) -> tuple[Measure, Preflight, energy.Meter | None, str]:
    """Before the workers start: the noise preflight (waited on under ``wait``, raises ``HostTooNoisy`` under
    ``refuse``), the measure bounds it widened, and the energy meter (or why there is none)."""
    checked = _preflight(ref, measure, confidence, "settle")
    preflight.check(checked)
    measure, widened = preflight.widen(measure, checked)
    checked["widened"] = widened
    if measuring_remotely():
        return measure, checked, None, "energy counters are read where pytest runs; this case ran on a board"
    meter, no_energy = energy.open_meter()
    return measure, checked, meter, no_energy


def _preflight(ref: ModelRef, measure: Measure, confidence: float, step: str) -> Preflight:
    """The noise preflight of the machine that measures: here, or on the board through a worker there
    (``step``: "settle" waits for quiet as the plan says, "preflight" samples once). ``ref`` only names the worker."""
    if not measuring_remotely():
        return preflight.settle(measure, confidence) if step == "settle" else \
            preflight.run_preflight(measure.noise, confidence)
    with open_worker("host", ref, measure.timeout_s) as board:
        answer: Preflight = board.call(step, measure=measure, confidence=confidence)
    return answer


def _where(loaded: dict[str, Any]) -> Loaded:
    return {"executed_device": loaded["executed_device"], "info": loaded["info"], "load_s": loaded["load_s"]}


def _interleave(a: WorkerClient, b: WorkerClient, run: SpeedRun, measure: Measure,
                threshold: float, confidence: float, started: float) -> str:
    last_check = started
    while True:
        for worker, role in ((a, "baseline"), (b, "candidate"), (b, "candidate"), (a, "baseline")):
            _block(worker, role, run)
        run.rounds += 1
        elapsed, n = time.monotonic() - started, run.rounds * 2 * run.block
        if n >= measure.max_iterations:
            return "max_iterations"
        if elapsed >= measure.max_duration_s:
            return "max_duration"
        if elapsed < measure.min_duration_s or n < measure.min_iterations or run.rounds < MIN_REPLICATE_ROUNDS \
                or len(run.baseline_ns) // 2 < MIN_ROUNDS_TO_DECIDE:
            continue
        if time.monotonic() - last_check >= CHECK_EVERY_S or last_check == started:
            last_check = time.monotonic()
            if _decisive(run, threshold, confidence, measure.seed):
                return "decisive"


def _block(worker: WorkerClient, role: str, run: SpeedRun) -> None:
    """One block of timed iterations in ``worker``; the energy counters are read just before and after the call,
    never between the worker's clock reads."""
    before, started = run.read_energy(), time.monotonic()
    times = worker.call("run", key="speed", iterations=run.block, rewarm=run.rewarm, mode=run.mode)
    seconds, after = time.monotonic() - started, run.read_energy()
    (run.baseline_ns if role == "baseline" else run.candidate_ns).append(times)
    if before is not None and after is not None and run.meter is not None:
        run.joules[role].append(run.meter.joules(before, after))
        run.block_s[role].append(seconds)


def _decisive(run: SpeedRun, threshold: float, confidence: float, seed: int) -> bool:
    base_ns, cand_ns = run.arrays()
    low, high = stats.speedup(base_ns, cand_ns, resamples=INTERIM_RESAMPLES, seed=seed, confidence=confidence,
                              block=run.block, starts=run.starts).interval
    return low >= threshold or high < threshold


def language_model_figures(prompt: PairedSpeed, generation: PairedSpeed, prompt_tokens: int) -> dict[str, Any]:
    """``llama-bench``-style figures from a language model's two paired runs: prompt processing tokens/s (pp),
    generation tokens/s (tg) and time to first token, baseline and candidate at the median, with each run's
    speedup interval. Time to first token is a prompt run's latency (an empty context to the first token), so
    its speedup is the prompt processing speedup."""

    def side(pp: LatencySummary, tg: LatencySummary) -> dict[str, Any]:
        return {"prompt_tokens_per_s": prompt_tokens * 1000.0 / pp["p50_ms"],
                "generation_tokens_per_s": 1000.0 / tg["p50_ms"],
                "time_to_first_token_ms": {"p50": pp["p50_ms"], "p90": pp["p90_ms"], "p99": pp["p99_ms"]}}

    return {
        "prompt_tokens": prompt_tokens,
        "baseline": side(prompt["baseline"]["latency"], generation["baseline"]["latency"]),
        "candidate": side(prompt["candidate"]["latency"], generation["candidate"]["latency"]),
        "prompt_speedup": {"value": prompt["speedup"], "interval": prompt["interval"], "samples": prompt["samples"]},
        "generation_speedup": {"value": generation["speedup"], "interval": generation["interval"],
                               "samples": generation["samples"]},
        "energy": {"prompt": prompt.get("energy"), "generation": generation.get("energy")},  # per prompt, per token
    }
