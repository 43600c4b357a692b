"""certify_run never loses a run's results to its report: a renderer that fails leaves results.json and the
signed certificate (or the statement) in place, names the file it could not write, and never leaves a stale one;
non-finite figures in the evidence (a metric that returned nan, a latency of inf) render instead of crashing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from certify import attest
from certify.report.publish import CERTIFICATE_FILE, HTML_FILE, STATEMENT_FILE, SUMMARY_FILE, certify_run, rerender
from tests.helpers.report_run import write_run


def broken(*args: Any) -> str:
    raise ValueError("cannot convert float NaN to integer\n  at charts.py:246")


def test_a_report_that_cannot_render_leaves_the_results_and_the_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    (run_dir / HTML_FILE).write_text("an older run's report")  # must not survive as if it were this run's
    monkeypatch.setattr("certify.report.html.render_html", broken)
    signature = certify_run(run_dir, attest.dev_signer())
    assert signature["signed"] and (run_dir / CERTIFICATE_FILE).is_file() and (run_dir / "results.json").is_file()
    assert signature["render_errors"] == {HTML_FILE: "ValueError: cannot convert float NaN to integer"}
    assert not (run_dir / HTML_FILE).exists()
    assert (run_dir / SUMMARY_FILE).is_file()  # the other output is still written
    assert rerender(run_dir)["render_errors"] == {HTML_FILE: "ValueError: cannot convert float NaN to integer"}


def test_an_unsigned_run_keeps_its_statement_when_the_summary_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir, complete=False)
    monkeypatch.setattr("certify.report.markdown.summary", broken)
    signature = certify_run(run_dir, attest.dev_signer())
    assert not signature["signed"] and (run_dir / STATEMENT_FILE).is_file()
    assert set(signature["render_errors"]) == {SUMMARY_FILE} and (run_dir / HTML_FILE).is_file()


def poisoned(record: dict[str, Any]) -> dict[str, Any]:
    measurement = dict(record["measurement"])
    for key, value in measurement.items():
        if isinstance(value, float):
            measurement[key] = math.nan
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            measurement[key] = [math.inf, *value[1:]]
    return {**record, "measurement": measurement}


def test_non_finite_figures_in_the_evidence_still_render(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    lines = (run_dir / "evidence.jsonl").read_text().splitlines()
    (run_dir / "evidence.jsonl").write_text("".join(json.dumps(poisoned(json.loads(x))) + "\n" for x in lines))
    signature = certify_run(run_dir, attest.dev_signer())
    assert signature["render_errors"] == {}
    assert "<html" in (run_dir / HTML_FILE).read_text().lower()

