"""A small certification run for the report tests, shaped exactly like a real one (results.json and
evidence.jsonl of run 20261121T071120Z-f59870 of the demo), with one candidate per outcome:

- ``int8-dynamic``            every gate passes: certified, and on the Pareto frontier
- ``int8-static-badcalib``    accuracy fails; slower, less accurate and larger than int8-dynamic: dominated
- ``int4-<b>w4</b>``           fastest and smallest, stability gate errored (a name that must be escaped)
- ``int8-static-qdq-cuda``    every gate not evaluated (no NVIDIA GPU on the host)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from certify.report.results import build_results

MODEL = "digits-mlp"
MIB = 1024 * 1024
THRESHOLDS = {"confidence": 0.95, "decision": "lower_bound", "max_cv": 0.5, "max_drift": 0.25,
              "max_p99_over_p50": 3.0, "min_accuracy_retention": 0.95, "min_memory_reduction": 0.5,
              "min_speedup": 2.0, "required_gates": ["accuracy", "speed", "memory", "stability"]}
REQUIRED = THRESHOLDS["required_gates"]  # this report's runs measure these four gates, and its policy requires them
POLICY = {"name": "edge-default", "digest": "sha256:1a2e4f8e5f737d6c329c587d1b5a6d55fe34c14b1981e84e45ebb925077d6c4d",
          "thresholds": THRESHOLDS}
PLAN = {"name": "digits-demo", "source": "/tmp/certify-cache/demo/plan.toml", "policy": POLICY,
        "digest": "sha256:94f1fde6061c7fd3a20d0071a2ddd640205469b6a8b1cf923d5cdd6345cddfdf"}
HOST = {"accelerators": [], "cores_logical": 2, "cores_physical": 2, "cpu_model": "AMD EPYC",
        "cpu_vendor": "AuthenticAMD", "devices": ["cpu"], "fingerprint": "sha256:40a3eb1216c35b03ffd3835f9558f796",
        "machine": "x86_64", "memory_bytes": 25276502016, "os": "Linux 6.18", "platforms": ["amd"],
        "simd": ["avx", "avx2", "avx512f", "fma"]}
PACKAGES = {"edge-certify": "0.1.0", "numpy": "2.4.6", "onnxruntime": "1.31.1", "pytest": "9.2.0"}
STARTED, FINISHED = 1795245080.26025, 1795245135.377597
ESCAPED = "int4-<b>w4</b>"
NVIDIA_MISSING = ("target platform nvidia not present on this host: AMD EPYC (AuthenticAMD, x86_64, 2 cores), "
                  "no accelerator; platform markers present: amd; run this case on a nvidia machine")
BASELINE_BYTES, BASELINE_FILE = 41480192, 17400342


def model_ref(name: str, digest_seed: str) -> dict[str, Any]:
    sha = (digest_seed * 64)[:64]
    return {"name": name, "path": f"/tmp/certify-cache/demo/{name}.onnx", "framework": "onnxruntime",
            "device": "gpu" if name.endswith("cuda") else "cpu", "platforms": [], "sha256": sha,
            "files": [{"path": f"{name}.onnx", "sha256": sha}]}


def models(candidates: list[str]) -> list[dict[str, Any]]:
    return [{"name": MODEL, "metric": "top1_accuracy", "baseline": model_ref("fp32", "0a"),
             "dataset": {"source": "sklearn digits", "sha256": "c3" * 32},
             "candidates": [model_ref(c, f"{i + 1:x}f") for i, c in enumerate(candidates)]}]


def result(gate: str, verdict: str, reason: str, value: float | None = None,
           interval: list[float] | None = None, threshold: float | None = None, *, comparison: str = ">=",
           unit: str = "", hint: str = "", details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"gate": gate, "verdict": verdict, "reason": reason, "value": value, "interval": interval,
            "threshold": threshold, "comparison": comparison, "unit": unit, "hint": hint, "details": details or {}}


def latency_ns(seed: int, median_ms: float, count: int = 600) -> list[int]:
    """Per-iteration latencies: log-normal around the median with a few slow outliers, as CPUs give."""
    rng = np.random.default_rng(seed)
    values = median_ms * np.exp(rng.normal(0.0, 0.12, count))
    slow = rng.random(count) < 0.015
    values[slow] *= rng.uniform(4.0, 20.0, int(slow.sum()))
    return [int(v * 1e6) for v in values]


def accuracy(candidate: float, retention: float, interval: list[float], verdict: str, hint: str = "") -> dict[str, Any]:
    details = {"metric": "top1_accuracy", "baseline": 0.9844, "candidate": candidate, "samples": 450,
               "top1_agreement": round(candidate / 0.9844, 4)}
    cmp = ">=" if verdict == "pass" else "required >="
    reason = (f"top1_accuracy retention ({candidate:.4g} vs baseline 0.9844) {retention:.1%} "
              f"(95% CI {interval[0]:.1%} to {interval[1]:.1%}) {cmp} 95.0%")
    measurement = {**details, "retention": retention, "interval": interval, "confidence": 0.95}
    return {"measurement": measurement, "result": result("accuracy", verdict, reason, retention, interval, 0.95,
                                                         unit="%", hint=hint, details=details)}


RAPL_ENERGY = {"available": True, "per": "inference", "total_of": ["rapl:package-0"], "energy_ratio": 3.9,
               "baseline": {"joules_per_inference": 0.00121}, "candidate": {"joules_per_inference": 0.00031}}
NO_ENERGY = {"available": False, "reason": "no energy counter readable here: RAPL: no powercap"}


def speed(seed: int, candidate_ms: float, speedup: float, interval: list[float],
          energy: dict[str, Any] = NO_ENERGY) -> dict[str, Any]:
    base_ns, cand_ns = latency_ns(seed, candidate_ms * speedup), latency_ns(seed + 1, candidate_ms)
    side = {"executed_device": "CPUExecutionProvider", "drift": 0.01}
    measurement = {"speedup": speedup, "interval": interval, "samples": len(base_ns), "stop_reason": "decisive",
                   "duration_s": 2.1, "baseline_ns": base_ns, "candidate_ns": cand_ns, "order": "ABBA",
                   "baseline": {**side, "latency": {"p50_ms": candidate_ms * speedup}},
                   "candidate": {**side, "latency": {"p50_ms": candidate_ms}}}
    details = {"baseline_p50_ms": candidate_ms * speedup, "candidate_p50_ms": candidate_ms, "samples": len(base_ns),
               "stop_reason": "decisive", "duration_s": 2.1, "executed_device": "CPUExecutionProvider",
               "interval": {"method": "the wider of a paired block bootstrap and a t interval over 8 consecutive "
                                      "windows' speedups", "bootstrap": [interval[0] + 0.02, interval[1] - 0.02],
                            "windows": interval, "window_speedups": [speedup] * 8},
               "preflight": {"noise": "noisy", "option": "warn", "findings": ["others busy 0.6 cores"],
                             "summary": "others busy 0.6 cores; load average 1.20 on 2 cores",
                             "widened": "min_duration_s 2 -> 8"},
               "energy": energy}
    reason = f"speedup {speedup:.3g}x (95% CI {interval[0]:.3g}x to {interval[1]:.3g}x) >= 2x"
    return {"measurement": measurement,
            "result": result("speed", "pass", reason, speedup, interval, 2.0, unit="x", details=details)}


def memory(candidate_bytes: int, candidate_file: int) -> dict[str, Any]:
    def side(model: int, file: int) -> dict[str, Any]:
        return {"model_bytes": model, "file_bytes": file, "min": model, "max": model, "samples": [model] * 3,
                "method": "VmHWM after reset minus RSS before load", "executed_device": "CPUExecutionProvider"}

    value = 1.0 - candidate_bytes / BASELINE_BYTES
    details = {"baseline_bytes": BASELINE_BYTES, "candidate_bytes": candidate_bytes,
               "baseline_file_bytes": BASELINE_FILE, "candidate_file_bytes": candidate_file,
               "method": "VmHWM after reset minus RSS before load"}
    reason = (f"memory reduction ({BASELINE_BYTES / MIB:.1f} MiB -> {candidate_bytes / MIB:.1f} MiB) "
              f"{value:.1%} >= 50.0%")
    return {"measurement": {"baseline": side(BASELINE_BYTES, BASELINE_FILE),
                            "candidate": side(candidate_bytes, candidate_file)},
            "result": result("memory", "pass", reason, value, [value - 0.0002, value], 0.5, unit="%",
                             details=details)}


def stability(p99_over_p50: float) -> dict[str, Any]:
    details = {"p99_over_p50": p99_over_p50, "robust_cv": 0.08, "cv": 0.3, "drift": 0.004, "samples": 600}
    reason = f"latency stable: p99/p50 {p99_over_p50:.3g} (max 3), robust CV 0.08 (max 0.5)"
    return {"measurement": {}, "result": result("stability", "pass", reason, p99_over_p50, None, 3.0,
                                                comparison="<=", unit="x", details=details)}


def crashed() -> dict[str, Any]:
    reason = "measurement worker died with signal 11 (SIGSEGV) while loading the candidate"
    return {"measurement": {}, "result": result("stability", "error", reason,
                                                hint="run the candidate alone with the framework's own tool")}


def not_evaluated(gate: str) -> dict[str, Any]:
    return {"measurement": {}, "result": result(gate, "not_evaluated", NVIDIA_MISSING)}


BADCALIB_HINT = ("calibrate static quantization on more, representative data; try per_channel=True or keep "
                 "sensitive layers in float via nodes_to_exclude")


def gate_outcomes() -> dict[str, list[dict[str, Any]]]:
    """candidate -> its gates' measurement and result."""
    return {
        "int8-dynamic": [accuracy(0.9844, 1.0, [0.996, 1.0], "pass"), speed(1, 0.0705, 4.18, [4.10, 4.26]),
                         memory(15613952, 4365135), stability(1.9)],
        "int8-static-badcalib": [accuracy(0.8333, 0.8465, [0.8117, 0.8804], "fail", BADCALIB_HINT),
                                 speed(3, 0.0760, 3.91, [3.80, 4.02]), memory(15630336, 4365968), stability(2.2)],
        ESCAPED: [accuracy(0.9556, 0.9707, [0.9561, 0.9842], "pass"), speed(5, 0.0480, 5.62, [5.41, 5.80], RAPL_ENERGY),
                  memory(9437184, 2310144), crashed()],
        "int8-static-qdq-cuda": [not_evaluated(g) for g in ("accuracy", "speed", "memory", "stability")],
    }


