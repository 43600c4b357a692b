"""Run results as the plugin writes them (results.json), over real model files, for certificate tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from certify.digests import model_digest
from certify.policy import POLICIES
from certify.verdict import ERROR, PASS

# every built-in gate (edge-default requires all eight); the last four decide on several figures, not one value
UNITS = {"accuracy": ("%", ">=", 0.95), "speed": ("x", ">=", 2.0), "stability": ("x", "<=", 3.0),
         "memory": ("%", ">=", 0.5), "stress": ("", ">=", None), "fallback": ("", ">=", None),
         "robustness": ("", ">=", None), "security": ("", ">=", None)}
GOOD = {"accuracy": (0.99, [0.98, 1.0]), "speed": (3.1, [2.8, 3.4]), "stability": (1.4, None),
        "memory": (0.6, [0.58, 0.62]), "stress": (None, None), "fallback": (None, None), "robustness": (None, None),
        "security": (None, None)}


def gate_result(gate: str, verdict: str = PASS, value: float | None = None,
                interval: list[float] | None = None, reason: str = "") -> dict[str, Any]:
    unit, comparison, threshold = UNITS[gate]
    good_value, good_interval = GOOD[gate]
    value = good_value if value is None else value
    interval = good_interval if interval is None and verdict == PASS else interval
    return {"gate": gate, "verdict": verdict, "reason": reason or f"{gate} {verdict} ({value})", "value": value,
            "interval": interval, "threshold": threshold, "comparison": comparison, "unit": unit, "hint": "",
            "details": {}}


def model_file(folder: Path, name: str, payload: bytes | None = None) -> Path:
    path = folder / f"{name}.onnx"
    path.write_bytes(payload if payload is not None else f"model bytes of {name}".encode() * 64)
    return path


def ref(path: Path, name: str) -> dict[str, Any]:
    return {"name": name, "path": str(path), "framework": "onnxruntime", "device": "cpu", "platforms": [],
            **model_digest(path).to_dict()}


def results_doc(folder: Path, gates: dict[str, dict[str, dict[str, Any]]], *, complete: bool = True,
                finished: float | None = None, policy: str = "edge-default",
                host: dict[str, Any] | None = None) -> dict[str, Any]:
    """``gates``: candidate name -> gate -> result dict (from ``gate_result``). Model files are made in ``folder``."""
    finished = time.time() if finished is None else finished
    baseline = model_file(folder, "baseline")
    candidates = [ref(model_file(folder, name), name) for name in gates]
    cases = [{"case": f"m/{name}", "model": "m", "candidate": name, "gate": gate, "framework": "onnxruntime",
              "device": "cpu", "platforms": [], "markers": ["cpu", "onnxruntime"], "nodeid": f"x[m/{name}]",
              "result": result}
             for name, by_gate in gates.items() for gate, result in by_gate.items()]
    return {
        "schema": "certify.results/v1", "run_id": "20261121T000000Z-abcdef", "started": finished - 60,
        "finished": finished, "complete": complete,
        "plan": {"name": "test-plan", "source": str(folder / "certify.toml"), "digest": "sha256:00",
                 "policy": POLICIES[policy].to_dict()},
        "models": [{"name": "m", "metric": "top1_accuracy", "baseline": ref(baseline, "fp32"),
                    "dataset": {"source": "data.npz", "sha256": "11" * 32}, "candidates": candidates}],
        "host": host or {"fingerprint": "host-a", "platforms": ["amd"], "cpu_model": "AMD EPYC"},
        "packages": {"python": "3.11.7", "edge-certify": "0.1.0"}, "counts": {}, "candidates": {},
        "cases": cases,
    }


def all_pass(*names: str) -> dict[str, dict[str, dict[str, Any]]]:
    return {name: {gate: gate_result(gate) for gate in UNITS} for name in names}


def board(name: str, platform: str, number: int = 2, *, refused: str = "", lost: str = "") -> dict[str, Any]:
    """A board of the lab as results.json ``boards`` holds it; its host is detected as ``platform`` with a CPU."""
    fingerprint = f"sha256:{name}-fingerprint"
    cpu = {"intel": ("GenuineIntel", "Intel Core i5-1135G7", "x86_64"),
           "arm": ("ARM", "Cortex-A76", "aarch64")}.get(platform, ("AuthenticAMD", "AMD Ryzen 7", "x86_64"))
    detected = {"cpu_vendor": cpu[0], "cpu_model": cpu[1], "machine": cpu[2], "platforms": [platform],
                "devices": ["cpu"], "accelerators": [], "os": "Linux 6.6", "cores_logical": 4,
                "fingerprint": fingerprint}
    return {"name": name, "place": name, "tags": {"platform": platform}, "address": f"root@10.213.5.{number}:2222",
            "fingerprint": fingerprint, "host": detected, "packages": {"onnxruntime": "1.23.2", "numpy": "2.1.0"},
            "wait_s": 0.42, "refused": refused, "lost": lost}


def board_lost(gate: str, name: str) -> dict[str, Any]:
    """A gate of a case whose board was lost mid-run: ERROR, as the harness records it."""
    return {**gate_result(gate, ERROR, reason=f"board {name} was lost: ssh connection closed"),
            "value": None, "interval": None, "details": {"board_lost": name}}


def lab_results_doc(folder: Path, gates: dict[str, dict[str, dict[str, dict[str, Any]]]],
                    boards: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    """``gates``: board name -> candidate name -> gate -> result; each case is 'm/<candidate>@<board>'. The same
    candidate name on two boards is one model file measured twice."""
    names = sorted({name for by_name in gates.values() for name in by_name})
    doc = results_doc(folder, {name: {} for name in names}, **run)
    doc["cases"] = [{"case": f"m/{name}@{where}", "board": where, "model": "m", "candidate": name, "gate": gate,
                     "framework": "onnxruntime", "device": "cpu", "platforms": [], "markers": ["cpu", "onnxruntime"],
                     "nodeid": f"x[m/{name}@{where}]", "result": result}
                    for where, by_name in gates.items() for name, by_gate in by_name.items()
                    for gate, result in by_gate.items()]
    doc["boards"] = boards
    return doc
