"""The pytest plugin: options, markers, parametrization from the plan, fixtures, terminal summary, results.

Registered through the ``pytest11`` entry point, so it is active in every session of an environment that has
the package installed; it stays inert until a certification suite asks for ``certify_case``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certify.cases import Case, cases_for
from certify.errors import CertifyError
from certify.gates import ERROR, FAIL, NOT_EVALUATED, GateResult
from certify.hardware import GATES, MARKER_HELP, detect_host
from certify.plan import Plan, find_plan, load_plan

if TYPE_CHECKING:
    from certify.attest import Signer
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
    resuming: bool = False
    _plan: Plan | None = None
    _run: CertificationRun | None = None
    _previous: dict[tuple[str, str], dict[str, Any]] | None = None

    @property
    def run_dir(self) -> Path:
        return self.report_root / self.run_id

    def plan(self) -> Plan:
        """The plan: --certify-plan, else certify.toml / [tool.certify] in rootdir, else the embedded demo."""
        if self._plan is None:
            path = self.plan_path
            if path is None:
                from certify.fixtures import demo

                path = demo.ensure_built()
            self._plan = _load(path, self.config.getoption("certify_decision"), self.config.getoption("certify_soak"))
        return self._plan

    def previous(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(case id, gate) -> the evidence record an interrupted run left in the run folder (``--certify-resume``);
        the newest record of a case wins."""
        if self._previous is None:
            self._previous = {}
            if self.resuming:
                from certify.evidence import EvidenceStore

                for record in EvidenceStore(self.run_dir).records():
                    self._previous[(record["case"], record["gate"])] = record
        return self._previous

    def run(self) -> CertificationRun:
        if self._run is None:
            from certify.runner import CertificationRun

            self._run = CertificationRun(self.plan(), self.run_dir, detect_host(), self.run_id)
        return self._run


STATE = pytest.StashKey[SessionState]()
SIGTERM_HANDLER = pytest.StashKey[Any]()


def _load(path: Path, decision: str | None, soak_s: float | None) -> Plan:
    from dataclasses import replace

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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("certify", "edge-AI model certification")
    group.addoption("--certify-plan", default=None, metavar="PATH",
                    help="certification plan (TOML; certify.toml or a pyproject.toml with [tool.certify]). "
                    "Default: certify.toml in rootdir, else the embedded demo plan.")
    group.addoption("--certify-report-dir", default="reports", metavar="DIR",
                    help="where runs write reports/<run-id>/ (default: reports)")
    group.addoption("--certify-run-id", default=None, metavar="ID", help="name of this run's folder")
    group.addoption("--certify-decision", default=None, choices=("lower_bound", "point"),
                    help="decide gates on the interval's bound (default) or the point estimate")
    group.addoption("--certify-sign-key", default=None, metavar="KEY",
                    help="Ed25519 private key (from certify keygen) that signs the certificate. Default: "
                    "$CERTIFY_SIGNING_KEY (the PEM itself) or $CERTIFY_SIGNING_KEY_FILE; unsigned when none is set")
    group.addoption("--certify-dev-key", action="store_true",
                    help="sign with a throwaway key made for this run (demos; the certificate says so)")
    group.addoption("--certify-resume", default=None, metavar="RUN_DIR",
                    help="continue an interrupted run in RUN_DIR: cases with evidence there keep it, only the "
                    "missing ones run (same plan and host required)")
    group.addoption("--certify-soak", default=None, type=float, metavar="SECONDS",
                    help="long stress runs: each stress case loads its candidate for SECONDS instead of the "
                    "plan's [stress] duration_s")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKER_HELP.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    workerinput = getattr(config, "workerinput", None)
    run_id = (workerinput or {}).get("certify_run_id") or config.getoption("certify_run_id") or new_run_id()
    root = Path(config.getoption("certify_report_dir"))
    root = root if root.is_absolute() else config.rootpath / root
    resume = config.getoption("certify_resume")
    if resume:
        resume_dir = Path(resume).resolve()
        run_id, root = resume_dir.name, resume_dir.parent
    explicit = config.getoption("certify_plan")
    plan_path = Path(explicit) if explicit else find_plan(config.rootpath)
    state = SessionState(config, run_id, root, plan_path, resuming=bool(resume))
    config.stash[STATE] = state
    if workerinput is None:
        state.signer = _signer(config)
        config.pluginmanager.register(CertifyReporter(state), "certify-reporter")
        config.stash[SIGTERM_HANDLER] = _terminate_like_ctrl_c()
    if plan_path is not None:
        state.plan()  # a bad plan stops the session here, before collection
    if resume and workerinput is None:
        _check_resumable(state)


