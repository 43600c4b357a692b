"""Statistics of measurements: latency summaries and paired bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize(times_ns: np.ndarray) -> dict[str, float]:
    """Latency summary in milliseconds: percentiles, mean, stdev, coefficient of variation (classic and robust).

    ``robust_cv`` = 1.4826 * MAD / median: the spread of typical iterations, which a handful of multi-millisecond
    host preemptions cannot dominate (they inflate the classic ``cv`` by orders of magnitude on shared machines;
    the tail is bounded separately through p99/p50).
    """
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        return {}
    pct = np.percentile(ms, PERCENTILES)
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    summary = {f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, pct, strict=True)}
    median = float(pct[0])
    mad = float(np.median(np.abs(ms - median)))
    summary.update(mean_ms=mean, stdev_ms=std, cv=std / mean if mean > 0 else 0.0,
                   robust_cv=1.4826 * mad / median if median > 0 else 0.0,
                   min_ms=float(ms.min()), max_ms=float(ms.max()), n=float(ms.size))
    return summary


def _interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(estimates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


MAX_BOOTSTRAP_CELLS = 4_000_000  # resampled values held at once; bounds memory whatever the data size


def bootstrap(units: int, values_per_unit: int, *, resamples: int, seed: int,
              estimate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``resamples`` estimates, each from ``units`` unit indices drawn with replacement, computed in chunks.

    ``estimate`` maps an (rows, units) index array to one estimate per row.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_BOOTSTRAP_CELLS // max(1, units * values_per_unit))
    parts = [estimate(rng.integers(0, units, size=(min(chunk, resamples - start), units)))
             for start in range(0, resamples, chunk)]
    return np.concatenate(parts)


def ratio_of_medians(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int, seed: int,
                     confidence: float, block: int = 1) -> tuple[float, tuple[float, float]]:
    """Speedup = median(baseline) / median(candidate), with a paired block-bootstrap interval.

    Samples are paired by position (they were taken interleaved) and resampled in whole blocks of
    ``block`` pairs: latencies come in plateaus that last a block or more (host states, cache and
    frequency changes), so single iterations are not independent and resampling them one by one
    would give intervals far narrower than the run-to-run spread. Resampling paired blocks keeps
    both that dependence and the machine drift common to both sides.
    """
    blocks = min(baseline.size, candidate.size) // block
    n = blocks * block
    a = np.asarray(baseline[:n], np.float64).reshape(blocks, block)
    b = np.asarray(candidate[:n], np.float64).reshape(blocks, block)
    point = float(np.median(a) / np.median(b))

    def ratio(idx: np.ndarray) -> np.ndarray:
        rows = len(idx)
        return np.asarray(np.median(a[idx].reshape(rows, n), axis=1) / np.median(b[idx].reshape(rows, n), axis=1))

    estimates = bootstrap(blocks, block, resamples=resamples, seed=seed, estimate=ratio)
    return point, _interval(estimates, confidence)


def paired_statistic(reduce: Callable[[np.ndarray], np.ndarray], base_scores: np.ndarray,
                     cand_scores: np.ndarray, combine: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                     resamples: int, seed: int, confidence: float) -> tuple[float, tuple[float, float]]:
    """A statistic of two paired per-sample score vectors (e.g. accuracy retention) with its interval.

    ``reduce`` turns score rows into metric values; ``combine(base, cand)`` turns those into the statistic.
    """
    point = float(combine(reduce(base_scores[None, :]), reduce(cand_scores[None, :]))[0])
    estimates = bootstrap(base_scores.size, 1, resamples=resamples, seed=seed,
                          estimate=lambda idx: combine(reduce(base_scores[idx]), reduce(cand_scores[idx])))
    finite = estimates[np.isfinite(estimates)]
    return point, _interval(finite, confidence) if finite.size else (point, point)


def drift(times_ns: np.ndarray) -> float:
    """Relative change of the median from the first to the last quarter of a run (0.1 = 10% slower)."""
    quarter = max(1, times_ns.size // 4)
    first, last = np.median(times_ns[:quarter]), np.median(times_ns[-quarter:])
    return float(last / first - 1.0) if first > 0 else 0.0
