"""The memory gate: the candidate's working set (peak resident memory of a fresh worker after load and inference,
minus its footprint before the load, under a deployment-like workload: ``footprint.measure_memory``) is at least
``min_memory_reduction`` below the baseline's. The baseline is
measured once per session and reused by every candidate of the model."""

from __future__ import annotations

from certify.gates.context import GateContext
from certify.measure import footprint
from certify.policy import Policy
from certify.records import MemoryFigures
from certify.verdict import GateResult, decide


def evaluate(ctx: GateContext) -> GateResult:
    case, feeds, measure = ctx.case, ctx.speed_feeds(), ctx.plan.measure
    lm = case.model.dataset.text is not None
    key = case.baseline_key + "-baseline-memory"
    base = ctx.store.cached_json(
        key, lambda: footprint.measure_memory("baseline", case.model.baseline, feeds, measure, language_model=lm),
        owner=case.key)
    cand = footprint.measure_memory("candidate", case.candidate, feeds, measure, language_model=lm)
    ctx.measurement.update(baseline=base, candidate=cand, baseline_shared=ctx.store.shared_origin(key, case.key))
    return memory_gate(base, cand, ctx.policy, ctx.hint)


def memory_gate(base: MemoryFigures, cand: MemoryFigures, policy: Policy, hint: str) -> GateResult:
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
               "candidate_bytes_without_mapped": cand.get("model_bytes_without_mapped"),
               "workload": cand.get("workload"), "baseline_buffers": base.get("reported_buffers"),
               "candidate_buffers": cand.get("reported_buffers")}
    mapped = cand.get("mapped_model_bytes") or 0
    split = cand.get("reported_buffers") or {}
    if split:
        label += " (runtime's buffers: " + ", ".join(f"{k} {v / mib:.1f}" for k, v in split.items()) + " MiB)"
    if mapped:
        label += f" of which {mapped / mib:.1f} MiB are the candidate's file pages mapped (counted)"
    return decide("memory", label, value, interval, policy.min_memory_reduction, policy=policy, unit="%",
                  hint=hint, details=details)
