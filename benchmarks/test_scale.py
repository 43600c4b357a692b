"""Scale: how the harness behaves with many cases, more data, more candidates, and two xdist workers.

- ``test_scale_collection``: ``pytest --collect-only -q`` of the real suites for plans of about 1000 parametrized
  cases (125 candidates x all 8 suites' gates; 250 candidates x the 4 core gates; and 2000 cases to see growth),
  against the same plan with one candidate (the fixed cost of starting pytest and importing the plugin);
- ``test_scale_growth``: the accuracy gate's run time on a small ONNX Runtime model as the dataset grows (1k, 4k,
  16k rows; the whole suite process and, in process, its phases: both workers' predictions and the bootstrap),
  and as the number of candidates grows (1, 2, 4; accuracy only);
- ``test_scale_xdist``: accuracy, speed, stability and memory of 4 candidates with ``-n 2``; from the evidence
  records' measurement windows (``started``, ``finished``, ``serialized``): how many accuracy cases ran at once,
  and that no serialized (speed, stability, memory) window overlapped any other case's.

All write ``reports/benchmarks/scale.json``. Every figure is measured under the benchmark lock.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.helpers_repro import SuiteRun, bench_lock, env_number, load_average, run_suites, write_report

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from certify.measure import accuracy, dataset
from certify.metrics import METRICS
from certify.plan.load import load_plan
from tests.helpers.models import build_dataset, build_mlp, quantize_dynamic

WIDTHS = (32, 128, 10)  # a small classifier: 32 features, 10 classes
COLLECT_REPEATS = int(env_number("CERTIFY_BENCH_COLLECT_REPEATS", 3))
ALL_SUITES = ("test_accuracy.py", "test_speed.py", "test_memory.py", "test_stress.py", "test_fallback.py",
              "test_robustness.py", "test_security.py")  # 8 gates: test_speed.py holds speed and stability
CORE_SUITES = ("test_accuracy.py", "test_speed.py", "test_memory.py")  # accuracy, speed, stability, memory
MEASURE = """[measure]
warmup_iterations = 5
min_iterations = 20
max_iterations = {max_iterations}
min_duration_s = 0.5
max_duration_s = 1.5
memory_repeats = 1
bootstrap_resamples = {resamples}
threads = 1
"""
REPORT: dict[str, Any] = {}


def project(folder: Path, rows: int) -> Path:
    """fp32.onnx, int8.onnx (dynamic INT8) and data.npz of ``rows`` rows labelled by the FP32 model."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "int8.onnx").exists():
        build_mlp(folder / "fp32.onnx", WIDTHS)
        quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx")
    build_dataset(folder / "data.npz", folder / "fp32.onnx", n=rows, features=WIDTHS[0])
    return folder


def write_plan(folder: Path, candidates: int, resamples: int = 2000, max_iterations: int = 20000) -> Path:
    """A plan of ``candidates`` dynamic-INT8 candidates (the same file each) against the FP32 baseline."""
    parts = [f'name = "scale-{candidates}"\n', MEASURE.format(resamples=resamples, max_iterations=max_iterations),
             '[[models]]\nname = "mlp"\nmetric = "top1_accuracy"\n[models.dataset]\npath = "data.npz"\n'
             '[models.baseline]\nname = "fp32"\npath = "fp32.onnx"\nframework = "onnxruntime"\n']
    parts += [f'[[models.candidates]]\nname = "int8-{i:03d}"\npath = "int8.onnx"\nframework = "onnxruntime"\n'
              for i in range(candidates)]
    plan = folder / f"plan-{candidates}.toml"
    plan.write_text("\n".join(parts))
    return plan


def save() -> None:
    print(f"wrote {write_report('scale.json', REPORT)}")


# --------------------------------------------------------------------------- (a) collection


def collect(folder: Path, plan: Path, suites: tuple[str, ...]) -> dict[str, Any]:
    """Median over repeats of the wall time of ``pytest --collect-only -q`` and of pytest's own collection time."""
    walls, reported, count = [], [], 0
    for _ in range(COLLECT_REPEATS):
        run = run_suites(folder, plan, suites, "--collect-only", "-q")
        found = re.search(r"(\d+) tests? collected in ([\d.]+)s", run.stdout)
        assert run.returncode == 0 and found, run.tail()
        walls.append(run.wall_s)
        reported.append(float(found.group(2)))
        count = int(found.group(1))
    return {"cases": count, "wall_s": statistics.median(walls), "pytest_reported_s": statistics.median(reported),
            "wall_s_all": walls}


