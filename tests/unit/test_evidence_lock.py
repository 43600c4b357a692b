"""certify.evidence's host-wide measurement lock: one file for every run on the host whatever its report folder,
shared and exclusive holders, a writer that shared holders cannot starve, and a private default folder.

Every test points ``CERTIFY_LOCK_DIR`` at its own folder (the host's real lock is other sessions' business), and
orders events by what each process saw, never by how long something took."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from certify.evidence import (
    LOCK_DIR_ENV,
    EvidenceStore,
    measurement_lock,
    measurement_lock_path,
    private_dir,
)

CTX = multiprocessing.get_context("fork")
WAIT_S = 60.0  # only ever reached when something is broken: the events below come as soon as they can


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_the_lock_path_is_one_per_host_not_per_run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)
    assert measurement_lock_path() == Path(f"/tmp/edge-certify-{os.getuid()}/measure.lock")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a per-job temp folder does not split the lock
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert measurement_lock_path() == Path(f"/tmp/edge-certify-{os.getuid()}/measure.lock")
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "mine"))
    assert measurement_lock_path() == tmp_path / "mine" / "measure.lock"


def test_the_default_folder_is_private_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "edge-certify-1")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    assert private_dir(made) == made  # already there: fine
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "swapped").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match=f"not a directory owned by this user.*set {LOCK_DIR_ENV}"):
        private_dir(tmp_path / "swapped")


def _try_exclusive(lock: str, queue: Any) -> None:
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            queue.put("blocked")
        else:
            queue.put("acquired")


def _store_holds(run_dir: str, exclusive: bool, queue: Any, release: Any) -> None:
    with EvidenceStore(Path(run_dir)).measurement_lock(exclusive=exclusive) as waited:
        queue.put(("held", time.monotonic(), waited))
        release.wait(WAIT_S)
    queue.put(("released", time.monotonic(), 0.0))


def test_stores_of_different_run_folders_take_the_same_lock(lock_dir: Path, tmp_path: Path) -> None:
    queue, release = CTX.Queue(), CTX.Event()
    with EvidenceStore(tmp_path / "run-a").measurement_lock(exclusive=True) as waited:
        assert waited >= 0 and measurement_lock_path().exists()
        probe = CTX.Process(target=_try_exclusive, args=(str(measurement_lock_path()), queue))
        probe.start()
        assert queue.get(timeout=WAIT_S) == "blocked"
        probe.join(WAIT_S)
        other = CTX.Process(target=_store_holds, args=(str(tmp_path / "run-b"), False, queue, release))
        other.start()
        time.sleep(0.2)  # (the other run cannot get in meanwhile; a slow host only makes this check weaker)
        assert queue.empty()
        let_go = time.monotonic()
    kind, held_at, other_waited = queue.get(timeout=WAIT_S)
    release.set()
    other.join(WAIT_S)
    assert kind == "held" and held_at >= let_go and other_waited > 0


def _turnstile_taken(lock: Path) -> bool:
    with open(lock.with_name(lock.name + ".queue"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_waiting_writer_goes_before_later_shared_requests(lock_dir: Path, tmp_path: Path) -> None:
    lock = measurement_lock_path()
    first_q, first_release = CTX.Queue(), CTX.Event()
    first = CTX.Process(target=_store_holds, args=(str(tmp_path / "r1"), False, first_q, first_release))
    first.start()
    assert first_q.get(timeout=WAIT_S)[0] == "held"
    writer_q, writer_release = CTX.Queue(), CTX.Event()
    writer = CTX.Process(target=_store_holds, args=(str(tmp_path / "w"), True, writer_q, writer_release))
    writer.start()
    _until(lambda: _turnstile_taken(lock))  # the writer waits for the shared holder, keeping the turnstile
    late_q, late_release = CTX.Queue(), CTX.Event()
    late = CTX.Process(target=_store_holds, args=(str(tmp_path / "r2"), False, late_q, late_release))
    late.start()
    time.sleep(0.2)
    assert late_q.empty() and writer_q.empty()  # a shared request does not jump the queued writer
    first_release.set()
    kind, writer_at, _ = writer_q.get(timeout=WAIT_S)
    assert kind == "held"
    time.sleep(0.2)
    assert late_q.empty()  # still excluded by the writer
    writer_release.set()
    assert writer_q.get(timeout=WAIT_S)[0] == "released"
    kind, late_at, late_waited = late_q.get(timeout=WAIT_S)
    late_release.set()
    for proc in (first, writer, late):
        proc.join(WAIT_S)
    assert kind == "held" and late_at > writer_at and late_waited > 0


def test_shared_holders_of_different_runs_hold_the_lock_together(lock_dir: Path, tmp_path: Path) -> None:
    queue, release = CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_store_holds, args=(str(tmp_path / f"run-{i}"), False, queue, release))
             for i in range(2)]
    for proc in procs:
        proc.start()
    seen = [queue.get(timeout=WAIT_S)[0] for _ in procs]  # both hold it before either is let go
    release.set()
    for proc in procs:
        proc.join(WAIT_S)
    assert seen == ["held", "held"]


def test_a_nested_shared_request_does_not_wait_for_a_queued_writer(lock_dir: Path, tmp_path: Path) -> None:
    lock = measurement_lock_path()
    writer_q, writer_release = CTX.Queue(), CTX.Event()
    with measurement_lock(lock, exclusive=False):
        writer = CTX.Process(target=_store_holds, args=(str(tmp_path / "w"), True, writer_q, writer_release))
        writer.start()
        _until(lambda: _turnstile_taken(lock))
        got = threading.Event()

        def nested() -> None:
            with measurement_lock(lock, exclusive=False):
                got.set()

        thread = threading.Thread(target=nested, daemon=True)
        thread.start()
        assert got.wait(WAIT_S), "a nested shared request deadlocked behind the writer waiting for this process"
        thread.join(WAIT_S)
    assert writer_q.get(timeout=WAIT_S)[0] == "held"
    writer_release.set()
    writer.join(WAIT_S)
