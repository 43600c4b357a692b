"""certify.plugin after an interruption: a case whose evidence was written but whose call pytest never reported
(the signal came in between) still reaches results.json with the verdict its record holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from certify.evidence import EvidenceStore
from certify.plugin import CertifyReporter, SessionState


def record(nodeid: str, verdict: str, started: float) -> dict[str, Any]:
    return {"case": nodeid, "gate": "accuracy", "nodeid": nodeid, "started": started,
            "result": {"gate": "accuracy", "verdict": verdict}, "measurement": {"baseline_ns": [1, 2, 3]}}


def test_an_interrupted_session_adopts_the_verdicts_its_evidence_holds(tmp_path: Path) -> None:
    state = SessionState(config=None, run_id="run", report_root=tmp_path)  # type: ignore[arg-type]
    store = EvidenceStore(state.run_dir)
    store.append(record("stale::case", "fail", started=state.started - 60))  # an earlier session's record
    store.append(record("reported::case", "fail", started=time.time()))
    store.append(record("unreported::case", "pass", started=time.time()))
    store.append(record("uncollected::case", "pass", started=time.time()))
    # entries as the setup reports left them; only one case's call was reported
    state.entries = {nodeid: {"case": nodeid, "gate": "accuracy", "nodeid": nodeid}
                     for nodeid in ("stale::case", "reported::case", "unreported::case")}
    state.entries["reported::case"]["result"] = {"verdict": "pass"}
    CertifyReporter(state).adopt_recorded()
    assert state.entries["reported::case"]["result"] == {"verdict": "pass"}  # pytest's report wins
    assert state.entries["unreported::case"]["result"] == {"gate": "accuracy", "verdict": "pass"}
    assert "measurement" not in state.entries["unreported::case"]
    assert "result" not in state.entries["stale::case"]  # evidence from before this session is not adopted
    assert "uncollected::case" not in state.entries


def _report_sigterm(queue: Any) -> None:
    import signal

    queue.put(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)


def test_a_child_forked_from_the_session_dies_on_sigterm() -> None:
    """The session turns SIGTERM into Ctrl-C; a process a framework forks from it (OpenVINO's telemetry sender,
    ended by its parent with SIGTERM after 3 s) must get the default action back, or a child blocked in C (a DNS
    lookup with no network) never dies and holds the session's stdout open. Measured here before the fix: such a
    child outlived its pytest session, blocked in getaddrinfo."""
    import multiprocessing
    import signal

    from certify.plugin import _terminate_like_ctrl_c

    installed = _terminate_like_ctrl_c()  # None when the session's own handler is already there (plugin loaded)
    try:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_report_sigterm, args=(queue,))
        child.start()
        assert queue.get(timeout=30) is True
        child.join(30)
    finally:
        if installed is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
