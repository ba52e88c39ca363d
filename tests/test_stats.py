"""Statistics of the reports: interval coverage by simulation, paired tests, Holm, aggregates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gabench.reporting import (
    Interval,
    aggregate_scores,
    convergence_of,
    holm,
    mean_interval,
    median_interval,
    min_seeds_for_call,
    paired_test,
    probability_of_improvement,
    roc_auc_rows,
    score_profile,
    t_interval,
    t_interval_columns,
)

# --------------------------------------------------------------------------- coverage
#: (name, sampler(rng, size), true mean). The skewed case is a lognormal with sigma 0.25
#: (skewness 0.78). Strongly skewed data (exponential, skewness 2) are covered by no interval at
#: 3-10 values: the t interval reaches about 88-90% there, the percentile bootstrap less
#: (test_t_interval_beats_the_percentile_bootstrap_on_exponential_data).
DISTRIBUTIONS = [
    ("normal", lambda g, size: g.normal(2.0, 0.5, size), 2.0),
    ("lognormal", lambda g, size: g.lognormal(0.0, 0.25, size), float(np.exp(0.25 ** 2 / 2))),
]


def _coverage(sampler, mean: float, n: int, reps: int, seed: int) -> float:
    # t_interval_columns is t_interval applied to each column (test_t_interval_columns_match_...):
    # one call covers all replicates, so the simulation takes milliseconds
    g = np.random.default_rng(seed)
    low, high = t_interval_columns(sampler(g, (n, reps)))
    return float(np.mean((low <= mean) & (mean <= high)))


@pytest.mark.parametrize("name,sampler,mean", DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS])
@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_covers_the_mean_at_small_n(name, sampler, mean, n):
    cover = _coverage(sampler, mean, n, reps=20_000, seed=n)
    assert cover >= 0.93, (name, n, cover)
    spot = np.mean([(lambda iv: iv.low <= mean <= iv.high)(t_interval(sampler(np.random.default_rng(i), n)))
                    for i in range(300)])  # the scalar function used by the reports, on a few samples
    assert spot >= 0.9


@pytest.mark.parametrize("n", [3, 5, 10])
def test_paired_interval_covers_the_true_difference(n):
    # seed effects shared by both methods (pairing) plus skewed method noise; true difference 0.1
    g = np.random.default_rng(100 + n)
    reps, shift = 20_000, 0.1
    seed_effect = g.normal(0.0, 1.0, (n, reps))
    base = seed_effect + g.lognormal(0.0, 0.25, (n, reps))
    method = seed_effect + g.lognormal(0.0, 0.25, (n, reps)) + shift
    low, high = t_interval_columns(method - base)
    assert np.mean((low <= shift) & (shift <= high)) >= 0.93
    one = paired_test(method[:, 0], base[:, 0], lower_is_better=True).diff  # the same interval
    assert (one.low, one.high) == pytest.approx((low[0], high[0]))


def test_t_interval_beats_the_percentile_bootstrap_on_exponential_data():
    g = np.random.default_rng(7)
    x = g.exponential(1.0, size=(1500, 5))
    low, high = t_interval_columns(x.T)
    t_hits = np.mean((low <= 1) & (1 <= high))
    idx = g.integers(0, 5, size=(2000, 5))
    boot = np.array([np.percentile(row[idx].mean(axis=1), [2.5, 97.5]) for row in x])
    p_hits = np.mean((boot[:, 0] <= 1) & (1 <= boot[:, 1]))
    assert t_hits > p_hits + 0.05


# --------------------------------------------------------------------------- intervals
def test_t_interval_matches_the_textbook_formula():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    iv = t_interval(x)
    assert (iv.mean, iv.n, iv.method) == (3.5, 4, "t")
    assert iv.low == pytest.approx(3.5 - half) and iv.high == pytest.approx(3.5 + half)
    assert t_interval([2.0, np.nan]).n == 1 and np.isnan(t_interval([2.0]).low)
    assert t_interval([]).n == 0
    assert t_interval(np.full(4, 3.0)) == Interval(3.0, 3.0, 3.0, 4, "t")


def test_mean_interval_switches_to_bca_from_twenty_values():
    g = np.random.default_rng(0)
    assert mean_interval(g.normal(size=19)).method == "t"
    x = g.normal(10.0, 2.0, size=400)
    iv = mean_interval(x, rng=3)
    assert iv.method == "bca" and mean_interval(x, rng=3) == iv  # seeded: deterministic
    ref = t_interval(x)
    assert iv.low == pytest.approx(ref.low, abs=0.05) and iv.high == pytest.approx(ref.high, abs=0.05)


def _order_statistic_bounds(n: int, level: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (j, n + 1 - j) of the equal-tailed distribution-free interval of the median,
    by hand from the binomial: the largest j with 2 P(Binomial(n, 1/2) <= j - 1) <= 1 - level."""
    j = 0
    while j + 1 <= n // 2 and 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n <= 1 - level:
        j += 1
    return (j, n + 1 - j) if j else None