def test_scale_collection(tmp_path: Path) -> None:
    folder = project(tmp_path, 256)
    configs = [("all suites", ALL_SUITES, 1), ("all suites", ALL_SUITES, 125),
               ("core gates", CORE_SUITES, 1), ("core gates", CORE_SUITES, 250), ("core gates", CORE_SUITES, 500),
               ("core gates", CORE_SUITES, 2500)]
    rows = []
    with bench_lock():
        for label, suites, candidates in configs:
            plan_started = time.perf_counter()
            load_plan(write_plan(folder, candidates))
            plan_s = time.perf_counter() - plan_started
            rows.append({"suites": label, "candidates": candidates, "plan_load_s": plan_s,
                         **collect(folder, folder / f"plan-{candidates}.toml", suites)})
    fixed = {r["suites"]: r["wall_s"] for r in rows if r["candidates"] == 1}
    for r in rows:
        extra_cases = r["cases"] - r["cases"] // r["candidates"]
        r["per_case_ms"] = 1000 * (r["wall_s"] - fixed[r["suites"]]) / max(1, extra_cases)  # wall: noisy
        r["pytest_per_case_ms"] = 1000 * r["pytest_reported_s"] / r["cases"]
    REPORT["collection"] = {"what": "pytest --collect-only -q of the real suites, median of "
                                    f"{COLLECT_REPEATS} fresh processes", "rows": rows}
    print(f"\ncollection\n{'suites':<12}{'candidates':>11}{'cases':>7}{'wall s':>8}{'pytest s':>10}{'ms/case':>9}")
    for r in rows:
        print(f"{r['suites']:<12}{r['candidates']:>11}{r['cases']:>7}{r['wall_s']:>8.2f}{r['pytest_reported_s']:>10.2f}"
              f"{r['per_case_ms']:>9.2f}")
    save()
    thousand = [r for r in rows if r["cases"] == 1000]
    assert len(thousand) == 2 and all(r["wall_s"] < 10 for r in thousand), rows  # regression guard (about 1 s)


# --------------------------------------------------------------------------- (b) growth


def windows(run: SuiteRun, gate: str) -> list[float]:
    return [r["finished"] - r["started"] for r in run.evidence() if r["gate"] == gate]


def accuracy_phases(plan_path: Path) -> dict[str, float]:
    """In process: the two predictions (each a fresh worker: start, load, run the dataset) and the bootstrap."""
    plan = load_plan(plan_path)
    model, measure = plan.models[0], plan.measure
    inputs, labels = dataset.load_dataset(model.dataset)
    t0 = time.perf_counter()
    base, _ = accuracy.predict("baseline", model.baseline, inputs, model.dataset.batch_size, measure)
    t1 = time.perf_counter()
    cand, _ = accuracy.predict("candidate", model.candidates[0], inputs, model.dataset.batch_size, measure)
    t2 = time.perf_counter()
    accuracy.evaluate(METRICS[model.metric], base, cand, labels, measure, plan.policy.confidence)
    return {"predict_baseline_s": t1 - t0, "predict_candidate_s": t2 - t1, "bootstrap_s": time.perf_counter() - t2}


def accuracy_run(folder: Path, plan: Path) -> dict[str, Any]:
    run = run_suites(folder, plan, ("test_accuracy.py",))
    assert run.returncode == 0, run.tail()
    spans = windows(run, "accuracy")
    return {"wall_s": run.wall_s, "accuracy_windows_s": spans, "windows_total_s": sum(spans)}


