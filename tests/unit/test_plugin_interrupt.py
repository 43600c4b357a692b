"""certify.plugin after an interruption: a case whose evidence was written but which pytest never reported (the
signal came in between) still reaches results.json with the verdict its record holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from certify.cases import DESCRIBED
from certify.evidence import EvidenceStore
from certify.plugin import CertifyReporter, SessionState


def record(nodeid: str, verdict: str, started: float) -> dict[str, Any]:
    described = {key: f"{key} of {nodeid}" for key in DESCRIBED}
    return {**described, "nodeid": nodeid, "started": started, "result": {"gate": "accuracy", "verdict": verdict},
            "measurement": {"baseline_ns": [1, 2, 3]}}


def test_an_interrupted_session_adopts_the_cases_its_evidence_holds(tmp_path: Path) -> None:
    state = SessionState(config=None, run_id="run", report_root=tmp_path)  # type: ignore[arg-type]
    store = EvidenceStore(state.run_dir)
    store.append(record("earlier-run::case", "fail", started=state.started - 60))  # another session's record
    store.append(record("reported::case", "fail", started=time.time()))
    store.append(record("unreported::case", "pass", started=time.time()))
    state.entries["reported::case"] = {"nodeid": "reported::case", "result": {"verdict": "pass"}}
    CertifyReporter(state).adopt_recorded()
    assert set(state.entries) == {"reported::case", "unreported::case"}
    assert state.entries["reported::case"]["result"] == {"verdict": "pass"}  # pytest's report wins
    adopted = state.entries["unreported::case"]
    assert adopted["result"] == {"gate": "accuracy", "verdict": "pass"} and "measurement" not in adopted
    assert adopted["case"] == "case of unreported::case" and set(adopted) == {*DESCRIBED, "nodeid", "result"}
