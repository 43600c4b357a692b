"""A measurement worker on a board: the same worker and protocol as ``certify.measure.client``, its pipe an SSH
session.

``RemoteWorkerClient(role, ref, timeout_s, board)`` is a ``WorkerClient`` whose process is
``ssh board python3 -m certify.measure.worker``: requests and answers are the same length-prefixed pickles, now
carried over the session's stdin/stdout; the board does all loading and timing (the clock reads sit in the worker's
loop, on the board), so the controller's load and the network reach only the wall time between calls. A
``ModelRef`` sent to it is first shipped to the board's cache by digest (``certify.lab.ship``) and rewritten to its
path there. Deaths and hangs are the local worker's errors, naming the board: the worker's signal or exit status
(reported by a one-line shell wrapper around it on the board), the SSH connection lost (sshd killed, board gone,
network down: ssh's status 255, or no answer within ``alive_interval_s x alive_count``), or the call's deadline.

**The harness ships itself; the board does not install it.** Before the first worker, the controller's own
``certify`` package (pure Python, ~1 MB) is copied by digest to ``<cache>/harness/<sha256>`` and put on the worker's
``PYTHONPATH``. The pickled protocol (``ModelRef``, ``Layout``, errors, worker commands) must be the same code on
both ends, and a certificate must say which code measured: an installed harness on a board drifts from the
controller's (another version, an edit, a stale checkout) and would fail as unpickling errors or, worse, measure
with other code; a copy by digest cannot drift, is re-hashed on the board before each use, and costs one rsync per
harness change. What cannot ship is native: the board needs ``python3`` (3.10+), ``rsync`` and the runtimes it
measures with, installed once by its owner for its platform, e.g.::

    python3 -m pip install numpy psutil onnxruntime        # plus openvino / llama-cpp-python / ... as measured

Trust: answers are unpickled on the controller, so a board is trusted as a local worker is (a board whose root is
hostile can run code in the controller's session). Lab boards are the team's own; do not point this at others'.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from typing import Any

from certify import errors
from certify.lab.board import SSH_LOST, Board
from certify.lab.ship import Shipped, board_ref, harness_tree, ship, ship_arrays, ship_model
from certify.measure.arrays import BoardArray
from certify.measure.client import WorkerClient
from certify.measure.worker import MEMORY_LIMIT_ENV
from certify.plan.types import ModelRef

FORWARDED_ENV = (MEMORY_LIMIT_ENV,)  # the controller's settings the worker reads from its environment
_PID = re.compile(rb"^certify-worker-pgid:(\d+)$", re.M)
_EXIT = re.compile(rb"^certify-worker-exit:(\d+)$", re.M)


def worker_command(board: Board, harness: str) -> str:
    """The shell line the board runs: report the session's process group, run the worker on the shipped harness,
    report its exit status (``128 + n`` for signal ``n``) -- so a dead worker is told apart from a lost board."""
    env = {"PYTHONPATH": harness} | {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
    return (f"echo certify-worker-pgid:$$ >&2; {exports}{shlex.quote(board.python)} -m certify.measure.worker; "
            "echo certify-worker-exit:$? >&2")


class RemoteWorkerClient(WorkerClient):
    """One worker process on ``board``, over SSH. Use as a context manager; every call has a deadline."""

    def __init__(self, role: str, ref: ModelRef, timeout_s: float, board: Board) -> None:
        self.board = board
        self.harness = ship(board, harness_tree())
        self.shipped: dict[str, Shipped] = {}  # model file -> its copy on the board
        self.arrays: dict[str, BoardArray] = {}  # array digest -> its copy on the board
        super().__init__(role, ref, timeout_s)
        self.label = f"{role} {ref.name!r} on {board.where}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.board.ssh_argv(worker_command(self.board, self.harness.root)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def on_board(self, ref: ModelRef) -> ModelRef:
        """``ref`` as the board knows it: its model shipped to the board's cache (once per client)."""
        key = str(ref.file)
        if key not in self.shipped:
            self.shipped[key] = ship_model(self.board, ref)
        return board_ref(ref, self.shipped[key])

    def call(self, command: str, timeout_s: float | None = None, **args: Any) -> Any:
        """As ``WorkerClient.call``; each ``ModelRef`` argument is shipped and sent with its path on the board, and
        each large array of an ``arrays`` argument (a dataset) is sent ahead to the board's cache by digest."""
        try:
            args = {k: self.on_board(v) if isinstance(v, ModelRef) else v for k, v in args.items()}
            if isinstance(args.get("arrays"), dict):
                args["arrays"] = ship_arrays(self.board, args["arrays"], self.arrays)
        except errors.CertifyError as exc:
            exc.role = self.role
            raise
        return super().call(command, timeout_s, **args)

    def _death(self, command: str) -> errors.WorkerCrashed:
        code = self._proc.wait(timeout=30)
        self._stderr.seek(0)
        text = self._stderr.read()
        status = _EXIT.search(text)
        if status is not None:
            return _worker_died(self.label, command, int(status.group(1)), self._remote_tail())
        if code == SSH_LOST:
            return errors.WorkerCrashed(
                f"worker for {self.label} lost its SSH connection during {command!r} (sshd killed, board down or "
                f"unreachable){self._remote_tail()}",
                hint="check the board and its network; its other cases are unaffected, rerun with --certify-resume")
        return errors.WorkerCrashed(f"worker for {self.label} ended with ssh exit status {code} during {command!r}"
                                    f"{self._remote_tail()}", hint="run the worker command on the board to see why")

    def _remote_tail(self, lines: int = 6) -> str:
        self._stderr.seek(0)
        text = _EXIT.sub(b"", _PID.sub(b"", self._stderr.read())).decode("utf-8", "replace")
        tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return ("\n  worker stderr:\n    " + "\n    ".join(tail)) if tail else ""

    def kill(self) -> None:
        """End the worker on the board (its whole process group, by a second connection: a hung worker never reads
        the end of its input), then the local ssh."""
        if self._proc.poll() is None:
            self._stderr.seek(0)
            found = _PID.search(self._stderr.read())
            if found is not None:
                with contextlib.suppress(errors.CertifyError):
                    self.board.run(f"kill -KILL -- -{int(found.group(1))}", timeout_s=15)
        super().kill()


def _worker_died(label: str, command: str, status: int, tail: str) -> errors.WorkerCrashed:
    """The worker on the board ended by itself: ``status`` as its shell reported it (``128 + n``: signal ``n``)."""
    if status > 128 and status - 128 in {s.value for s in signal.Signals}:
        sig = signal.Signals(status - 128)
        cause = f"signal {sig.name}"
        if sig == signal.SIGKILL:
            cause += " (killed from outside: most likely the board's out-of-memory killer, see `dmesg` on the board)"
    else:
        cause = f"exit code {status}"
    return errors.WorkerCrashed(f"worker for {label} died with {cause} during {command!r}{tail}",
                                hint="the native runtime crashed on the board: run the model alone there to reproduce; "
                                     "the other candidates' results are kept")
