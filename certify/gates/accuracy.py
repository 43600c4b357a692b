"""The accuracy gate: the candidate keeps at least ``min_accuracy_retention`` of its baseline's quality on the plan's
dataset and metric (paired bootstrap interval, decided on its lower bound by default). The baseline's outputs are
computed once per session and reused by every candidate of the model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from certify.digests import model_digest
from certify.errors import CertifyError
from certify.gates.context import GateContext
from certify.measure import accuracy, dataset
from certify.measure.client import WorkerClient
from certify.metrics import metric_for, refusal
from certify.plan import ModelRef
from certify.policy import Policy
from certify.recipes import kind_of
from certify.recipes.build import made_by
from certify.records import AccuracyFigures
from certify.verdict import FAIL, GateResult, decide, errored


def evaluate(ctx: GateContext) -> GateResult:
    case, measure = ctx.case, ctx.plan.measure
    inputs, labels = ctx.data()
    bs = case.model.dataset.batch_size
    metric = metric_for(case.model.metric, dict(case.model.metric_params))
    lm = metric.language_model
    key = case.baseline_key + ("-baseline-token-scores" if lm else "-baseline-outputs")
    base_out = ctx.store.cached_array(
        key, lambda: accuracy.predict("baseline", case.model.baseline, inputs, bs, measure,
                                      tokens=accuracy.language_model_scoring(labels) if lm else None)[0],
        owner=case.key)
    ctx.measurement["baseline_shared"] = ctx.store.shared_origin(key, case.key)
    reason, use = refusal(metric, base_out, labels, chunked=bool(case.model.layout.carry))
    if reason:  # the harness cannot judge with this metric: an ERROR of the plan, not the candidate's FAIL
        return errored("accuracy", f"metric {metric.name!r} cannot judge this model: {reason}", hint=use)
    tokens = ctx.tokenization()
    check = None
    if tokens is not None:  # a language model: scored on the tokens the baseline made, if the candidate makes them too
        ctx.measurement["tokenization"] = tokens
        def check(worker: WorkerClient) -> None:
            dataset.same_tokenization(case.model.dataset, tokens, worker, case.model.baseline, measure.timeout_s)
    cand_out, where = accuracy.predict("candidate", case.candidate, inputs, bs, measure, check,
                                       tokens=accuracy.language_model_scoring(labels, base_out) if lm else None)
    if base_out.shape != cand_out.shape:
        raise CertifyError(f"its output shape {cand_out.shape} differs from the baseline's {base_out.shape}",
                           hint="the candidate must compute the same outputs as its baseline")
    result = accuracy.evaluate(metric, base_out, cand_out, labels, measure, ctx.policy.confidence)
    if same_file(case.candidate, case.model.baseline):
        result["same_file_as_baseline"] = True
    ctx.measurement.update(result, candidate_where=where)
    recipe = case.candidate.recipe
    decided = accuracy_gate(result, ctx.policy, ctx.hint,
                            made_by_recipe=recipe is not None and kind_of(recipe).stage != "conversion")
    requantized = ((made_by(case.candidate) or {}).get("facts") or {}).get("requantized")
    if requantized and requantized.get("upward"):  # allowed by the plan, but never to go unsaid
        ctx.measurement["requantized"] = requantized
        tensors = requantized["source_tensors"]
        return replace(decided, reason=f"{decided.reason}; requantized upward: {requantized['target']} from a source "
                       f"already quantized, mostly {requantized['source_type']} ({tensors[requantized['source_type']]} "
                       f"of {sum(tensors.values())} quantized tensors): at best as faithful as the source, and larger")
    return decided


def same_file(candidate: ModelRef, baseline: ModelRef) -> bool:
    """Is the candidate's model the baseline's, byte for byte (the same digest)?"""
    try:
        return model_digest(candidate.file).sha256 == model_digest(baseline.file).sha256
    except (CertifyError, OSError):
        return False


def accuracy_gate(acc: AccuracyFigures, policy: Policy, hint: str, *, made_by_recipe: bool = False) -> GateResult:
    """The retention decided against the policy. ``made_by_recipe``: a recipe that should change the numbers
    (quantization, compression; a conversion keeps them) made the candidate, so outputs identical to the
    baseline's mean it changed nothing."""
    details: dict[str, Any] = {k: acc[k] for k in ("metric", "baseline", "candidate", "top1_agreement", "samples",
                                                   "identical_outputs", "same_file_as_baseline") if k in acc}
    label = f"{acc['metric']} retention ({acc['candidate']:.4g} vs baseline {acc['baseline']:.4g})"
    interval = (acc["interval"][0], acc["interval"][1])
    result = decide("accuracy", label, acc["retention"], interval, policy.min_accuracy_retention,
                    policy=policy, unit="%", hint=hint, details=details)
    if not acc.get("identical_outputs") and not acc.get("same_file_as_baseline"):
        return result
    same = ("its model file is the baseline's (the same sha256)" if acc.get("same_file_as_baseline")
            else f"its outputs are bit-identical to the baseline's on all {acc['samples']} samples")
    if made_by_recipe:  # an optimization that computes exactly what the baseline does changed nothing
        return replace(result, verdict=FAIL, reason=f"the recipe changed nothing: {same} ({result.reason})",
                       hint="check the recipe's log: a quantizer that skipped every node (e.g. inside If "
                            "subgraphs) or a conversion that kept the float weights")
    return replace(result, reason=f"{result.reason}; {same}: the candidate computes exactly what the baseline does")
