"""A plan certified across a lab of two boards from one pytest session, as a team runs it: a labgrid coordinator
and exporter, two places tagged with what the boards are, ``pytest --lg-env lab.yaml -n 2 --dist loadgroup``.

The boards are sshd instances in network namespaces made by the test (``tests.helpers.netns_board``), published by
a real ``labgrid-exporter`` and held through a real ``labgrid-coordinator`` (``tests.helpers.labgrid_lab``). One
board is killed (every process in its namespace, sshd included) while it measures: its cases ERROR with the
reason, the other board's are intact, and ``certify verify --board`` accepts the one and refuses the other.
``--certify-resume`` then measures the lost board's cases once it is back, and the fleet certificate certifies
the model on both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from certify.hardware import detect_host
from certify.lab.fleet import LOCK_SCRIPT
from certify.report.session import EXIT_NOT_CERTIFIED
from tests.acceptance.conftest import Outcome, run_certification
from tests.helpers.labgrid_lab import LabgridLab
from tests.helpers.labgrid_lab import unavailable as lab_unavailable
from tests.helpers.models import ACCURACY_ONLY, PLAN, candidate, tiny_project
from tests.helpers.netns_board import NamespaceBoard

pytest.importorskip("onnxruntime")
pytest.importorskip("xdist")
WHY_NOT = lab_unavailable()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"no labgrid lab of namespace boards here: {WHY_NOT}")
RELEASE_POLICY = 'policy = { name = "edge-default", required_gates = ["accuracy"] }\n'
GATES = "accuracy or robustness or security"  # three cases per board; the candidate's policy requires accuracy
PLATFORM = (detect_host().platforms or ("cpu",))[0]  # what the namespace boards (this machine) detect as


@dataclass
class Lab:
    folder: Path
    env: Path
    boards: dict[str, NamespaceBoard]
    labgrid: LabgridLab


def lab_env(labgrid: LabgridLab, folder: Path) -> Path:
    """labgrid's env file for the lab, each target told where the board's Python and the harness's cache are."""
    env = yaml.safe_load(labgrid.env_file.read_text())
    for name, target in env["targets"].items():
        target["options"] = {"certify_python": sys.executable, "certify_cache": str(folder / f"cache-{name}")}
    path = folder / "lab.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tiny_project(tmp_path_factory.mktemp("lab"))
    (folder / "certify.toml").write_text(PLAN + candidate("int8", "int8.onnx", extra=ACCURACY_ONLY))
    (folder / "accuracy-release.toml").write_text(RELEASE_POLICY)
    boards = {name: NamespaceBoard(folder / f"ns-{name}", index=i + 4) for i, name in enumerate(("nuc", "pi"))}
    labgrid = LabgridLab(folder / "labgrid", {}, tags={name: {"platform": PLATFORM} for name in boards})
    try:
        for board in boards.values():
            board.start()
        labgrid.boards = boards
        labgrid.start()
        yield Lab(folder, lab_env(labgrid, folder), boards, labgrid)
    finally:
        labgrid.stop()
        for board in boards.values():
            board.stop()


def certify_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certify.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


def kill_when_measuring(board: NamespaceBoard, stop: threading.Event, killed: list[float]) -> None:
    """Kill every process of ``board`` (sshd and the sessions) once a case holds its measurement lock there."""
    while not stop.is_set():
        if board.processes(LOCK_SCRIPT):
            board.kill_all()
            killed.append(time.time())
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fleet_run(lab: Lab) -> Outcome:
    """The plan across both boards, two xdist workers (one per board); board 'pi' killed while it measures."""
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_when_measuring, args=(lab.boards["pi"], stop, killed), daemon=True)
    watcher.start()
    try:
        outcome = run_certification(lab.folder, lab.folder / "certify.toml", "-k", GATES, "--lg-env", str(lab.env),
                                    "-n", "2", "--dist", "loadgroup", "--certify-dev-key")
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert killed, "board 'pi' never measured: " + outcome.stdout[-3000:]
    return outcome


