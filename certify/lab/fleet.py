"""The boards one session certifies on: what each is (detected on it), which cases go to which, and measuring on one.

A ``LabBoard`` is one board of the lab as the session found it: its connection (``Board``), its labgrid place and
tags, the wait for its reservation, and its ``Host`` **detected on the board** by a worker there (markers,
fingerprint, devices), with the board's package versions. A board whose detected hardware contradicts its labgrid
tags (``platform=arm`` on an x86 machine, ``device=npu`` where none is found) is refused with both shown: it measures
nothing, and the cases that only it could have served say so.

``Lab.route(candidate)`` is where a candidate's cases run: every board whose detected platforms serve the
candidate's ``platforms`` (any board when it names none), narrowed to those with its device (GPU, NPU) when any
has one. ``Lab.measuring_on(name)`` is one case measured on a
board: the board's own host-wide lock is held (a flock on the board, taken over SSH, so two sessions or two
pytest-xdist workers never measure on one board at once; the wait is returned), and every worker the case starts
(``certify.measure.client.open_worker``) runs on the board.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from certify.errors import CertifyError
from certify.hardware import Host
from certify.lab.board import Board, BoardError
from certify.lab.remote import RemoteWorkerClient
from certify.measure.client import WorkerClient, workers_from
from certify.plan.types import ModelRef

LOCK_WAIT_S = 3600.0  # how long a case waits for a board another session is measuring on
DETECT_TIMEOUT_S = 300.0  # the first contact ships the harness (about 1 MB) and imports it on the board
# Run on the board: take the board-wide measurement lock, say so, hold it until the controller closes the session.
LOCK_SCRIPT = ("import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
               "print('held', flush=True); sys.stdin.read()")
TAG_KEYS = ("platform", "device")  # the labgrid tags the harness checks against what it detects on the board
FACTS_REF = ModelRef(name="board facts", path=None, framework="none")  # names the worker that answers "host"


class BoardLost(BoardError):
    """A board stopped answering while a case measured on it (sshd gone, network down, board off)."""


@dataclass(eq=False)
class LabBoard:
    """One board as this session found it."""

    name: str
    board: Board
    place: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    wait_s: float = 0.0  # the wait for the labgrid reservation and acquisition of its place
    host: Host | None = None
    packages: dict[str, str] = field(default_factory=dict)
    python_version: str = ""
    refused: str = ""  # why it measures nothing ('' when it does)
    lost: str = ""  # why it stopped measuring mid-run ('' while it answers)

    def facts(self) -> dict[str, Any]:
        """The board as the evidence, results and certificate show it."""
        return {"name": self.name, "place": self.place, "tags": dict(self.tags),
                "address": f"{self.board.user}@{self.board.host}:{self.board.port}",
                "fingerprint": self.host.fingerprint if self.host else None,
                "host": self.host.to_dict() if self.host else None, "packages": dict(self.packages),
                "python_version": self.python_version, "wait_s": round(self.wait_s, 3), "refused": self.refused,
                "lost": self.lost}

    def describe(self) -> str:
        where = f"place {self.place!r}, " if self.place else ""
        return f"{self.name} ({where}{self.host.describe() if self.host else 'not detected'})"


def detect(lab_board: LabBoard, timeout_s: float = DETECT_TIMEOUT_S) -> LabBoard:
    """``lab_board`` with its host, packages and Python as a worker on the board reports them, refused when that
    contradicts its tags. A board that cannot be reached, or whose Python cannot run the worker, is refused too (with
    the reason): the session goes on without it."""
    try:
        with RemoteWorkerClient("host", FACTS_REF, timeout_s, lab_board.board) as worker:
            answer = worker.call("host")
    except CertifyError as exc:  # unreachable, or its Python cannot run the worker (a missing numpy, say)
        lab_board.refused = f"its worker could not answer: {exc.message}"
        return lab_board
    lab_board.host, lab_board.packages = answer["host"], dict(answer["packages"])
    lab_board.python_version = str(answer["python_version"])
    lab_board.refused = contradiction(lab_board.tags, lab_board.host)
    return lab_board


def contradiction(tags: dict[str, str], host: Host) -> str:
    """'' when the board's labgrid tags agree with its detected hardware, else both, side by side. Tags
    ``platform`` (a platform marker: intel, amd, nvidia, apple, arm, qualcomm) and ``device`` (cpu, gpu, npu) are
    checked; other tags are the lab's own business."""
    found = {"platform": host.platforms, "device": host.devices}
    wrong = [f"tag {key}={tags[key]} but detected {key}s: {', '.join(found[key]) or 'none'}"
             for key in TAG_KEYS if tags.get(key) and tags[key] not in found[key]]
    if not wrong:
        return ""
    return (f"its labgrid tags contradict the hardware detected on it: {'; '.join(wrong)} ({host.describe()}); "
            "fix the place's tags (labgrid-client set-tags) or the board")


