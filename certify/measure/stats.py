"""Statistics of measurements: latency summaries and paired bootstrap confidence intervals."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

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


def percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
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


QUANTILES_PER_BLOCK = 101  # a longer block enters the bootstrap as these quantiles of itself
WINDOWS = 8  # consecutive stretches of a run compared with each other for the window interval
MIN_WINDOWS = 5  # df >= 4: fewer windows make the t quantile huge, and its expansion below less exact


def ratio_of_medians(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int, seed: int,
                     confidence: float, block: int = 1) -> tuple[float, tuple[float, float]]:
    """Speedup = median(baseline) / median(candidate), with a paired block-bootstrap interval.

    Samples are paired by position (they were taken interleaved) and resampled in whole blocks of
    ``block`` pairs: latencies come in plateaus that last a block or more (host states, cache and
    frequency changes), so single iterations are not independent and resampling them one by one
    would give intervals far narrower than the run-to-run spread. Resampling paired blocks keeps
    both that dependence and the machine drift common to both sides. Blocks longer than
    ``QUANTILES_PER_BLOCK`` are resampled as that many of their quantiles (the median of equally
    weighted blocks' quantiles is the median of their union to within a quantile step), which keeps
    the cost independent of the block length; the point estimate uses every sample.
    """
    return _block_bootstrap(*_paired_blocks(baseline, candidate, block), resamples=resamples, seed=seed,
                            confidence=confidence)


def _block_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int, seed: int,
                     confidence: float) -> tuple[float, tuple[float, float]]:
    """``ratio_of_medians`` of paired (blocks, block) arrays."""
    point = float(np.median(a) / np.median(b))
    a, b = _quantiles(a), _quantiles(b)
    blocks, width = a.shape

    def ratio(idx: np.ndarray) -> np.ndarray:
        rows = len(idx)
        return np.asarray(np.median(a[idx].reshape(rows, -1), axis=1) / np.median(b[idx].reshape(rows, -1), axis=1))

    estimates = bootstrap(blocks, width, resamples=resamples, seed=seed, estimate=ratio)
    return point, percentile_interval(estimates, confidence)


def _paired_blocks(baseline: np.ndarray, candidate: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The paired samples as (blocks, block) arrays, in the order they were taken; a partial last block is left
    out."""
    blocks = min(baseline.size, candidate.size) // block
    n = blocks * block
    return (np.asarray(baseline[:n], np.float64).reshape(blocks, block),
            np.asarray(candidate[:n], np.float64).reshape(blocks, block))


def _quantiles(blocks: np.ndarray) -> np.ndarray:
    if blocks.shape[1] <= QUANTILES_PER_BLOCK:
        return blocks
    return np.asarray(np.quantile(blocks, np.linspace(0.0, 1.0, QUANTILES_PER_BLOCK), axis=1).T)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom (closed forms), by bisection of the closed-form
    distribution function for 3, else by the Cornish-Fisher expansion of the normal one (Abramowitz & Stegun
    26.7.5): within 0.3% of the exact value for ``df`` >= 4 at the quantiles confidence intervals use (0.95-0.995)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if df == 3:
        return _bisect(lambda x: 0.5 + (x / (math.sqrt(3) * (1 + x * x / 3)) + math.atan(x / math.sqrt(3)))
                       / math.pi, p)
    z = NormalDist().inv_cdf(p)
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + float(sum(term / df ** (power + 1) for power, term in enumerate(terms)))


def _bisect(cdf: Callable[[float], float], p: float, lo: float = -1e3, hi: float = 1e3) -> float:
    """The x where an increasing ``cdf`` reaches ``p``."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _window_ratios(a: np.ndarray, b: np.ndarray) -> list[float]:
    """The speedup in each of up to ``WINDOWS`` consecutive stretches of whole paired blocks (at least two blocks
    each)."""
    count = min(WINDOWS, len(a) // 2)
    if count == 0:
        return []
    return [float(np.median(a[w]) / np.median(b[w])) for w in np.array_split(np.arange(len(a)), count)]


def window_interval(ratios: list[float], confidence: float) -> tuple[float, float] | None:
    """A t interval of the geometric mean of the windows' speedups, or None with fewer than ``MIN_WINDOWS``.

    Host states that last seconds (another tenant's job, a frequency step) slow one side more than the
    other for several blocks on end; a block bootstrap takes such stretches for chance and gives an
    interval that misses the run-to-run median. Windows long enough to hold whole stretches vary with
    them, and their spread widens the interval by as much as the host moved.
    """
    if len(ratios) < MIN_WINDOWS:
        return None
    logs = np.log(np.asarray(ratios))
    half = t_quantile(0.5 + confidence / 2.0, len(logs) - 1) * float(logs.std(ddof=1)) / np.sqrt(len(logs))
    center = float(logs.mean())
    return float(np.exp(center - half)), float(np.exp(center + half))


@dataclass(frozen=True)
class Speedup:
    """A paired run's speedup: the ratio of medians, and the widest of its (hierarchical) block-bootstrap, window
    and replicate intervals."""

    value: float
    interval: tuple[float, float]
    bootstrap: tuple[float, float]
    windows: tuple[float, float] | None
    window_ratios: list[float]
    replicates: tuple[float, float] | None = None
    replicate_ratios: list[float] = field(default_factory=list)


def speedup(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int, seed: int, confidence: float,
            block: int = 1, starts: list[int] | None = None) -> Speedup:
    """The paired run's speedup and its interval: the widest of the hierarchical block bootstrap (replicates, then
    blocks within them), the windows' t interval and the replicates' t interval. ``starts``: the first block of
    each replicate (one replicate when not given)."""
    a, b = _paired_blocks(baseline, candidate, block)
    groups = _replicate_slices(starts or [0], len(a))
    value = float(np.median(a) / np.median(b))
    boot = hierarchical_bootstrap(a, b, groups, resamples=resamples, seed=seed, confidence=confidence)
    ratios = _window_ratios(a, b)
    windows = window_interval(ratios, confidence)
    per_replicate = [float(np.median(a[g]) / np.median(b[g])) for g in groups]
    between = replicate_interval(per_replicate, confidence)
    found = [i for i in (boot, windows, between) if i is not None]
    interval = (min(i[0] for i in found), max(i[1] for i in found))
    return Speedup(value, interval, boot, windows, ratios, between, per_replicate)


def _replicate_slices(starts: list[int], blocks: int) -> list[slice]:
    """Each replicate's blocks (a replicate left without a whole block is dropped)."""
    edges = [*[min(s, blocks) for s in starts], blocks]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, groups: list[slice], *, resamples: int, seed: int,
                           confidence: float) -> tuple[float, float]:
    """Percentile interval of the ratio of medians under two-level resampling: each resample draws the replicates
    with replacement, then as many blocks as the run has, each from a drawn replicate (equally often) and within
    it with replacement. With one replicate it is the plain paired block bootstrap."""
    a, b = _quantiles(a), _quantiles(b)
    blocks, width = a.shape
    first = np.array([g.start for g in groups])
    count = np.array([g.stop - g.start for g in groups])
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_BOOTSTRAP_CELLS // max(1, blocks * width))
    parts = []
    for done in range(0, resamples, chunk):
        rows = min(chunk, resamples - done)
        drawn = rng.integers(0, len(groups), size=(rows, len(groups)))
        which = np.take_along_axis(drawn, rng.integers(0, len(groups), size=(rows, blocks)), axis=1)
        idx = first[which] + (rng.random((rows, blocks)) * count[which]).astype(np.int64)
        parts.append(np.median(a[idx].reshape(rows, -1), axis=1) / np.median(b[idx].reshape(rows, -1), axis=1))
    return percentile_interval(np.concatenate(parts), confidence)


