"""certify.measure.stats: latency summaries, paired bootstrap intervals and drift."""

from __future__ import annotations

import numpy as np
import pytest

from certify.measure import stats

RESAMPLES = 1000


def _paired(n: int, ratio: float, seed: int, sigma: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Baseline ~ lognormal * ratio ms, candidate ~ lognormal * 1 ms (in ns), independent noise."""
    rng = np.random.default_rng(seed)
    base = 1e6 * ratio * rng.lognormal(0.0, sigma, n)
    cand = 1e6 * rng.lognormal(0.0, sigma, n)
    return base, cand


def _ratio(base: np.ndarray, cand: np.ndarray, seed: int = 0) -> tuple[float, tuple[float, float]]:
    return stats.ratio_of_medians(base, cand, resamples=RESAMPLES, seed=seed, confidence=0.95)


# --- summarize -------------------------------------------------------------------------------------------


def test_summarize_known_array_in_ms() -> None:
    times_ns = np.arange(1, 101, dtype=np.int64) * 1_000_000  # 1..100 ms
    s = stats.summarize(times_ns)
    # numpy linear interpolation on 1..100: p = 1 + 99 * q
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    # sample stdev (ddof=1) of 1..n is sqrt(n(n+1)/12) = sqrt(841.67)
    assert s["stdev_ms"] == pytest.approx(np.sqrt(100 * 101 / 12))
    assert s["cv"] == pytest.approx(np.sqrt(100 * 101 / 12) / 50.5)
    assert (s["min_ms"], s["max_ms"], s["n"]) == (1.0, 100.0, 100.0)


def test_summarize_does_not_depend_on_order() -> None:
    times = np.random.default_rng(1).lognormal(14, 0.3, 500)
    shuffled = np.random.default_rng(2).permutation(times)
    assert stats.summarize(times) == pytest.approx(stats.summarize(shuffled))


def test_summarize_single_sample_has_zero_spread() -> None:
    s = stats.summarize(np.array([5_000_000]))
    assert s["p50_ms"] == s["p99_ms"] == s["mean_ms"] == 5.0
    assert s["stdev_ms"] == 0.0 and s["cv"] == 0.0 and s["robust_cv"] == 0.0 and s["n"] == 1.0


def test_summarize_empty_is_empty_dict() -> None:
    assert stats.summarize(np.array([])) == {}


# --- ratio_of_medians --------------------------------------------------------------------------------------


def test_ratio_of_medians_recovers_known_speedup() -> None:
    base, cand = _paired(2000, 3.0, seed=0)
    point, (low, high) = _ratio(base, cand)
    assert point == pytest.approx(3.0, rel=0.03)
    assert low <= point <= high
    assert low < 3.0 < high
    assert low > 2.0 and high < 4.0


def test_ratio_of_medians_interval_is_roughly_calibrated() -> None:
    """Over 40 independent runs a 95% interval should cover the true ratio in most of them."""
    covered = 0
    for seed in range(40):
        base, cand = _paired(300, 3.0, seed=100 + seed)
        _, (low, high) = stats.ratio_of_medians(base, cand, resamples=400, seed=seed, confidence=0.95)
        covered += low <= 3.0 <= high
    assert covered >= 33


def test_ratio_of_medians_no_speedup_interval_contains_one() -> None:
    base, cand = _paired(1000, 1.0, seed=11)
    point, (low, high) = _ratio(base, cand)
    assert point == pytest.approx(1.0, rel=0.05)
    assert low < 1.0 < high


def test_ratio_of_medians_interval_narrows_with_more_samples() -> None:
    base, cand = _paired(2000, 3.0, seed=3)
    _, (lo_small, hi_small) = _ratio(base[:100], cand[:100])
    _, (lo_big, hi_big) = _ratio(base, cand)
    # width shrinks ~ 1/sqrt(n): sqrt(20) ~ 4.5x; demand at least 2x
    assert (hi_big - lo_big) < (hi_small - lo_small) / 2


def test_ratio_of_medians_is_deterministic_for_a_seed() -> None:
    base, cand = _paired(500, 2.0, seed=5)
    assert _ratio(base, cand, seed=42) == _ratio(base, cand, seed=42)
    assert _ratio(base, cand, seed=42)[1] != _ratio(base, cand, seed=43)[1]


def test_ratio_of_medians_pairing_cancels_common_drift() -> None:
    """A drift factor shared by each pair cancels under paired resampling; breaking the pairs widens the CI."""
    rng = np.random.default_rng(9)
    n = 400
    shared = rng.lognormal(0.0, 0.5, n)  # machine speed varies a lot over the run
    base = 3e6 * shared * rng.lognormal(0.0, 0.02, n)
    cand = 1e6 * shared * rng.lognormal(0.0, 0.02, n)
    _, (lo_p, hi_p) = _ratio(base, cand)
    _, (lo_u, hi_u) = _ratio(base, rng.permutation(cand))
    assert lo_p < 3.0 < hi_p
    assert (hi_p - lo_p) < (hi_u - lo_u) / 2


def test_ratio_of_medians_uses_the_common_prefix_of_unequal_runs() -> None:
    base, cand = _paired(300, 2.0, seed=4)
    longer = np.concatenate([base, np.full(100, 1e12)])  # trailing unpaired samples must be ignored
    assert _ratio(longer, cand) == _ratio(base, cand)


# --- paired_statistic --------------------------------------------------------------------------------------


def _mean(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows.mean(axis=-1))


def test_paired_statistic_ratio_of_means() -> None:
    base = np.ones(200)
    cand = np.ones(200)
    cand[np.random.default_rng(0).choice(200, 40, replace=False)] = 0.0  # 80% kept
    point, (low, high) = stats.paired_statistic(_mean, base, cand, lambda b, c: c / b,
                                                resamples=RESAMPLES, seed=0, confidence=0.95)
    assert point == pytest.approx(0.8)
    assert low < 0.8 < high
    assert low > 0.7 and high < 0.9


def test_paired_statistic_identical_scores_give_a_degenerate_interval() -> None:
    scores = np.random.default_rng(1).integers(0, 2, 100).astype(float)
    scores[0] = 1.0
    point, interval = stats.paired_statistic(_mean, scores, scores.copy(), lambda b, c: c - b,
                                             resamples=RESAMPLES, seed=0, confidence=0.95)
    assert point == 0.0 and interval == (0.0, 0.0)


def test_paired_statistic_drops_non_finite_resamples() -> None:
    # baseline mean is 0 in resamples that miss its single 1 -> c/b is inf/nan there; interval stays finite
    base = np.zeros(10)
    base[0] = 1.0
    cand = base.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        point, (low, high) = stats.paired_statistic(_mean, base, cand, lambda b, c: c / b,
                                                    resamples=RESAMPLES, seed=0, confidence=0.95)
    assert point == 1.0
    assert np.isfinite(low) and np.isfinite(high) and low == high == 1.0


# --- drift -------------------------------------------------------------------------------------------------


def test_drift_detects_a_slowdown_in_the_last_quarter() -> None:
    rng = np.random.default_rng(2)
    times = 1e6 * rng.lognormal(0.0, 0.02, 400)
    times[300:] *= 1.5
    assert stats.drift(times) == pytest.approx(0.5, abs=0.03)


def test_drift_of_a_flat_series_is_about_zero() -> None:
    times = 1e6 * np.random.default_rng(3).lognormal(0.0, 0.05, 400)
    assert abs(stats.drift(times)) < 0.02


def test_drift_is_negative_when_the_run_speeds_up() -> None:
    times = np.full(100, 2e6)
    times[75:] = 1e6
    assert stats.drift(times) == pytest.approx(-0.5)


def test_drift_ignores_the_middle_of_the_run() -> None:
    times = np.full(100, 1e6)
    times[30:70] = 9e6
    assert stats.drift(times) == 0.0


def _plateaus(rng: np.random.Generator, blocks: int, block: int, scale: float) -> np.ndarray:
    """Latencies whose level changes from block to block (host states), plus small per-iteration noise."""
    levels = rng.lognormal(0, 0.15, blocks).repeat(block)
    return scale * levels * rng.lognormal(0, 0.01, blocks * block)


def test_block_bootstrap_covers_the_truth_where_per_iteration_resampling_is_overconfident() -> None:
    covered = {1: 0, 100: 0}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        base, cand = _plateaus(rng, 40, 100, 3e5), _plateaus(rng, 40, 100, 1e5)
        for block in covered:
            _, (low, high) = stats.ratio_of_medians(base, cand, resamples=300, seed=seed, confidence=0.95, block=block)
            covered[block] += low <= 3.0 <= high
    assert covered[100] >= 25  # close to the nominal 95% of 30
    assert covered[1] <= 15  # treating plateaus as independent iterations misses the truth most of the time


def test_block_bootstrap_memory_is_bounded_on_long_runs() -> None:
    rng = np.random.default_rng(0)
    base, cand = 3e5 * rng.lognormal(0, 0.05, 200_000), 1e5 * rng.lognormal(0, 0.05, 200_000)
    point, (low, high) = stats.ratio_of_medians(base, cand, resamples=200, seed=0, confidence=0.95, block=500)
    assert low <= point <= high and 2.9 < point < 3.1
    assert stats.MAX_BOOTSTRAP_CELLS // 200_000 >= 1  # 20 rows of 200k values at a time, not 200 x 200k


# --- speedup: block bootstrap and window interval --------------------------------------------------------


@pytest.mark.parametrize(("p", "df", "table"), [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182),
                                                 (0.995, 2, 9.925), (0.995, 3, 5.841), (0.975, 4, 2.776),
                                                 (0.975, 5, 2.571), (0.975, 7, 2.365),
                                                 (0.975, 30, 2.042), (0.995, 4, 4.604), (0.995, 7, 3.499),
                                                 (0.95, 5, 2.015)])
def test_t_quantile_matches_the_table(p: float, df: int, table: float) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(table, rel=0.003)


def _slow_states(rng: np.random.Generator, blocks: int, block: int, scale: float, stretch: int) -> np.ndarray:
    """Host states lasting ``stretch`` blocks on end, each slowing this side by 0-15% (another tenant's job)."""
    states = 1 + rng.uniform(0, 0.15, blocks // stretch + 1).repeat(stretch)[:blocks]
    return scale * states.repeat(block) * rng.lognormal(0, 0.02, blocks * block)


def test_window_interval_covers_the_truth_when_slow_host_states_hit_one_side() -> None:
    covered = {"bootstrap": 0, "interval": 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        base, cand = _slow_states(rng, 32, 100, 3e5, 8), 1e5 * rng.lognormal(0, 0.02, 3200)
        found = stats.speedup(base, cand, resamples=400, seed=seed, confidence=0.95, block=100)
        truth = 3.0 * 1.075  # the baseline's long-run median level
        covered["bootstrap"] += found.bootstrap[0] <= truth <= found.bootstrap[1]
        covered["interval"] += found.interval[0] <= truth <= found.interval[1]
        assert found.windows is not None and len(found.window_ratios) == stats.WINDOWS
    assert covered["bootstrap"] <= 20  # stretches of 8 blocks look like chance to a block bootstrap
    assert covered["interval"] >= 34  # the windows' spread restores close to the nominal 95%


def test_window_interval_costs_little_width_on_a_steady_host() -> None:
    rng = np.random.default_rng(5)
    base, cand = 3e5 * rng.lognormal(0, 0.05, 3200), 1e5 * rng.lognormal(0, 0.05, 3200)
    found = stats.speedup(base, cand, resamples=400, seed=0, confidence=0.95, block=100)
    boot_width, width = found.bootstrap[1] / found.bootstrap[0], found.interval[1] / found.interval[0]
    assert found.interval[0] <= found.value <= found.interval[1]
    assert width - 1 < 1.5 * (boot_width - 1)


def test_too_few_windows_leave_the_bootstrap_interval_alone() -> None:
    rng = np.random.default_rng(6)
    base, cand = 3e5 * rng.lognormal(0, 0.05, 800), 1e5 * rng.lognormal(0, 0.05, 800)
    found = stats.speedup(base, cand, resamples=200, seed=0, confidence=0.95, block=100)  # 8 blocks: 4 windows
    assert len(found.window_ratios) == 4 and found.windows is None
    assert found.interval == found.bootstrap


def test_long_blocks_are_resampled_as_quantiles_with_the_same_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    base, cand = _plateaus(rng, 30, 2000, 3e5), _plateaus(rng, 30, 2000, 1e5)
    point, summarized = stats.ratio_of_medians(base, cand, resamples=300, seed=1, confidence=0.95, block=2000)
    monkeypatch.setattr(stats, "QUANTILES_PER_BLOCK", 10**6)
    exact_point, exact = stats.ratio_of_medians(base, cand, resamples=300, seed=1, confidence=0.95, block=2000)
    assert point == exact_point  # the point estimate always uses every sample
    assert summarized == pytest.approx(exact, rel=0.002)


# --- between processes: replicates of fresh worker pairs ---------------------------------------------------


def _replicated(rng: np.random.Generator, replicates: int, blocks: int, block: int, spread: float
                ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Each replicate (a fresh process pair) runs the baseline at its own speed: the process's offset, log-normal
    with ``spread``, lasts the whole replicate (where its buffers landed, the core its threads took)."""
    base, cand, starts = [], [], []
    for r in range(replicates):
        starts.append(r * blocks)
        offset = rng.lognormal(0, spread)
        base.append(3e5 * offset * rng.lognormal(0, 0.03, blocks * block))
        cand.append(1e5 * rng.lognormal(0, 0.03, blocks * block))
    return np.concatenate(base), np.concatenate(cand), starts


def test_replicates_cover_the_truth_when_each_process_has_its_own_speed() -> None:
    """A host whose processes differ by ~5%: one pair's interval (blocks, windows) misses the long-run speedup
    most of the time; three replicates' interval covers it near the nominal 95%."""
    covered = {"one pair": 0, "replicates": 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        base, cand, starts = _replicated(rng, 3, 12, 100, 0.05)
        single = stats.speedup(base[:1200], cand[:1200], resamples=300, seed=seed, confidence=0.95, block=100)
        found = stats.speedup(base, cand, resamples=300, seed=seed, confidence=0.95, block=100, starts=starts)
        covered["one pair"] += single.interval[0] <= 3.0 <= single.interval[1]
        covered["replicates"] += found.interval[0] <= 3.0 <= found.interval[1]
        assert len(found.replicate_ratios) == 3 and found.replicates is not None
    assert covered["one pair"] <= 16
    assert covered["replicates"] >= 36


def test_replicates_of_one_process_speed_cost_little_width() -> None:
    rng = np.random.default_rng(3)
    base, cand, starts = _replicated(rng, 3, 12, 100, 0.0)
    found = stats.speedup(base, cand, resamples=300, seed=0, confidence=0.95, block=100, starts=starts)
    assert found.interval[0] <= 3.0 <= found.interval[1] and found.interval[1] / found.interval[0] < 1.06


def test_one_replicate_is_the_plain_block_bootstrap() -> None:
    rng = np.random.default_rng(4)
    base, cand = 3e5 * rng.lognormal(0, 0.05, 1600), 1e5 * rng.lognormal(0, 0.05, 1600)
    plain = stats.speedup(base, cand, resamples=300, seed=2, confidence=0.95, block=100)
    assert plain.replicates is None and plain.replicate_ratios == [pytest.approx(plain.value)]
    point, interval = stats.ratio_of_medians(base, cand, resamples=300, seed=2, confidence=0.95, block=100)
    assert plain.value == point and plain.bootstrap == pytest.approx(interval, rel=0.02)


def test_theil_sen_slope_and_sens_interval() -> None:
    x = np.arange(20.0)
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        slope, low, high = stats.theil_sen(x, 2.0 * x + rng.normal(0.0, 1.0, x.size), 0.95)
        assert low <= slope <= high
        covered += low <= 2.0 <= high
    assert covered >= 180  # about 95% of intervals hold the true slope
    outlier = 2.0 * x
    outlier[5] += 1000.0  # one wild point barely moves it
    assert stats.theil_sen(x, outlier, 0.95)[0] == pytest.approx(2.0)
    assert stats.theil_sen(x, np.zeros(20), 0.95) == (0.0, 0.0, 0.0)
    assert all(np.isnan(v) for v in stats.theil_sen(x[:2], x[:2], 0.95))
    assert all(np.isnan(v) for v in stats.theil_sen(np.ones(5), x[:5], 0.95))  # no two distinct x
