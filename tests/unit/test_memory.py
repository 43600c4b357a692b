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
    model, other = tmp_path / "weights.bin", tmp_path / "other.bin"
    model.write_bytes(os.urandom(256 * PAGE))
    other.write_bytes(os.urandom(64 * PAGE))
    name = {os.path.realpath(model)}
    assert memory.mapped_bytes(name) == 0  # not mapped yet
    with model.open("rb") as f, other.open("rb") as g:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        unrelated = mmap.mmap(g.fileno(), 0, prot=mmap.PROT_READ)
        sum(mapped[i * PAGE] for i in range(128))  # touch half of the model's pages
        sum(unrelated[i * PAGE] for i in range(64))
        half = memory.mapped_bytes(name)
        sum(mapped[i * PAGE] for i in range(256))
        whole = memory.mapped_bytes(name)
        mapped.close()
        unrelated.close()
    assert half is not None and whole is not None
    assert 128 * PAGE <= half < 200 * PAGE  # read-ahead may bring in a few more than touched
    assert whole == 256 * PAGE


def test_peak_resets_to_the_current_resident_set() -> None:
    ballast = bytearray(64 * 1024 * 1024)  # raise the peak, then drop it
    del ballast
    if not memory.reset_peak():
        pytest.skip("this kernel does not allow resetting the peak")
    assert memory.peak_bytes() <= memory.rss_bytes() + 8 * 1024 * 1024
