"""Host detection, hardware markers and the host fingerprint.

A *platform marker* on a case (``intel``, ``nvidia``, ...) names the platform the candidate is **built for**
(its target, from the plan). The host that really ran a case is detected here and recorded in the evidence
with a fingerprint; a case whose target platform is not this host is skipped and reported as not evaluated.
Detection only reads the OS (``/proc``, ``/sys``, ``/dev``, ``sysctl``): it imports no ML framework.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

PLATFORMS = ("intel", "amd", "nvidia", "apple", "arm", "qualcomm")
DEVICES = ("cpu", "gpu", "npu")
MARKER_HELP = {
    **{p: f"candidate targets the {p} platform (the host that ran is recorded separately)" for p in PLATFORMS},
    **{d: f"candidate targets a {d.upper()} device" for d in DEVICES},
}
_ARM_IMPLEMENTERS = {"0x41": "arm", "0x51": "qualcomm", "0x61": "apple"}


@dataclass(frozen=True)
class Host:
    """What this machine is. ``platforms``/``devices`` are the markers it can serve."""

    cpu_vendor: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    cores_logical: int
    cores_physical: int
    memory_bytes: int
    os: str
    machine: str
    platforms: tuple[str, ...]
    devices: tuple[str, ...]
    accelerators: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """Stable digest of the hardware identity (not of load or time)."""
        ident = asdict(self)
        return "sha256:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> str:
        accel = ", ".join(self.accelerators) or "no accelerator"
        return (f"{self.cpu_model} ({self.cpu_vendor}, {self.machine}, {self.cores_logical} cores), {accel}; "
                f"platform markers present: {', '.join(self.platforms) or 'none'}")

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["cpu_flags"] = len(self.cpu_flags)
        data["simd"] = [f for f in self.cpu_flags if f.startswith(("avx", "amx", "sse4", "neon", "asimd", "sve"))
                        or f in ("fma", "f16c", "vnni")]
        data["fingerprint"] = self.fingerprint
        return data


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _sysctl(name: str) -> str:
    if not shutil.which("sysctl"):
        return ""
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _cpu_identity(machine: str) -> tuple[str, str, tuple[str, ...]]:
    info = _cpuinfo()
    vendor = (info.get("vendor_id") or _ARM_IMPLEMENTERS.get(info.get("CPU implementer", ""), "")
              or (_sysctl("machdep.cpu.vendor") if platform.system() == "Darwin" else ""))
    model = info.get("model name") or info.get("Hardware") or _sysctl("machdep.cpu.brand_string")
    flags = tuple(sorted((info.get("flags") or info.get("Features") or "").split()))
    if platform.system() == "Darwin" and machine == "arm64":
        vendor = vendor or "apple"
    return vendor or platform.processor() or "unknown", model or platform.processor() or "unknown", flags


def _accelerators() -> tuple[str, ...]:
    found = []
    if Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi"):
        found.append("nvidia-gpu")
    if Path("/etc/nv_tegra_release").exists():
        found.append("nvidia-jetson")
    if any(Path("/dev/dri").glob("renderD*")):
        found.append("dri-gpu")
    if any(Path("/dev/accel").glob("accel*")):
        found.append("npu")
    if any(Path("/dev").glob("fastrpc*")):
        found.append("qualcomm-dsp")
    return tuple(found)


def _platforms(vendor: str, machine: str, accelerators: tuple[str, ...]) -> tuple[str, ...]:
    found = set()
    lowered = vendor.lower()
    if "intel" in lowered:
        found.add("intel")
    if "amd" in lowered:
        found.add("amd")
    if machine.lower() in ("arm64", "aarch64") or lowered in ("arm", "qualcomm", "apple"):
        found.add("arm")
    if lowered == "qualcomm" or "qualcomm-dsp" in accelerators:
        found.add("qualcomm")
    if platform.system() == "Darwin" and machine == "arm64":
        found.add("apple")
    if any(a.startswith("nvidia") for a in accelerators):
        found.add("nvidia")
    return tuple(p for p in PLATFORMS if p in found)


def _devices(accelerators: tuple[str, ...], platforms: tuple[str, ...]) -> tuple[str, ...]:
    found = {"cpu"}
    if {"nvidia-gpu", "nvidia-jetson", "dri-gpu"} & set(accelerators) or "apple" in platforms:
        found.add("gpu")
    if {"npu", "qualcomm-dsp"} & set(accelerators) or "apple" in platforms:
        found.add("npu")
    return tuple(d for d in DEVICES if d in found)


@functools.lru_cache(maxsize=1)
def detect_host() -> Host:
    """Detect this machine once per process."""
    import psutil

    machine = platform.machine()
    vendor, model, flags = _cpu_identity(machine)
    accelerators = _accelerators()
    platforms = _platforms(vendor, machine, accelerators)
    return Host(
        cpu_vendor=vendor,
        cpu_model=model,
        cpu_flags=flags,
        cores_logical=os.cpu_count() or 1,
        cores_physical=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        memory_bytes=int(psutil.virtual_memory().total),
        os=f"{platform.system()} {platform.release()}",
        machine=machine,
        platforms=platforms,
        devices=_devices(accelerators, platforms),
        accelerators=accelerators,
    )
