"""Energy from the host's cumulative hardware counters, only where the host exposes them.

Readers: Linux RAPL through powercap (``/sys/class/powercap/intel-rapl:N``, and ``amd-rapl:N`` where a kernel
names AMD's zones so; mainline kernels expose AMD's RAPL under the intel-rapl name), NVIDIA through NVML's total
energy counter (``pynvml``), and none on macOS: there ``powermetrics`` needs root, and the harness never runs sudo.
Each reader either gives counters or says why it cannot.

In a paired speed run the counters are read before and after each block, outside the worker's clock reads;
blocks run one model at a time, so a block's energy belongs to its side. But it is the whole package's (or
GPU board's) energy: idle power, the harness itself and any other process running during the block are in it.
Nothing here estimates: a figure exists only where a counter was read, else the reason it could not be.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

POWERCAP_ROOT = Path("/sys/class/powercap")
RAPL_PATTERNS = ("intel-rapl:*", "amd-rapl:*")
SCOPE = ("whole-package (RAPL) or whole-board (NVML) energy while each block ran, one model at a time: it includes "
         "idle power, the harness's own work and any other process running then; not the model's energy alone")
ROOT_ONLY = ("permission denied: since Linux 5.10 energy_uj is readable by root only (CVE-2020-8694, PLATYPUS); "
             "run as root or grant read access to it (e.g. a udev rule or chmod o+r)")


class Counter(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def in_total(self) -> bool:
        """Counted in the headline figure (a psys zone overlaps the packages, so it is not)."""

    def read(self) -> float:
        """The counter's cumulative raw value."""

    def joules(self, before: float, after: float) -> float:
        """Joules between two reads."""


@dataclass(frozen=True)
class RaplZone:
    """One top-level powercap zone: ``energy_uj`` counts microjoules and wraps at ``max_energy_range_uj``."""

    name: str
    path: Path
    range_uj: int
    in_total: bool = True

    def read(self) -> float:
        return float(int((self.path / "energy_uj").read_text(encoding="ascii")))

    def joules(self, before: float, after: float) -> float:
        delta = after - before
        return (delta + self.range_uj if delta < 0 else delta) / 1e6


@dataclass(frozen=True)
class NvmlGpu:
    """One NVIDIA GPU's total energy since the driver loaded, in millijoules (a 64-bit counter: no wrap)."""

    name: str
    handle: Any = field(repr=False)
    nvml: Any = field(repr=False)
    in_total: bool = True

    def read(self) -> float:
        return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def joules(self, before: float, after: float) -> float:
        return (after - before) / 1e3


def _rapl_zone(zone: Path) -> RaplZone:
    """Raises OSError (PermissionError where root-only) or ValueError when the zone cannot be read."""
    label = (zone / "name").read_text(encoding="ascii").strip() if (zone / "name").exists() else zone.name
    range_uj = int((zone / "max_energy_range_uj").read_text(encoding="ascii"))
    int((zone / "energy_uj").read_text(encoding="ascii"))
    return RaplZone(f"{zone.name} {label}", zone, range_uj, in_total=not label.startswith("psys"))


def rapl_counters(root: Path = POWERCAP_ROOT) -> tuple[list[Counter], str]:
    """The readable top-level RAPL zones (``intel-rapl:0``, not its subzones ``intel-rapl:0:0``, which the package
    already counts), or why there are none."""
    if not root.is_dir():
        return [], (f"RAPL: {root} does not exist (no powercap interface: a VM, a non-x86 CPU, or the intel_rapl "
                    "driver is not loaded)")
    zones = sorted(z for pattern in RAPL_PATTERNS for z in root.glob(pattern) if z.name.count(":") == 1)
    if not zones:
        return [], f"RAPL: {root} has no intel-rapl or amd-rapl zone (the CPU or the kernel does not expose RAPL)"
    found: list[Counter] = []
    problems = []
    for zone in zones:
        try:
            found.append(_rapl_zone(zone))
        except PermissionError:
            problems.append(f"{zone / 'energy_uj'}: {ROOT_ONLY}")
        except (OSError, ValueError) as exc:
            problems.append(f"{zone}: unreadable ({exc})")
    if found and not any(c.in_total for c in found):  # only psys readable: it is then the figure
        found = [replace(c, in_total=True) if isinstance(c, RaplZone) else c for c in found]
    return found, "" if found else "RAPL: " + "; ".join(problems)


