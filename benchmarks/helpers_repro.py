"""Shared helpers of the reproducibility, time-to-verdict and scale benchmarks: the host-wide benchmark lock, report
files, spread figures, verdict classes, and running the real suites in a subprocess (as a user would)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certify.cli import suites_dir
from certify.verdict import PASS, GateResult

REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "reports" / "benchmarks"
LOCK_PATH = Path(os.environ.get("CERTIFY_BENCH_LOCK", "/tmp/bench.lock"))
NOT_DECISIVE = "not decisive"


def env_number(name: str, default: float) -> float:
    """A positive number from the environment (``CERTIFY_BENCH_*``), else ``default``."""
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _ours() -> set[str]:
    """This process and its ancestors (``flock /tmp/bench.lock pytest ...`` holds the lock in a parent)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and str(pid) not in pids:
        pids.add(str(pid))
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _held_by_us(fd: int) -> bool:
    """Does this process or an ancestor already hold an flock on the lock file (e.g. the benchmarks' session
    fixture, or ``flock`` around the command)? flock treats each open separately: locking again would wait for
    ourselves forever."""
    stat = os.fstat(fd)
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    ours = _ours()
    with contextlib.suppress(OSError), open("/proc/locks") as locks:
        for line in locks:  # "1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF"; waiters have "->"
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == file_id and fields[4] in ours:
                return True
    return False


@contextlib.contextmanager
def bench_lock() -> Iterator[float]:
    """Hold the host-wide benchmark lock (exclusive flock on ``/tmp/bench.lock``) so no other benchmark times
    anything meanwhile; yields the seconds waited. A no-op where this process or an ancestor holds it already."""
    started = time.monotonic()
    fd = os.open(LOCK_PATH, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _held_by_us(fd):
                yield 0.0
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # releases the lock


def write_report(name: str, figures: dict[str, Any]) -> Path:
    path = REPORT_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, sort_keys=False) + "\n")
    return path


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max, mean, sample stdev and coefficient of variation of repeated estimates."""
    if not values:
        return {}
    mean = statistics.fmean(values)
    stdev = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": mean, "stdev": stdev, "cv": stdev / mean if mean else 0.0}


def verdict_class(result: GateResult) -> str:
    """pass / fail / not decisive, as the gate reports it (a not-decisive gate fails with that reason)."""
    if result.verdict == PASS:
        return PASS
    return NOT_DECISIVE if NOT_DECISIVE in result.reason else result.verdict


def interval_side(interval: Sequence[float], threshold: float) -> str:
    """Where the interval lies against the threshold: above, below, or straddling it."""
    low, high = interval
    return "above" if low >= threshold else "below" if high < threshold else "straddles"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass
class SuiteRun:
    returncode: int
    wall_s: float
    stdout: str
    stderr: str
    run_dir: Path

    def evidence(self) -> list[dict[str, Any]]:
        path = self.run_dir / "evidence.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def tail(self, lines: int = 15) -> str:
        return "\n".join((self.stdout + self.stderr).strip().splitlines()[-lines:])


def run_suites(folder: Path, plan: Path, suites: Sequence[str], *args: str) -> SuiteRun:
    """``pytest <suites> --certify-plan PLAN ARGS`` in a fresh process writing under ``folder/run``, timed."""
    cmd = [sys.executable, "-m", "pytest", *(str(suites_dir() / s) for s in suites), "--certify-plan", str(plan),
           "--certify-report-dir", str(folder), "--certify-run-id", "run", "-p", "no:cacheprovider",
           "--rootdir", str(folder), *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=folder, check=False)
    return SuiteRun(done.returncode, time.perf_counter() - started, done.stdout, done.stderr, folder / "run")
