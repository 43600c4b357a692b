"""One pytest session's certification state (kept in ``config.stash``) and the one way a case is judged, whether
it came from a plan file's items, a packaged suite or a user's own test function."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certify.cases import Case
from certify.errors import CertifyError
from certify.gates.registry import BUILTIN_REGISTRY, GateRegistry
from certify.hardware import detect_host
from certify.plan import Plan
from certify.plan.load import load_plan
from certify.records import EvidenceRecord
from certify.verdict import ERROR, FAIL, NOT_EVALUATED, GateResult

if TYPE_CHECKING:
    from certify.attest import Signer
    from certify.gates.registry import Evaluate
    from certify.runner import CertificationRun

CASE_PROPERTY, RESULT_PROPERTY = "certify.case", "certify.result"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class SessionState:
    """Per-session state, kept in ``config.stash``."""

    config: pytest.Config
    run_id: str
    report_root: Path
    plan_path: Path | None = None
    started: float = field(default_factory=time.time)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    signer: Signer | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # results.json as written at the session's end
    resuming: bool = False
    gates: GateRegistry = BUILTIN_REGISTRY
    _plan: Plan | None = None
    _run: CertificationRun | None = None
    _previous: dict[tuple[str, str], EvidenceRecord] | None = None

    @property
    def run_dir(self) -> Path:
        return self.report_root / self.run_id

    def plan(self) -> Plan:
        """The plan: --certify-plan, else a plan file given as an argument, else certify.toml / [tool.certify]
        in rootdir, else the embedded demo."""
        if self._plan is None:
            path = self.plan_path
            if path is None:
                from certify.fixtures import demo

                path = demo.ensure_built()
            self._plan = load_session_plan(path, self.config.getoption("certify_decision"),
                                           self.config.getoption("certify_soak"))
        return self._plan

    def previous(self) -> dict[tuple[str, str], EvidenceRecord]:
        """(case id, gate) -> the evidence record an interrupted run left in the run folder (``--certify-resume``);
        the newest record of a case wins."""
        if self._previous is None:
            self._previous = {}
            if self.resuming:
                from certify.evidence import EvidenceStore

                for record in EvidenceStore(self.run_dir).records():
                    self._previous[(record["case"], record["gate"])] = record
        return self._previous

    def required_gates(self) -> dict[str, tuple[str, ...]]:
        """Per candidate (case id), the gates it must pass in this run to be CERTIFIED (its policy's and the
        project's own required gates)."""
        plan = self.plan()
        return {f"{m.name}/{c.name}": self.gates.required(plan.policy_for(c).required_gates)
                for m in plan.models for c in m.candidates}

    def run(self) -> CertificationRun:
        if self._run is None:
            from certify.runner import CertificationRun

            self._run = CertificationRun(self.plan(), self.run_dir, detect_host(), self.run_id, self.gates)
        return self._run


STATE = pytest.StashKey[SessionState]()


def load_session_plan(path: Path, decision: str | None, soak_s: float | None) -> Plan:
    try:
        plan = load_plan(path)
    except CertifyError as exc:
        raise pytest.UsageError(f"certification plan: {exc.diagnostics()}") from None
    if decision:
        plan = replace(plan, policy=plan.policy.with_overrides({"decision": decision}))
    if soak_s is not None:
        if soak_s <= 0:
            raise pytest.UsageError(f"--certify-soak {soak_s:g}: give the soak duration in seconds (> 0)")
        plan = replace(plan, stress=replace(plan.stress, duration_s=soak_s))
    return plan


def case_property(case: Case) -> tuple[str, str]:
    """The user property that makes a test item a certification case in the reporter (and across xdist)."""
    return CASE_PROPERTY, json.dumps(case.describe())


def judge(node: pytest.Item, case: Case, evaluate: Evaluate | None = None) -> GateResult:
    """Evaluate a case's gate (or take its verdict from an interrupted run being resumed), record it, and end the
    test the way its verdict says: skipped when not evaluated, failed with the reason when failed or errored."""
    state = node.config.stash[STATE]
    record = state.previous().get((case.id, case.gate))
    if record is None:
        result, record = state.run().evaluate(case, node.nodeid, evaluate)
    else:  # --certify-resume: this case was measured before the interruption
        result = GateResult.from_dict(record["result"])
    return conclude(node, case, result, record)


def conclude(node: pytest.Item, case: Case, result: GateResult, record: EvidenceRecord) -> GateResult:
    """Attach a verdict to the test item and end the test as the verdict says."""
    node.user_properties.append((RESULT_PROPERTY, json.dumps(result.to_dict(), default=str)))
    from certify.report import allure

    allure.annotate(node.config, case, result, record)
    if result.verdict == NOT_EVALUATED:
        pytest.skip(f"NOT EVALUATED: {result.reason}")
    if result.verdict in (FAIL, ERROR):
        pytest.fail(result.message(), pytrace=False)
    return result
