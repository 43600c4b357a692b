"""The pytest plugin: options, markers, the plan file collected as tests, parametrization of the packaged suites,
fixtures for the user's own certification tests, hooks (``certify.hookspecs``) and the session reporter.

Registered through the ``pytest11`` entry point, so it is active in every session of an environment that has
the package installed; it stays inert until a plan file is collected or a test asks for ``certify_case``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certify.cases import Case, cases_for
from certify.collection import PlanFile, is_plan_file
from certify.errors import CertifyError
from certify.frameworks import FRAMEWORKS
from certify.gates.context import GateContext
from certify.gates.registry import GateRegistry, entry_point_specs
from certify.hardware import MARKER_HELP, detect_host
from certify.plan.load import find_plan
from certify.report.session import CertifyReporter
from certify.session import (
    CASE_PROPERTY,
    RESULT_PROPERTY,
    STATE,
    SessionState,
    case_marks,
    case_property,
    conclude,
    judge,
    new_run_id,
)
from certify.verdict import GateResult

if TYPE_CHECKING:
    from certify.attest import Signer
    from certify.gates.registry import Evaluate

SIGTERM_HANDLER = pytest.StashKey[Any]()


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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from certify import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    run_id = (workerinput or {}).get("certify_run_id") or config.getoption("certify_run_id") or new_run_id()
    root = Path(config.getoption("certify_report_dir"))
    root = root if root.is_absolute() else config.rootpath / root
    resume = config.getoption("certify_resume")
    if resume:
        resume_dir = Path(resume).resolve()
        run_id, root = resume_dir.name, resume_dir.parent
    state = SessionState(config, run_id, root, _plan_path(config), resuming=bool(resume), gates=_gates(config),
                         lab_waits=dict((workerinput or {}).get("certify_lab_waits") or {}))
    config.stash[STATE] = state
    for name, text in _marker_help(state.gates).items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if workerinput is None:
        state.signer = _signer(config)
        config.pluginmanager.register(CertifyReporter(state), "certify-reporter")
        config.stash[SIGTERM_HANDLER] = _terminate_like_ctrl_c()
    if state.plan_path is not None:
        state.plan()  # a bad plan stops the session here, before collection
    if resume and workerinput is None:
        _check_resumable(state)


def _plan_path(config: pytest.Config) -> Path | None:
    """--certify-plan, else a plan file named on the command line (``pytest plans/edge.toml``), else
    certify.toml / a pyproject.toml with [tool.certify] in the rootdir."""
    explicit = config.getoption("certify_plan")
    if explicit:
        return Path(explicit)
    paths = [Path(arg.split("::")[0]) for arg in config.args]
    named = {path.resolve() for path in paths if path.suffix == ".toml" and path.is_file()}
    if len(named) > 1:
        raise pytest.UsageError(f"one certification plan per session, got {len(named)}: "
                                f"{', '.join(sorted(map(str, named)))}; run them one after the other")
    return named.pop() if named else find_plan(config.rootpath)


def _gates(config: pytest.Config) -> GateRegistry:
    """The built-in gates, then those of installed packages (entry points), then the project's own
    (``pytest_certify_gates`` hooks in its conftest.py)."""
    registry = GateRegistry()
    try:
        for spec, origin in entry_point_specs():
            registry.add(spec, origin)
        for impl in config.hook.pytest_certify_gates.get_hookimpls():  # in registration order
            specs: Any = impl.function()
            for spec in specs or []:
                registry.add(spec, f"pytest_certify_gates in {impl.plugin_name}")
    except CertifyError as exc:
        raise pytest.UsageError(f"certification gates: {exc.diagnostics()}") from None
    return registry


def _marker_help(gates: GateRegistry) -> dict[str, str]:
    return {**MARKER_HELP, **{f: f"candidate runs on the {f} framework" for f in FRAMEWORKS},
            **{g.name: f"{g.name} gate: {g.summary}" for g in gates}}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """In a lab (``--lg-env``), the session that runs pytest (the xdist controller, not its workers) reserves and
    acquires the environment's labgrid places before anything, its workers included, touches a board."""
    if getattr(session.config, "workerinput", None) is None:
        state = session.config.stash[STATE]
        state.hold_places()
        state.lab()  # detected now, as the run starts (a board lost later is lost, not "unreachable at start")


def pytest_unconfigure(config: pytest.Config) -> None:
    import signal

    state = config.stash.get(STATE, None)
    if state is not None:
        try:
            state.holds.close()  # the labgrid places this session acquired are released
        except CertifyError as exc:  # the session's results stand; say what is still held
            import sys

            print(f"certify: {exc.diagnostics()}", file=sys.stderr)
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
    _default_sigterm_in_forks()
    return interrupt


_FORK_HOOK: list[bool] = []


def _default_sigterm_in_forks() -> None:
    """A child forked from the session (a framework's helper process, e.g. OpenVINO's telemetry sender, which its
    parent ends with SIGTERM after 3 s) gets the default SIGTERM back: with the session's handler it would only
    raise in Python, and a child stuck in C (a DNS lookup with no network) would never die, holding the
    session's stdout open. Registered once per process."""
    import os
    import signal

    if _FORK_HOOK:
        return
    _FORK_HOOK.append(True)

    def restore() -> None:
        try:
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the child's main thread: nothing to restore from here
            pass

    os.register_at_fork(after_in_child=restore)


