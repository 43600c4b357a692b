"""Measurements + policy -> verdicts. Every verdict carries its value, interval, threshold and reason,
and a failing one a framework-specific hint for fixing it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from certify.policy import Policy

PASS, FAIL, NOT_EVALUATED, ERROR = "pass", "fail", "not_evaluated", "error"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: str
    reason: str
    value: float | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None
    comparison: str = ">="
    unit: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def message(self) -> str:
        text = f"{self.gate} gate {self.verdict.upper().replace('_', ' ')}: {self.reason}"
        return text + (f"\n  hint: {self.hint}" if self.hint and not self.passed else "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interval"] = list(self.interval) if self.interval else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        """The inverse of ``to_dict`` (a result read back from the evidence)."""
        interval = data.get("interval")
        return cls(**{**data, "interval": (interval[0], interval[1]) if interval else None})


def _fmt(value: float, unit: str) -> str:
    return f"{value:.1%}" if unit == "%" else f"{value:.3g}{unit}"


def decide(gate: str, label: str, value: float, interval: tuple[float, float] | None, threshold: float, *,
           policy: Policy, unit: str = "", higher_is_better: bool = True, hint: str = "",
           details: dict[str, Any] | None = None) -> GateResult:
    """Pass when the estimate clears the threshold: its whole interval under the ``lower_bound`` rule,
    the point estimate under ``point``. An interval straddling the threshold fails as *not decisive*."""
    cmp = ">=" if higher_is_better else "<="
    bound = value if interval is None or policy.decision == "point" else (
        interval[0] if higher_is_better else interval[1])
    ok = bound >= threshold if higher_is_better else bound <= threshold
    ci = ""
    if interval is not None:
        ci = f" ({policy.confidence:.0%} CI {_fmt(interval[0], unit)} to {_fmt(interval[1], unit)})"
    point_ok = value >= threshold if higher_is_better else value <= threshold
    straddles = interval is not None and min(interval) < threshold < max(interval)
    if ok:
        reason = f"{label} {_fmt(value, unit)}{ci} {cmp} {_fmt(threshold, unit)}"
    elif point_ok or straddles:  # either side of the threshold is still possible: say so, whichever the point
        reason = (f"{label} {_fmt(value, unit)} but its interval{ci} does not clear {_fmt(threshold, unit)}: "
                  "not decisive (measure longer, or on a quieter machine)")
    else:
        reason = f"{label} {_fmt(value, unit)}{ci}, required {cmp} {_fmt(threshold, unit)}"
    return GateResult(gate, PASS if ok else FAIL, reason, value, interval, threshold, cmp, unit,
                      "" if ok else hint, details or {})


def accuracy_gate(acc: dict[str, Any], policy: Policy, hint: str) -> GateResult:
    details = {k: acc[k] for k in ("metric", "baseline", "candidate", "top1_agreement", "samples")}
    label = f"{acc['metric']} retention ({acc['candidate']:.4g} vs baseline {acc['baseline']:.4g})"
    interval = (acc["interval"][0], acc["interval"][1])
    return decide("accuracy", label, acc["retention"], interval, policy.min_accuracy_retention,
                  policy=policy, unit="%", hint=hint, details=details)


def speed_gate(speed: dict[str, Any], policy: Policy, hint: str) -> GateResult:
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
        return replace(result, reason=f"{result.reason}; {pre['warning']} (the run was widened: "
                       f"{_widened(pre.get('widened', {}))})")
    return result


def _widened(widened: dict[str, Any]) -> str:
    return ", ".join(f"{key} {old:g} -> {new:g}" for key, (old, new) in widened.items()) or "nothing"


def _host_conditions(speed: dict[str, Any]) -> dict[str, Any]:
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


def memory_gate(base: dict[str, Any], cand: dict[str, Any], policy: Policy, hint: str) -> GateResult:
    value = 1.0 - cand["model_bytes"] / base["model_bytes"] if base["model_bytes"] > 0 else 0.0
    interval = (1.0 - cand["max"] / max(base["min"], 1), 1.0 - cand["min"] / max(base["max"], 1))
    mib = 1024 * 1024
    label = f"memory reduction ({base['model_bytes'] / mib:.1f} MiB -> {cand['model_bytes'] / mib:.1f} MiB)"
    details = {"baseline_bytes": base["model_bytes"], "candidate_bytes": cand["model_bytes"],
               "baseline_file_bytes": base["file_bytes"], "candidate_file_bytes": cand["file_bytes"],
               "method": cand["method"], "counts": "resident set, weights mapped from the model file included",
               "baseline_mapped_bytes": base.get("mapped_model_bytes"),
               "candidate_mapped_bytes": cand.get("mapped_model_bytes"),
               "baseline_bytes_without_mapped": base.get("model_bytes_without_mapped"),
               "candidate_bytes_without_mapped": cand.get("model_bytes_without_mapped")}
    mapped = cand.get("mapped_model_bytes") or 0
    if mapped:
        label += f" of which {mapped / mib:.1f} MiB are the candidate's file pages mapped (counted)"
    return decide("memory", label, value, interval, policy.min_memory_reduction, policy=policy, unit="%",
                  hint=hint, details=details)


def unexplained_drift(speed: dict[str, Any]) -> float:
    """The candidate's drift that the host does not explain: the smaller (in magnitude) of its own drift and its
    drift relative to the interleaved baseline. A host slowing down moves both sides; a baseline disturbed on its
    own does not make a steady candidate drift; a candidate degrading by itself shows in both figures."""
    own = float(speed["candidate"]["drift"])
    relative = (1.0 + own) / (1.0 + float(speed["baseline"]["drift"])) - 1.0
    return own if abs(own) <= abs(relative) else relative


def stability_gate(speed: dict[str, Any], policy: Policy, hint: str) -> GateResult:
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
        return GateResult("stability", FAIL, f"latency unstable: {'; '.join(broken)}{noisy}", tail, None,
                          policy.max_p99_over_p50, "<=", "x", hint, details)
    return GateResult("stability", PASS, f"latency stable: {summary}", tail, None, policy.max_p99_over_p50,
                      "<=", "x", "", details)


def not_evaluated(gate: str, reason: str) -> GateResult:
    return GateResult(gate, NOT_EVALUATED, reason)


def errored(gate: str, reason: str, hint: str = "") -> GateResult:
    return GateResult(gate, ERROR, reason, hint=hint)
