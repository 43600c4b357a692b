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


def paired_resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """Index rows for a paired bootstrap: each row draws n pair indices with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def ratio_of_medians(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int, seed: int,
                     confidence: float) -> tuple[float, tuple[float, float]]:
    """Speedup = median(baseline) / median(candidate), with a paired bootstrap interval.

    Samples are paired by position (they were taken interleaved), so resampling pairs keeps
    machine drift common to both sides.
    """
    n = min(baseline.size, candidate.size)
    a, b = np.asarray(baseline[:n], np.float64), np.asarray(candidate[:n], np.float64)
    point = float(np.median(a) / np.median(b))
    idx = paired_resamples(n, resamples, seed)
    estimates = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return point, _interval(estimates, confidence)


def paired_statistic(reduce: Callable[[np.ndarray], np.ndarray], base_scores: np.ndarray,
                     cand_scores: np.ndarray, combine: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                     resamples: int, seed: int, confidence: float) -> tuple[float, tuple[float, float]]:
    """A statistic of two paired per-sample score vectors (e.g. accuracy retention) with its interval.

    ``reduce`` turns score rows into metric values; ``combine(base, cand)`` turns those into the statistic.
    """
    point = float(combine(reduce(base_scores[None, :]), reduce(cand_scores[None, :]))[0])
    idx = paired_resamples(base_scores.size, resamples, seed)
    estimates = combine(reduce(base_scores[idx]), reduce(cand_scores[idx]))
    finite = estimates[np.isfinite(estimates)]
    return point, _interval(finite, confidence) if finite.size else (point, point)


def drift(times_ns: np.ndarray) -> float:
    """Relative change of the median from the first to the last quarter of a run (0.1 = 10% slower)."""
    quarter = max(1, times_ns.size // 4)
    first, last = np.median(times_ns[:quarter]), np.median(times_ns[-quarter:])
    return float(last / first - 1.0) if first > 0 else 0.0