def _check_resumable(state: SessionState) -> None:
    """A resumed run must be the same plan on the same host: evidence from elsewhere cannot be mixed in."""
    from certify.evidence import EVIDENCE_FILE

    if not (state.run_dir / EVIDENCE_FILE).is_file():
        raise pytest.UsageError(f"--certify-resume {state.run_dir}: no {EVIDENCE_FILE} there; give the folder of "
                                "the interrupted run (reports/<run-id>)")
    plan, host = state.plan(), detect_host()
    for record in state.previous().values():  # a board's records name the board: judged when it is reached
        if record.get("plan_digest") != plan.digest:
            raise pytest.UsageError(f"--certify-resume {state.run_dir}: case {record['case']} ({record['gate']}) "
                                    f"was measured with plan digest {record.get('plan_digest')}, this plan is "
                                    f"{plan.digest}; resume with the same plan, or start a new run")
        if not record.get("board") and record.get("host_fingerprint") != host.fingerprint:
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
    """pytest-xdist: every worker writes into the controller's run folder, and knows how long the controller
    waited for each board's labgrid place."""
    state = node.config.stash[STATE]
    node.workerinput["certify_run_id"] = state.run_id
    node.workerinput["certify_lab_waits"] = state.lab_waits


def _gate_of(metafunc: pytest.Metafunc) -> str:
    gates = metafunc.config.stash[STATE].gates
    found = [m.name for m in metafunc.definition.iter_markers() if m.name in gates]
    if len(found) != 1:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: a certification test needs exactly one gate "
                                f"marker ({', '.join(gates.names)}), found {found or 'none'}")
    return found[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "certify_case" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    params = [pytest.param(case, id=case.id, marks=case_marks(case))
              for case in cases_for(state.plan(), _gate_of(metafunc), state.placements)]
    metafunc.parametrize("certify_case", params, indirect=True)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The session's plan file is collected as a test file (``certify.collection``)."""
    state = parent.config.stash.get(STATE, None)
    if state is None or file_path.suffix != ".toml" or not is_plan_file(file_path, state.plan_path):
        return None
    plan_file: PlanFile = PlanFile.from_parent(parent, path=file_path)
    return plan_file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("certify_case"), Case):
            item.user_properties.append(case_property(callspec.params["certify_case"]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A certification test that passes without recording a verdict has certified nothing: it fails (ERROR in
    the results), never counts as a pass."""
    report = yield
    props = dict(item.user_properties)
    if report.when == "call" and report.passed and CASE_PROPERTY in props and RESULT_PROPERTY not in props:
        report.outcome = "failed"
        report.longrepr = ("the test passed without recording a verdict: end it with certify_gate(certify_case) "
                           "or certify_record(...)")
    return report


@pytest.fixture
def certify_case(request: pytest.FixtureRequest) -> Case:
    """The (model, candidate, gate) under test, from the plan."""
    case: Case = request.param
    return case


@pytest.fixture
def certify_gate(request: pytest.FixtureRequest) -> Callable[..., GateResult]:
    """``certify_gate(case)`` evaluates the case's gate as registered (``certify_gate(case, evaluate)`` with a
    function of a ``GateContext`` instead): skipped when it cannot be evaluated here, failed with the reason when
    it fails."""
    def check(case: Case, evaluate: Evaluate | None = None) -> GateResult:
        return judge(request.node, case, evaluate)

    return check


@pytest.fixture
def certify_context(request: pytest.FixtureRequest, certify_case: Case) -> GateContext:
    """The case's ``GateContext`` (plan, policy, dataset, evidence store, hints) with its candidate built. A case
    that cannot run here (target platform, framework or device missing) is recorded NOT EVALUATED and skipped."""
    run = request.config.stash[STATE].run()
    ready = run.prepared(certify_case)
    if isinstance(ready, GateResult):
        conclude(request.node, certify_case, ready, run.record(certify_case, ready, request.node.nodeid))
    assert isinstance(ready, Case)
    return run.context(ready)


@pytest.fixture
def certify_dataset(certify_context: GateContext) -> tuple[dict[str, Any], Any]:
    """The model's dataset: ``(inputs by name, labels or None)``, loaded once per session."""
    return certify_context.data()


@pytest.fixture
def certify_model(request: pytest.FixtureRequest, certify_context: GateContext) -> Iterator[Any]:
    """The candidate loaded in a fresh measurement worker (``certify.measure.client.WorkerClient``): ``call("feeds",
    key=..., arrays=...)``, ``call("run", key=..., iterations=...)`` (nanoseconds per call), ``call("predict",
    key=..., batch_size=...)``. Held under the host-wide measurement lock when the gate is exclusive; in a lab, the
    worker runs on the case's board, under the board's lock."""
    state = request.config.stash[STATE]
    exclusive = state.gates.exclusive(certify_context.gate)
    with state.run().measuring(certify_context.case, exclusive), certify_context.worker() as worker:
        yield worker


@pytest.fixture
def certify_record(request: pytest.FixtureRequest, certify_context: GateContext) -> Callable[..., GateResult]:
    """``certify_record(label, value, threshold, interval=None, unit="", higher_is_better=True)`` decides the
    case's verdict under the policy (``GateContext.decide``), or ``certify_record(result=GateResult(...))`` takes
    one as is; either way the verdict and ``certify_context.measurement`` go into the evidence, the matrix and
    the certificate, and the test ends as the verdict says."""
    run = request.config.stash[STATE].run()

    def record(*args: Any, result: GateResult | None = None, **kwargs: Any) -> GateResult:
        decided = result if result is not None else certify_context.decide(*args, **kwargs)
        evidence = run.record(certify_context.case, decided, request.node.nodeid, certify_context.measurement)
        return conclude(request.node, certify_context.case, decided, evidence)

    return record
