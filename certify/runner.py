"""Evaluate one certification case: decide whether it can run here, measure it in isolated workers
(serialized for speed and memory), turn the measurement into a verdict, and append the evidence."""

from __future__ import annotations

import functools
import importlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from certify import gates
from certify.backends import resolve_backend
from certify.cases import Case, safe_name
from certify.digests import model_digest
from certify.errors import CertifyError
from certify.evidence import EvidenceStore
from certify.gates import GateResult
from certify.hardware import Host
from certify.measure import accuracy, dataset, footprint, preflight, speed
from certify.measure.worker import MEMORY_LIMIT_ENV
from certify.metrics import METRICS
from certify.plan import ModelPlan, ModelRef, Plan
from certify.recipes import RecipeError, unavailable
from certify.recipes.build import made_by, materialize

STATIC_GATES = ("security",)  # they read the model's files and never run it: any host can judge them
EXCLUSIVE_GATES = ("speed", "stability", "memory", "stress", "fallback")  # they time things or load the cores


def _digest(ref: ModelRef) -> str | None:
    """The model's digest as measured (the certificate refuses a model whose file changed during the run)."""
    if ref.path is None:
        return None
    try:
        return model_digest(ref.file).sha256
    except (CertifyError, OSError):
        return None


class CertificationRun:
    def __init__(self, plan: Plan, run_dir: Path, host: Host, run_id: str) -> None:
        self.plan, self.host, self.run_id = plan, host, run_id
        self.store = EvidenceStore(run_dir)
        if plan.measure.memory_limit_mib:  # inherited by every measurement worker this session starts
            os.environ[MEMORY_LIMIT_ENV] = str(plan.measure.memory_limit_mib)

    def evaluate(self, case: Case, nodeid: str = "") -> tuple[GateResult, dict[str, Any]]:
        """The verdict and the evidence record appended for it. Never raises for a measurement problem: every
        outcome becomes a GateResult with its reason."""
        started = time.time()
        measurement: dict[str, Any] = {}
        reason = self.why_not_evaluated(case)
        lock_wait = 0.0
        built: Case | RecipeError = case if reason else self.built(case)
        if reason and case.candidate.missing_device == "fail" and self._cannot_run(case.candidate):
            result, finished = gates.GateResult(case.gate, gates.FAIL, f"required device missing: {reason}",
                                                hint="the plan sets missing_device = 'fail'"), started
        elif reason:
            result, finished = gates.not_evaluated(case.gate, reason), started
        elif isinstance(built, RecipeError):
            result, finished = gates.errored(case.gate, built.message, hint=built.hint), started
        else:
            case = built
            with self.store.measurement_lock(exclusive=case.gate in EXCLUSIVE_GATES) as lock_wait:
                started = time.time()  # the measurement window is the time the lock is held
                result = self._measure(case, measurement)
                finished = time.time()
        record = {
            "run_id": self.run_id, "nodeid": nodeid, **case.describe(), "result": result.to_dict(),
            "plan_digest": self.plan.digest,
            "measurement": measurement, "host_fingerprint": self.host.fingerprint,
            "policy": self.plan.policy_for(case.candidate).to_dict(), "started": started, "finished": finished,
            "serialized": case.gate in EXCLUSIVE_GATES, "lock_wait_s": lock_wait,
            "digests": {"baseline": _digest(case.model.baseline), "candidate": _digest(case.candidate)},
            "made_by": made_by(case.candidate),
        }
        self.store.append(record)
        return result, record

    def _measure(self, case: Case, measurement: dict[str, Any]) -> GateResult:
        try:
            return GATES[case.gate](self, case, measurement)
        except dataset.DatasetError as exc:
            return gates.errored(case.gate, exc.diagnostics())
        except preflight.HostTooNoisy as exc:  # measure.noise = "refuse": the host, not a model, is at fault
            measurement.update(preflight=exc.preflight)
            return gates.errored(case.gate, exc.message, hint=exc.hint)
        except CertifyError as exc:
            if exc.role == "baseline":
                return gates.errored(case.gate, f"baseline {case.model.baseline.name!r} failed: {exc.message}",
                                     hint="fix the baseline first: every candidate is compared with it")
            return gates.GateResult(case.gate, gates.FAIL, f"candidate {case.candidate.name!r} failed: "
                                    f"{exc.message}", hint=exc.hint or self.hint(case))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one run object per session
    def built(self, case: Case) -> Case | RecipeError:
        """The case with its candidate built from its recipe (once, under the exclusive measurement lock, since
        building loads the cores), or the reason it could not be built."""
        if case.candidate.recipe is None:
            return case
        policy = self.plan.policy_for(case.candidate)
        try:
            with self.store.measurement_lock(exclusive=True):
                ref = materialize(case.model, case.candidate, max_drop=1.0 - policy.min_accuracy_retention,
                                  seed=self.plan.measure.seed)
        except RecipeError as exc:
            return exc
        return replace(case, candidate=ref)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def why_not_evaluated(self, case: Case) -> str:
        """'' when the case can run here, else what was detected and what to do."""
        wanted, static = case.candidate.platforms, case.gate in STATIC_GATES
        if wanted and not set(wanted) & set(self.host.platforms) and not static \
                and case.gate not in self._portable(case.candidate):
            return (f"target platform {'/'.join(wanted)} not present on this host: {self.host.describe()}; "
                    f"run it on a host of that platform")
        for role, ref in (("candidate", case.candidate), ("baseline", case.model.baseline)):
            problem = "" if static else self._cannot_run(ref)
            if problem and not (case.gate == "fallback" and role == "candidate" and problem.startswith("device ")):
                return f"{role} {ref.name!r}: {problem}"  # a missing device is what the fallback gate certifies
        return f"candidate {case.candidate.name!r}: {unavailable(case.candidate.recipe)}" \
            if case.candidate.recipe and unavailable(case.candidate.recipe) else ""

    @staticmethod
    def _portable(ref: ModelRef) -> tuple[str, ...]:
        """Gates whose result on another platform still holds for the target (a backend's ``portable_gates``:
        MLX's accuracy and memory on the Linux CPU backend stand for Apple silicon; its speed does not)."""
        try:
            return tuple(getattr(resolve_backend(ref.framework), "portable_gates", ()))
        except CertifyError:
            return ()

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _cannot_run(self, ref: ModelRef) -> str:
        try:
            backend = resolve_backend(ref.framework)
            ok, detail = backend.available_devices(ref)
        except CertifyError as exc:
            return f"framework {ref.framework!r} unavailable: {exc.message}; install: {exc.hint}"
        if not ok:
            return f"device {ref.device!r} not available: {detail}; install: {backend.install_hint}"
        return ""

    def hint(self, case: Case) -> str:
        try:
            return str(resolve_backend(case.candidate.framework).hints.get(case.gate, ""))
        except CertifyError:
            return ""

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def data(self, model: ModelPlan) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        if model.dataset.text is not None:
            return dataset.load_text_dataset(model.dataset, model.baseline, self.plan.measure.timeout_s)
        return dataset.load_dataset(model.dataset)

    def accuracy(self, case: Case, measurement: dict[str, Any]) -> GateResult:
        inputs, labels = self.data(case.model)
        bs, measure = case.model.dataset.batch_size, self.plan.measure
        base_out = self.store.cached_array(
            safe_name(case.model.name) + "-baseline-outputs",
            lambda: accuracy.predict("baseline", case.model.baseline, inputs, bs, measure)[0])
        cand_out, where = accuracy.predict("candidate", case.candidate, inputs, bs, measure)
        policy = self.plan.policy_for(case.candidate)
        if base_out.shape != cand_out.shape:
            raise CertifyError(f"its output shape {cand_out.shape} differs from the baseline's {base_out.shape}",
                               hint="the candidate must compute the same outputs as its baseline")
        result = accuracy.evaluate(METRICS[case.model.metric], base_out, cand_out, labels, measure, policy.confidence)
        measurement.update(result, candidate_where=where)
        return gates.accuracy_gate(result, policy, self.hint(case))

    def speed_feeds(self, model: ModelPlan) -> dict[str, np.ndarray]:
        """The one input every speed and memory measurement of this model uses."""
        return dataset.speed_batch(self.data(model)[0], model.dataset.speed_batch_size)

    def paired_speed(self, case: Case) -> dict[str, Any]:
        """The paired speed run the speed and stability gates read. A language model is timed twice, prompt
        processing (``prompt``) and generation (``decode``); the plan's ``dataset.speed`` picks the gated one
        and the run carries both under ``language_model``."""
        policy, feeds, data = self.plan.policy_for(case.candidate), self.speed_feeds(case.model), case.model.dataset
        modes = ("infer",) if not data.text else ("decode", "prompt") if data.speed == "generation" \
            else ("prompt", "decode")

        def run(mode: str) -> dict[str, Any]:
            return self.store.cached_json(f"{case.key}-speed-{mode}", lambda: speed.measure_speed(
                case.model.baseline, case.candidate, feeds, self.plan.measure, policy.min_speedup,
                policy.confidence, mode))

        gated = run(modes[0])
        if len(modes) == 1:
            return gated
        runs = {modes[0]: gated, modes[1]: run(modes[1])}
        prompt_tokens = int(next(iter(feeds.values())).shape[1])
        return {**gated, "language_model": speed.language_model_figures(runs["prompt"], runs["decode"],
                                                                          prompt_tokens)}

    def speed(self, case: Case, measurement: dict[str, Any]) -> GateResult:
        run = self.paired_speed(case)
        measurement.update(run)
        return gates.speed_gate(run, self.plan.policy_for(case.candidate), self.hint(case))

    def stability(self, case: Case, measurement: dict[str, Any]) -> GateResult:
        run = self.paired_speed(case)
        measurement.update({k: run[k] for k in ("candidate", "samples", "duration_s", "stop_reason")},
                           candidate_ns=run["candidate_ns"], preflight=run.get("preflight"))
        return gates.stability_gate(run, self.plan.policy_for(case.candidate), self.hint(case))

    def memory(self, case: Case, measurement: dict[str, Any]) -> GateResult:
        feeds, measure = self.speed_feeds(case.model), self.plan.measure
        base = self.store.cached_json(safe_name(case.model.name) + "-baseline-memory",
                                      lambda: footprint.measure_memory("baseline", case.model.baseline, feeds, measure))
        cand = footprint.measure_memory("candidate", case.candidate, feeds, measure)
        measurement.update(baseline=base, candidate=cand)
        return gates.memory_gate(base, cand, self.plan.policy_for(case.candidate), self.hint(case))


def _check(module: str) -> Callable[[CertificationRun, Case, dict[str, Any]], GateResult]:
    """A production-readiness gate implemented in ``certify.checks.<module>.evaluate``, imported when first used."""

    def evaluate(run: CertificationRun, case: Case, measurement: dict[str, Any]) -> GateResult:
        checks: Any = importlib.import_module(f"certify.checks.{module}")
        result: GateResult = checks.evaluate(run, case, measurement)
        return result

    return evaluate


GATES: dict[str, Callable[[CertificationRun, Case, dict[str, Any]], GateResult]] = {
    "accuracy": CertificationRun.accuracy,
    "speed": CertificationRun.speed,
    "stability": CertificationRun.stability,
    "memory": CertificationRun.memory,
    "stress": _check("stress"),
    "fallback": _check("fallback"),
    "robustness": _check("robustness"),
    "security": _check("security"),
}
