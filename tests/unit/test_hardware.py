"""certify.hardware: host detection, platform markers and the host fingerprint."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Any

import pytest

from certify import hardware
from certify.hardware import Host, _devices, _platforms, detect_host


def _host(**changes: Any) -> Host:
    base = Host(cpu_vendor="GenuineIntel", cpu_model="Intel(R) Xeon(R) CPU", cpu_flags=("avx2", "fma", "sse4_2"),
                cores_logical=8, cores_physical=4, memory_bytes=16 * 2**30, os="Linux 6.1", machine="x86_64",
                platforms=("intel",), devices=("cpu",), accelerators=())
    return dataclasses.replace(base, **changes)


# --- detect_host on this machine ---------------------------------------------------------------------------


def test_detect_host_describes_this_machine() -> None:
    host = detect_host()
    assert "cpu" in host.devices
    assert host.cores_logical >= 1 and host.cores_physical >= 1 and host.cores_logical == (os.cpu_count() or 1)
    assert host.memory_bytes > 0
    assert host.machine == platform.machine() and host.os.startswith(platform.system())
    assert set(host.platforms) <= set(hardware.PLATFORMS) and set(host.devices) <= set(hardware.DEVICES)
    assert host.cpu_vendor and host.cpu_model
    assert host.fingerprint.startswith("sha256:") and len(host.fingerprint) == len("sha256:") + 32
    assert host.cpu_model in host.describe()


def test_detect_host_fingerprint_is_stable_across_calls() -> None:
    first = detect_host()
    assert detect_host() is first  # cached per process
    detect_host.cache_clear()
    try:
        again = detect_host()
    finally:
        detect_host.cache_clear()
    assert again is not first and again.fingerprint == first.fingerprint
    assert Host(**dataclasses.asdict(first)).fingerprint == first.fingerprint


# --- fingerprint -------------------------------------------------------------------------------------------


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        raise AssertionError("unexpected bool field")
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    assert isinstance(value, tuple)
    return (*value, "other")


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Host)])
def test_fingerprint_changes_when_any_field_changes(field: str) -> None:
    host = _host()
    other = dataclasses.replace(host, **{field: _changed(getattr(host, field))})
    assert other.fingerprint != host.fingerprint
    assert _host().fingerprint == host.fingerprint  # equal content, equal fingerprint


# --- platform markers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("system", "vendor", "machine", "accelerators", "expected"), [
    ("Linux", "GenuineIntel", "x86_64", (), ("intel",)),
    ("Linux", "AuthenticAMD", "x86_64", (), ("amd",)),
    ("Linux", "GenuineIntel", "x86_64", ("nvidia-gpu",), ("intel", "nvidia")),
    ("Linux", "arm", "aarch64", (), ("arm",)),
    ("Linux", "qualcomm", "aarch64", (), ("arm", "qualcomm")),
    ("Linux", "arm", "aarch64", ("qualcomm-dsp",), ("arm", "qualcomm")),
    ("Linux", "arm", "aarch64", ("nvidia-jetson",), ("nvidia", "arm")),
    ("Linux", "apple", "aarch64", (), ("arm",)),  # Apple silicon under Linux is not the apple platform
    ("Darwin", "apple", "arm64", (), ("apple", "arm")),
    ("Linux", "unknown", "riscv64", (), ()),
])
def test_platforms_mapping(monkeypatch: pytest.MonkeyPatch, system: str, vendor: str, machine: str,
                           accelerators: tuple[str, ...], expected: tuple[str, ...]) -> None:
    monkeypatch.setattr(platform, "system", lambda: system)
    result = _platforms(vendor, machine, accelerators)
    assert set(result) == set(expected)
    assert result == tuple(p for p in hardware.PLATFORMS if p in expected)  # canonical order


def test_devices_follow_accelerators_and_platforms() -> None:
    assert _devices((), ("intel",)) == ("cpu",)
    assert _devices(("dri-gpu",), ("intel",)) == ("cpu", "gpu")
    assert _devices(("nvidia-jetson",), ("nvidia", "arm")) == ("cpu", "gpu")
    assert _devices(("qualcomm-dsp",), ("arm", "qualcomm")) == ("cpu", "npu")
    assert _devices((), ("apple", "arm")) == ("cpu", "gpu", "npu")


def test_cpu_identity_from_arm_implementer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"CPU implementer": "0x51", "Hardware": "Qualcomm SM8550",
                                                       "Features": "fp asimd aes"})
    vendor, model, flags = hardware._cpu_identity("aarch64")
    assert (vendor, model, flags) == ("qualcomm", "Qualcomm SM8550", ("aes", "asimd", "fp"))
    assert _platforms(vendor, "aarch64", ()) == ("arm", "qualcomm")


def test_cpu_identity_on_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(hardware, "_cpuinfo", dict)
    monkeypatch.setattr(hardware, "_sysctl", lambda name: "Apple M2" if name == "machdep.cpu.brand_string" else "")
    vendor, model, flags = hardware._cpu_identity("arm64")
    assert (vendor, model, flags) == ("apple", "Apple M2", ())
    assert _platforms(vendor, "arm64", ()) == ("apple", "arm")


def test_cpu_identity_on_an_intel_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "processor", lambda: "i386")
    monkeypatch.setattr(hardware, "_cpuinfo", dict)
    sysctl = {"machdep.cpu.brand_string": "Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz",
              "machdep.cpu.vendor": "GenuineIntel"}
    monkeypatch.setattr(hardware, "_sysctl", lambda name: sysctl.get(name, ""))
    vendor, _, _ = hardware._cpu_identity("x86_64")
    assert "intel" in _platforms(vendor, "x86_64", ())


# --- to_dict -----------------------------------------------------------------------------------------------


def test_to_dict_has_fingerprint_and_no_flag_list() -> None:
    flags = tuple(sorted({f"flag{i:03d}" for i in range(300)} | {"avx2", "avx512_vnni", "fma", "sse4_2", "ht"}))
    host = _host(cpu_flags=flags)
    data = host.to_dict()
    assert data["fingerprint"] == host.fingerprint
    assert data["cpu_flags"] == len(flags) == 305
    assert data["simd"] == ["avx2", "avx512_vnni", "fma", "sse4_2"]
    assert data["platforms"] == ("intel",) and data["memory_bytes"] == 16 * 2**30
    assert len(json.dumps(data)) < 1000  # the 300 flags are not in the evidence


def test_to_dict_of_this_host_is_json_serialisable() -> None:
    data = json.loads(json.dumps(detect_host().to_dict()))
    assert data["fingerprint"] == detect_host().fingerprint and isinstance(data["cpu_flags"], int)
    assert "cpu" in data["devices"]
