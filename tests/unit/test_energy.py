"""Energy counters: RAPL arithmetic and wrap-around on a fake powercap tree, NVML through a fake pynvml, the
reasons when nothing can be read (for real on this host), and that every paired speed run records energy."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certify.measure import energy
from certify.plan import Measure, ModelRef

RANGE_UJ = 262_143_328_850  # a real package zone's max_energy_range_uj


def zone(root: Path, name: str, label: str, energy_uj: int, range_uj: int = RANGE_UJ) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, a psys zone, a subzone and the MMIO duplicate, as a laptop or server exposes them."""
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 400_000)  # inside package-0: never counted on its own
    zone(root, "intel-rapl:1", "psys", 9_000_000)
    zone(root, "amd-rapl:0", "package-1", 5_000_000)
    zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)  # the same package through MMIO
    return root


def test_top_level_zones_are_read_and_psys_is_kept_out_of_the_total(powercap: Path) -> None:
    counters, reason = energy.rapl_counters(powercap)
    assert reason == ""
    assert [c.name for c in counters] == ["amd-rapl:0 package-1", "intel-rapl:0 package-0", "intel-rapl:1 psys"]
    assert [c.in_total for c in counters] == [True, True, False]
    meter = energy.Meter(counters)
    before = meter.read()
    (powercap / "intel-rapl:0" / "energy_uj").write_text("3500000\n")  # +2.5 J
    (powercap / "amd-rapl:0" / "energy_uj").write_text("5250000\n")  # +0.25 J
    assert meter.joules(before, meter.read()) == pytest.approx([0.25, 2.5, 0.0])


def test_a_counter_that_wraps_is_unwrapped_with_its_range(powercap: Path) -> None:
    package = energy.rapl_counters(powercap)[0][1]
    (powercap / "intel-rapl:0" / "energy_uj").write_text(f"{RANGE_UJ - 1_000_000}\n")
    before = package.read()
    (powercap / "intel-rapl:0" / "energy_uj").write_text("2000000\n")  # wrapped past the range
    assert package.joules(before, package.read()) == pytest.approx(3.0)
    assert package.joules(5_000_000.0, 7_000_000.0) == pytest.approx(2.0)


def test_only_psys_readable_then_psys_is_the_figure(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "psys", 10)
    counters, _ = energy.rapl_counters(tmp_path)
    assert [c.in_total for c in counters] == [True]