def bring_back(board: NamespaceBoard) -> None:
    """The killed board is back: its sshd starts again (once)."""
    if board.sshd is None or board.sshd.poll() is not None:
        board._start_sshd()


def entries(outcome: Outcome, board: str) -> dict[str, dict[str, object]]:
    return {e["gate"]: e["result"] for e in outcome.results["cases"] if e["board"] == board}


def test_each_board_measures_its_cases_and_the_lost_one_errors_alone(fleet_run: Outcome) -> None:
    out = fleet_run.stdout + fleet_run.stderr
    assert fleet_run.results, out[-3000:]
    nuc, pi = entries(fleet_run, "nuc"), entries(fleet_run, "pi")
    assert set(nuc) == set(pi) == {"accuracy", "robustness", "security"}, out[-3000:]
    assert {r["verdict"] for r in nuc.values()} == {"pass"}, nuc
    assert {r["verdict"] for r in pi.values()} == {"error"}, pi
    assert all("board 'pi' was lost" in str(r["reason"]) and r["details"]["board_lost"] == "pi" for r in pi.values())
    assert fleet_run.results["candidates"] == {"tiny/int8@nuc": "certified", "tiny/int8@pi": "not_certified"}
    boards = {b["name"]: b for b in fleet_run.results["boards"]}
    assert boards["pi"]["lost"] and not boards["nuc"]["lost"] and not boards["nuc"]["refused"]
    assert boards["nuc"]["place"] == "nuc" and boards["nuc"]["tags"] == {"platform": PLATFORM}
    assert boards["nuc"]["fingerprint"] == detect_host().fingerprint  # detected on the board (this machine)


def test_the_boards_measure_in_parallel_each_under_its_own_lock(lab: Lab, fleet_run: Outcome) -> None:
    records = [json.loads(line) for line in (fleet_run.run_dir / "evidence.jsonl").read_text().splitlines()]
    by_board = {r["board"]: r for r in records if r["gate"] == "accuracy"}
    assert set(by_board) == {"nuc", "pi"}
    nuc = [r for r in records if r["board"] == "nuc"]
    assert all(r["serialized"] and r["board_facts"]["name"] == "nuc" and r["lock_wait_s"] >= 0 for r in nuc)
    assert len({r["nodeid"].split("@")[-1] for r in records}) >= 2  # xdist_group: one group per board
    assert (lab.folder / "cache-nuc" / "measure.lock").exists() and (lab.folder / "cache-nuc" / "models").is_dir()


def test_one_signed_certificate_verifies_per_board(lab: Lab, fleet_run: Outcome) -> None:
    cert = fleet_run.run_dir / "certificate.json"
    key = fleet_run.run_dir / "dev-key.pub"
    common = ["verify", str(cert), "--key", str(key), "--allow-dev-key", "--policy", "accuracy-release.toml"]
    accepted = certify_cli(*common, "--board", "nuc", cwd=lab.folder)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = certify_cli(*common, "--board", "pi", cwd=lab.folder)
    assert refused.returncode != 0 and "was lost" in refused.stdout + refused.stderr
    on_platform = certify_cli(*common, "--model", str(lab.folder / "int8.onnx"), "--host-marker", PLATFORM,
                              cwd=lab.folder)
    assert on_platform.returncode == 0, on_platform.stdout + on_platform.stderr
    html = (fleet_run.run_dir / "report.html").read_text()
    assert "tiny/int8" in html and "pi" in html and "nuc" in html


def test_resume_measures_the_lost_boards_cases_once_it_is_back(lab: Lab, fleet_run: Outcome) -> None:
    bring_back(lab.boards["pi"])
    resumed = run_certification(lab.folder, lab.folder / "certify.toml", "-k", GATES, "--lg-env", str(lab.env),
                                "--certify-resume", str(fleet_run.run_dir), "--certify-dev-key")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert resumed.results["candidates"] == {"tiny/int8@nuc": "certified", "tiny/int8@pi": "certified"}, out[-3000:]
    records = [json.loads(line) for line in (fleet_run.run_dir / "evidence.jsonl").read_text().splitlines()]
    nuc_accuracy = [r for r in records if r["board"] == "nuc" and r["gate"] == "accuracy"]
    assert len(nuc_accuracy) == 1  # the intact board's evidence was kept, not measured again


