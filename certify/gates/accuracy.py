"""The accuracy gate: the candidate keeps at least ``min_accuracy_retention`` of its baseline's quality on the plan's
dataset and metric (paired bootstrap interval, decided on its lower bound by default). The baseline's outputs are
computed once per session and reused by every candidate of the model."""

from __future__ import annotations

from certify.cases import safe_name
from certify.errors import CertifyError
from certify.gates.context import GateContext
from certify.measure import accuracy
from certify.metrics import METRICS
from certify.policy import Policy
from certify.records import AccuracyFigures
from certify.verdict import GateResult, decide


def evaluate(ctx: GateContext) -> GateResult:
    case, measure = ctx.case, ctx.plan.measure
    inputs, labels = ctx.data()
    bs = case.model.dataset.batch_size
    base_out = ctx.store.cached_array(
        safe_name(case.model.name) + "-baseline-outputs",
        lambda: accuracy.predict("baseline", case.model.baseline, inputs, bs, measure)[0])
    cand_out, where = accuracy.predict("candidate", case.candidate, inputs, bs, measure)
    if base_out.shape != cand_out.shape:
        raise CertifyError(f"its output shape {cand_out.shape} differs from the baseline's {base_out.shape}",
                           hint="the candidate must compute the same outputs as its baseline")
    result = accuracy.evaluate(METRICS[case.model.metric], base_out, cand_out, labels, measure, ctx.policy.confidence)
    ctx.measurement.update(result, candidate_where=where)
    return accuracy_gate(result, ctx.policy, ctx.hint)


def accuracy_gate(acc: AccuracyFigures, policy: Policy, hint: str) -> GateResult:
    details = {k: acc[k] for k in ("metric", "baseline", "candidate", "top1_agreement", "samples")}
    label = f"{acc['metric']} retention ({acc['candidate']:.4g} vs baseline {acc['baseline']:.4g})"
    interval = (acc["interval"][0], acc["interval"][1])
    return decide("accuracy", label, acc["retention"], interval, policy.min_accuracy_retention,
                  policy=policy, unit="%", hint=hint, details=details)
