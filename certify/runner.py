"""Evaluate one certification case: decide whether it can run here, measure it in isolated workers
(serialized for speed and memory), turn the measurement into a verdict, and append the evidence."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from certify import backends, verdict
from certify.backends import resolve_backend
from certify.cases import Case
from certify.digests import model_digest
from certify.errors import CertifyError
from certify.evidence import EvidenceStore
from certify.gates.context import GateContext
from certify.gates.registry import BUILTIN_REGISTRY, GateRegistry
from certify.hardware import Host
from certify.measure import dataset, preflight
from certify.measure.worker import MEMORY_LIMIT_ENV
from certify.plan import ModelPlan, ModelRef, Plan
from certify.recipes import RecipeError, unavailable
from certify.recipes.build import made_by, materialize
from certify.records import EvidenceRecord
from certify.verdict import GateResult

if TYPE_CHECKING:
    from certify.gates.registry import Evaluate
    from certify.lab.fleet import Lab



def _digest(ref: ModelRef) -> str | None:
    """The model's digest as measured (the certificate refuses a model whose file changed during the run)."""
    if ref.path is None:
        return None
    try:
        return model_digest(ref.file).sha256
    except (CertifyError, OSError):
        return None


class CertificationRun:
    def __init__(self, plan: Plan, run_dir: Path, host: Host, run_id: str,
                 gates: GateRegistry = BUILTIN_REGISTRY, lab: Lab | None = None) -> None:
        self.plan, self.host, self.run_id, self.gates, self.lab = plan, host, run_id, gates, lab
        self.store = EvidenceStore(run_dir)
        if plan.measure.memory_limit_mib:  # inherited by every measurement worker this session starts
            os.environ[MEMORY_LIMIT_ENV] = str(plan.measure.memory_limit_mib)

    def evaluate(self, case: Case, nodeid: str = "",
                 evaluate: Evaluate | None = None) -> tuple[GateResult, EvidenceRecord]:
        """The verdict and the evidence record appended for it (``evaluate`` instead of the gate's registered
        evaluator: a test function's own). Never raises for a measurement problem: every outcome becomes a
        GateResult with its reason."""
        if case.board and self.lab is not None:
            return self._evaluate_on_board(case, nodeid, evaluate)
        exclusive, lock_wait = self.gates.exclusive(case.gate), 0.0
        ready, measurement = self.prepared(case), cast(dict[str, Any], {})
        if isinstance(ready, GateResult):
            result, window = ready, (time.time(), time.time())
        else:
            with self.measuring(ready, exclusive) as lock_wait:
                result, measurement, window = self._measured(case := ready, evaluate)
        return result, self.record(case, result, nodeid, measurement, *window, exclusive, lock_wait)

    def measuring(self, case: Case, exclusive: bool) -> contextlib.AbstractContextManager[float]:
        """Where ``case`` is measured, held for the block (yields the wait for it): this host's measurement lock, or
        its board's lock with every worker opened on the board."""
        if case.board and self.lab is not None:
            return self.lab.measuring_on(case.board, self.plan.measure.timeout_s)
        return self.store.measurement_lock(exclusive=exclusive)

    def _measured(self, case: Case, evaluate: Evaluate | None
                  ) -> tuple[GateResult, dict[str, Any], tuple[float, float]]:
        """A prepared case measured where the caller holds the lock: its verdict, the measurement and its window
        (the time the lock was held)."""
        started = time.time()
        ctx = self.context(case)
        result = self._measure(ctx, evaluate or self.gates[case.gate].evaluator())
        precision = precision_in_force(ctx.measurement)
        if precision:
            result = replace(result, details={**result.details, "precision": precision})
        return result, ctx.measurement, (started, time.time())

    def _evaluate_on_board(self, case: Case, nodeid: str,
                           evaluate: Evaluate | None) -> tuple[GateResult, EvidenceRecord]:
        """A case measured on its board, under the board's lock. A board that stops answering (during the case,
        or earlier in the run) makes the case ERROR with the reason, never a candidate's FAIL."""
        assert self.lab is not None
        board, lock_wait, measurement = self.lab.boards[case.board], 0.0, cast(dict[str, Any], {})
        window = (time.time(), time.time())
        if board.lost:
            result = board_lost(case, f"it was lost earlier in this run: {board.lost}")
            return result, self.record(case, result, nodeid, measurement, *window, True, lock_wait)
        try:
            with self.lab.workers_on(case.board, self.plan.measure.timeout_s):
                ready = self.prepared(case)
            if isinstance(ready, GateResult):
                result = ready
            else:
                with self.measuring(ready, True) as lock_wait:
                    result, measurement, window = self._measured(case := ready, evaluate)
        except CertifyError as exc:  # the board (its lock, shipping, asking it) failed outside a gate's own code
            result = verdict.errored(case.gate, exc.message, hint=exc.hint)
        if result.verdict in (verdict.FAIL, verdict.ERROR) and (gone := self.lab.answers(case.board)):
            self.lab.mark_lost(case.board, gone)
            result = board_lost(case, f"it stopped answering during this case ({gone}); the case's own verdict "
                                f"was: {result.reason}")
        return result, self.record(case, result, nodeid, measurement, *window, True, lock_wait)

    def prepared(self, case: Case) -> Case | GateResult:
        """The case ready to measure (its candidate built from its recipe), or the verdict it gets without
        being measured: NOT EVALUATED when it cannot run here (FAIL when the plan says a missing device fails),
        ERROR when its recipe could not build it."""
        reason = self.why_not_evaluated(case)
        if reason and case.candidate.missing_device == "fail" and self.cannot_run(case.candidate, case.board):
            return GateResult(case.gate, verdict.FAIL, f"required device missing: {reason}",
                              hint="the plan sets missing_device = 'fail'")
        if reason:
            return verdict.not_evaluated(case.gate, reason)
        built = self.built(case)
        if isinstance(built, RecipeError):
            return verdict.errored(case.gate, built.message, hint=built.hint)
        return self.served(built)

    def served(self, case: Case) -> Case:
        """The case with each model the plan marks ``static = true`` given ``options.static_shapes``: the shapes of
        the served request (``dataset.speed_batch_size`` samples, constants as given), compiled in by the backend.
        A carried state keeps its declared shape (its batch is the request's by construction)."""
        if not (case.candidate.layout.static or case.model.baseline.layout.static):
            return case
        model = case.model
        feeds = dataset.speed_batch(self.data(model)[0], model.dataset.speed_batch_size, model.layout)
        shapes = {name: tuple(int(d) for d in a.shape) for name, a in feeds.items()
                  if name not in model.layout.carried_inputs}
        shapes.update({name: tuple(np.shape(t.value)) for name, t in model.layout.constants().items()})
        frozen = tuple(sorted((k, v) for k, v in shapes.items() if v))

        def fixed(ref: ModelRef) -> ModelRef:
            if not ref.layout.static or ref.option("static_shapes"):
                return ref
            return replace(ref, options=tuple(sorted({**dict(ref.options), "static_shapes": frozen}.items())))

        return replace(case, candidate=fixed(case.candidate),
                       model=replace(model, baseline=fixed(model.baseline)))

    def record(self, case: Case, result: GateResult, nodeid: str = "", measurement: dict[str, Any] | None = None,
               started: float | None = None, finished: float | None = None, serialized: bool = False,
               lock_wait: float = 0.0) -> EvidenceRecord:
        """Append the evidence record of a verdict (also one a user's test function decided) and return it."""
        now = time.time()
        facts = self.lab.boards[case.board].facts() if self.lab is not None and case.board else None
        record: EvidenceRecord = {
            "run_id": self.run_id, "nodeid": nodeid, **case.describe(), "result": result.to_dict(),
            "plan_digest": self.plan.digest,
            "measurement": measurement or {},
            "host_fingerprint": facts["fingerprint"] if facts else self.host.fingerprint, "board_facts": facts,
            "policy": self.plan.policy_for(case.candidate).to_dict(), "started": started or now,
            "finished": finished or now, "serialized": serialized, "lock_wait_s": lock_wait,
            "digests": {"baseline": _digest(case.model.baseline), "candidate": _digest(case.candidate)},
            "made_by": made_by(case.candidate),
            "candidate_path": str(case.candidate.path) if case.candidate.path else None,
        }
        self.store.append(record)
        return record

    def _measure(self, ctx: GateContext, evaluate: Evaluate) -> GateResult:
        case, measurement = ctx.case, ctx.measurement
        try:
            return evaluate(ctx)
        except dataset.DatasetError as exc:
            return verdict.errored(case.gate, exc.diagnostics())
        except preflight.HostTooNoisy as exc:  # measure.noise = "refuse": the host, not a model, is at fault
            measurement.update(preflight=exc.preflight)
            return verdict.errored(case.gate, exc.message, hint=exc.hint)
        except CertifyError as exc:
            if exc.role == "baseline":
                return verdict.errored(case.gate, f"baseline {case.model.baseline.name!r} failed: {exc.message}",
                                       hint="fix the baseline first: every candidate is compared with it")
            return verdict.GateResult(case.gate, verdict.FAIL, f"candidate {case.candidate.name!r} failed: "
                                      f"{exc.message}", hint=exc.hint or self.hint(case))
        except Exception as exc:  # a bug in a gate's own code (a user's gate, say) is that gate's ERROR, not a lost run
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return verdict.errored(case.gate, f"the {case.gate} gate's code raised {type(exc).__name__}: {first}",
                                   hint=f"fix the gate's evaluate function ({self.gates[case.gate].evaluate!r})"
                                   if case.gate in self.gates else "")

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
        """'' when the case can run where it is routed (here, or its board), else what was detected and what to
        do."""
        if self.lab is not None and not case.board:
            return self.lab.route(case.candidate)[1] or "not routed to a board of the lab"
        host = self.lab.boards[case.board].host if self.lab is not None and case.board else self.host
        assert host is not None
        wanted, static = case.candidate.platforms, case.gate in self.gates.where("static")
        if wanted and not set(wanted) & set(host.platforms) and not static \
                and case.gate not in self._portable(case.candidate):
            return (f"target platform {'/'.join(wanted)} not present on {self._where(case)}: {host.describe()}; "
                    f"run it on a host of that platform")
        for role, ref in (("candidate", case.candidate), ("baseline", case.model.baseline)):
            problem = "" if static else self.cannot_run(ref, case.board)
            if problem and not (case.gate == "fallback" and role == "candidate" and problem.startswith("device ")):
                return f"{role} {ref.name!r}: {problem}"  # a missing device is what the fallback gate certifies
        return f"candidate {case.candidate.name!r}: {unavailable(case.candidate.recipe)}" \
            if case.candidate.recipe and unavailable(case.candidate.recipe) else ""

    @staticmethod
    def _where(case: Case) -> str:
        return f"board {case.board!r}" if case.board else "this host"

    @staticmethod
    def _portable(ref: ModelRef) -> tuple[str, ...]:
        """Gates whose result on another platform still holds for the target (a backend's ``portable_gates``:
        MLX's accuracy and memory on the Linux CPU backend stand for Apple silicon; its speed does not)."""
        try:
            return tuple(getattr(resolve_backend(ref.framework), "portable_gates", ()))
        except CertifyError:
            return ()

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def cannot_run(self, ref: ModelRef, board: str = "") -> str:
        """'' when ``ref`` can run here (or on ``board`` of the lab, asked there), else why not."""
        if board and self.lab is not None:
            return self.lab.cannot_run(board, ref)
        return backends.cannot_run(ref)

    def hint(self, case: Case) -> str:
        try:
            return str(resolve_backend(case.candidate.framework).hints.get(case.gate, ""))
        except CertifyError:
            return ""

    def data(self, model: ModelPlan) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        inputs, labels, _ = self._loaded(model)
        return inputs, labels

    def tokenization(self, model: ModelPlan) -> dict[str, Any] | None:
        """How the baseline tokenized a language model's text (``dataset.text_chunks``); None for other models."""
        return self._loaded(model)[2]

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def _loaded(self, model: ModelPlan) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, Any] | None]:
        if model.dataset.text is not None:
            return dataset.load_text_dataset(model.dataset, model.baseline, self.plan.measure.timeout_s)
        return (*dataset.load_dataset(model.dataset, model.layout), None)

    def context(self, case: Case) -> GateContext:
        defaults = self.gates[case.gate].defaults if case.gate in self.gates else {}
        return GateContext(case, self.plan, self.plan.policy_for(case.candidate), self.store, self.hint(case), self,
                           defaults=defaults)


def precision_in_force(measurement: Any, path: str = "") -> str:
    """The numeric precision the candidate really ran in, as its backend's ``info()['precision']`` reports it
    (e.g. an FP32 OpenVINO IR that the CPU plugin runs in bf16), found wherever a gate kept the candidate's load
    answer in its measurement; '' when no gate loaded it (security) or the backend does not say."""
    if not isinstance(measurement, dict) or "baseline" in path:
        return ""
    info = measurement.get("info")
    if isinstance(info, dict) and isinstance(info.get("precision"), str):
        return str(info["precision"])
    for key, value in measurement.items():
        found = precision_in_force(value, f"{path}.{key}")
        if found:
            return found
    return ""


def board_lost(case: Case, why: str) -> GateResult:
    """The verdict of a case whose board was lost: ERROR naming the board (``details.board_lost``: the case is rerun
    by ``--certify-resume`` once the board is back)."""
    return GateResult(case.gate, verdict.ERROR, f"board {case.board!r} was lost: {why}",
                      hint="bring the board back (sshd, network, power), then rerun the missing cases with "
                           "--certify-resume RUN_DIR; the other boards' results are kept",
                      details={"board_lost": case.board})
