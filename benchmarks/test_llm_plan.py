"""Time to certify a real LLM plan: Gemma 3 270M Q4_K_M (``certify.fixtures.gemma3``) against three ``llamacpp``
requantizations (Q3_K_M, Q2_K, Q8_0), 8 windows of 256 tokens, all eight gates: 24 cases in one pytest session.

Targets (issue 16): the whole run within ``TARGET_S`` on 2 cores of a quiet host, and the pytest process (the
parent: it holds the dataset, the baseline's records and every verdict; the models run in workers) within
``TARGET_PARENT_RSS`` at its peak. The parent's peak is read from its own ``/proc/<pid>/status`` (``VmHWM``)
while it runs: a shell's ``time -v`` would report the largest descendant, a worker holding a model. Writes
``reports/benchmarks/llm_plan.json`` with the wall time, the parent's peak, the per-gate seconds and verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.helpers_repro import bench_lock, load_average, write_report
from certify.cli import suites_dir

pytest.importorskip("llama_cpp")

TARGET_S = 600.0
TARGET_PARENT_RSS = 1.5e9
PLAN = """
name = "gemma3-270m"
[[models]]
name = "gemma-3-270m"
metric = "perplexity"
[models.dataset]
text = "eval.txt"
context = 256
chunks = 8
[models.baseline]
name = "q4_k_m"
path = "gemma-3-270m-q4_k_m.gguf"
framework = "llamacpp"
"""
CANDIDATE = """
[[models.candidates]]
name = "{name}"
framework = "llamacpp"
recipe = {{ tool = "llamacpp", method = "quantize", type = "{kind}", allow_requantize = true }}
"""


def peak_rss(pid: int) -> int:
    """VmHWM of ``pid`` in bytes (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_gemma_plan_all_gates(tmp_path: Path) -> None:
    from certify.fixtures import gemma3, tinyllama

    try:
        model = gemma3.ensure_model()
    except gemma3.FixtureUnavailable as exc:
        pytest.skip(f"Gemma 3 270M not fetchable here: {exc.diagnostics()}")
    (tmp_path / gemma3.MODEL_FILE).symlink_to(model)
    held_out = tinyllama.corpus()[1]
    (tmp_path / "eval.txt").write_text(held_out[: held_out.rfind("\n\n", 0, 12000)], encoding="utf-8")
    plan = PLAN + "".join(CANDIDATE.format(name=k.lower(), kind=k) for k in ("Q3_K_M", "Q2_K", "Q8_0"))
    (tmp_path / "certify.toml").write_text(plan)
    cmd = [sys.executable, "-m", "pytest", str(suites_dir()), "--certify-plan", "certify.toml",
           "--certify-report-dir", str(tmp_path), "--certify-run-id", "run", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), "-q", "--durations=0"]
    with bench_lock() as waited:
        load_before = load_average()
        started = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "CERTIFY_CACHE_DIR": str(tmp_path / "cache")})
        peak = 0
        while child.poll() is None:
            peak = max(peak, peak_rss(child.pid))
            time.sleep(0.5)
        wall = time.perf_counter() - started
        output = child.stdout.read() if child.stdout else ""
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    seconds: dict[str, float] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("s") and parts[1] == "call" and "::" in parts[2]:
            gate = parts[2].split("::")[0].removeprefix("test_").removesuffix(".py")
            seconds[gate] = round(seconds.get(gate, 0.0) + float(parts[0][:-1]), 1)
    figures = {
        "wall_s": round(wall, 1), "target_s": TARGET_S, "parent_peak_rss_bytes": peak,
        "target_parent_rss_bytes": TARGET_PARENT_RSS, "seconds_by_suite": seconds,
        "verdicts": {f"{c['candidate']}/{c['result']['gate']}": c["result"]["verdict"] for c in results["cases"]},
        "load_average_before": load_before, "load_average_after": load_average(), "lock_wait_s": round(waited, 1),
    }
    path = write_report("llm_plan.json", figures)
    print(json.dumps(figures, indent=2), f"\nwritten to {path}")
    assert len(results["cases"]) == 24, output[-3000:]
    assert peak <= TARGET_PARENT_RSS, f"the pytest process peaked at {peak / 1e9:.2f} GB"
    assert wall <= TARGET_S, f"the plan took {wall:.0f} s, more than {TARGET_S:.0f} s: {seconds}"
