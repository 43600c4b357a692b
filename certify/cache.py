"""Where the harness keeps what it builds (the demo, candidates made by recipes), and how it builds each
thing exactly once: under a file lock, into a staging folder that is renamed into place only when complete,
so a failed or killed build never leaves a partial result that a later run would use."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from certify.evidence import file_lock


def cache_root() -> Path:
    return Path(os.environ.get("CERTIFY_CACHE_DIR") or Path.home() / ".cache" / "certify")


def content_hash(sources: tuple[Path, ...], packages: tuple[str, ...], extra: str = "") -> str:
    """A short digest of what shapes a build: its source files, the versions of the packages it uses (by
    distribution name; 'missing' when absent) and any other settings in ``extra``."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    digest.update(extra.encode())
    for name in packages:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=missing".encode())
    return digest.hexdigest()[:16]


def build_once(target: Path, done_marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(staging_folder)`` unless ``target/done_marker`` already exists."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if (target / done_marker).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            if not (staging / done_marker).is_file():
                raise RuntimeError(f"build of {target.name} did not write {done_marker}")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
