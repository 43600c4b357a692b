"""A candidate is CERTIFIED only when every gate its policy requires ran in this run and passed; a subset run is
PARTIAL, an interrupted or unevaluated one INCOMPLETE, a failure NOT CERTIFIED; the exit status says so."""

from __future__ import annotations

from typing import Any

import pytest

from certify.gates.registry import GATE_NAMES
from certify.report.results import build_results, candidate_verdicts, left_out_lines, run_status
from certify.report.session import EXIT_NOT_CERTIFIED, EXIT_NOTHING_EVALUATED, exit_status
from certify.verdict import CERTIFIED, ERROR, FAIL, INCOMPLETE, NOT_CERTIFIED, NOT_EVALUATED, PARTIAL, PASS


def entries(case: str, verdicts: dict[str, str]) -> list[dict[str, Any]]:
    return [{"case": case, "gate": g, "result": {"gate": g, "verdict": v, "reason": ""}} for g, v in verdicts.items()]


EVERY_PASS = dict.fromkeys(GATE_NAMES, PASS)


def test_every_required_gate_passed_is_certified() -> None:
    assert candidate_verdicts(entries("m/a", EVERY_PASS)) == {"m/a": CERTIFIED}


def test_a_subset_run_is_partial_and_a_policy_requiring_only_that_subset_certifies() -> None:
    accuracy_only = entries("m/a", {"accuracy": PASS})
    assert candidate_verdicts(accuracy_only) == {"m/a": PARTIAL}
    assert candidate_verdicts(accuracy_only, {"m/a": ["accuracy"]}) == {"m/a": CERTIFIED}


@pytest.mark.parametrize("bad", [FAIL, ERROR])
def test_a_failed_or_errored_gate_is_not_certified_even_in_a_subset(bad: str) -> None:
    assert candidate_verdicts(entries("m/a", {"accuracy": PASS, "speed": bad})) == {"m/a": NOT_CERTIFIED}
    assert candidate_verdicts(entries("m/a", {**EVERY_PASS, "speed": bad})) == {"m/a": NOT_CERTIFIED}


def test_a_required_gate_not_evaluated_or_an_interrupted_run_is_incomplete() -> None:
    assert candidate_verdicts(entries("m/a", {**EVERY_PASS, "fallback": NOT_EVALUATED})) == {"m/a": INCOMPLETE}
    three = entries("m/a", {"accuracy": PASS, "speed": PASS, "memory": PASS})
    assert candidate_verdicts(three, complete=False) == {"m/a": INCOMPLETE}
    assert candidate_verdicts(entries("m/a", EVERY_PASS), complete=False) == {"m/a": CERTIFIED}  # all had run


def test_a_gate_the_policy_does_not_require_may_be_not_evaluated() -> None:
    some = entries("m/a", {"accuracy": PASS, "speed": NOT_EVALUATED})
    assert candidate_verdicts(some, {"m/a": ["accuracy"]}) == {"m/a": CERTIFIED}


@pytest.mark.parametrize(("statuses", "complete", "expected"), [
    ([CERTIFIED, CERTIFIED], True, CERTIFIED),
    ([CERTIFIED, CERTIFIED], False, INCOMPLETE),
    ([CERTIFIED, PARTIAL], True, PARTIAL),
    ([CERTIFIED, INCOMPLETE, PARTIAL], True, INCOMPLETE),
    ([PARTIAL, NOT_CERTIFIED], True, NOT_CERTIFIED),
    ([], True, INCOMPLETE),
])
def test_the_run_status(statuses: list[str], complete: bool, expected: str) -> None:
    assert run_status(statuses, complete) == expected


def results(case_entries: list[dict[str, Any]], complete: bool = True) -> dict[str, Any]:
    return build_results(run_id="r", plan={}, host={}, packages={}, entries=case_entries, started=0.0,
                         finished=1.0, complete=complete, models=[])


def test_results_say_what_a_subset_run_left_out() -> None:
    doc = results(entries("m/a", {"accuracy": PASS}) + entries("m/b", EVERY_PASS))
    assert doc["status"] == PARTIAL and doc["candidates"] == {"m/a": PARTIAL, "m/b": CERTIFIED}
    assert doc["left_out"] == {"m/a": [g for g in GATE_NAMES if g != "accuracy"]}
    assert left_out_lines(doc) == ["PARTIAL m/a: not run here: speed, memory, stability, stress, fallback, "
                                   "robustness, security (a subset run certifies nothing)"]


def test_the_exit_status_is_zero_only_when_every_candidate_is_certified() -> None:
    assert exit_status(0, results(entries("m/a", EVERY_PASS))) == 0
    assert exit_status(0, results(entries("m/a", {"accuracy": PASS}))) == EXIT_NOT_CERTIFIED
    unevaluated = entries("m/a", dict.fromkeys(GATE_NAMES, NOT_EVALUATED))
    assert exit_status(0, results(unevaluated)) == EXIT_NOTHING_EVALUATED
    assert exit_status(1, results(entries("m/a", {"accuracy": FAIL}))) == 1  # pytest's own codes stand
    assert exit_status(2, results(entries("m/a", {"accuracy": PASS}), complete=False)) == 2
    assert len({0, 1, 2, EXIT_NOT_CERTIFIED, EXIT_NOTHING_EVALUATED, 3, 4, 5}) == 8  # distinct from pytest's


def test_a_candidate_an_interrupted_run_never_reached_is_incomplete_not_absent() -> None:
    required = {"m/a": ["accuracy"], "m/b": ["accuracy"]}
    reached = entries("m/a", {"accuracy": PASS})
    assert candidate_verdicts(reached, required, complete=False) == {"m/a": CERTIFIED, "m/b": INCOMPLETE}
    assert candidate_verdicts(reached, required, complete=True) == {"m/a": CERTIFIED}  # m/b was not selected


def test_an_interrupted_run_certifies_no_subject(tmp_path: Any) -> None:
    from certify.report.certificate import build_statement
    from tests.helpers.certificates import all_pass, results_doc

    done = results_doc(tmp_path, all_pass("good"))
    assert [s["name"] for s in build_statement(done, [])["subject"]] == ["m/good"]
    stopped = results_doc(tmp_path, all_pass("good"), complete=False)
    statement = build_statement(stopped, [])
    assert statement["subject"] == [] and statement["predicate"]["verdict"] == INCOMPLETE