def nvml_counters() -> tuple[list[Counter], str]:
    """Every NVIDIA GPU whose total energy counter reads (Volta or newer), or why there is none."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return [], "NVML: pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        return [], f"NVML: did not initialize ({exc}): no NVIDIA driver here"
    found: list[Counter] = []
    problems = []
    for index in range(count):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as exc:
            problems.append(f"GPU {index}: no total energy counter ({exc}; it needs a Volta or newer GPU)")
            continue
        found.append(NvmlGpu(f"nvidia-gpu:{index}", handle, pynvml))
    if not count:
        problems.append("no NVIDIA device")
    return found, "" if found else "NVML: " + "; ".join(problems)


def open_counters(root: Path | None = None, system: str | None = None) -> tuple[list[Counter], list[str]]:
    """The counters readable here and, for every reader that found none, the reason. ``root`` defaults to
    ``POWERCAP_ROOT`` (tests point it at a fake tree)."""
    powercap, system = root or POWERCAP_ROOT, system or platform.system()
    counters: list[Counter] = []
    reasons = []
    readers = [lambda: rapl_counters(powercap)] if system == "Linux" else []
    for reader in (*readers, nvml_counters):
        found, reason = reader()
        counters += found
        reasons += [reason] if reason else []
    if system == "Darwin":
        reasons.append("macOS: energy is read by powermetrics, which needs root (sudo): not available without root")
    elif system != "Linux":
        reasons.append(f"{system}: no CPU energy reader for this OS")
    return counters, reasons


class Meter:
    """Reads all counters at once; ``joules`` gives each counter's energy between two reads."""

    def __init__(self, counters: list[Counter]) -> None:
        self.counters = counters

    def read(self) -> list[float]:
        return [c.read() for c in self.counters]

    def joules(self, before: list[float], after: list[float]) -> list[float]:
        return [c.joules(b, a) for c, b, a in zip(self.counters, before, after, strict=True)]


def open_meter(root: Path | None = None, system: str | None = None) -> tuple[Meter | None, str]:
    """A meter over every readable counter, or None and the reasons no counter can be read here."""
    counters, reasons = open_counters(root, system)
    if not counters:
        return None, "no energy counter readable here: " + "; ".join(reasons)
    return Meter(counters), ""


def _side(blocks: list[list[float]], seconds: list[float], iterations: int, totals: list[bool]) -> dict[str, Any]:
    joules = np.asarray(blocks, dtype=np.float64)  # (blocks, counters)
    total = joules[:, np.asarray(totals)].sum(axis=1)
    per = float(np.median(total)) / iterations
    return {"joules_per_inference": per, "inferences_per_joule": 1.0 / per if per > 0 else None,
            "joules_per_inference_all_blocks": float(total.sum()) / (iterations * total.size),  # coarse counters
            "mean_power_w": float(np.median(total / np.asarray(seconds))), "blocks": int(total.size),
            "joules_per_inference_by_counter": (np.median(joules, axis=0) / iterations).tolist()}


def summarize(meter: Meter, baseline: tuple[list[list[float]], list[float]],
              candidate: tuple[list[list[float]], list[float]], iterations: int) -> dict[str, Any]:
    """Joules per inference and inferences per joule of each side (median over its blocks; ``iterations`` =
    inferences per block, untimed rewarm ones included), and the energy ratio (baseline / candidate joules per
    inference: above 1 the candidate needs less energy). Each side is ``(joules per block per counter, seconds
    per block)``."""
    totals = [c.in_total for c in meter.counters]
    base, cand = _side(*baseline, iterations, totals), _side(*candidate, iterations, totals)
    ratio = base["joules_per_inference"] / cand["joules_per_inference"] if cand["joules_per_inference"] > 0 else None
    return {"available": True, "counters": [c.name for c in meter.counters],
            "total_of": [c.name for c in meter.counters if c.in_total], "scope": SCOPE,
            "inferences_per_block": iterations, "baseline": base, "candidate": cand, "energy_ratio": ratio,
            "energy_ratio_is": "baseline / candidate joules per inference: above 1 the candidate uses less energy"}


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}
