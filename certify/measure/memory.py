"""Process memory readings: resident set size now, and its peak since the last reset.

On Linux the peak (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs``, so a worker measures
the peak of the model alone: peak after load + inference minus the footprint just before the load.
Elsewhere the peak falls back to ``ru_maxrss``, which cannot be reset (then the result says so).

Weights a framework maps from the model file (llama.cpp with ``use_mmap``, ONNX Runtime's external data, ...) are
file-backed pages: they count in the resident set once touched, yet the kernel may drop and re-read them, and they
are shared with the page cache. ``mapped_bytes`` reports how much of the model's own files is resident that way, so
a result can give the figure with and without mapped weights.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def mapped_bytes(files: set[str]) -> int | None:
    """Resident bytes of this process's mappings of ``files`` (absolute paths), from ``/proc/self/smaps``;
    None where that file does not exist."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    total, counting = 0, False
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header: range perms offset dev inode path
            counting = len(head) == 6 and head[5].strip() in files
        elif counting and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def reset_peak() -> bool:
    """Reset the peak-RSS high-water mark; False where the OS cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
