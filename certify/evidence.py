"""The run's evidence store under ``reports/<run-id>/``.

- ``evidence.jsonl``: append-only, one JSON record per measured case, each appended under an exclusive
  file lock in a single write (safe with pytest-xdist workers appending at once).
- ``results.json`` and other documents: written atomically (temp file + fsync + rename), so a crash never
  leaves a truncated file that a later step reads as valid.
- ``cache/``: measurements shared by several cases (the baseline's outputs, a paired speed run), computed
  once per run under a per-key lock, so xdist workers do not repeat them.

The measurement lock is host-wide, not per run folder: ``$CERTIFY_LOCK_DIR/measure.lock``, by default
``/tmp/edge-certify-<uid>/measure.lock``, the one file every ``certify run`` and pytest session of this user on
this host takes. Timed gates (speed, memory, stress ...) and recipe builds hold it exclusively, every other
measurement shared, so performance numbers never come from cores busy with another session's work, nor with
another xdist worker's. A fixed path, not ``$TMPDIR`` or ``$XDG_RUNTIME_DIR``: those differ between a login shell,
cron and a CI job of one user, which would split the lock. Exclusive requests queue through a turnstile
(``measure.lock.queue``), so a stream of overlapping shared holders from several sessions cannot starve them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

if TYPE_CHECKING:
    from certify.records import EvidenceRecord

T = TypeVar("T")

EVIDENCE_FILE = "evidence.jsonl"
LOCK_DIR_ENV = "CERTIFY_LOCK_DIR"  # where the host-wide measurement lock lives (a shared mount for containers)
MEASURE_LOCK = "measure.lock"
RESULTS_FILE = "results.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=_jsonable)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool = True) -> Iterator[float]:
    """Hold an flock on ``path``; yields the seconds spent waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measurement_lock_path() -> Path:
    """The host-wide measurement lock: ``$CERTIFY_LOCK_DIR/measure.lock``, else
    ``/tmp/edge-certify-<uid>/measure.lock``."""
    override = os.environ.get(LOCK_DIR_ENV)
    return (Path(override) if override else Path("/tmp") / f"edge-certify-{os.getuid()}") / MEASURE_LOCK


def private_dir(folder: Path) -> Path:
    """``folder``, created 0700 if missing; refused unless it is a real directory owned by this user (in the shared
    ``/tmp``, another user could otherwise hold or swap the lock under us)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{folder} is not a directory owned by this user: it cannot hold the measurement "
                              f"lock; set {LOCK_DIR_ENV} to a directory of yours")
    return folder


_held: dict[int, int] = {}  # measurement locks held now, by process id (a forked child holds none of its own)


@contextlib.contextmanager
def measurement_lock(path: Path, *, exclusive: bool) -> Iterator[float]:
    """Hold the measurement lock ``path`` (exclusive or shared); yields the seconds spent waiting for it.

    Every request passes a turnstile (an exclusive flock on ``path.queue``) held only until it has the lock itself:
    an exclusive request waiting for shared holders to leave keeps the turnstile, so no new shared holder enters
    meanwhile (flock alone grants a shared request at once while others share it, and a writer can wait forever).
    A process already holding the lock asks again without the turnstile (it would otherwise wait for a writer that
    waits for it)."""
    started = time.monotonic()
    if not os.environ.get(LOCK_DIR_ENV):
        private_dir(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".queue"), "a+") as turn, open(path, "a+") as handle:
        pid = os.getpid()
        if not _held.get(pid):
            fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
        _held[pid] = _held.get(pid, 0) + 1
        try:
            yield time.monotonic() - started
        finally:
            _held[pid] -= 1
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class EvidenceStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / EVIDENCE_FILE
        run_dir.mkdir(parents=True, exist_ok=True)

    def append(self, record: EvidenceRecord) -> None:
        line = (json.dumps(record, sort_keys=True, default=_jsonable) + "\n").encode()
        with file_lock(self.run_dir / ".evidence.lock"):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(fd):  # a killed writer left half a line: never glue a record onto it
                    line = b"\n" + line
                while line:
                    line = line[os.write(fd, line):]
                os.fsync(fd)
            finally:
                os.close(fd)

    def records(self) -> list[EvidenceRecord]:
        """All complete records (a torn last line from a killed writer is skipped, not misread)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def measurement_lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[float]:
        """The host-wide measurement lock (``measurement_lock_path``, read from the environment at each call): one
        for every run on this host, whatever its report folder."""
        return measurement_lock(measurement_lock_path(), exclusive=exclusive)

    def cached_json(self, key: str, compute: Callable[[], T], *, owner: str = "") -> T:
        """``compute()``'s JSON value, computed once per run folder (what every case of a model shares, e.g. the
        baseline's memory) and read back as stored. ``owner`` (the case that asks) is remembered with the first
        computation: ``shared_origin`` says who measured it and when."""
        path = self.run_dir / "cache" / f"{key}.json"
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                write_json_atomic(path, compute())
                self._note_origin(key, owner)
            return cast(T, json.loads(path.read_text(encoding="utf-8")))

    def cached_array(self, key: str, compute: Callable[[], np.ndarray], *, owner: str = "") -> np.ndarray:
        """Like ``cached_json``, for an array (stored as .npy)."""
        path = self.run_dir / "cache" / f"{key}.npy"
        with file_lock(path.with_suffix(".lock")):
            if path.exists():
                return np.asarray(np.load(path, allow_pickle=False))
            value = compute()
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, value, allow_pickle=False)
            os.replace(tmp, path)
            self._note_origin(key, owner, value.nbytes)
            return value

    def _note_origin(self, key: str, owner: str, stored_bytes: int | None = None) -> None:
        origin = {"key": key, "measured_for": owner, "measured_at": time.time(), "stored_bytes": stored_bytes}
        write_json_atomic(self.run_dir / "cache" / f"{key}.origin.json", origin)

    def shared_origin(self, key: str, asker: str) -> dict[str, Any]:
        """What a case records about a measurement it shares with the model's other cases (the baseline's outputs
        or memory, measured once per session): the cache key, which case measured it, when, and whether this
        case (``asker``) reused it rather than measured it."""
        path = self.run_dir / "cache" / f"{key}.origin.json"
        try:
            origin = dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            origin = {"key": key, "measured_for": None, "measured_at": None}
        return {**origin, "shared": True, "reused": origin.get("measured_for") != asker}
