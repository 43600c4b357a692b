"""The session's reporter: collects every case's outcome (also from xdist workers, through user_properties), and on
the controller writes ``results.json``, the certificate and the reports, and the terminal's matrix."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from certify.errors import CertifyError
from certify.hardware import detect_host
from certify.session import CASE_PROPERTY, RESULT_PROPERTY, SessionState
from certify.verdict import CERTIFIED, ERROR, NOT_EVALUATED, GateResult

# The session's exit status when pytest itself would say 0 (nothing failed): 0 only when every candidate is
# CERTIFIED. 1 (a gate failed or errored) and 2 (interrupted) are pytest's own.
EXIT_NOT_CERTIFIED = 6  # nothing failed, but a candidate is partial (a subset run) or incomplete (not evaluated)
EXIT_NOTHING_EVALUATED = 7  # no gate could be evaluated on this host


def exit_status(pytest_status: int, results: dict[str, Any]) -> int:
    """pytest's exit status, made to say whether the run certified: see ``EXIT_NOT_CERTIFIED``."""
    if pytest_status != 0:
        return pytest_status
    if all(e["result"]["verdict"] == NOT_EVALUATED for e in results["cases"]):
        return EXIT_NOTHING_EVALUATED
    return 0 if results["status"] == CERTIFIED else EXIT_NOT_CERTIFIED


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
        from certify.evidence import RESULTS_FILE, EvidenceStore, write_json_atomic
        from certify.report.certificate import describe_models
        from certify.report.publish import certify_run
        from certify.report.results import build_results, describe_gates

        state, plan = self.state, self.state.plan()
        records = EvidenceStore(state.run_dir).records()
        document = build_results(
            run_id=state.run_id, host=detect_host().to_dict(), packages=package_versions(), entries=self.entries(),
            plan={"name": plan.name, "source": str(plan.source), "digest": plan.digest,
                  "policy": plan.policy.to_dict()}, models=describe_models(plan, records),
            gates=describe_gates(state.gates), required=state.required_gates(), boards=state.board_facts(records),
            started=state.started, finished=time.time(), complete=not state.interrupted and exitstatus in (0, 1),
        )
        write_json_atomic(state.run_dir / RESULTS_FILE, document)
        state.results = document
        session.exitstatus = exit_status(int(exitstatus), document)
        try:
            state.outputs = certify_run(state.run_dir, state.signer)
        except CertifyError as exc:  # results.json is written; say why the certificate or report is missing
            state.outputs = {"error": exc.diagnostics()}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        entries = self.entries()
        if not entries:
            return
        from certify.report.results import left_out_lines, matrix_lines, not_evaluated_groups

        tr, host = terminalreporter, detect_host()
        tr.section("certification summary")
        tr.write_line(f"host: {host.describe()} [{host.fingerprint}]")
        for board in self.state.results.get("boards") or []:
            trouble = f"REFUSED: {board['refused']}" if board["refused"] else \
                f"LOST: {board['lost']}" if board["lost"] else ""
            tr.write_line(f"board {board['name']} ({board['address']}, place {board['place'] or '-'}, waited "
                          f"{board['wait_s']:.1f} s): {trouble or (board['host'] or {}).get('cpu_model', '?')}",
                          red=bool(trouble))
        results = self.state.results
        for line in matrix_lines(entries, self.state.gates.order(e["gate"] for e in entries),
                                 results.get("candidates", {})):
            tr.write_line(line)
        for line in left_out_lines(results):
            tr.write_line(line, yellow=True)
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
            from certify.report.publish import HTML_FILE, SUMMARY_FILE

            failed = out.get("render_errors") or {}
            written = [f"{run_dir}/{name}" for name in (HTML_FILE, SUMMARY_FILE) if name not in failed]
            if written:
                tr.write_line(f"report: {', '.join(written)}")
            for name, error in failed.items():
                tr.write_line(f"{name} not written (a rendering error; results.json and the certificate are): "
                              f"{error}", red=True)
