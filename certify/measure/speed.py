"""Paired, interleaved, adaptive latency measurement of a baseline and a candidate.

Both models are loaded in their own worker; only one runs at a time. Blocks of iterations run in
A B B A order on identical inputs so slow machine drift hits both sides alike. After the minimum
duration and iteration count the run stops as soon as the speedup interval clears the threshold on
either side (decisive), or when the maximum duration or iteration count is reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from certify.measure import stats
from certify.measure.client import WorkerClient
from certify.plan import Measure, ModelRef

BLOCK_TARGET_S = 0.1  # one block of timed iterations lasts about this long
REWARM_SHARE = 0.1  # untimed iterations at the start of each block, to refill caches the other model evicted
CHECK_EVERY_S = 0.5  # how often to test for a decisive verdict
INTERIM_RESAMPLES = 400
MIN_ROUNDS_TO_DECIDE = 8  # 16 blocks a side: too few blocks make a block bootstrap overconfident


@dataclass
class SpeedRun:
    baseline_ns: list[np.ndarray] = field(default_factory=list)
    candidate_ns: list[np.ndarray] = field(default_factory=list)
    block: int = 1  # timed iterations per block
    rewarm: int = 1  # untimed iterations before each block
    rounds: int = 0
    mode: str = "infer"  # what one iteration is: an inference, or one generated token ("decode")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.baseline_ns), np.concatenate(self.candidate_ns)


def measure_speed(baseline: ModelRef, candidate: ModelRef, feeds: dict[str, np.ndarray], measure: Measure,
                  threshold: float, confidence: float, mode: str = "infer") -> dict[str, Any]:
    """Returns the evidence of a paired speed run: samples, summaries, speedup with interval, stop reason.
    ``mode = "decode"`` times language-model generation: one iteration is one token appended to the context."""
    with WorkerClient("baseline", baseline, measure.timeout_s) as a, \
            WorkerClient("candidate", candidate, measure.timeout_s) as b:
        loaded = {"baseline": a.call("load", ref=baseline), "candidate": b.call("load", ref=candidate)}
        for worker in (a, b):
            worker.call("feeds", key="speed", arrays=feeds)
        warm = [np.median(w.call("run", key="speed", iterations=measure.warmup_iterations, mode=mode))
                for w in (a, b)]
        block = max(1, int(BLOCK_TARGET_S * 1e9 / max(max(warm), 1.0)))
        run = SpeedRun(block=block, rewarm=max(1, int(block * REWARM_SHARE)), mode=mode)
        started = time.monotonic()
        stop = _interleave(a, b, run, measure, threshold, confidence, started)
        elapsed = time.monotonic() - started
    base_ns, cand_ns = run.arrays()
    speedup, interval = stats.ratio_of_medians(base_ns, cand_ns, resamples=measure.bootstrap_resamples,
                                               seed=measure.seed, confidence=confidence, block=run.block)
    return {
        "speedup": speedup, "interval": list(interval), "confidence": confidence, "stop_reason": stop,
        "duration_s": elapsed, "rounds": run.rounds, "block_iterations": block, "order": "ABBA", "mode": mode,
        "bootstrap": "paired blocks", "block_rewarm_iterations": run.rewarm,
        "samples": int(base_ns.size), "warmup_iterations": measure.warmup_iterations,
        "baseline": {"latency": stats.summarize(base_ns), "drift": stats.drift(base_ns), **_where(loaded["baseline"])},
        "candidate": {"latency": stats.summarize(cand_ns), "drift": stats.drift(cand_ns),
                      **_where(loaded["candidate"])},
        "baseline_ns": base_ns.tolist(), "candidate_ns": cand_ns.tolist(),
    }


def _where(loaded: dict[str, Any]) -> dict[str, Any]:
    return {"executed_device": loaded["executed_device"], "info": loaded["info"], "load_s": loaded["load_s"]}


def _interleave(a: WorkerClient, b: WorkerClient, run: SpeedRun, measure: Measure,
                threshold: float, confidence: float, started: float) -> str:
    last_check = started
    while True:
        for worker, side in ((a, run.baseline_ns), (b, run.candidate_ns), (b, run.candidate_ns),
                             (a, run.baseline_ns)):
            side.append(worker.call("run", key="speed", iterations=run.block, rewarm=run.rewarm, mode=run.mode))
        run.rounds += 1
        elapsed, n = time.monotonic() - started, run.rounds * 2 * run.block
        if n >= measure.max_iterations:
            return "max_iterations"
        if elapsed >= measure.max_duration_s:
            return "max_duration"
        if elapsed < measure.min_duration_s or n < measure.min_iterations or run.rounds < MIN_ROUNDS_TO_DECIDE:
            continue
        if time.monotonic() - last_check >= CHECK_EVERY_S or last_check == started:
            last_check = time.monotonic()
            if _decisive(run, threshold, confidence, measure.seed):
                return "decisive"


def _decisive(run: SpeedRun, threshold: float, confidence: float, seed: int) -> bool:
    base_ns, cand_ns = run.arrays()
    _, (low, high) = stats.ratio_of_medians(base_ns, cand_ns, resamples=INTERIM_RESAMPLES, seed=seed,
                                            confidence=confidence, block=run.block)
    return low >= threshold or high < threshold


def language_model_figures(prompt: dict[str, Any], generation: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """``llama-bench``-style figures from a language model's two paired runs: prompt processing tokens/s (pp),
    generation tokens/s (tg) and time to first token, baseline and candidate at the median, with each run's
    speedup interval. Time to first token is a prompt run's latency (an empty context to the first token), so
    its speedup is the prompt processing speedup."""

    def side(role: str) -> dict[str, Any]:
        pp, tg = prompt[role]["latency"], generation[role]["latency"]
        return {"prompt_tokens_per_s": prompt_tokens * 1000.0 / pp["p50_ms"],
                "generation_tokens_per_s": 1000.0 / tg["p50_ms"],
                "time_to_first_token_ms": {"p50": pp["p50_ms"], "p90": pp["p90_ms"], "p99": pp["p99_ms"]}}

    return {
        "prompt_tokens": prompt_tokens, "baseline": side("baseline"), "candidate": side("candidate"),
        "prompt_speedup": {"value": prompt["speedup"], "interval": prompt["interval"], "samples": prompt["samples"]},
        "generation_speedup": {"value": generation["speedup"], "interval": generation["interval"],
                               "samples": generation["samples"]},
    }