def test_scale_growth(tmp_path: Path) -> None:
    by_rows, by_candidates = [], []
    with bench_lock():
        for rows in (1000, 4000, 16000):
            folder = project(tmp_path / f"rows-{rows}", rows)
            plan = write_plan(folder, 1)
            by_rows.append({"rows": rows, **accuracy_run(folder, plan), **accuracy_phases(plan)})
        folder = project(tmp_path / "candidates", 4000)
        for candidates in (1, 2, 4):
            by_candidates.append({"candidates": candidates, **accuracy_run(folder, write_plan(folder, candidates))})
    REPORT["growth"] = {"model": f"MLP {WIDTHS} FP32 baseline, dynamic INT8 candidate(s), batch 64, "
                                 "2000 bootstrap resamples",
                        "dataset_rows": by_rows, "candidates_rows_4000": by_candidates}
    print(f"\naccuracy gate vs dataset rows\n{'rows':>6}{'wall s':>8}{'window s':>10}{'base s':>8}{'cand s':>8}"
          f"{'bootstrap s':>12}")
    for r in by_rows:
        print(f"{r['rows']:>6}{r['wall_s']:>8.2f}{r['windows_total_s']:>10.2f}{r['predict_baseline_s']:>8.2f}"
              f"{r['predict_candidate_s']:>8.2f}{r['bootstrap_s']:>12.2f}")
    print(f"accuracy gate vs candidates (4000 rows)\n{'cands':>6}{'wall s':>8}{'windows s':>10}")
    for r in by_candidates:
        print(f"{r['candidates']:>6}{r['wall_s']:>8.2f}{r['windows_total_s']:>10.2f}")
    save()


# --------------------------------------------------------------------------- (c) xdist


def max_concurrency(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])  # an end sorts before a start
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def overlaps(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of cases whose measurement windows overlap where at least one of them is serialized."""
    found = []
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if (a["serialized"] or b["serialized"]) and a["started"] < b["finished"] and b["started"] < a["finished"]:
                found.append((f"{a['gate']} {a['candidate']}", f"{b['gate']} {b['candidate']}"))
    return found


def test_scale_xdist(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    folder = project(tmp_path, 16000)
    plan = write_plan(folder, 4, resamples=1000)
    with bench_lock():
        load = load_average()
        run = run_suites(folder, plan, CORE_SUITES, "-n", "2")
    records = run.evidence()
    assert run.returncode in (0, 1) and len(records) == 16, run.tail()  # 1: gates failed (a tiny MLP gains little)
    assert all(r["result"]["verdict"] in ("pass", "fail") for r in records), run.tail()
    t0 = min(r["started"] for r in records)
    by_gate: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_gate.setdefault(r["gate"], []).append(r)
    gates_summary = {gate: {"cases": len(rs), "serialized": sorted({r["serialized"] for r in rs}),
                            "max_concurrency": max_concurrency([(r["started"], r["finished"]) for r in rs]),
                            "windows_s": sum(r["finished"] - r["started"] for r in rs),
                            "lock_wait_s": sum(r["lock_wait_s"] for r in rs)} for gate, rs in by_gate.items()}
    exclusive = [(r["started"], r["finished"]) for r in records if r["serialized"]]
    bad = overlaps(records)
    timeline = sorted(({"gate": r["gate"], "candidate": r["candidate"], "serialized": r["serialized"],
                        "start_s": round(r["started"] - t0, 3), "end_s": round(r["finished"] - t0, 3),
                        "lock_wait_s": round(r["lock_wait_s"], 3)} for r in records), key=lambda w: w["start_s"])
    REPORT["xdist"] = {"command": "pytest test_accuracy.py test_speed.py test_memory.py -n 2 (4 candidates, "
                                  "16000 rows)", "wall_s": run.wall_s, "load_average_1m": load,
                       "gates": gates_summary, "max_concurrency_all": max_concurrency([(r["started"], r["finished"])
                                                                                       for r in records]),
                       "max_concurrency_serialized": max_concurrency(exclusive),
                       "overlaps_with_a_serialized_case": bad, "timeline": timeline}
    print(f"\n-n 2: wall {run.wall_s:.1f} s")
    for gate, s in gates_summary.items():
        print(f"  {gate:<10} cases {s['cases']}  serialized {s['serialized']}  max at once {s['max_concurrency']}  "
              f"windows {s['windows_s']:.1f} s  lock wait {s['lock_wait_s']:.1f} s")
    for w in timeline:
        print(f"  {w['start_s']:>7.2f} .. {w['end_s']:>7.2f}  {'X' if w['serialized'] else ' '} {w['gate']:<9} "
              f"{w['candidate']}")
    save()
    assert not bad, bad
    assert REPORT["xdist"]["max_concurrency_serialized"] == 1
    assert gates_summary["accuracy"]["max_concurrency"] == 2, "accuracy cases never ran in parallel"

