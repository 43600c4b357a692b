"""A plan's paths, resolved and checked when the plan is loaded: a model or data file must be a regular, readable
file; a folder only where the framework takes one (an MLX model folder), and never an empty one. A symbolic-link
loop, a FIFO, a device (``/dev/zero``) or a socket is refused here, with its key, instead of failing (or hanging)
later in a worker."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from certify.errors import CertifyError

RELATIVE_HINT = "paths are relative to the plan file's folder"


class PathProblem(CertifyError):
    """A plan path that does not name a usable file or folder."""


def usable_path(base: Path, relative: str, *, folder: bool = False, file_hint: str = "") -> Path:
    """``base / relative`` resolved: an existing regular, readable file, or (``folder``) a non-empty folder.
    ``file_hint`` says what to name instead of a folder where a file is expected."""
    joined = base / relative
    try:
        path = joined.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise _unresolvable(joined, exc) from None
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PathProblem(f"file not found: {path}", hint=RELATIVE_HINT) from None
    except (OSError, ValueError) as exc:
        raise _unresolvable(joined, exc) from None
    if stat.S_ISDIR(mode):
        _check_folder(path, folder, file_hint)
    elif not stat.S_ISREG(mode):
        raise PathProblem(f"{path} is {_kind(mode)}, not a regular file",
                          hint="name the model or data file itself: a special file has no content to certify "
                          "(reading it may never end)")
    elif not os.access(path, os.R_OK):
        raise PathProblem(f"{path} cannot be read: permission denied",
                          hint="make it readable by the user who runs the certification")
    return path


def _unresolvable(joined: Path, exc: Exception) -> PathProblem:
    """A symbolic-link loop (RuntimeError from Path.resolve before Python 3.13, ELOOP after), an embedded NUL, or
    another OS error while resolving ``joined``."""
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return PathProblem(f"{joined} is a symbolic-link loop", hint="point the link at the real file")
    if isinstance(exc, ValueError):
        return PathProblem(f"{str(joined)!r} is not a usable path: {exc}", hint="remove the stray character")
    reason = getattr(exc, "strerror", None) or str(exc)
    return PathProblem(f"cannot resolve {joined}: {reason}", hint=RELATIVE_HINT)


def _check_folder(path: Path, folder: bool, file_hint: str) -> None:
    if not folder:
        raise PathProblem(f"{path} is a folder, where a file is expected",
                          hint=file_hint or "name the file inside it")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as exc:
        raise PathProblem(f"cannot list the folder {path}: {exc.strerror or exc}",
                          hint="make it readable by the user who runs the certification") from None
    if empty:
        raise PathProblem(f"{path} is an empty folder", hint="name the model's folder with its files in it")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")