def case_entry(candidate: str, outcome: dict[str, Any]) -> dict[str, Any]:
    gate = outcome["result"]["gate"]
    module = {"accuracy": "test_accuracy", "memory": "test_memory"}.get(gate, "test_speed")
    gpu = candidate.endswith("cuda")
    return {"case": f"{MODEL}/{candidate}", "model": MODEL, "candidate": candidate, "gate": gate,
            "framework": "onnxruntime", "device": "gpu" if gpu else "cpu", "platforms": ["nvidia"] if gpu else [],
            "markers": ["nvidia", "gpu", "onnxruntime"] if gpu else ["cpu", "onnxruntime"],
            "nodeid": f"suites/{module}.py::test_{gate}[{MODEL}/{candidate}]", "result": outcome["result"]}


def evidence_record(entry: dict[str, Any], measurement: dict[str, Any], started: float) -> dict[str, Any]:
    return {**{k: entry[k] for k in ("case", "model", "candidate", "gate", "framework", "device", "platforms",
                                      "markers", "nodeid", "result")},
            "measurement": measurement, "policy": POLICY, "started": started, "finished": started + 0.5,
            "host_fingerprint": HOST["fingerprint"], "run_id": "run", "serialized": entry["gate"] != "accuracy"}


def write_run(run_dir: Path, *, only: tuple[str, ...] | None = None, complete: bool = True,
              recipes: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write results.json and evidence.jsonl under run_dir (for the candidates in ``only``, default all) and return
    them parsed back, as the report generator reads them. The first speed record is superseded by a later one."""
    entries, records = [], []
    for candidate, outcomes in gate_outcomes().items():
        if only is not None and candidate not in only:
            continue
        for outcome in outcomes:
            entry = case_entry(candidate, outcome)
            if recipes:
                entry["recipe"] = {"tool": "onnxruntime", "method": "quantize_dynamic", "from": "baseline",
                                   "stage": "quantization", "params": {"per_channel": True}}
            entries.append(entry)
            records.append(evidence_record(entry, outcome["measurement"], STARTED + len(records)))
    stale = next((r for r in records if r["gate"] == "speed" and r["measurement"]), None)
    if stale is not None:
        records.insert(0, {**stale, "measurement": {"speedup": 0.5, "baseline_ns": [1], "candidate_ns": [2]}})
    return _write(run_dir, entries, records, complete)


def _write(run_dir: Path, entries: list[dict[str, Any]], records: list[dict[str, Any]], complete: bool = True,
           boards: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = build_results(run_id="20261121T071120Z-f59870", plan=PLAN, host=HOST, packages=PACKAGES,
                            entries=entries, started=STARTED, finished=FINISHED, complete=complete,
                            models=models(sorted({e["candidate"] for e in entries})),
                            required={e["case"]: REQUIRED for e in entries})
    if boards is not None:
        results["boards"] = boards
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    (run_dir / "evidence.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                                           encoding="utf-8")
    lines = (run_dir / "evidence.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8")), [json.loads(x) for x in lines]


def write_lab_run(run_dir: Path, boards: list[dict[str, Any]],
                  measured: dict[str, tuple[str, ...]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A lab run: ``measured`` is board name -> the candidates measured on it ('<model>/<candidate>@<board>'), each
    with its outcomes of the local run, except on a board whose ``lost`` is set: there every gate is an ERROR."""
    entries, records = [], []
    lost = {str(b["name"]) for b in boards if b.get("lost")}
    for where, candidates in measured.items():
        for candidate in candidates:
            for outcome in gate_outcomes()[candidate]:
                if where in lost:
                    outcome = {"measurement": {}, "result": result(
                        outcome["result"]["gate"], "error", f"board {where} was lost: ssh connection closed",
                        details={"board_lost": where})}
                entry = {**case_entry(candidate, outcome), "case": f"{MODEL}/{candidate}@{where}", "board": where}
                entries.append(entry)
                records.append({**evidence_record(entry, outcome["measurement"], STARTED + len(records)),
                                "board": where, "board_facts": next(b for b in boards if b["name"] == where)})
    return _write(run_dir, entries, records, True, boards)