class Lab:
    """The session's boards by name. Shared by every case; remembers which boards were lost."""

    def __init__(self, boards: list[LabBoard]) -> None:
        self.boards = {b.name: b for b in boards}

    def usable(self) -> list[LabBoard]:
        return [b for b in self.boards.values() if not b.refused and b.host is not None]

    def route(self, candidate: ModelRef) -> tuple[list[LabBoard], str]:
        """The boards ``candidate``'s cases run on, and, when there is none, why (each board with what it is): the
        boards whose detected platforms serve the candidate's ``platforms`` (every board when it names none), and of
        those, the ones that have its device (``device = "npu"`` -> boards with an NPU) when any has it."""
        wanted, device = set(candidate.platforms), candidate.device_class
        chosen = [b for b in self.usable() if b.host is not None and (not wanted or wanted & set(b.host.platforms))]
        with_device = [b for b in chosen if b.host is not None and device in b.host.devices]
        if with_device:  # a GPU/NPU candidate goes to the boards that have one
            return with_device, ""
        if chosen:  # none has it: each platform's boards judge it (NOT EVALUATED there, or its fallback certified)
            return chosen, ""
        seen = "; ".join(f"{b.describe()}" + (f" REFUSED: {b.refused}" if b.refused else "")
                         for b in self.boards.values()) or "none"
        want = f"platform {'/'.join(candidate.platforms)}" if wanted else "any platform"
        return [], f"no board of the lab serves {want}: boards: {seen}"

    def cannot_run(self, name: str, ref: ModelRef) -> str:
        """'' when ``ref`` can run on board ``name`` (asked of a worker there), else why not. The runner asks once
        per model and board (``CertificationRun.cannot_run`` is cached)."""
        with RemoteWorkerClient("host", ref, DETECT_TIMEOUT_S, self.boards[name].board) as worker:
            return str(worker.call("can_run", ref=ref))

    @contextlib.contextmanager
    def workers_on(self, name: str, timeout_s: float) -> Iterator[None]:
        """Within the block, every worker opened (``certify.measure.client.open_worker``) starts on board ``name``."""
        board = self.boards[name].board

        def spawn(role: str, ref: ModelRef, deadline_s: float) -> WorkerClient:
            return RemoteWorkerClient(role, ref, deadline_s or timeout_s, board)

        with workers_from(spawn):
            yield

    @contextlib.contextmanager
    def measuring_on(self, name: str, timeout_s: float) -> Iterator[float]:
        """One case measured on board ``name``: the board's host-wide lock held (yields the wait for it), every
        worker the case opens started there."""
        with board_lock(self.boards[name].board) as waited, self.workers_on(name, timeout_s):
            yield waited

    def answers(self, name: str) -> str:
        """'' when board ``name`` still answers over SSH, else why not (a probe after a case that failed there)."""
        board = self.boards[name].board
        try:
            board.run("true", timeout_s=board.connect_timeout_s + 5)
        except BoardError as exc:
            return exc.message
        return ""

    def mark_lost(self, name: str, reason: str) -> None:
        self.boards[name].lost = reason


@contextlib.contextmanager
def board_lock(board: Board, wait_s: float = LOCK_WAIT_S) -> Iterator[float]:
    """The board's host-wide measurement lock (an flock on ``<cache>/measure.lock`` on the board, held by a Python
    on the board for as long as this SSH session is open: a controller that dies drops it). Yields the seconds
    waited; a board that does not answer is ``BoardLost``."""
    path = f"{board.cache_dir}/measure.lock"
    command = (f"mkdir -p {shlex.quote(board.cache_dir)} && {shlex.quote(board.python)} -c "
               f"{shlex.quote(LOCK_SCRIPT)} {shlex.quote(path)}")
    started = time.monotonic()
    proc = subprocess.Popen(board.ssh_argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        if _read_line(proc, started + wait_s) != b"held\n":
            proc.kill()
            error = (proc.communicate(timeout=30)[1] or b"").decode("utf-8", "replace").strip()
            raise BoardLost(f"{board.where} did not grant its measurement lock within {wait_s:.0f} s"
                            + (f": {error.splitlines()[-1]}" if error else ""),
                            hint="check that the board is up; another session may be measuring on it")
        yield time.monotonic() - started
    finally:
        _release(proc)


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd, line = proc.stdout.fileno(), b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            break
        line += chunk
    return line


def _release(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
