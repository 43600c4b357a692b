"""Harness overhead per inference versus a bare ONNX Runtime loop on the same model, side by side.

- ``test_bare_session_run`` / ``test_backend_infer``: pytest-benchmark timings of ``InferenceSession.run``
  and of the harness backend's ``infer`` (the call the harness times), in one table;
- ``test_timed_loop_overhead``: the harness's real timed loop (``Worker.cmd_run``) against a bare
  ``perf_counter_ns`` + ``session.run`` loop, interleaved in blocks so machine drift hits both; prints the
  overhead in ns and as a share of the model's median latency, and writes ``reports/benchmarks/overhead.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from certify.backends.onnxruntime import OnnxRuntimeBackend
from certify.measure.worker import Worker

pytest.importorskip("onnxruntime")
ROUNDS, BLOCK = 30, 400


def session_for(ref):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ref.threads or 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(ref.path), sess_options=opts, providers=["CPUExecutionProvider"])


def test_bare_session_run(benchmark, smallest_demo_model) -> None:  # type: ignore[no-untyped-def]
    ref, feeds = smallest_demo_model
    session = session_for(ref)
    benchmark.group = "per inference"
    out = benchmark(session.run, None, feeds)
    assert out[0].shape == (1, 10)


def test_backend_infer(benchmark, smallest_demo_model) -> None:  # type: ignore[no-untyped-def]
    ref, feeds = smallest_demo_model
    backend = OnnxRuntimeBackend(ref)
    backend.load()
    benchmark.group = "per inference"
    out = benchmark(backend.infer, feeds)
    assert out[0].shape == (1, 10)


def bare_loop(session, feeds, n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    times, clock = np.empty(n, dtype=np.int64), time.perf_counter_ns
    for i in range(n):
        start = clock()
        session.run(None, feeds)
        times[i] = clock() - start
    return times


def test_timed_loop_overhead(smallest_demo_model) -> None:  # type: ignore[no-untyped-def]
    ref, feeds = smallest_demo_model
    session = session_for(ref)
    worker = Worker()
    worker.cmd_load(ref)
    worker.cmd_feeds("b", {"": feeds["pixels"]})
    bare, harness = [], []
    for _ in range(ROUNDS):
        bare.append(bare_loop(session, feeds, BLOCK))
        harness.append(worker.cmd_run("b", BLOCK))
    bare_ns, harness_ns = float(np.median(np.concatenate(bare))), float(np.median(np.concatenate(harness)))
    empty = Worker()
    empty.backend, empty.feeds = type("Noop", (), {"infer": staticmethod(lambda feeds: None)})(), {"k": {}}
    scaffold_ns = float(np.median(empty.cmd_run("k", 100_000)))
    figures = {"model": ref.name, "bare_median_ns": bare_ns, "harness_median_ns": harness_ns,
               "overhead_ns": harness_ns - bare_ns, "overhead_share": (harness_ns - bare_ns) / bare_ns,
               "timer_scaffold_ns": scaffold_ns, "samples_each": ROUNDS * BLOCK}
    out = Path("reports/benchmarks/overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print("\n" + json.dumps(figures, indent=2))
    assert scaffold_ns < 1_000  # the timer pair itself must stay far below any model's latency
    assert abs(figures["overhead_share"]) < 0.05, figures  # regression guard; the measured figure is in the README
