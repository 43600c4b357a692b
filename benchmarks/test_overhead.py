"""Harness overhead per inference versus a bare ONNX Runtime loop on the same model, side by side.

- ``test_bare_session_run`` / ``test_backend_infer``: pytest-benchmark timings of ``InferenceSession.run``
  and of the harness backend's ``infer`` (the call the harness times), in one table;
- ``test_timed_loop_overhead``: the harness's real timed loop (``Worker.cmd_run``) against a bare
  ``perf_counter_ns`` + ``session.run`` loop on the smallest demo model, interleaved in blocks so machine drift hits
  both; reports the per-iteration overhead in ns and as a share of the model's median latency, and what the timing
  itself costs: one clock read, and the whole loop scaffold (clock pair, call, store) around a no-op model
  (target: below 1% of the smallest model's latency). Writes ``reports/benchmarks/overhead.json``;
- ``test_harness_matches_bare_onnxruntime``: the harness as it really runs (a ``WorkerClient`` worker process:
  load, feeds, ``run``) against a bare ``session.run`` loop in this process, for the smallest demo model (~70 us)
  and for a ~1 ms model (float32 MLP 256-1024-1024-1024-10, batch 20), same threads (1 intra-op, 1 inter-op),
  interleaved. Writes ``reports/benchmarks/native_onnxruntime.json``.
"""

from __future__ import annotations

import time
from typing import Any

import bench_support as bs
import numpy as np
import pytest

from certify.backends.onnxruntime import OnnxRuntimeBackend
from certify.measure.client import WorkerClient
from certify.measure.worker import Worker
from certify.plan import ModelRef

pytest.importorskip("onnxruntime")
ROUNDS, BLOCK = 30, 400
MLP_WIDTHS, MLP_BATCH = (256, 1024, 1024, 1024, 10), 20  # ~1 ms on one core of the reference VM
MLP_ROUNDS, MLP_BLOCK = 20, 150
SCAFFOLD_TARGET = 0.01  # the timing scaffold must cost below 1% of the smallest model's latency


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


def bare_loop(session, feeds, n: int, outputs: list[str] | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    return bs.timed_loop(lambda: session.run(outputs, feeds), n)


def clock_read_ns(n: int = 200_000) -> float:
    """What one ``perf_counter_ns`` read costs: the median gap between two consecutive reads."""
    clock, gaps = time.perf_counter_ns, np.empty(n, dtype=np.int64)
    for i in range(n):
        gaps[i] = -clock() + clock()
    return float(np.median(gaps))


def scaffold_ns(n: int = 100_000) -> float:
    """The harness's own timed loop around a model that does nothing: the clock pair, the call, the store."""
    empty = Worker()
    empty.backend, empty.feeds = type("Noop", (), {"infer": staticmethod(lambda feeds: None)})(), {"k": {}}
    return float(np.median(empty.cmd_run("k", n)))


def test_timed_loop_overhead(smallest_demo_model, benchmark_lock) -> None:  # type: ignore[no-untyped-def]
    load = bs.HostLoad()
    ref, feeds = smallest_demo_model
    session = session_for(ref)
    names = [o.name for o in session.get_outputs()]
    worker = Worker()
    worker.cmd_load(ref)
    worker.cmd_feeds("b", {"": feeds["pixels"]})
    results = bs.interleave({"bare": lambda: bare_loop(session, feeds, BLOCK),
                             "bare_named_outputs": lambda: bare_loop(session, feeds, BLOCK, names),
                             "harness": lambda: worker.cmd_run("b", BLOCK)}, ROUNDS)
    bare_ns, named_ns, harness_ns = (float(np.median(np.concatenate(results[k])))
                                     for k in ("bare", "bare_named_outputs", "harness"))
    clock_ns, loop_ns = clock_read_ns(), scaffold_ns()
    figures = {"model": ref.name, "bare_median_ns": bare_ns, "harness_median_ns": harness_ns,
               "overhead_ns": harness_ns - bare_ns, "overhead_percent": 100 * (harness_ns - bare_ns) / bare_ns,
               "bare_named_outputs_median_ns": named_ns,
               "overhead_vs_named_outputs_percent": 100 * (harness_ns - named_ns) / named_ns,
               "clock_read_ns": clock_ns, "timer_scaffold_ns": loop_ns,
               "timer_scaffold_percent": 100 * loop_ns / bare_ns, "target_percent": 100 * SCAFFOLD_TARGET,
               "samples_each": ROUNDS * BLOCK,
               "note": "bare = session.run(None, feeds), the usual call; the backend passes its output names, "
                       "which spares ORT building the list per call (bare_named_outputs)",
               "environment": bs.environment(benchmark_lock, load, threads=ref.threads or 1)}
    path = bs.write_report("overhead", figures)
    print(f"\noverhead ({ref.name}, median {bare_ns / 1e3:.1f} us): harness {figures['overhead_ns']:+.0f} ns "
          f"({figures['overhead_percent']:+.2f}%; {figures['overhead_vs_named_outputs_percent']:+.2f}% vs run with "
          f"output names); clock read {clock_ns:.0f} ns, timing scaffold {loop_ns:.0f} ns = "
          f"{figures['timer_scaffold_percent']:.3f}% of the latency (target < 1%) -> {path}")
    assert loop_ns < SCAFFOLD_TARGET * bare_ns, f"the timing scaffold costs over 1% of the latency: {figures}"
    assert abs(figures["overhead_percent"]) < 100 * bs.GUARD / 2, figures  # regression guard: 5%


@pytest.fixture(scope="module")
def one_ms_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRef, dict[str, np.ndarray]]:
    path = bs.build_mlp(tmp_path_factory.mktemp("onnxruntime") / "mlp.onnx", MLP_WIDTHS, MLP_BATCH)
    ref = ModelRef(name=f"mlp-b{MLP_BATCH}", path=path, framework="onnxruntime", device="cpu", threads=1)
    return ref, {"x": bs.mlp_input(MLP_WIDTHS, MLP_BATCH)}