def pytest_unconfigure(config: pytest.Config) -> None:
    import signal

    handler = config.stash.get(SIGTERM_HANDLER, None)
    if handler is not None and signal.getsignal(signal.SIGTERM) is handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate_like_ctrl_c() -> Any:
    """SIGTERM (a CI job cancelled, a container stopped) ends the session the way Ctrl-C does: the evidence so
    far is kept and the report is written, marked incomplete and unsigned. A handler someone else installed is
    left alone."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    return interrupt


def _check_resumable(state: SessionState) -> None:
    """A resumed run must be the same plan on the same host: evidence from elsewhere cannot be mixed in."""
    from certify.evidence import EVIDENCE_FILE

    if not (state.run_dir / EVIDENCE_FILE).is_file():
        raise pytest.UsageError(f"--certify-resume {state.run_dir}: no {EVIDENCE_FILE} there; give the folder of "
                                "the interrupted run (reports/<run-id>)")
    plan, host = state.plan(), detect_host()
    for record in state.previous().values():
        if record.get("plan_digest") != plan.digest:
            raise pytest.UsageError(f"--certify-resume {state.run_dir}: case {record['case']} ({record['gate']}) "
                                    f"was measured with plan digest {record.get('plan_digest')}, this plan is "
                                    f"{plan.digest}; resume with the same plan, or start a new run")
        if record.get("host_fingerprint") != host.fingerprint:
            raise pytest.UsageError(f"--certify-resume {state.run_dir}: case {record['case']} was measured on host "
                                    f"{record.get('host_fingerprint')}, this is {host.fingerprint}; evidence from "
                                    "two hosts cannot make one certificate")
    started = [float(r["started"]) for r in state.previous().values() if r.get("started")]
    if started:
        state.started = min(started)


def _signer(config: pytest.Config) -> Signer | None:
    """The signing key, loaded before anything is measured so a bad key stops the session at once."""
    from certify.attest import dev_signer, load_signer

    path = config.getoption("certify_sign_key")
    try:
        signer = load_signer(Path(path) if path else None)
    except CertifyError as exc:
        raise pytest.UsageError(f"signing key: {exc.diagnostics()}") from None
    if signer is None and config.getoption("certify_dev_key"):
        signer = dev_signer()
    return signer


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker writes into the controller's run folder."""
    node.workerinput["certify_run_id"] = node.config.stash[STATE].run_id