def replicate_interval(ratios: list[float], confidence: float) -> tuple[float, float] | None:
    """A t interval (``len - 1`` degrees of freedom) of the geometric mean of the replicates' speedups: the
    between-process spread, which no resampling inside one process can see; None with fewer than two."""
    if len(ratios) < 2:
        return None
    logs = np.log(np.asarray(ratios))
    half = t_quantile(0.5 + confidence / 2.0, len(logs) - 1) * float(logs.std(ddof=1)) / np.sqrt(len(logs))
    center = float(logs.mean())
    return float(np.exp(center - half)), float(np.exp(center + half))


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
    return point, percentile_interval(finite, confidence) if finite.size else (point, point)


def drift(times_ns: np.ndarray) -> float:
    """Relative change of the median from the first to the last quarter of a run (0.1 = 10% slower)."""
    quarter = max(1, times_ns.size // 4)
    first, last = np.median(times_ns[:quarter]), np.median(times_ns[-quarter:])
    return float(last / first - 1.0) if first > 0 else 0.0


def theil_sen(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(slope, low, high): the Theil-Sen slope of ``y`` over ``x`` (the median of the slopes of every pair of points
    with distinct x) and Sen's distribution-free interval at ``confidence`` (the order statistics of those pairwise
    slopes that Kendall's tau bounds; ties are not corrected for, which only widens it). Points should be close to
    independent: give block summaries of a correlated series, not its raw samples. nan with fewer than 3 points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    i, j = np.triu_indices(x.size, k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    if x.size < 3 or not keep.any():
        return math.nan, math.nan, math.nan
    slopes = np.sort((y[j] - y[i])[keep] / dx[keep])
    n, pairs = x.size, slopes.size
    spread = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    low = max(0, math.floor((pairs - spread) / 2) - 1)  # ranks (N - C) / 2 and (N + C) / 2 + 1, from 1
    high = min(pairs - 1, math.ceil((pairs + spread) / 2))
    return float(np.median(slopes)), float(slopes[low]), float(slopes[high])
