"""Resident-memory readings: the mapped pages of a model file are found and counted, only for that file."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from certify.measure import memory

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
PAGE = mmap.PAGESIZE


def test_mapped_bytes_counts_only_the_touched_pages_of_the_named_file(tmp_path: Path) -> None:
    """The kernel maps a little more than the pages touched (fault-around, large page-cache folios of up to
    2 MiB), so the file is large enough that a first eighth read stays well below half of it."""
    pages = 4096  # 16 MiB
    model, other = tmp_path / "weights.bin", tmp_path / "other.bin"
    model.write_bytes(os.urandom(pages * PAGE))
    other.write_bytes(os.urandom(64 * PAGE))
    name = {os.path.realpath(model)}
    assert memory.mapped_bytes(name) == 0  # not mapped yet
    with model.open("rb") as f, other.open("rb") as g:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        unrelated = mmap.mmap(g.fileno(), 0, prot=mmap.PROT_READ)
        sum(mapped[i * PAGE] for i in range(pages // 8))
        sum(unrelated[i * PAGE] for i in range(64))
        part = memory.mapped_bytes(name)
        sum(mapped[i * PAGE] for i in range(pages))
        whole = memory.mapped_bytes(name)
        mapped.close()
        unrelated.close()
    assert part is not None and whole is not None
    assert pages // 8 * PAGE <= part < pages // 2 * PAGE
    assert whole == pages * PAGE


def test_peak_resets_to_the_current_resident_set() -> None:
    ballast = bytearray(64 * 1024 * 1024)  # raise the peak, then drop it
    del ballast
    if not memory.reset_peak():
        pytest.skip("this kernel does not allow resetting the peak")
    assert memory.peak_bytes() <= memory.rss_bytes() + 8 * 1024 * 1024
