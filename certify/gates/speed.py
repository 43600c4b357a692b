"""The speed and stability gates, from one paired run of baseline and candidate (interleaved A B B A blocks on
identical inputs, each model in its own worker process, never concurrently with other measurements).

- speed: median speedup >= ``min_speedup`` with an interval, decided on its lower bound by default;
- stability: the candidate's p99/p50, robust coefficient of variation and unexplained drift within the policy's bounds.

The paired run is kept in the evidence store, so the two gates of one case measure once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from certify.gates.context import GateContext
from certify.measure import preflight
from certify.measure import speed as speed_run
from certify.policy import Policy
from certify.records import PairedSpeed
from certify.verdict import ERROR, FAIL, PASS, GateResult, decide


def paired_speed(ctx: GateContext) -> PairedSpeed:
    """The paired speed run the speed and stability gates read. A language model is timed twice, prompt
    processing (``prompt``) and generation (``decode``); the plan's ``dataset.speed`` picks the gated one and the
    run carries both under ``language_model``."""
    case, feeds, data = ctx.case, ctx.speed_feeds(), ctx.case.model.dataset
    modes = ("infer",) if not data.text else ("decode", "prompt") if data.speed == "generation" \
        else ("prompt", "decode")

    def run(mode: str) -> PairedSpeed:
        return ctx.store.cached_json(f"{case.key}-speed-{mode}", lambda: speed_run.measure_speed(
            case.model.baseline, case.candidate, feeds, ctx.plan.measure, ctx.policy.min_speedup,
            ctx.policy.confidence, mode))

    gated = run(modes[0])
    if len(modes) == 1:
        return gated
    runs = {modes[0]: gated, modes[1]: run(modes[1])}
    prompt_tokens = int(next(iter(feeds.values())).shape[1])
    return {**gated, "language_model": speed_run.language_model_figures(runs["prompt"], runs["decode"],
                                                                          prompt_tokens)}


def evaluate(ctx: GateContext) -> GateResult:
    run = paired_speed(ctx)
    ctx.measurement.update(run)
    return speed_gate(run, ctx.policy, ctx.hint)


def evaluate_stability(ctx: GateContext) -> GateResult:
    run = paired_speed(ctx)
    ctx.measurement.update({k: run[k] for k in ("candidate", "samples", "duration_s", "stop_reason")},
                           candidate_ns=run["candidate_ns"], preflight=run.get("preflight"))
    return stability_gate(run, ctx.policy, ctx.hint)


def speed_gate(speed: PairedSpeed, policy: Policy, hint: str) -> GateResult:
    b, c = speed["baseline"]["latency"], speed["candidate"]["latency"]
    details = {"baseline_p50_ms": b["p50_ms"], "candidate_p50_ms": c["p50_ms"], "samples": speed["samples"],
               "stop_reason": speed["stop_reason"], "duration_s": speed["duration_s"],
               "executed_device": speed["candidate"]["executed_device"]}
    label = f"speedup (median {b['p50_ms']:.3g} ms -> {c['p50_ms']:.3g} ms, {speed['samples']} paired samples)"
    lm = speed.get("language_model")
    if lm:  # a language model: the gated run is generation (one sample = one token) or prompt processing
        base, cand = lm["baseline"], lm["candidate"]
        details["language_model"] = lm
        ttft = (f"time to first token {base['time_to_first_token_ms']['p50']:.3g} -> "
                f"{cand['time_to_first_token_ms']['p50']:.3g} ms")
        gated, other = ("generation", "prompt") if speed.get("mode") == "decode" else ("prompt", "generation")

        def rates(kind: str) -> str:
            return f"{base[kind + '_tokens_per_s']:.4g} -> {cand[kind + '_tokens_per_s']:.4g} tokens/s"

        details.update(baseline_tokens_per_s=base[gated + "_tokens_per_s"],
                       candidate_tokens_per_s=cand[gated + "_tokens_per_s"])
        if gated == "generation":
            label = (f"generation speedup ({rates('generation')} at the median, {speed['samples']} paired tokens; "
                     f"prompt processing {rates(other)}, {ttft}, not gated)")
        else:
            label = (f"prompt processing speedup ({rates('prompt')}, {ttft}, {speed['samples']} paired "
                     f"{lm['prompt_tokens']}-token prompts; generation {rates(other)}, not gated)")
    interval = (speed["interval"][0], speed["interval"][1])
    details.update(_host_conditions(speed))
    result = decide("speed", label, speed["speedup"], interval, policy.min_speedup, policy=policy, unit="x",
                    hint=hint, details=details)
    pre = speed.get("preflight") or {}
    if pre.get("warning") and pre.get("option") == "warn":
        result = dataclasses.replace(result, reason=f"{result.reason}; {pre['warning']} (the run was widened: "
                                     f"{_widened(pre.get('widened', {}))})")
    return judged(result, speed)


def judged(result: GateResult, speed: PairedSpeed) -> GateResult:
    """The verdict with the host's conditions in its details; an ERROR that keeps the figures when they were
    measured on a host too noisy to judge (``certify.measure.preflight.not_judged``)."""
    found = speed.get("conditions")
    if not found:
        return result
    result = dataclasses.replace(result, details={**result.details, "conditions": found})
    why = preflight.not_judged(found)
    if not why:
        return result
    return dataclasses.replace(result, verdict=ERROR, reason=f"not judged: {why}; measured: {result.reason}",
                               hint="rerun on a quiet host (stop the busy processes, use a dedicated runner), or "
                               "raise measure.noise_wait_s; measure.noise = 'warn' lets such a verdict stand")


def _widened(widened: dict[str, Any]) -> str:
    return ", ".join(f"{key} {old:g} -> {new:g}" for key, (old, new) in widened.items()) or "nothing"


def _host_conditions(speed: PairedSpeed) -> dict[str, Any]:
    """The speed run's noise preflight, energy figures and how its interval was found, for the verdict's
    details."""
    details: dict[str, Any] = {}
    pre = speed.get("preflight")
    if pre:
        details["preflight"] = {"noise": pre["noise"], "option": pre["option"], "findings": pre["findings"],
                                "summary": pre["summary"], "widened": _widened(pre.get("widened", {}))}
    if "energy" in speed:
        details["energy"] = {k: v for k, v in speed["energy"].items() if k in ENERGY_DETAILS}
    if "interval_method" in speed:
        details["interval"] = {"method": speed["interval_method"], "bootstrap": speed["bootstrap_interval"],
                               "windows": speed["window_interval"], "window_speedups": speed["window_speedups"]}
    return details


ENERGY_DETAILS = ("available", "reason", "per", "energy_ratio", "energy_ratio_is", "baseline", "candidate", "total_of",
                  "scope")


def unexplained_drift(speed: PairedSpeed) -> float:
    """The candidate's drift that the host does not explain: the smaller (in magnitude) of its own drift and its
    drift relative to the interleaved baseline. A host slowing down moves both sides; a baseline disturbed on its
    own does not make a steady candidate drift; a candidate degrading by itself shows in both figures."""
    own = float(speed["candidate"]["drift"])
    relative = (1.0 + own) / (1.0 + float(speed["baseline"]["drift"])) - 1.0
    return own if abs(own) <= abs(relative) else relative


def stability_gate(speed: PairedSpeed, policy: Policy, hint: str) -> GateResult:
    lat, drift = speed["candidate"]["latency"], unexplained_drift(speed)
    tail = lat["p99_ms"] / lat["p50_ms"] if lat["p50_ms"] > 0 else float("inf")
    checks = [("p99/p50", tail, policy.max_p99_over_p50), ("robust CV", lat["robust_cv"], policy.max_cv),
              ("unexplained drift", abs(drift), policy.max_drift)]
    broken = [f"{name} {value:.3g} > {limit:g}" for name, value, limit in checks if value > limit]
    summary = ", ".join(f"{name} {value:.3g} (max {limit:g})" for name, value, limit in checks)
    details = {"p99_over_p50": tail, "robust_cv": lat["robust_cv"], "cv": lat["cv"], "drift": drift,
               "candidate_drift": speed["candidate"]["drift"], "baseline_drift": speed["baseline"]["drift"],
               "samples": speed["samples"]}
    pre = speed.get("preflight") or {}
    if pre:
        details["host_noise"] = pre["noise"]
    if broken:
        noisy = f" (the host was {pre['noise'].replace('_', ' ')} when measured: {pre['summary']})" \
            if pre.get("noise", "quiet") != "quiet" else ""
        return judged(GateResult("stability", FAIL, f"latency unstable: {'; '.join(broken)}{noisy}", tail, None,
                                 policy.max_p99_over_p50, "<=", "x", hint, details), speed)
    return judged(GateResult("stability", PASS, f"latency stable: {summary}", tail, None, policy.max_p99_over_p50,
                             "<=", "x", "", details), speed)
