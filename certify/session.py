"""One pytest session's certification state (kept in ``config.stash``) and the one way a case is judged, whether
it came from a plan file's items, a packaged suite or a user's own test function."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certify.cases import Case, here
from certify.errors import CertifyError
from certify.gates.registry import BUILTIN_REGISTRY, GateRegistry
from certify.hardware import detect_host
from certify.plan import ModelRef, Plan
from certify.plan.load import load_plan
from certify.records import EvidenceRecord
from certify.verdict import ERROR, FAIL, NOT_EVALUATED, GateResult

if TYPE_CHECKING:
    from certify.attest import Signer
    from certify.gates.registry import Evaluate
    from certify.lab.fleet import Lab
    from certify.runner import CertificationRun

CASE_PROPERTY, RESULT_PROPERTY = "certify.case", "certify.result"
PLACE_WAIT_S = 3600.0  # how long a session waits for a labgrid place another user holds


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
    lab_waits: dict[str, float] = field(default_factory=dict)  # board -> the wait for its labgrid place
    holds: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # the places this process holds
    _lab: Lab | None = None
    _lab_opened: bool = False

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
                self._previous = {k: r for k, r in self._previous.items()
                                  if not (r["result"].get("details") or {}).get("board_lost")}  # measured again
        return self._previous

    def required_gates(self) -> dict[str, tuple[str, ...]]:
        """Per candidate (case id), the gates it must pass in this run to be CERTIFIED (its policy's and the
        project's own required gates)."""
        plan = self.plan()
        return {Case(m, c, "", board).id: self.gates.required(plan.policy_for(c).required_gates)
                for m in plan.models for c in m.candidates for board, _ in self.placements(c)}

    def run(self) -> CertificationRun:
        if self._run is None:
            from certify.runner import CertificationRun

            self._run = CertificationRun(self.plan(), self.run_dir, detect_host(), self.run_id, self.gates,
                                         self.lab())
        return self._run

    def hold_places(self) -> None:
        """Reserve and acquire the coordinator places of the labgrid environment (``--lg-env``) for the whole
        session, before anything touches a target; released at the session's end (``holds``)."""
        from certify.lab import env as lab_env

        environment = lab_env.labgrid_environment(self.config) if self.plan_path is not None else None
        places = lab_env.place_names(environment) if environment is not None else {}
        if not places:
            return
        from certify.lab.places import hold_places

        try:
            held = self.holds.enter_context(hold_places(sorted(set(places.values())),
                                                        lab_env.coordinator_address(environment), PLACE_WAIT_S))
        except CertifyError as exc:
            raise pytest.UsageError(f"labgrid places: {exc.diagnostics()}") from None
        self.lab_waits = {target: held[place].wait_s for target, place in places.items() if place in held}

    def lab(self) -> Lab | None:
        """The boards of the labgrid environment (``pytest --lg-env lab.yaml``), detected on each board once per
        process; None when the session has no labgrid environment, or no plan file of its own (a session of the
        project's other labgrid tests, or the embedded demo): everything is then measured here."""
        if not self._lab_opened:
            self._lab_opened = True
            from certify.lab import env as lab_env

            environment = lab_env.labgrid_environment(self.config) if self.plan_path is not None else None
            if environment is not None and environment.config.get_targets():
                self._lab = lab_env.open_lab(environment, self.lab_waits)
        return self._lab

    def same_board(self, record: EvidenceRecord) -> bool:
        """True when the board that measured ``record`` is in this session's lab with the same fingerprint."""
        lab = self.lab()
        board = lab.boards.get(str(record.get("board"))) if lab is not None else None
        return board is not None and board.host is not None and board.host.fingerprint == record.get("host_fingerprint")

    def board_facts(self, records: list[EvidenceRecord]) -> list[dict[str, Any]]:
        """The lab's boards as the results and certificate list them, each marked lost when a case recorded so."""
        lab = self.lab()
        if lab is None:
            return []
        facts = {name: board.facts() for name, board in lab.boards.items()}
        for record in records:
            lost = record.get("board") in facts and (record["result"].get("details") or {}).get("board_lost")
            if lost and not facts[str(record["board"])]["lost"]:
                facts[str(record["board"])]["lost"] = record["result"]["reason"]
        return list(facts.values())

    def placements(self, candidate: ModelRef) -> list[tuple[str, tuple[str, ...]]]:
        """Where ``candidate``'s cases run: ``[(board, its platforms)]`` for each board of the lab that serves it,
        ``[("", ())]`` here (no lab), or in a lab where no board serves it (its cases then say why)."""
        lab = self.lab()
        routed = lab.route(candidate)[0] if lab is not None else []
        return [(b.name, b.host.platforms if b.host else ()) for b in routed] or here(candidate)


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


def case_marks(case: Case) -> list[pytest.MarkDecorator]:
    """A case's markers (``Case.markers``); on a board, also ``xdist_group`` by board: under
    ``pytest -n N --dist loadgroup`` each board's cases go to one worker, the boards measure in parallel."""
    marks = [getattr(pytest.mark, m) for m in case.markers()]
    return marks + ([pytest.mark.xdist_group(name=case.board)] if case.board else [])


def judge(node: pytest.Item, case: Case, evaluate: Evaluate | None = None) -> GateResult:
    """Evaluate a case's gate (or take its verdict from an interrupted run being resumed), record it, and end the
    test the way its verdict says: skipped when not evaluated, failed with the reason when failed or errored."""
    state = node.config.stash[STATE]
    record = state.previous().get((case.id, case.gate))
    if record is not None and record.get("board") and not state.same_board(record):
        record = None  # --certify-resume: the board is another machine now: measured again
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
