"""One measurement lock per host: two certification sessions started together, each with its own project and
report folder, never overlap a timed window (speed, memory, stability and stress hold the lock exclusively), and
each record says how long it waited for the lock.

Both sessions get the same ``CERTIFY_LOCK_DIR`` (this test's folder): that is what makes them "the same host"
here, without queueing behind whatever else runs on the real host's lock."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certify.cli import suites_dir
from certify.evidence import LOCK_DIR_ENV
from tests.helpers.models import PLAN, candidate, tiny_project

pytest.importorskip("onnxruntime")


def start(folder: Path, lock_dir: Path) -> subprocess.Popen[str]:
    plan = PLAN.replace("threads = 1", 'threads = 1\nnoise = "warn"') + candidate("int8", "int8.onnx")
    (folder / "certify.toml").write_text(plan)  # noise = warn: the other session's start-up is not this one's noise
    cmd = [sys.executable, "-m", "pytest", str(suites_dir()), "--certify-plan", str(folder / "certify.toml"),
           "--certify-report-dir", str(folder), "--certify-run-id", "run", "-p", "no:cacheprovider",
           "--rootdir", str(folder), "-m", "speed or memory or stability"]
    return subprocess.Popen(cmd, cwd=folder, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, LOCK_DIR_ENV: str(lock_dir)})


def test_two_sessions_never_measure_at_the_same_time(tmp_path: Path) -> None:
    folders = [tmp_path / name for name in ("first", "second")]
    for folder in folders:
        folder.mkdir()
        tiny_project(folder)
    sessions = [start(folder, tmp_path / "locks") for folder in folders]
    outputs = [session.communicate(timeout=900)[0] for session in sessions]
    windows: list[tuple[float, float, str]] = []
    for folder, session, output in zip(folders, sessions, outputs, strict=True):
        assert session.returncode in (0, 1, 6), output[-3000:]
        records = [json.loads(x) for x in (folder / "run" / "evidence.jsonl").read_text().splitlines()]
        timed = [r for r in records if r["serialized"]]
        assert {r["gate"] for r in timed} == {"speed", "memory", "stability"}, output[-3000:]
        assert all(r["lock_wait_s"] >= 0 for r in timed)
        windows += [(r["started"], r["finished"], f"{folder.name}/{r['gate']}") for r in timed]
    windows.sort()
    for (_, end, name), (start_next, _, next_name) in itertools.pairwise(windows):
        assert start_next >= end, f"{next_name} started {end - start_next:.3f} s before {name} ended"
    assert (tmp_path / "locks" / "measure.lock").exists()