def test_a_board_whose_tags_contradict_its_hardware_is_refused_with_both_shown(lab: Lab, fleet_run: Outcome) -> None:
    wrong = "arm" if PLATFORM != "arm" else "intel"
    lab.labgrid.client("-p", "pi", "set-tags", f"platform={wrong}")
    try:
        outcome = run_certification(lab.folder, lab.folder / "certify.toml", "-k", "security", "--lg-env",
                                    str(lab.env), "--certify-run-id", "tags")
    finally:
        lab.labgrid.client("-p", "pi", "set-tags", f"platform={PLATFORM}")
    out, results = outcome.stdout + outcome.stderr, json.loads((lab.folder / "tags" / "results.json").read_text())
    boards = {b["name"]: b for b in results["boards"]}
    refused = boards["pi"]["refused"]
    assert f"tag platform={wrong} but detected platforms: {PLATFORM}" in refused, out[-3000:]
    assert "REFUSED" in out and not boards["nuc"]["refused"]
    assert {e["board"] for e in results["cases"]} == {"nuc"}  # pi measured nothing
    assert results["candidates"] == {"tiny/int8@nuc": "partial"}


USER_TEST = '''
import numpy as np
import pytest


@pytest.mark.speed
def test_median_latency(certify_case, certify_context, certify_model, certify_record):
    certify_model.call("feeds", key="x", arrays=certify_context.speed_feeds())
    times_ns = certify_model.call("run", key="x", iterations=50)
    certify_context.measurement["harness"] = certify_model.call("host")["harness"]
    certify_record("median latency", float(np.median(times_ns)) / 1e6, 1000.0, unit="ms", higher_is_better=False)
'''


def test_a_projects_own_test_measures_on_the_board_too(lab: Lab, fleet_run: Outcome) -> None:
    """``certify_model`` in a user's test function: the worker it yields runs on the case's board (the shipped
    harness answers), under that board's lock."""
    (lab.folder / "test_mine.py").write_text(USER_TEST)
    done = subprocess.run([sys.executable, "-m", "pytest", "test_mine.py", "--certify-plan", "certify.toml",
                           "--lg-env", str(lab.env), "--certify-run-id", "mine", "-p", "no:cacheprovider"],
                          cwd=lab.folder, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == EXIT_NOT_CERTIFIED and "2 passed" in done.stdout, done.stdout[-3000:]  # a subset
    records = [json.loads(line) for line in (lab.folder / "reports" / "mine" / "evidence.jsonl").read_text()
               .splitlines()]
    assert sorted(r["case"] for r in records) == ["tiny/int8@nuc", "tiny/int8@pi"]
    for record in records:
        cache = str(lab.folder / f"cache-{record['board']}")
        assert record["measurement"]["harness"].startswith(f"{cache}/harness/"), record["measurement"]


def test_two_boards_measure_at_the_same_time_from_one_session(lab: Lab, fleet_run: Outcome) -> None:
    """With both boards up, ``-n 2 --dist loadgroup`` gives each board its own xdist worker: their measurement
    windows (each case's time under its board's lock) overlap."""
    bring_back(lab.boards["pi"])
    done = run_certification(lab.folder, lab.folder / "certify.toml", "-k", "accuracy or robustness", "--lg-env",
                             str(lab.env), "-n", "2", "--dist", "loadgroup", "--certify-run-id", "parallel")
    records = [json.loads(line) for line in (lab.folder / "parallel" / "evidence.jsonl").read_text().splitlines()]
    assert {(r["board"], r["result"]["verdict"]) for r in records} == {("nuc", "pass"), ("pi", "pass")}, \
        done.stdout[-3000:]
    windows = {board: (min(r["started"] for r in records if r["board"] == board),
                       max(r["finished"] for r in records if r["board"] == board)) for board in ("nuc", "pi")}
    assert max(w[0] for w in windows.values()) < min(w[1] for w in windows.values()), windows
