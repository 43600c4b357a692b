"""Parent side of a measurement worker: start it, send requests, turn deaths and hangs into errors."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from certify import errors
from certify.measure.worker import HEADER, write_message
from certify.plan.types import ModelRef

ERROR_TYPES: dict[str, type[errors.CertifyError]] = {
    "ModelError": errors.ModelError,
    "BackendUnavailable": errors.BackendUnavailable,
    "CertifyError": errors.CertifyError,
}


class WorkerClient:
    """One worker process. Use as a context manager; every call has a deadline."""

    def __init__(self, role: str, ref: ModelRef, timeout_s: float) -> None:
        self.role = role
        self.ref = ref
        self.label = f"{role} {ref.name!r}"
        self.timeout_s = timeout_s
        self._waiting_s = timeout_s  # the deadline of the call in progress (a call may pass its own)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the worker process (here: a local child; ``certify.lab.remote`` starts it on a board)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        return subprocess.Popen(
            [sys.executable, "-m", "certify.measure.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )

    def call(self, command: str, timeout_s: float | None = None, **args: Any) -> Any:
        """Run one request; any failure is raised as a CertifyError tagged with this worker's role."""
        try:
            return self._call(command, timeout_s, **args)
        except errors.CertifyError as exc:
            exc.role = self.role
            raise

    def _call(self, command: str, timeout_s: float | None, **args: Any) -> Any:
        assert self._proc.stdin is not None
        try:
            write_message(self._proc.stdin, (command, args))
        except (BrokenPipeError, OSError):
            raise self._death(command) from None
        self._waiting_s = timeout_s or self.timeout_s
        answer = self._read(command, time.monotonic() + self._waiting_s)
        if answer[0] == "error":
            raise ERROR_TYPES.get(answer[1], errors.ModelError)(answer[2], hint=answer[3])
        return answer[1]

    def _read(self, command: str, deadline: float) -> Any:
        import pickle

        header = self._read_exact(HEADER.size, command, deadline)
        (size,) = HEADER.unpack(header)
        return pickle.loads(self._read_exact(size, command, deadline))

    def _read_exact(self, size: int, command: str, deadline: float) -> bytes:
        assert self._proc.stdout is not None
        fd, chunks, got = self._proc.stdout.fileno(), [], 0
        while got < size:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                self.kill()
                raise errors.WorkerCrashed(
                    f"worker for {self.label} did not answer within {self._waiting_s:.0f} s during {command!r}; "
                    "it was killed", hint="raise measure.timeout_s in the plan if the model is just slow")
            chunk = os.read(fd, min(size - got, 1 << 20))
            if not chunk:
                raise self._death(command)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _death(self, command: str) -> errors.WorkerCrashed:
        code = self._proc.wait(timeout=30)
        cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        hint = "the native runtime crashed: run the model alone to reproduce; the other candidates' results are kept"
        if code == -signal.SIGKILL:
            cause += " (killed from outside: most likely the kernel's out-of-memory killer, see `dmesg`)"
            hint = ("the model needed more memory than the host had free: set measure.memory_limit_mib so a "
                    "runaway model fails alone with MemoryError, or measure on a host with more memory")
        return errors.WorkerCrashed(f"worker for {self.label} died with {cause} during {command!r}"
                                    f"{self._stderr_tail()}", hint=hint)

    def _stderr_tail(self, lines: int = 6) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
        return ("\n  worker stderr:\n    " + "\n    ".join(tail)) if tail else ""

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(errors.CertifyError):
                self._call("exit", timeout_s=10)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


Spawner = Callable[[str, ModelRef, float], WorkerClient]
_SPAWNER: ContextVar[Spawner | None] = ContextVar("certify_worker_spawner", default=None)


def open_worker(role: str, ref: ModelRef, timeout_s: float) -> WorkerClient:
    """A fresh measurement worker for ``ref`` where the case being measured runs: a local child process, or, while
    ``workers_from`` is in force (a case routed to a board of the lab), a worker on that board."""
    spawner = _SPAWNER.get()
    return spawner(role, ref, timeout_s) if spawner is not None else WorkerClient(role, ref, timeout_s)


def measuring_remotely() -> bool:
    """True while the workers ``open_worker`` starts run on another machine (a board): host-side figures (noise,
    energy) must then come from that machine, not from this one."""
    return _SPAWNER.get() is not None


@contextlib.contextmanager
def workers_from(spawner: Spawner) -> Iterator[None]:
    """Within the block, ``open_worker`` starts its workers with ``spawner`` (``certify.lab`` passes one that
    starts them on a board)."""
    token = _SPAWNER.set(spawner)
    try:
        yield
    finally:
        _SPAWNER.reset(token)
