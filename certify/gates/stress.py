"""The stress gate: sustained concurrent load on one loaded candidate, in its own worker.

The load itself runs inside the worker (``certify.measure.load``); this module picks the requests, bounds the run in
time, turns the worker's records into figures (``analyse``) and the figures into a verdict (``stress_gate``, a pure
function). The gate fails on any of: a failed request, p99 latency under load more than ``max_load_p99_ratio`` times
the p99 in isolation (closed loop, and open loop when ``[stress] rate`` > 0), completions per second in the last of
``windows`` windows more than ``max_throughput_decay`` below the first, resident memory shown to grow faster than
``max_memory_growth_mib_per_min`` after the warm-up (``memory_trend``: the lower bound of a Theil-Sen slope's 95%
interval over block medians), or a sampled output under load that differs from the same input's output in
isolation. The closed loop lasts long enough for each window to hold ``load.MIN_WINDOW_REQUESTS`` requests (a slow
model's run grows, up to ``load.MAX_GROWN_S``): a slope over two or three requests is a sawtooth's phase, not a trend.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from certify import verdict
from certify.measure import batching, stats
from certify.measure.client import open_worker
from certify.measure.load import MIN_WINDOW_REQUESTS
from certify.plan import Layout, Measure, Stress
from certify.policy import Policy
from certify.verdict import GateResult

if TYPE_CHECKING:
    from certify.gates.context import GateContext

MAX_DISTINCT_REQUESTS = 8
MIN_WINDOW_COMPLETIONS = 10  # fewer in the first window: the decay is not measurable (run longer)
MIN_MEMORY_BLOCKS = 6  # block medians a memory slope needs (fewer: not decisive, run longer)
MAX_MEMORY_BLOCKS = 20
BLOCK_REQUESTS = 2  # completions a memory block holds at least, on average: a per-request sawtooth averages out
CONFIDENCE = 0.95
DRAIN_S = 60.0  # how long a phase waits for its last requests before calling them hung
MARGIN_S = 30.0
EVIDENCE_POINTS = 120  # memory samples kept in the evidence
MIB = 1024 * 1024
SCHEDULING_FLOOR_MS = 1.0  # p99s below it count as it: sub-millisecond tails on a time-shared CPU are the scheduler's
Check = tuple[str, bool, str]  # (name, broken, what was measured against what limit, and why when broken)

CHECK_HINTS = {
    "errors": "reproduce the first error alone with the same input; a runtime that fails only under load shares "
              "state between calls",
    "p99": "latency under load: fewer threads per request, or fewer clients per core",
    "decay": "throughput falling over the run: look for caches or queues that grow per request, thermal or memory "
             "pressure; confirm with a longer run (--certify-soak SECONDS)",
    "memory": "memory growing under load is a leak until shown otherwise: look for per-request buffers kept "
              "alive (caches, histories, tensors held by callbacks); confirm with --certify-soak SECONDS",
    "outputs": "outputs differ when calls overlap: something is shared between concurrent calls without a lock "
               "(an output buffer, a custom op's state); serve one call at a time or give each thread its own "
               "session/request",
}


def distinct_requests(inputs: dict[str, np.ndarray], batch_size: int, layout: Layout | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """Up to ``MAX_DISTINCT_REQUESTS`` requests of ``batch_size`` consecutive dataset samples each, along each
    input's batch axis (one request with every sample when the dataset is smaller than a batch); a streaming
    model's request is one chunk step of those sequences from their initial state."""
    layout = layout or Layout()
    rows = batching.samples(layout, {k: v for k, v in inputs.items() if k not in layout.constants()})
    size = max(1, min(batch_size, rows))
    count = max(1, min(MAX_DISTINCT_REQUESTS, rows // size))
    return [batching.first_step(layout, batching.select(layout, inputs, slice(i * size, (i + 1) * size)))
            for i in range(count)]


def budget_s(stress: Stress, measure: Measure) -> tuple[float, float]:
    """(drain, whole call): how long a phase waits for requests still running at its end, and the deadline of the
    worker call that runs the load (isolation, each phase with its drain, and one request's allowance)."""
    from certify.measure.load import grown_bound, isolated_bounds

    drain = min(measure.timeout_s, DRAIN_S)
    opened = stress.duration_s + drain if stress.rate > 0 else 0.0
    return drain, isolated_bounds(stress.duration_s)[1] + grown_bound(stress.duration_s) + drain + opened \
        + measure.timeout_s + MARGIN_S


HOST_TIMING_CHECKS = frozenset({"p99", "decay"})  # checks that follow the host's other load, not only the model
BUSY_HOST_CORES = 0.5  # other processes keeping this many cores busy during the run make a timing failure suspect


def evaluate(ctx: GateContext) -> GateResult:
    """Load the candidate in a fresh worker, run the load there (``certify.measure.load.serve``) within a bounded
    time, and judge it. A worker that dies or overruns raises (the runner makes that the candidate's FAIL).

    When only timing checks (p99, decay) broke while other processes kept at least ``BUSY_HOST_CORES`` busy, the
    host may explain the failure: the run is measured once more, and the second verdict stands (both attempts are
    in the evidence). A leak, an error or a wrong output is never re-measured away."""
    attempts: list[dict[str, Any]] = []
    while True:
        figures, loaded, batch = _measure_once(ctx)
        result = stress_gate(figures, ctx.policy, ctx.hint)
        attempts.append({"verdict": result.verdict, "broken": result.details.get("broken", []),
                         "other_processes_cores": busiest_other_cores(figures)})
        if result.passed or len(attempts) == 2 or not host_may_explain(result, figures):
            break
    ctx.measurement.update(figures, load_s=loaded["load_s"], info=loaded["info"], batch_size=batch,
                           stress=asdict(ctx.plan.stress), attempts=attempts)
    return result


def _measure_once(ctx: GateContext) -> tuple[dict[str, Any], dict[str, Any], int]:
    case, stress, measure = ctx.case, ctx.plan.stress, ctx.plan.measure
    requests = distinct_requests(ctx.data()[0], case.model.dataset.speed_batch_size, case.model.layout)
    drain, deadline = budget_s(stress, measure)
    with open_worker("candidate", ctx.case.candidate, measure.timeout_s) as worker:
        loaded = worker.call("load", ref=ctx.case.candidate)
        keys = [f"stress-{i}" for i in range(len(requests))]
        for key, arrays in zip(keys, requests, strict=True):
            worker.call("feeds", key=key, arrays=arrays)
        served = worker.call("serve_load", timeout_s=deadline, keys=keys,
                             clients=stress.clients, duration_s=stress.duration_s, rate=stress.rate,
                             windows=stress.windows, sample_every=stress.sample_every, seed=measure.seed,
                             drain_s=drain, request="prompt" if case.model.dataset.text is not None else "infer")
    return analyse(served, stress.windows), loaded, batching.samples(case.model.layout, requests[0])


def busiest_other_cores(figures: dict[str, Any]) -> float | None:
    """The most cores other processes kept busy in any window of the run (None where unknown)."""
    seen = [c for phase in ("closed_loop", "open_loop") for c in (figures.get(phase, {}).get("other_processes_cores")
                                                                  or [])]
    isolated = figures.get("isolated", {}).get("other_processes_cores")
    seen += [isolated] if isolated is not None else []
    return max(seen) if seen else None


def host_may_explain(result: GateResult, figures: dict[str, Any]) -> bool:
    broken = set(result.details.get("broken", []))
    busy = busiest_other_cores(figures)
    return bool(broken) and broken <= HOST_TIMING_CHECKS and busy is not None and busy >= BUSY_HOST_CORES


def throughput_windows(completions: np.ndarray, windows: int, bucket_s: float) -> list[float]:
    """Completions per second in each of ``windows`` equal windows made of whole buckets."""
    per_window = np.asarray(completions, dtype=np.float64).reshape(windows, -1)
    return [float(c) for c in per_window.sum(axis=1) / (per_window.shape[1] * bucket_s)]


def throughput_decay(per_window: list[float]) -> float:
    """1 - last window's throughput / the first's (0.2 = 20% fewer completions per second at the end)."""
    first, last = per_window[0], per_window[-1]
    return 1.0 - last / first if first > 0 else 0.0


def memory_trend(times_s: np.ndarray, rss_bytes: np.ndarray, requests: int, after_s: float,
                 end_s: float) -> dict[str, Any]:
    """The resident set's trend after the warm-up (samples at or after ``after_s``, the first window), in MiB per
    minute. The rest of the run is cut into equal time blocks holding ``BLOCK_REQUESTS`` of its ``requests`` each on
    average (at most ``MAX_MEMORY_BLOCKS``), each summarised by its median sample: a per-request buffer's sawtooth
    looks the same in every block, while a leak raises every block's level. Over those medians: the Theil-Sen slope
    (one allocator step barely moves it) and Sen's ``CONFIDENCE`` interval. nan with too few blocks."""
    t, rss = np.asarray(times_s, np.float64), np.asarray(rss_bytes, np.float64) / MIB
    blocks = min(MAX_MEMORY_BLOCKS, max(0, requests) // BLOCK_REQUESTS) if end_s > after_s else 0
    edges = np.linspace(after_s, end_s, blocks + 1)
    points = [((first + last) / 2, float(np.median(rss[inside])))
              for first, last in itertools.pairwise(edges)
              if (inside := (t >= first) & (t < last if last < end_s else t <= last)).any()]
    slope, low, high = stats.theil_sen(np.array([p[0] for p in points]) / 60.0, np.array([p[1] for p in points]),
                                       CONFIDENCE)
    kept = rss[t >= after_s]
    return {"slope_mib_per_min": slope, "interval": [low, high], "confidence": CONFIDENCE, "blocks": len(points),
            "requests_after_warmup": int(requests), "after_s": after_s, "fit": "Theil-Sen over block medians",
            "growth_mib": float(kept[-1] - kept[0]) if kept.size else 0.0}


def thin(rows: np.ndarray, points: int) -> np.ndarray:
    """At most ``points`` rows, evenly spaced, the last one included."""
    if len(rows) <= points:
        return rows
    kept: np.ndarray = rows[np.unique(np.linspace(0, len(rows) - 1, points).round().astype(int))]
    return kept


def _p99(latency_ns: np.ndarray) -> float:
    return float(np.percentile(latency_ns, 99)) / 1e6 if latency_ns.size else float("nan")


def p99_ratio(load_ms: float, isolated_ms: float) -> float:
    """p99 under load / p99 in isolation, each taken as at least ``SCHEDULING_FLOOR_MS``: a request that waits one
    time slice of another thread on its core gains about a millisecond whatever the model, so below that a ratio
    of tails measures the host's scheduler (a 10 us model with a 90 us p99 under load is not 9x worse to serve)."""
    if not load_ms >= 0:
        return float("inf")  # no request completed under load
    return max(load_ms, SCHEDULING_FLOOR_MS) / max(isolated_ms, SCHEDULING_FLOOR_MS)


def _phase(phase: dict[str, Any], windows: int, reference_p99_ms: float, extra_ns: np.ndarray) -> dict[str, Any]:
    """A load phase's figures, its p99 compared with ``reference_p99_ms``; ``extra_ns`` are latencies of requests
    that never ran (their wait so far, a lower bound)."""
    latency = np.concatenate([phase["records"][:, 1], extra_ns])
    per_window = throughput_windows(phase["completions"], windows, phase["bucket_s"])
    p99 = _p99(latency)
    samples = np.asarray(phase["memory"], dtype=np.float64).reshape(-1, 4)
    return {
        "other_processes_cores": other_processes_cores(samples, windows, phase["duration_s"]),
        "latency": stats.summarize(latency), "service": stats.summarize(phase["records"][:, 2]),
        "p99_ms": p99, "reference_p99_ms": reference_p99_ms, "p99_ratio": p99_ratio(p99, reference_p99_ms),
        "p99_ratio_unfloored": p99 / reference_p99_ms if reference_p99_ms > 0 else float("inf"),
        "requests": int(phase["requests"]), "errors": int(phase["errors"]), "hung": int(phase["hung"]),
        "requests_per_s": float(np.sum(phase["completions"])) / phase["duration_s"],
        "windows_per_s": per_window, "throughput_decay": throughput_decay(per_window),
        "first_window_completions": int(np.asarray(phase["completions"]).reshape(windows, -1)[0].sum()),
        "duration_s": phase["duration_s"], "planned_duration_s": phase.get("planned_duration_s", phase["duration_s"]),
        "latency_samples_thinned_every": int(phase["thinned_stride"]),
    }


def other_processes_cores(samples: np.ndarray, windows: int, duration_s: float) -> list[float] | None:
    """How many cores other processes kept busy, on average, in each window: the host's busy CPU time minus this
    worker's own, per second (interpolated at the window bounds); None where the host's CPU time is unknown."""
    t_s, busy_s, own_s = samples[:, 0] / 1e9, samples[:, 2] / 1e3, samples[:, 3] / 1e9
    if len(t_s) < 2 or (busy_s < 0).any():
        return None
    bounds = np.linspace(0.0, duration_s, windows + 1)
    others = np.diff(np.interp(bounds, t_s, busy_s) - np.interp(bounds, t_s, own_s)) / np.diff(bounds)
    return [round(max(0.0, float(c)), 2) for c in others]


def _memory(phase: dict[str, Any], windows: int) -> dict[str, Any]:
    """A phase's memory trend after its first window (the warm-up: arenas and caches filling)."""
    samples = np.asarray(phase["memory"], dtype=np.float64).reshape(-1, 4)
    times_s, rss = samples[:, 0] / 1e9, samples[:, 1]
    completions = np.asarray(phase["completions"])
    after = phase["duration_s"] / windows
    trend = memory_trend(times_s, rss, int(completions[len(completions) // windows:].sum()), after,
                         phase["duration_s"])
    return {**trend, "samples_s_mib": [[round(t, 3), round(m / MIB, 3)]
                                       for t, m in thin(np.c_[times_s, rss], EVIDENCE_POINTS)]}


def _isolated_host(isolated: dict[str, Any]) -> float | None:
    """Cores other processes kept busy during the isolated run (read at its start and end)."""
    samples = np.asarray(isolated["memory"], dtype=np.float64).reshape(-1, 4)
    elapsed = (samples[-1, 0] - samples[0, 0]) / 1e9
    cores = other_processes_cores(samples, 1, elapsed + samples[0, 0] / 1e9) if elapsed > 0 else None
    return cores[0] if cores else None


def analyse(served: dict[str, Any], windows: int) -> dict[str, Any]:
    """The worker's records as the gate's figures."""
    isolated = served["isolated"]
    iso_p99 = _p99(isolated["records"][:, 1])
    closed = _phase(served["closed"], windows, iso_p99, np.empty(0, np.int64))
    phases = [served["isolated"], served["closed"]]
    figures: dict[str, Any] = {
        "clients": served["clients"], "served_one_at_a_time": served["serialized"], "request": served.get("request"),
        "executed_device": served["executed_device"], "distinct_requests": served["distinct_requests"],
        "host_cpus": served["host_cpus"],
        "isolated": {"latency": stats.summarize(isolated["records"][:, 1]), "p99_ms": iso_p99,
                     "other_processes_cores": _isolated_host(isolated),
                     "requests": int(isolated["requests"]), "errors": int(isolated["errors"])},
        "closed_loop": closed, "memory": _memory(served["closed"], windows),
    }
    if "open" in served:
        opened = served["open"]
        wake_p99 = _p99(opened["wake_lateness_ns"]) if opened["wake_lateness_ns"].size else 0.0
        figures["open_loop"] = {**_phase(opened, windows, iso_p99 + wake_p99, opened["unserved_wait_ns"]),
                                "rate": opened["rate"], "unserved": int(opened["unserved_wait_ns"].size),
                                "wake_lateness": stats.summarize(opened["wake_lateness_ns"]),
                                "wake_lateness_p99_ms": wake_p99,
                                "memory": _memory(opened, windows)}
        phases.append(opened)
    figures.update(
        requests=sum(int(p["requests"]) for p in phases), errors=sum(int(p["errors"]) for p in phases),
        hung=sum(int(p["hung"]) for p in phases), first_errors=list(served["first_errors"]),
        outputs={"compared": sum(int(p["compared"]) for p in phases),
                 "mismatched": sum(int(p["mismatched"]) for p in phases),
                 "max_abs_diff": max(float(p["max_abs_diff"]) for p in phases),
                 "isolated_repeat_max_abs_diff": float(served["reference_repeat_max_abs_diff"]),
                 "rtol": 1e-4, "atol": 1e-5},
        p99_ratio=max(closed["p99_ratio"], figures.get("open_loop", {}).get("p99_ratio", 0.0)),
    )
    return figures


def _errors_check(f: dict[str, Any]) -> Check:
    errors, first = f["errors"] + f["hung"], "; ".join(f["first_errors"][:3])
    return ("errors", errors > 0, f"{errors} of {f['requests']} requests failed"
            + (f" ({f['hung']} hung)" if f["hung"] else "") + (f": {first}" if first else ""))


def _host_during(f: dict[str, Any], phase: dict[str, Any]) -> str:
    """'; other processes kept 0.1 cores busy in isolation, 1.4 under load' when both are known."""
    alone, loaded = f["isolated"].get("other_processes_cores"), phase.get("other_processes_cores")
    if alone is None or not loaded:
        return ""
    return f"; other processes kept {alone:.2g} cores busy in isolation, {sum(loaded) / len(loaded):.2g} under load"


def _p99_check(f: dict[str, Any], name: str, phase: dict[str, Any], policy: Policy) -> Check:
    reference = f"{f['isolated']['p99_ms']:.3g} ms isolated" + (
        f" + {phase['wake_lateness_p99_ms']:.3g} ms host wake-up" if "wake_lateness_p99_ms" in phase else "")
    floored = " (p99s under 1 ms count as 1 ms)" \
        if min(phase["p99_ms"], phase["reference_p99_ms"]) < SCHEDULING_FLOOR_MS else ""
    unserved = f", {phase['unserved']} arrivals never served (counted with their wait)" \
        if phase.get("unserved") else ""
    broken = not phase["p99_ratio"] <= policy.max_load_p99_ratio
    return ("p99", broken, f"{name} p99 {phase['p99_ms']:.3g} ms vs {reference}: {phase['p99_ratio']:.3g}x{floored}"
            f"{unserved} (max {policy.max_load_p99_ratio:g}x{_host_during(f, phase) if broken else ''})")


def _decay_check(f: dict[str, Any], policy: Policy) -> Check:
    closed = f["closed_loop"]
    few = closed["first_window_completions"] < MIN_WINDOW_COMPLETIONS
    broken = few or closed["throughput_decay"] > policy.max_throughput_decay
    others = closed.get("other_processes_cores")
    host = (f"; other processes kept {others[0]:.2g} -> {others[-1]:.2g} of {f.get('host_cpus') or '?'} cores busy"
            if others and broken else "")
    return ("decay", broken, f"throughput decay {closed['throughput_decay']:.1%} (max "
            f"{policy.max_throughput_decay:.0%}; " + " -> ".join(f"{w:.4g}" for w in closed["windows_per_s"])
            + f" requests/s{host})" + (f": not decisive, {closed['first_window_completions']} completions in the "
                                       "first window (run longer)" if few else ""))


def _memory_check(f: dict[str, Any], policy: Policy) -> Check:
    """Broken when the memory slope's lower bound exceeds the limit (growth shown, not merely possible), or when
    too few blocks were measured to tell."""
    mem, limit = f["memory"], policy.max_memory_growth_mib_per_min
    low, high = mem["interval"]
    undecided = mem["blocks"] < MIN_MEMORY_BLOCKS or not np.isfinite(low)
    return ("memory", undecided or low > limit,
            f"memory slope {mem['slope_mib_per_min']:.3g} MiB/min [{low:.3g}, {high:.3g}] (Theil-Sen over "
            f"{mem['blocks']} blocks of the {mem['requests_after_warmup']} requests after a {mem['after_s']:.3g} s "
            f"warm-up; a leak when the {mem.get('confidence', CONFIDENCE):.0%} lower bound exceeds {limit:g})"
            + (f": not decisive, fewer than {MIN_MEMORY_BLOCKS} blocks of {BLOCK_REQUESTS} requests (run longer)"
               if undecided else ""))


def _outputs_check(f: dict[str, Any]) -> Check:
    out = f["outputs"]
    return ("outputs", out["mismatched"] > 0 or out["compared"] == 0,
            f"{out['mismatched']} of {out['compared']} sampled outputs differ from isolation (max abs diff "
            f"{out['max_abs_diff']:.3g}, rtol 1e-4, atol 1e-5)")


def _checks(f: dict[str, Any], policy: Policy) -> list[Check]:
    loops = [("closed loop", f["closed_loop"])] + ([("open loop", f["open_loop"])] if "open_loop" in f else [])
    return [_errors_check(f), *(_p99_check(f, name, phase, policy) for name, phase in loops),
            _decay_check(f, policy), _memory_check(f, policy), _outputs_check(f)]


def stress_gate(figures: dict[str, Any], policy: Policy, hint: str) -> GateResult:
    """FAIL listing every broken check, or PASS with every figure."""
    checks = _checks(figures, policy)
    closed = figures["closed_loop"]
    planned = closed.get("planned_duration_s", closed["duration_s"])
    grown = f" (grown from {planned:.3g} s for {MIN_WINDOW_REQUESTS} requests a window)" \
        if closed["duration_s"] > planned + 0.5 else ""
    load = (f"{figures['clients']} clients for {closed['duration_s']:.3g} s{grown}, {closed['requests_per_s']:.4g} "
            f"requests/s" + (" (a request: one prompt up to its first token)"
                             if figures.get("request", "").startswith("one prompt") else "")
            + (f", open loop at {figures['open_loop']['rate']:g}/s" if "open_loop" in figures else "")
            + (", served one at a time through a lock (the backend is not thread-safe)"
               if figures["served_one_at_a_time"] else ""))
    details = {k: figures.get(k) for k in ("clients", "requests", "errors", "first_errors", "outputs",
                                           "served_one_at_a_time", "executed_device", "request")} | {
        "closed_loop_p99_ms": closed["p99_ms"], "isolated_p99_ms": figures["isolated"]["p99_ms"],
        "throughput_decay": closed["throughput_decay"], "windows_per_s": closed["windows_per_s"],
        "requests_per_s": closed["requests_per_s"], "memory_slope_mib_per_min": figures["memory"]["slope_mib_per_min"],
        "memory_slope_interval": figures["memory"]["interval"],
        "other_processes_cores": closed.get("other_processes_cores"),
        "broken": list(dict.fromkeys(name for name, broken, _ in checks if broken))}
    broken = [(name, text) for name, broken, text in checks if broken]
    if broken:
        advice = "; ".join(dict.fromkeys([hint] * bool(hint) + [CHECK_HINTS[name] for name, _ in broken]))
        return GateResult("stress", verdict.FAIL, f"under load ({load}): " + "; ".join(t for _, t in broken),
                          figures["p99_ratio"], None, policy.max_load_p99_ratio, "<=", "x", advice, details)
    return GateResult("stress", verdict.PASS, f"sustained load held ({load}): " + "; ".join(t for _, _, t in checks),
                      figures["p99_ratio"], None, policy.max_load_p99_ratio, "<=", "x", "", details)
