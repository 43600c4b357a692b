"""The run's evidence store under ``reports/<run-id>/``.

- ``evidence.jsonl``: append-only, one JSON record per measured case, each appended under an exclusive
  file lock in a single write (safe with pytest-xdist workers appending at once).
- ``results.json`` and other documents: written atomically (temp file + fsync + rename), so a crash never
  leaves a truncated file that a later step reads as valid.
- ``cache/``: measurements shared by several cases (the baseline's outputs, a paired speed run), computed
  once per run under a per-key lock, so xdist workers do not repeat them.
- ``measure.lock``: speed and memory measurements hold it exclusively, everything else shared, so
  performance numbers never come from cores busy with other work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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
        return file_lock(self.run_dir / "measure.lock", exclusive=exclusive)

    def cached_json(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``'s JSON value, computed once per run folder (what every case of a model shares, e.g. the
        baseline's memory) and read back as stored."""
        path = self.run_dir / "cache" / f"{key}.json"
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                write_json_atomic(path, compute())
            return cast(T, json.loads(path.read_text(encoding="utf-8")))

    def cached_array(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.run_dir / "cache" / f"{key}.npy"
        with file_lock(path.with_suffix(".lock")):
            if path.exists():
                return np.asarray(np.load(path, allow_pickle=False))
            value = compute()
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, value, allow_pickle=False)
            os.replace(tmp, path)
            return value