def test_median_interval_is_the_binomial_order_statistics():
    g = np.random.default_rng(4)
    assert [_order_statistic_bounds(n) for n in (5, 6, 10, 12)] == [None, (1, 6), (2, 9), (3, 10)]
    for n in (6, 7, 10, 12, 25):
        x = g.lognormal(0.0, 1.0, n)
        ranks = _order_statistic_bounds(n)
        iv = median_interval(x)
        s = np.sort(x)
        assert (iv.mean, iv.n, iv.method) == (np.median(x), n, "order")
        assert (iv.low, iv.high) == (s[ranks[0] - 1], s[ranks[1] - 1])
    few = median_interval([3.0, 1.0, 2.0, np.nan, 9.0, 4.0])  # 5 values: no 95% interval
    assert (few.mean, few.n, few.method) == (3.0, 5, "") and np.isnan(few.low) and np.isnan(few.high)
    assert median_interval([]).n == 0


def test_median_interval_covers_the_median_of_run_times_with_outliers():
    # run times: lognormal, and one run in ten slowed 30-fold by other work on the machine
    g = np.random.default_rng(11)
    reps, n = 1000, 10
    x = g.lognormal(0.0, 0.3, (reps, n)) * np.where(g.random((reps, n)) < 0.1, 30.0, 1.0)
    true_median = float(np.median(g.lognormal(0.0, 0.3, 2_000_000)
                                  * np.where(g.random(2_000_000) < 0.1, 30.0, 1.0)))
    hits = [(lambda iv: iv.low <= true_median <= iv.high)(median_interval(row)) for row in x]
    assert np.mean(hits) >= 0.96  # 97.9% by construction at n = 10
    # where the t interval of the mean is thrown far off by the outliers
    assert np.median([t_interval(row).high - t_interval(row).low for row in x[:200]]) > 5 * np.median(
        [median_interval(row).high - median_interval(row).low for row in x[:200]])


def test_t_interval_columns_match_t_interval_per_column():
    g = np.random.default_rng(1)
    v = g.normal(size=(5, 3))
    low, high = t_interval_columns(v)
    for j in range(3):
        iv = t_interval(v[:, j])
        assert (low[j], high[j]) == pytest.approx((iv.low, iv.high))


# --------------------------------------------------------------------------- tests
def test_paired_test_matches_scipy():
    m = np.array([0.9, 1.0, 1.2, 0.8, 0.7])
    b = np.array([1.0, 1.0, 1.1, 1.0, 0.9])
    r = paired_test(m, b, lower_is_better=True)
    assert r.n == 5 and r.diff.mean == pytest.approx(-0.08)
    assert r.p_t == pytest.approx(stats.ttest_rel(m, b).pvalue)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(m - b).pvalue)
    ci = stats.ttest_rel(m, b).confidence_interval()
    assert (r.diff.low, r.diff.high) == pytest.approx((ci.low, ci.high))
    assert r.p_improve == pytest.approx((3 + 0.5) / 5)  # three better, one tie, one worse
    assert paired_test(m, b, lower_is_better=False).p_improve == pytest.approx(1.5 / 5)
    with_nan = paired_test(np.array([1.0, np.nan, 2.0]), np.array([2.0, 1.0, 2.5]), lower_is_better=True)
    assert with_nan.n == 2


def test_wilcoxon_cannot_reach_five_percent_with_five_seeds():
    # 5 of 5 seeds better: the smallest two-sided p is 2/2^5 = 0.0625
    r = paired_test(np.arange(5.0), np.arange(5.0) + np.array([1, 2, 3, 4, 5]), lower_is_better=True)
    assert r.p_wilcoxon == pytest.approx(0.0625)
    assert min_seeds_for_call(1) == 6  # 2/2^6 = 0.031
    assert min_seeds_for_call(32) == 11  # 32 * 2/2^11 = 0.031 < 0.05 <= 32 * 2/2^10


