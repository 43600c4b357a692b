"""Lazy backend registry: framework names (``certify.frameworks``) map to ``"module:Class"`` strings, imported only
when a worker needs one.

Third-party backends register in the ``certify.backends`` entry-point group (``name = "pkg.mod:Class"``) or
are named in a plan directly as ``framework = "pkg.mod:Class"``. A backend that fails to import is a
``BackendUnavailable`` with an install hint, never an unguarded crash.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import TYPE_CHECKING, cast

from certify.backends.base import Backend
from certify.errors import BackendUnavailable, CertifyError
from certify.frameworks import FRAMEWORKS, install_hint

if TYPE_CHECKING:
    from certify.plan.types import ModelRef

ENTRY_POINT_GROUP = "certify.backends"


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def registered_names() -> list[str]:
    """Backends from the entry-point group (third parties)."""
    return sorted(_entry_points())


def resolve_backend(name: str) -> type[Backend]:
    """Import and return the backend class for a plan's ``framework`` value."""
    target = FRAMEWORKS[name].backend if name in FRAMEWORKS else name
    try:
        if ":" in target:
            module_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
        elif name in _entry_points():
            cls = _entry_points()[name].load()
        else:
            raise BackendUnavailable(f"unknown framework {name!r}", hint="see `certify doctor` for backends")
    except BackendUnavailable:
        raise
    except Exception as exc:  # an import error of any kind must not crash the session
        raise BackendUnavailable(f"backend {name!r} ({target}) failed to import: {exc}",
                                 hint=install_hint(name)) from None
    cls = cast("type[Backend]", cls)
    cls.import_runtime()
    return cls


def cannot_run(ref: ModelRef) -> str:
    """'' when ``ref``'s framework and device are present on this machine, else what is missing and how to install
    it (asked here by the runner, and on a board by its worker)."""
    try:
        backend = resolve_backend(ref.framework)
        ok, detail = backend.available_devices(ref)
    except CertifyError as exc:
        return f"framework {ref.framework!r} unavailable: {exc.message}; install: {exc.hint}"
    return "" if ok else f"device {ref.device!r} not available: {detail}; install: {backend.install_hint}"
