"""Errors that explain themselves: each carries a ``diagnostics()`` text meant for a person."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class CertifyError(Exception):
    """Base error. ``diagnostics()`` says what went wrong, where, and what to do."""

    def __init__(self, message: str, *, hint: str = "", role: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.role = role  # "baseline" or "candidate" when raised by that model's worker

    def diagnostics(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class PlanError(CertifyError):
    """The certification plan is invalid. Names the file and the key."""

    def __init__(self, file: str, key: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{file}: {key}: {message}", hint=hint)
        self.file = file
        self.key = key


class BackendUnavailable(CertifyError):
    """A backend's framework is not installed or fails to import."""


class ModelError(CertifyError):
    """A model failed to load or run inside a worker (clear cause, no framework traceback)."""


class WorkerCrashed(CertifyError):
    """A measurement worker died (signal, exit code) or hung (timeout)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_CPP_LOCATION = re.compile(r"(Exception from|Check '.*' failed at) \S+:\d+:?")


def first_line(text: str) -> str:
    """The first line of an error message that says something: C++ source locations (OpenVINO's 'Exception from
    src/...cpp:75:') and empty lines are skipped."""
    for line in text.splitlines():
        line = _CPP_LOCATION.sub("", line).strip()
        if line and line not in ("Summary:", "Error:"):
            return line
    return ""