def test_holm_matches_the_step_down_by_hand():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 0.02, 0.03, 0.06, 0.06 (monotone)
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])


# --------------------------------------------------------------------------- aggregates
def test_aggregates_of_constant_scores_are_exact():
    agg = aggregate_scores([np.full(3, 0.2), np.full(4, 0.2)])
    assert agg["mean"].mean == pytest.approx(0.2) and agg["mean"].low == pytest.approx(0.2)
    assert agg["iqm"].n == 7


def test_aggregates_match_pooled_mean_and_scipy_trim_mean():
    g = np.random.default_rng(2)
    fams = [g.normal(0.1 * k, 1.0, 5) for k in range(6)]
    agg = aggregate_scores(fams, rng=0)
    pooled = np.concatenate(fams)
    assert agg["mean"].mean == pytest.approx(pooled.mean())
    assert agg["iqm"].mean == pytest.approx(stats.trim_mean(pooled, 0.25))
    assert agg["mean"].method == "percentile" and agg["mean"].low < pooled.mean() < agg["mean"].high
    # stratified: a CI about as wide as a t interval over 30 runs, not wider than the spread of families
    width = agg["mean"].high - agg["mean"].low
    t_width = t_interval(pooled).high - t_interval(pooled).low
    assert 0.6 * t_width < width < 1.3 * t_width


def test_aggregate_interval_has_the_unbiased_width_at_few_seeds_per_cell():
    # 10 cells of 4 seeds: the standard error of the pooled mean is sqrt(sum s_c^2 / n_c) / C. A
    # plain bootstrap within cells shrinks it by sqrt((n - 1) / n) (0.87 here); Rao and Wu's
    # rescaling gives it whole, so the 95% interval is about 2 x 1.96 of it wide
    g = np.random.default_rng(4)
    cells = [g.normal(0, s, 4) for s in np.linspace(0.5, 2, 10)]
    se = np.sqrt(sum(c.var(ddof=1) / c.size for c in cells)) / len(cells)
    agg = aggregate_scores(cells, rng=0)["mean"]
    assert (agg.high - agg.low) / (2 * stats.norm.ppf(0.975) * se) == pytest.approx(1.0, abs=0.04)


def test_aggregate_intervals_cover_at_two_seeds_per_cell():
    # 15 cells (the weighting study's) of 2 seeds each, centred on 0: the mean's and the IQM's
    # intervals should hold 0, and P(improve)'s 0.5, about 95% of the time. A bootstrap drawing n
    # values per cell covered 79% here; the test allows simulation noise (sd about 1.3% at 300)
    g = np.random.default_rng(1)
    hits = np.zeros(3)
    reps = 300
    for r in range(reps):
        cells = [g.normal(0, s, 2) for s in np.linspace(0.5, 2, 15)]
        agg = aggregate_scores(cells, rng=r)
        poi = probability_of_improvement(cells, lower_is_better=False, rng=r)
        hits += [agg["mean"].low <= 0 <= agg["mean"].high, agg["iqm"].low <= 0 <= agg["iqm"].high,
                 poi.low <= 0.5 <= poi.high]
    assert np.all(hits / reps >= 0.88), hits / reps


def test_aggregates_of_one_seed_per_cell_have_no_interval():
    # a bootstrap within cells of one value has nothing to resample: no interval, not a zero-width one
    agg = aggregate_scores([np.array([0.2]), np.array([0.5]), np.array([-0.1])])
    assert agg["mean"].mean == pytest.approx(0.2) and np.isnan(agg["mean"].low) and np.isnan(agg["iqm"].high)
    poi = probability_of_improvement([np.array([0.3]), np.array([0.1])], lower_is_better=False)
    assert poi.mean == 1.0 and np.isnan(poi.low)
    frac, low, high = score_profile([np.array([0.3]), np.array([0.1])], np.array([0.0, 0.2]))
    np.testing.assert_allclose(frac, [1.0, 0.5])
    assert np.isnan(low).all() and np.isnan(high).all()


def test_a_cell_of_one_seed_enters_every_resample_unchanged():
    # cells of 5 seeds and of 1 (its other seeds failed): the single value is a constant of the
    # stratified bootstrap, so the interval is scipy's bootstrap of the 5 with that constant added
    a, b = np.array([0.1, 0.4, -0.2, 0.3, 0.0]), np.array([0.25])
    agg = aggregate_scores([a, b], rng=5)
    # (the 5 draws spread about their cell's mean by sqrt(5 / 4): Rao and Wu's rescaling bootstrap)
    mu, k = a.mean(), np.sqrt(5 / 4)
    ref = stats.bootstrap((a,), lambda x, axis=-1: ((mu + k * (x - mu)).sum(axis=axis) + b[0]) / 6,
                          n_resamples=4000, method="percentile", vectorized=True,
                          random_state=np.random.default_rng(5))
    assert agg["mean"].mean == pytest.approx((a.sum() + b[0]) / 6)
    assert (agg["mean"].low, agg["mean"].high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high))