def test_root_only_counters_say_so(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_text

    def denied(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)  # as root, chmod would not deny the read
    counters, reason = energy.rapl_counters(powercap)
    assert counters == []
    assert reason.startswith("RAPL: ") and "intel-rapl:0/energy_uj" in reason
    assert "readable by root only" in reason and "run as root" in reason


def test_no_powercap_and_no_zone_reasons(tmp_path: Path) -> None:
    assert "does not exist" in energy.rapl_counters(tmp_path / "absent")[1]
    assert "no intel-rapl or amd-rapl zone" in energy.rapl_counters(tmp_path)[1]


class FakeNVMLError(Exception):
    pass


def fake_pynvml(energies_mj: list[int | None]) -> types.ModuleType:
    """A pynvml stand-in: one GPU per entry; None = a GPU without the total energy counter (pre-Volta)."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(energies_mj)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]

    def total(handle: int) -> int:
        value = energies_mj[handle]
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value

    module.nvmlDeviceGetTotalEnergyConsumption = total  # type: ignore[attr-defined]
    return module


def test_nvml_counts_millijoules_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    energies: list[int | None] = [1_000, None]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energies))
    counters, reason = energy.nvml_counters()
    assert [c.name for c in counters] == ["nvidia-gpu:0"] and reason == ""
    before = counters[0].read()
    energies[0] = 4_500
    assert counters[0].joules(before, counters[0].read()) == pytest.approx(3.5)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([None]))
    assert "needs a Volta or newer GPU" in energy.nvml_counters()[1]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    assert energy.nvml_counters()[1] == "NVML: no NVIDIA device"


def test_macos_is_not_available_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like an absent package
    meter, reason = energy.open_meter(tmp_path, system="Darwin")
    assert meter is None
    assert "powermetrics, which needs root (sudo): not available without root" in reason
    assert "pynvml is not installed" in reason and "RAPL" not in reason  # no RAPL reader on macOS


def test_this_host_reads_a_counter_or_says_why_not() -> None:
    meter, reason = energy.open_meter()
    if meter is not None:  # a host with RAPL or NVML: the counters read and advance monotonically
        first = meter.read()
        assert all(j >= 0 for j in meter.joules(first, meter.read()))
        return
    assert reason.startswith("no energy counter readable here: ")
    if sys.platform.startswith("linux"):
        assert "RAPL: " in reason and "NVML: " in reason


def test_summary_is_the_median_over_blocks_per_inference() -> None:
    counters: list[energy.Counter] = [energy.RaplZone("intel-rapl:0 package-0", Path("."), RANGE_UJ),
                                      energy.RaplZone("intel-rapl:1 psys", Path("."), RANGE_UJ, in_total=False)]
    meter = energy.Meter(counters)
    base = ([[2.0, 9.0], [2.2, 9.0], [9.0, 9.0]], [0.1, 0.1, 0.1])  # joules per counter per block; seconds
    cand = ([[0.5, 9.0], [0.6, 9.0], [0.4, 9.0]], [0.1, 0.1, 0.1])
    summary = energy.summarize(meter, base, cand, iterations=100)
    assert summary["available"] is True and summary["total_of"] == ["intel-rapl:0 package-0"]
    assert summary["baseline"]["joules_per_inference"] == pytest.approx(0.022)  # psys stays out
    assert summary["baseline"]["inferences_per_joule"] == pytest.approx(1 / 0.022)
    assert summary["candidate"]["joules_per_inference"] == pytest.approx(0.005)
    assert summary["energy_ratio"] == pytest.approx(4.4)
    assert summary["baseline"]["mean_power_w"] == pytest.approx(22.0) and summary["baseline"]["blocks"] == 3
    assert summary["candidate"]["joules_per_inference_by_counter"] == pytest.approx([0.005, 0.09])
    assert summary["baseline"]["joules_per_inference_all_blocks"] == pytest.approx(13.2 / 300)
    assert "idle power" in summary["scope"]


# --- in a paired speed run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRef, ModelRef, dict[str, np.ndarray]]:
    pytest.importorskip("onnxruntime")
    from tests.helpers.models import tiny_project

    folder = tiny_project(tmp_path_factory.mktemp("energy"))
    refs = [ModelRef(name=n, path=folder / f"{n}.onnx", framework="onnxruntime", threads=1) for n in ("fp32", "int8")]
    return refs[0], refs[1], {"": np.zeros((1, 16), np.float32)}


QUICK = Measure(warmup_iterations=5, min_iterations=20, max_iterations=4000, min_duration_s=0.2,
                max_duration_s=0.6, bootstrap_resamples=200, threads=1, noise="ignore")


class Watts:
    """A counter that advances at a constant 10 W of wall time: what a block's energy must then be is known."""

    name, in_total = "fake 10 W", True

    def read(self) -> float:
        return time.monotonic() * 10.0

    def joules(self, before: float, after: float) -> float:
        return after - before


def test_a_speed_run_records_energy_where_no_counter_reads(
        models: tuple[ModelRef, ModelRef, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.measure import speed

    monkeypatch.setattr(energy, "POWERCAP_ROOT", Path("/nonexistent/powercap"))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    run = speed.measure_speed(*models, QUICK, threshold=1.0, confidence=0.95)
    assert run["energy"]["available"] is False and set(run["energy"]) == {"available", "reason"}
    assert "/nonexistent/powercap does not exist" in run["energy"]["reason"]


def test_a_speed_run_reports_joules_per_inference_from_its_blocks(
        models: tuple[ModelRef, ModelRef, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch) -> None:
    from certify.gates.speed import speed_gate
    from certify.measure import speed
    from certify.policy import POLICIES

    monkeypatch.setattr(energy, "open_meter", lambda *a, **k: (energy.Meter([Watts()]), ""))
    run = speed.measure_speed(*models, replace(QUICK, max_duration_s=0.4), threshold=1.0, confidence=0.95)
    figures = run["energy"]
    assert figures["available"] is True and figures["per"] == "inference"
    per_block = run["block_iterations"] + run["block_rewarm_iterations"]
    assert figures["inferences_per_block"] == per_block
    for side in ("baseline", "candidate"):
        assert figures[side]["blocks"] == 2 * run["rounds"]
        assert figures[side]["mean_power_w"] == pytest.approx(10.0, rel=0.05)
        assert figures[side]["inferences_per_joule"] == pytest.approx(1 / figures[side]["joules_per_inference"])
        # 10 W x a block's wall time / its inferences: at least the timed latency, plus the block's overheads
        assert figures[side]["joules_per_inference"] >= 10.0 * run[side]["latency"]["p50_ms"] / 1e3 * 0.9
    assert figures["energy_ratio"] == pytest.approx(
        figures["baseline"]["joules_per_inference"] / figures["candidate"]["joules_per_inference"])
    details = speed_gate(run, POLICIES["edge-default"], "").details["energy"]
    assert details["available"] is True and details["energy_ratio"] == figures["energy_ratio"]
