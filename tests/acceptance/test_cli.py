"""The console script: ``certify doctor`` describes the host, ``certify run`` gates a release by exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.models import ACCURACY_ONLY, PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")


def certify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certify.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, check=False)


def test_doctor_reports_host_and_backends(tmp_path: Path) -> None:
    done = certify("doctor", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "cpu" in report["host"]["devices"] and report["host"]["fingerprint"].startswith("sha256:")
    assert report["backends"]["onnxruntime"] == "available"
    assert "onnxruntime" in report["packages"]


def test_run_finds_certify_toml_and_exits_by_verdict(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx"))
    subset = certify("run", "-k", "accuracy", cwd=tmp_path)  # edge-default requires all eight gates
    assert subset.returncode == 6, subset.stdout + subset.stderr
    assert "PASS 100.0%" in subset.stdout and "PARTIAL tiny/int8: not run here: speed, memory" in subset.stdout
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx", extra=ACCURACY_ONLY))
    passed = certify("run", "-k", "accuracy", cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "tiny/int8" in passed.stdout and "CERTIFIED" in passed.stdout
    strict = tmp_path / "strict.toml"
    strict.write_text(PLAN + candidate("int8", "int8.onnx", extra="policy = { min_accuracy_retention = 1.01 }"))
    refused = certify("run", "--plan", str(strict), "-k", "accuracy", cwd=tmp_path)
    assert refused.returncode == 1 and "accuracy gate FAIL" in refused.stdout
    assert list((tmp_path / "reports").glob("*/results.json"))


def test_run_with_a_bad_plan_is_a_usage_error(tmp_path: Path) -> None:
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text('policy = "edge-defualt"\n' + PLAN + candidate("int8", "int8.onnx"))
    done = certify("run", cwd=tmp_path)
    assert done.returncode == 4 and "did you mean 'edge-default'" in done.stderr


def test_a_plan_runs_beside_labgrids_pytest_plugin(tmp_path: Path) -> None:
    """labgrid's pytest plugin (loaded by its entry point wherever labgrid is installed, as in a lab) reads
    ``item.fixturenames`` of every item: the plan's cases must carry it, or every case ERRORs at setup."""
    pytest.importorskip("labgrid")
    tiny_project(tmp_path)
    (tmp_path / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx", extra=ACCURACY_ONLY))
    done = certify("run", "-k", "accuracy", cwd=tmp_path)
    assert "labgrid-" in done.stdout  # pytest's plugin line: the plugin was active
    assert done.returncode == 0 and "CERTIFIED" in done.stdout, done.stdout[-3000:]