def test_probability_of_improvement_by_hand():
    d = [np.array([1.0, 0.0, -2.0, 3.0]), np.array([-1.0, -1.0])]
    # family 1: 2 better + 1 tie of 4 = 2.5 / 4; family 2: 0 of 2. Mean over families 0.3125
    poi = probability_of_improvement(d, lower_is_better=False)
    assert poi.mean == pytest.approx(0.3125) and 0 <= poi.low <= poi.mean <= poi.high <= 1
    assert probability_of_improvement(d, lower_is_better=True).mean == pytest.approx(1 - 0.3125)
    sure = probability_of_improvement([np.full(5, 0.1), np.full(5, 0.2)], lower_is_better=False)
    assert (sure.mean, sure.low, sure.high) == (1.0, 1.0, 1.0)


def test_score_profile_counts_runs_above_each_threshold():
    fams = [np.array([-0.1, 0.0, 0.2]), np.array([0.3, 0.05])]
    taus = np.array([-0.2, 0.0, 0.1, 0.5])
    frac, low, high = score_profile(fams, taus)
    np.testing.assert_allclose(frac, [1.0, 3 / 5, 2 / 5, 0.0])  # strictly above tau
    assert np.all(low <= frac + 1e-12) and np.all(frac <= high + 1e-12)
    assert (low[0], high[0], low[-1], high[-1]) == (1.0, 1.0, 0.0, 0.0)


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(0)
    scores = g.normal(size=(5, 12)).round(1)  # rounding makes ties
    labels = np.zeros((5, 12), dtype=bool)
    labels[:, :4] = True
    scores[:, :4] += 0.7
    np.testing.assert_allclose(roc_auc_rows(scores, labels),
                               [roc_auc_score(labels[i], scores[i]) for i in range(5)])
    assert np.isnan(roc_auc_rows(np.ones((1, 3)), np.zeros((1, 3), dtype=bool))[0])


# --------------------------------------------------------------------------- convergence
def _curves(fn, seeds: int = 5, steps: int = 2000, every: int = 50, noise: float = 0.005) -> pd.DataFrame:
    g = np.random.default_rng(0)
    t = np.arange(0, steps + 1, every, dtype=float)
    cols = {s: fn(t) * (1 + g.normal(0, noise)) * (1 + g.normal(0, noise, t.size)) for s in range(seeds)}
    return pd.DataFrame(cols, index=t)


def test_convergence_flags_a_slow_tail_like_maml_on_sine():
    # L(t) = a + b / (1 + t / tau): at 2000 steps the loss still halves by 15000 steps
    def loss(t):
        return 0.1 + 4.0 / (1 + t / 200)

    assert loss(15000) < 0.5 * loss(2000)
    c = _curves(loss)
    # the old rule (late improvement / whole improvement since initialisation) says about 3%: "flat"
    mean = c.mean(axis=1)
    old = (mean[(mean.index > 1300) & (mean.index <= 1500)].mean() - mean[mean.index > 1800].mean()) / (
        mean.iloc[0] - mean[mean.index > 1800].mean())
    assert old < 0.05
    r = convergence_of(c)
    assert r["flag"] == "still improving" and r["late_rel"] < -0.1


def test_convergence_flags_overfitting_and_passes_a_flat_curve():
    rising = convergence_of(_curves(lambda t: 0.5 + 0.3 * np.exp(-t / 50) + 0.00005 * t))
    assert rising["flag"] == "rising (overfitting)" and rising["late_rel"] > 0
    # bottoms out early, then rises and levels off (digits): caught by the rise above the best step
    early = convergence_of(_curves(lambda t: 0.5 + 0.5 * np.exp(-t / 30) + 0.1 * (1 - np.exp(-t / 300))))
    assert early["flag"] == "rising (overfitting)" and early["rise_rel"] > 0.05
    flat = convergence_of(_curves(lambda t: 0.3 + 2.0 * np.exp(-t / 100)))
    assert flat["flag"] == "flat" and abs(flat["late_rel"]) < 0.01
