"""Fallback gate: three scenarios, each a sub-check with its own verdict, recorded with its evidence.

1. **device**: the candidate prefers a GPU/NPU that is missing here. It is loaded as its deployment would be (ORT
   with its provider list, OpenVINO ``AUTO:GPU,CPU``, llama.cpp with ``n_gpu_layers``); the device that really ran
   is recorded and its outputs on a few dataset inputs are compared with the same model loaded on the CPU.
   ``device_fallback = false`` makes a silent fallback a failure (and a loud refusal to load a pass).
2. **load failure**: the candidate's files, copied and truncated, must fail to load with a clear error; its
   configured ``fallback`` model (the baseline or another candidate) is then loaded in the same process and must
   serve the answers it gives when loaded normally, within ``max_recovery_s`` of the failure.
3. **recovery**: a worker serving the candidate is killed mid-stream (SIGKILL, as a crash would); a fresh one must
   answer correctly (the same answers as before the fault) within ``max_recovery_s`` of the kill, load included.
   An exception injected inside the backend must not stop the same worker from serving the next request.

A scenario that does not apply says why; the gate fails when any applicable one fails, and is NOT EVALUATED
when none applies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from certify import verdict
from certify.backends import resolve_backend
from certify.digests import model_files
from certify.errors import CertifyError, WorkerCrashed, first_line
from certify.hardware import DEVICES
from certify.measure import accuracy, batching
from certify.measure.client import WorkerClient, open_worker
from certify.plan import ModelRef
from certify.policy import Policy
from certify.recipes.build import materialize
from certify.verdict import FAIL, NOT_APPLICABLE, PASS, GateResult, label

if TYPE_CHECKING:
    from certify.gates.context import GateContext

LABELS = {"device": "device fallback", "load_failure": "load failure", "recovery": "recovery"}
SAMPLE_ROWS, SAMPLE_PROMPTS = 32, 2  # the few dataset inputs every scenario answers
SAMPLE_TOKENS = 32  # a language model's sample prompts are cut to this many tokens: every answer is all positions'
# logits (tokens x vocabulary floats; 2 x 256 x 262,144 would be 512 MiB per answer, held by the parent)
STREAM_REQUESTS = 3  # requests served before the fault
DEVICE_TOLERANCE = (1e-3, 1e-4)  # (rtol, atol x output scale): another device or plugin may round differently
SAME_TOLERANCE = (1e-4, 1e-5)  # the same model on the same device, in another process or batch
UNCLEAR_LOAD = "load failed:"  # how the worker reports an exception the backend let through unexplained


@dataclass
class Scenario:
    verdict: str  # PASS, FAIL or NOT_APPLICABLE (certify.verdict)
    reason: str
    hint: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


def agreement(outputs: np.ndarray, reference: np.ndarray, tolerance: tuple[float, float]) -> tuple[bool, float]:
    """(outputs match within tolerance, largest absolute difference)."""
    outputs, reference = np.asarray(outputs), np.asarray(reference)
    if outputs.shape != reference.shape:
        return False, float("inf")
    out, ref = outputs.astype(np.float64), reference.astype(np.float64)
    finite = np.isfinite(out) & np.isfinite(ref)
    diff = float(np.abs(out[finite] - ref[finite]).max()) if finite.any() else 0.0
    scale = float(np.abs(ref[finite]).max()) if finite.any() else 1.0
    rtol, atol = tolerance
    return bool(np.allclose(out, ref, rtol=rtol, atol=atol * max(1.0, scale), equal_nan=True)), diff


def preferred_device(ref: ModelRef) -> str:
    """The device the candidate asks for first: ``AUTO:NPU,CPU`` -> NPU, ``gpu`` -> gpu (ORT: its first provider)."""
    if ref.providers:
        return ref.providers[0]
    head = ref.device.split(":", 1)[-1]
    named = [d.strip() for d in head.split(",") if d.strip() and not d.strip().startswith("-")]
    return named[0] if named else ref.device_class


def executed_class(executed: str, info: dict[str, Any]) -> str:
    """cpu, gpu or npu for the device that really ran: the backend's own ``info()['device']`` when it says, else
    the first device named (OpenVINO's EXECUTION_DEVICES 'CPU', '(CPU)', 'GPU.0')."""
    declared = info.get("device")
    if declared in DEVICES:
        return str(declared)
    first = executed.split(",")[0].strip(" ()").split(".")[0].lower()
    return first if first in DEVICES else "unknown"


def missing_device(ctx: GateContext, ref: ModelRef) -> str:
    """Why the candidate's preferred device is missing here ('' when it is present): the runner's own check, or
    the backend asked about that device alone (``AUTO:GPU,CPU`` is available wherever CPU is; GPU may not be)."""
    reason: str = ctx.cannot_run(ref)
    if reason:
        return reason
    try:
        alone = ref if ref.providers else replace(ref, device=preferred_device(ref))  # providers: the first counts
        ok, detail = resolve_backend(ref.framework).available_devices(alone)
    except CertifyError as exc:
        return exc.message
    return "" if ok else detail


def sample(ctx: GateContext) -> dict[str, np.ndarray]:
    inputs, _ = ctx.data()
    if ctx.case.model.dataset.text is not None:
        return {name: np.ascontiguousarray(array[:SAMPLE_PROMPTS, :SAMPLE_TOKENS]) for name, array in inputs.items()}
    return batching.select(ctx.case.model.layout, inputs, slice(0, SAMPLE_ROWS))


def answer(worker: WorkerClient, inputs: dict[str, np.ndarray], batch_size: int, key: str = "fallback") -> np.ndarray:
    """The scored outputs for ``inputs`` (a dataset sample, batched by the worker along the model's batch axes)."""
    worker.call("feeds", key=key, arrays=inputs, whole=True)
    return np.asarray(worker.call("predict", key=key, batch_size=batch_size)["scored"])


def first_answer(worker: WorkerClient, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The answer to the first input alone: what a serving process gives its first client (compared like for like,
    since a kernel that couples the batch, e.g. dynamic quantization, answers a row alone a little differently)."""
    return answer(worker, batching.select(worker.ref.layout, inputs, slice(0, 1)), 1, key="first")


def reference_answers(ref: ModelRef, inputs: dict[str, np.ndarray], batch: int, timeout_s: float, role: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(the first input's answer alone, every input's answer) from ``ref`` loaded normally in a fresh worker."""
    with open_worker(role, ref, timeout_s) as worker:
        worker.call("load", ref=ref)
        return first_answer(worker, inputs), answer(worker, inputs, batch)


# ------------------------------------------------------------------------------------------- 1. device


def device_scenario(ctx: GateContext, inputs: dict[str, np.ndarray]) -> Scenario:
    ref, batch, measure = ctx.case.candidate, ctx.case.model.dataset.batch_size, ctx.plan.measure
    if ref.device_class == "cpu":
        return Scenario(NOT_APPLICABLE, "the candidate asks for the CPU: there is no device to fall back from")
    preferred = preferred_device(ref)
    missing = missing_device(ctx, ref)
    if not missing:
        return Scenario(NOT_APPLICABLE, f"the preferred device {preferred} is present")
    evidence: dict[str, Any] = {"requested": ref.device, "providers": list(ref.providers), "preferred": preferred,
                                "missing": missing, "device_fallback_allowed": ref.device_fallback}
    try:
        deployed, where = accuracy.predict("candidate", ref, inputs, batch, measure)
    except CertifyError as exc:
        return refused(ref, preferred, exc, {**evidence, "loads": False})
    executed = str(where["executed_device"])
    ran_on = executed_class(executed, where["info"])
    evidence.update(loads=True, executed_device=executed, executed_class=ran_on, info=where["info"])
    if ran_on == ref.device_class:
        return Scenario(NOT_APPLICABLE, f"the preferred device ran after all ({executed})", evidence=evidence)
    moved = f"from {ref.device_class.upper()} to {ran_on.upper()} ({executed})"
    if not ref.device_fallback:
        return Scenario(FAIL, f"silent fallback to {ran_on.upper()} forbidden by the plan: asked for {ref.device!r} "
                        f"({preferred} missing), {executed} ran", evidence=evidence,
                        hint="make the deployment refuse to serve when its device is missing: check the device "
                        "that really ran before serving (ORT session.get_providers(), which falls back to CPU even "
                        "when the CPU provider is not listed; OpenVINO EXECUTION_DEVICES; llama.cpp's offloaded "
                        "layers), or set device_fallback = true if a CPU fallback is acceptable")
    reference, _ = accuracy.predict("candidate", replace(ref, device="cpu", providers=()), inputs, batch, measure)
    ok, diff = agreement(deployed, reference, DEVICE_TOLERANCE)
    evidence.update(compared_inputs=len(deployed), max_abs_difference=diff)
    if ok:
        return Scenario(PASS, f"fell back {moved}, outputs match the CPU reference ({len(deployed)} inputs, max "
                        f"|diff| {diff:.2g})", evidence=evidence)
    return Scenario(FAIL, f"fell back {moved} but its outputs differ from the CPU reference (max |diff| {diff:.3g})",
                    hint="the fallback path runs the model differently: compare its settings (precision hints, "
                    "graph optimizations) with the CPU deployment", evidence=evidence)


def refused(ref: ModelRef, preferred: str, exc: CertifyError, evidence: dict[str, Any]) -> Scenario:
    """The deployment did not load without its device: right when the plan forbids a fallback, else a failure."""
    cause = first_line(exc.message)
    evidence["error"] = cause
    if isinstance(exc, WorkerCrashed):
        return Scenario(FAIL, f"loading without {preferred} crashed the process: {cause}", hint=exc.hint,
                        evidence=evidence)
    if not ref.device_fallback:
        return Scenario(PASS, f"refused to run without {preferred}, as the plan requires (device_fallback = false): "
                        f"{cause}", evidence=evidence)
    return Scenario(FAIL, f"no fallback: the deployment (device {ref.device!r}) does not load here without "
                    f"{preferred}: {cause}", hint=(exc.hint + "; " if exc.hint else "") + "give the deployment a "
                    "device that is always there as its last choice (OpenVINO AUTO:<device>,CPU with every listed "
                    "device's plugin installed, ORT providers ending with CPUExecutionProvider), or set "
                    "device_fallback = false if it must refuse to run without its device", evidence=evidence)


# ------------------------------------------------------------------------------------------- 2. load failure


def fallback_model(ctx: GateContext) -> ModelRef:
    """The model the plan names to serve when the candidate fails to load (a recipe's candidate built, or taken
    from the build cache: the runner's ``built`` would wait for the measurement lock this gate already holds)."""
    name = ctx.case.candidate.fallback
    if name == "baseline":
        return ctx.case.model.baseline
    named = next(c for c in ctx.case.model.candidates if c.name == name)
    policy: Policy = ctx.plan.policy_for(named)
    return materialize(ctx.case.model, named, max_drop=1.0 - policy.min_accuracy_retention, seed=ctx.plan.measure.seed)


def corrupted_copy(ref: ModelRef, folder: Path) -> ModelRef:
    """``ref`` pointing at a copy of its files (a model folder, an IR's .xml and .bin, an ONNX model's external data)
    in ``folder``, each truncated to half its size."""
    source = ref.file
    target = folder / source.name
    if source.is_dir():
        shutil.copytree(source, target)
        copies = [p for p in target.rglob("*") if p.is_file()]
    else:
        copies = []
        for path in model_files(source):
            copy = folder / path.relative_to(source.parent)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            copies.append(copy)
    for copy in copies:
        os.truncate(copy, copy.stat().st_size // 2)
    return replace(ref, path=target, sha256=None)


def load_failure_scenario(ctx: GateContext, inputs: dict[str, np.ndarray], policy: Policy) -> Scenario:
    ref, batch, measure = ctx.case.candidate, ctx.case.model.dataset.batch_size, ctx.plan.measure
    if ref.fallback is None:
        return Scenario(NOT_APPLICABLE, "the plan names no fallback model (set fallback = 'baseline')")
    target = fallback_model(ctx)
    reference_first, reference = reference_answers(target, inputs, batch, measure.timeout_s, "fallback")
    with tempfile.TemporaryDirectory(prefix="certify-fallback-") as folder:
        broken = corrupted_copy(ref, Path(folder))
        evidence = fail_then_fall_back(broken, target, inputs, batch, measure.timeout_s)
    if evidence.get("loaded"):
        return Scenario(FAIL, "a copy of the candidate truncated to half loaded without an error: a corrupt "
                        "deployment would go unnoticed", hint="check the model's digest (sha256) before loading it",
                        evidence=evidence)
    first_ok, _ = agreement(evidence.pop("first"), reference_first, SAME_TOLERANCE)
    all_ok, diff = agreement(evidence.pop("outputs"), reference, SAME_TOLERANCE)
    evidence.update(first_answer_correct=first_ok, outputs_match=all_ok, max_abs_difference=diff,
                    fallback=target.name, max_recovery_s=policy.max_recovery_s)
    return judge_load_failure(target.name, evidence, policy)


def fail_then_fall_back(broken: ModelRef, target: ModelRef, inputs: dict[str, np.ndarray], batch: int,
                        timeout_s: float) -> dict[str, Any]:
    """Load the broken candidate; on its failure load the fallback in the same worker (a new one after a crash)
    and time the failure -> the first answer. The answers come back under 'first' and 'outputs'."""
    worker = open_worker("candidate", broken, timeout_s)
    try:
        try:
            worker.call("load", ref=broken)
            return {"loaded": True}
        except CertifyError as exc:
            failed_at, crashed = time.perf_counter(), isinstance(exc, WorkerCrashed)
            error = {"error_type": type(exc).__name__, "error": first_line(exc.message), "crashed": crashed,
                     "clear": not crashed and not exc.message.startswith(UNCLEAR_LOAD)}
        if crashed:
            worker.close()
            worker = open_worker("fallback", target, timeout_s)
        worker.role, worker.label = "fallback", f"fallback {target.name!r}"  # its errors are the fallback's now
        loaded = worker.call("load", ref=target)
        first = first_answer(worker, inputs)
        recovery_s = time.perf_counter() - failed_at
        outputs = answer(worker, inputs, batch)
    finally:
        worker.close()
    return {**error, "first": first, "outputs": outputs, "recovery_s": recovery_s, "fallback_load_s": loaded["load_s"],
            "fallback_device": loaded["executed_device"]}


def judge_load_failure(name: str, evidence: dict[str, Any], policy: Policy) -> Scenario:
    failed = f"{evidence['error_type']}: {evidence['error']}"
    took = f"{evidence['recovery_s']:.2f} s"
    if evidence["crashed"] or not evidence["clear"]:
        how = "crashed the process" if evidence["crashed"] else "raised an unexplained error"
        return Scenario(FAIL, f"loading the truncated candidate {how} ({failed}) instead of a clear error a "
                        f"deployment can act on; fallback {name!r} then served in {took}", evidence=evidence,
                        hint="the backend must turn a load failure into an error naming the file and the cause")
    if not (evidence["first_answer_correct"] and evidence["outputs_match"]):
        return Scenario(FAIL, f"fallback {name!r} served answers that differ from its own when loaded normally "
                        f"(max |diff| {evidence['max_abs_difference']:.3g})", evidence=evidence,
                        hint="a model loaded after a failed load must run as if loaded alone: check the runtime's "
                        "process-wide state (a half-initialized session, a global cache)")
    if evidence["recovery_s"] > policy.max_recovery_s:
        return Scenario(FAIL, f"fallback {name!r} gave its first correct answer {took} after the load failure, more "
                        f"than max_recovery_s {policy.max_recovery_s:g} s", evidence=evidence,
                        hint="keep the fallback model loaded (warm) next to the candidate, or use a smaller one")
    return Scenario(PASS, f"the truncated candidate failed to load with a clear error ({failed}); fallback {name!r} "
                    f"served correct answers {took} later", evidence=evidence)


# ------------------------------------------------------------------------------------------- 3. recovery


def in_process_fault(worker: WorkerClient, batch: int, before: np.ndarray) -> dict[str, Any]:
    """Inject an exception into the backend's next inference; the request after it must be served correctly."""
    worker.call("fail_next_infer")
    try:
        worker.call("predict", key="fallback", batch_size=batch)
        raised = ""
    except WorkerCrashed as exc:
        return {"raised": first_line(exc.message), "next_request_ok": False, "note": "the exception killed the worker"}
    except CertifyError as exc:
        raised = first_line(exc.message)
    again = np.asarray(worker.call("predict", key="fallback", batch_size=batch)["scored"])
    ok, diff = agreement(again, before, SAME_TOLERANCE)
    return {"raised": raised, "next_request_ok": ok and bool(raised), "max_abs_difference": diff}


def recovery_scenario(ctx: GateContext, inputs: dict[str, np.ndarray], policy: Policy) -> Scenario:
    ref, batch, timeout_s = ctx.case.candidate, ctx.case.model.dataset.batch_size, ctx.plan.measure.timeout_s
    with open_worker("candidate", ref, timeout_s) as worker:
        worker.call("load", ref=ref)
        before_first, before = first_answer(worker, inputs), answer(worker, inputs, batch)
        for _ in range(STREAM_REQUESTS - 2):
            worker.call("predict", key="fallback", batch_size=batch)
        injected = in_process_fault(worker, batch, before)
        killed_at = time.perf_counter()
        worker.kill()
    with open_worker("candidate", ref, timeout_s) as fresh:
        loaded = fresh.call("load", ref=ref)
        first = first_answer(fresh, inputs)
        recovery_s = time.perf_counter() - killed_at
        after = answer(fresh, inputs, batch)
    first_ok, _ = agreement(first, before_first, SAME_TOLERANCE)
    same_ok, diff = agreement(after, before, SAME_TOLERANCE)
    evidence = {"fault": "SIGKILL of the serving worker", "recovery_s": recovery_s, "load_s": loaded["load_s"],
                "import_s": loaded["import_s"], "first_answer_correct": first_ok, "outputs_match": same_ok,
                "max_abs_difference": diff, "max_recovery_s": policy.max_recovery_s, "in_process_fault": injected}
    return judge_recovery(evidence, policy)


def judge_recovery(evidence: dict[str, Any], policy: Policy) -> Scenario:
    took = f"{evidence['recovery_s']:.2f} s (load {evidence['load_s']:.2f} s)"
    injected = evidence["in_process_fault"]
    problems = []
    if evidence["recovery_s"] > policy.max_recovery_s:
        problems.append(f"recovery after SIGKILL took {took}, more than max_recovery_s {policy.max_recovery_s:g} s")
    if not (evidence["first_answer_correct"] and evidence["outputs_match"]):
        problems.append(f"after the restart the answers differ from before the fault (max |diff| "
                        f"{evidence['max_abs_difference']:.3g})")
    if not injected["next_request_ok"]:
        problems.append("after an exception inside the backend the next request was not served correctly"
                        + (f" ({injected['note']})" if injected.get("note") else ""))
    if problems:
        return Scenario(FAIL, "; ".join(problems), evidence=evidence,
                        hint="keep a warm standby worker, cache compiled models (OpenVINO cache_dir, ORT optimized "
                        "model file) and load from fast storage to shorten a restart")
    return Scenario(PASS, f"killed mid-stream (SIGKILL), a fresh worker answered correctly {took} later, within "
                    f"{policy.max_recovery_s:g} s; after an injected in-backend exception the next request was "
                    "served correctly", evidence=evidence)


# ------------------------------------------------------------------------------------------- the gate


def guarded(scenario: Any, *args: Any) -> Scenario:
    """A scenario's result; a model that fails where the scenario did not expect it fails that scenario alone."""
    try:
        result: Scenario = scenario(*args)
    except CertifyError as exc:
        return Scenario(FAIL, f"{exc.role + ' ' if exc.role else ''}failed: {first_line(exc.message)}",
                        hint=exc.hint, evidence={"error": exc.message})
    return result


def evaluate(ctx: GateContext) -> GateResult:
    policy, inputs = ctx.policy, sample(ctx)
    scenarios = {"device": guarded(device_scenario, ctx, inputs)}
    scenarios["load_failure"] = guarded(load_failure_scenario, ctx, inputs, policy)
    if scenarios["device"].evidence.get("loads") is False:
        scenarios["recovery"] = Scenario(NOT_APPLICABLE, "the candidate does not load on this host (see device "
                                         "fallback): there is nothing to recover")
    else:
        scenarios["recovery"] = guarded(recovery_scenario, ctx, inputs, policy)
    ctx.measurement.update(sample_inputs=len(next(iter(inputs.values()))),
                       scenarios={name: asdict(s) for name, s in scenarios.items()})
    return combine(scenarios, policy, ctx.hint)


def combine(scenarios: dict[str, Scenario], policy: Policy, backend_hint: str = "") -> GateResult:
    """FAIL when an applicable scenario fails, PASS when all applicable ones pass, NOT EVALUATED when none applies.
    The value is the recovery time after the kill (when measured), against ``max_recovery_s``."""
    listed = "; ".join(f"{LABELS.get(name, name)}: {label(s.verdict).lower()} ({s.reason})"
                       for name, s in scenarios.items())
    applicable = {name: s for name, s in scenarios.items() if s.verdict != NOT_APPLICABLE}
    if not applicable:
        return verdict.not_evaluated("fallback", f"no fallback scenario applies here -- {listed}")
    details = {name: s.verdict for name, s in scenarios.items()}
    recovery = scenarios.get("recovery")
    value = recovery.evidence.get("recovery_s") if recovery is not None else None
    failed = [name for name, s in applicable.items() if s.verdict == FAIL]
    if failed:
        hints = [applicable[name].hint for name in failed if applicable[name].hint] + [backend_hint]
        return GateResult("fallback", FAIL, f"{', '.join(LABELS.get(n, n) for n in failed)} failed -- {listed}",
                          value=value, threshold=policy.max_recovery_s, comparison="<=", unit="s",
                          hint="; ".join(h for h in dict.fromkeys(hints) if h), details=details)
    return GateResult("fallback", PASS, listed, value=value, threshold=policy.max_recovery_s,
                      comparison="<=", unit="s", details=details)