def compare_with_bare(ref: ModelRef, feeds: dict[str, np.ndarray], rounds: int, block: int) -> dict[str, Any]:
    """The harness worker process against a bare session in this process, interleaved; ~10% untimed re-warm
    iterations before each block on both sides (as the harness's speed runs do)."""
    session = session_for(ref)
    rewarm = max(1, block // 10)
    with WorkerClient("harness", ref, timeout_s=300) as worker:
        loaded = worker.call("load", ref=ref)
        worker.call("feeds", key="speed", arrays={"": next(iter(feeds.values()))})

        def bare() -> np.ndarray:
            bare_loop(session, feeds, rewarm)
            return bare_loop(session, feeds, block)

        arms = {"harness": lambda: worker.call("run", key="speed", iterations=block, rewarm=rewarm), "bare": bare}
        for arm in arms.values():
            arm()
        results = bs.interleave(arms, rounds)
    batch = next(iter(feeds.values())).shape[0]
    harness, native = bs.latency_figures(results["harness"]), bs.latency_figures(results["bare"])
    return {"model": ref.name, "batch": batch, "threads": session.get_session_options().intra_op_num_threads,
            "harness_info_threads": loaded["info"]["intra_op_num_threads"], "rounds": rounds, "block": block,
            "harness": harness, "bare": native,
            "ratio": bs.latency_ratios(harness, native)}


def test_harness_matches_bare_onnxruntime(smallest_demo_model, one_ms_model, benchmark_lock) -> None:  # type: ignore[no-untyped-def]
    load = bs.HostLoad()
    (small, small_feeds), (mlp, mlp_feeds) = smallest_demo_model, one_ms_model
    models = [compare_with_bare(small, small_feeds, ROUNDS, BLOCK),
              compare_with_bare(mlp, mlp_feeds, MLP_ROUNDS, MLP_BLOCK)]
    figures = {"benchmark": "harness worker process vs a bare InferenceSession.run loop", "models": models,
               "throughput_unit": "inferences/s", "order": "interleaved, A B / B A",
               "target": bs.RULE,
               "environment": bs.environment(benchmark_lock, load)}
    path = bs.write_report("native_onnxruntime", figures)
    print("\nonnxruntime, harness vs bare session.run: " + "; ".join(
        f"{m['model']} median {m['harness']['median_ms'] * 1e3:.1f} vs {m['bare']['median_ms'] * 1e3:.1f} us "
        f"(x{m['ratio']['median_latency']['ratio']:.4f}, {bs.verdict(m['ratio']['median_latency']['ratio'])}), "
        f"throughput x{m['ratio']['throughput']['ratio']:.4f} ({bs.verdict(m['ratio']['throughput']['ratio'])})"
        for m in models) + f" -> {path}")
    for m in models:
        assert m["threads"] == m["harness_info_threads"], f"different intra-op threads: {m}"
        for what in ("quiet_blocks_latency", "quiet_blocks_throughput"):
            verdict = m["ratio"][what]
            assert verdict["within_guard"], bs.guard_message(f"{m['model']} {what}", verdict["ratio"], figures)