def _gate_of(metafunc: pytest.Metafunc) -> str:
    found = [m.name for m in metafunc.definition.iter_markers() if m.name in GATES]
    if len(found) != 1:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: a certification test needs exactly one gate "
                                f"marker ({', '.join(GATES)}), found {found or 'none'}")
    return found[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "certify_case" not in metafunc.fixturenames:
        return
    plan = metafunc.config.stash[STATE].plan()
    params = [pytest.param(case, id=case.id, marks=[getattr(pytest.mark, m) for m in case.markers()])
              for case in cases_for(plan, _gate_of(metafunc))]
    metafunc.parametrize("certify_case", params, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("certify_case"), Case):
            item.user_properties.append((CASE_PROPERTY, json.dumps(callspec.params["certify_case"].describe())))


@pytest.fixture
def certify_case(request: pytest.FixtureRequest) -> Case:
    """The (model, candidate, gate) under test, from the plan."""
    case: Case = request.param
    return case


@pytest.fixture
def certify_gate(request: pytest.FixtureRequest) -> Callable[[Case], GateResult]:
    """Evaluate a case's gate: skip when it cannot be evaluated here, fail with the reason when it fails."""
    state = request.config.stash[STATE]

    def check(case: Case) -> GateResult:
        record = state.previous().get((case.id, case.gate))
        if record is None:
            result, record = state.run().evaluate(case, request.node.nodeid)
        else:  # --certify-resume: this case was measured before the interruption
            result = GateResult.from_dict(record["result"])
        request.node.user_properties.append((RESULT_PROPERTY, json.dumps(result.to_dict(), default=str)))
        from certify.report import allure

        allure.annotate(request.config, case, result, record)
        if result.verdict == NOT_EVALUATED:
            pytest.skip(f"NOT EVALUATED: {result.reason}")
        if result.verdict in (FAIL, ERROR):
            pytest.fail(result.message(), pytrace=False)
        return result

    return check


class CertifyReporter:
    """Collects every case's outcome (also from xdist workers, through user_properties) and writes
    ``results.json`` and the terminal summary on the controller."""

    def __init__(self, state: SessionState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if CASE_PROPERTY not in props:
            return
        entry = self.state.entries.setdefault(report.nodeid, {**json.loads(str(props[CASE_PROPERTY])),
                                                              "nodeid": report.nodeid})
        if RESULT_PROPERTY in props:
            entry["result"] = json.loads(str(props[RESULT_PROPERTY]))
        elif "result" not in entry and report.outcome != "passed":
            verdict = NOT_EVALUATED if report.skipped else ERROR
            text = report.longreprtext.strip().splitlines()[-1] if report.longreprtext.strip() else report.outcome
            entry["result"] = GateResult(entry["gate"], verdict, f"{report.when}: {text}").to_dict()

    def pytest_keyboard_interrupt(self) -> None:
        self.state.interrupted = True

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in self.state.entries.values() if "result" in e]

    def adopt_recorded(self) -> None:
        """After an interruption: a case whose evidence record was written before pytest could report its call
        (the signal came in between) still counts, with the verdict its record holds. Its entry exists from the
        setup report, without a result."""
        from certify.evidence import EvidenceStore

        for record in EvidenceStore(self.state.run_dir).records():
            entry = self.state.entries.get(record.get("nodeid", ""))
            if entry is not None and "result" not in entry and float(record.get("started") or 0) >= self.state.started:
                entry["result"] = record["result"]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.state.interrupted:
            self.adopt_recorded()
        if not self.entries():
            return
        from certify.environment import package_versions
        from certify.evidence import RESULTS_FILE, write_json_atomic
        from certify.report.certificate import describe_models
        from certify.report.publish import certify_run
        from certify.report.results import build_results

        state, plan = self.state, self.state.plan()
        document = build_results(
            run_id=state.run_id, host=detect_host().to_dict(), packages=package_versions(), entries=self.entries(),
            plan={"name": plan.name, "source": str(plan.source), "digest": plan.digest,
                  "policy": plan.policy.to_dict()}, models=describe_models(plan),
            started=state.started, finished=time.time(), complete=not state.interrupted and exitstatus in (0, 1),
        )
        write_json_atomic(state.run_dir / RESULTS_FILE, document)
        try:
            state.outputs = certify_run(state.run_dir, state.signer)
        except CertifyError as exc:  # results.json is written; say why the certificate or report is missing
            state.outputs = {"error": exc.diagnostics()}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        entries = self.entries()
        if not entries:
            return
        from certify.report.results import matrix_lines, not_evaluated_groups

        tr, host = terminalreporter, detect_host()
        tr.section("certification summary")
        tr.write_line(f"host: {host.describe()} [{host.fingerprint}]")
        for line in matrix_lines(entries, GATES):
            tr.write_line(line)
        for (case, reason), gates in not_evaluated_groups(entries).items():
            tr.write_line(f"NOT EVALUATED {case} ({', '.join(gates)}): {reason}")
        run_dir = os.path.relpath(self.state.run_dir)
        tr.write_line(f"results: {run_dir}/results.json (evidence: evidence.jsonl)")
        self._write_outputs(tr, run_dir)

    def _write_outputs(self, tr: Any, run_dir: str) -> None:
        out = self.state.outputs
        if "error" in out:
            tr.write_line(f"certificate and report not written: {out['error']}", red=True)
        elif out.get("signed"):
            dev = " (THROWAWAY DEVELOPMENT KEY: not for releases)" if out["dev_key"] else ""
            tr.write_line(f"certificate: {run_dir}/{out['certificate']} signed by key {out['keyid'][:16]}{dev}")
            tr.write_line(f"verify: {out['verify_command']}")
        elif out:
            tr.write_line(f"certificate: not signed: {out['reason_unsigned']} (statement: {run_dir}/statement.json)",
                          yellow=True)
        if out and "error" not in out:
            tr.write_line(f"report: {run_dir}/report.html, summary: {run_dir}/summary.md")
