"""Statistics over seeds: intervals, paired tests, multiple-comparison control, aggregates.

Every function is pure (arrays in, numbers out) and takes its randomness as an argument, so a
report is reproducible to the last digit.

Choices (the report's methods note states them):

- A mean over ``n`` seeds gets a Student-t interval for ``n < BOOTSTRAP_MIN_N`` and a BCa
  bootstrap interval (``scipy.stats.bootstrap``) from ``BOOTSTRAP_MIN_N`` seeds on. A percentile
  bootstrap over 3-10 values is far too narrow (5 values allow only 126 distinct resamples).
- A method-minus-baseline difference gets the paired-t interval and p-value
  (``scipy.stats.ttest_rel``) and, beside it, the Wilcoxon signed-rank p-value.
- Holm's step-down adjustment (``statsmodels.stats.multitest.multipletests``) over a family of
  comparisons.
- Aggregates across families in the style of rliable: mean and interquartile mean (IQM) of
  normalised scores and the (paired) probability of improvement, each with a stratified percentile
  bootstrap CI (seeds resampled within each family: ``scipy.stats.bootstrap`` with one sample per
  family). A plain bootstrap of a family of ``n`` seeds gives its mean ``(n - 1) / n`` of the
  unbiased variance (half at 2 seeds; a 95% interval covered 79% at 2 seeds per family, 88% at 3
  and 90% at 5 in a simulation), so the resamples follow Rao and Wu's rescaling bootstrap, which
  gives it whole: ``m`` draws per family of ``n``, spread about the family's mean by
  ``sqrt(m / (n - 1))``. Mean and IQM take ``m = n`` (spread ``sqrt(n / (n - 1))``; the IQM then
  trims as many values as its estimate does), shares of seeds (P(improve), profiles) ``m = n - 1``
  (no spread, which would move values across 0).

References:
    W. S. Gosset ("Student"), "The probable error of a mean", Biometrika 1908.
    F. Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1945.
    S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 1979.
    B. Efron, "Better bootstrap confidence intervals", JASA 1987 (BCa).
    J. N. K. Rao and C. F. J. Wu, "Resampling inference with complex survey data", JASA 1988
    (the rescaling bootstrap within strata of few units).
    R. Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
    NeurIPS 2021 (IQM, stratified bootstrap, probability of improvement, performance profiles).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

#: Confidence level of every interval in a report.
LEVEL = 0.95
#: Significance level of every test (after Holm's adjustment).
ALPHA = 0.05
#: Fewest values for which a mean gets a BCa bootstrap interval instead of a Student-t interval.
BOOTSTRAP_MIN_N = 20
#: Bootstrap resamples (BCa intervals and stratified aggregates).
N_RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    """A mean with a confidence interval.

    Attributes:
        mean: The sample mean.
        low: Lower bound (NaN with fewer than 2 values).
        high: Upper bound (NaN with fewer than 2 values).
        n: Number of values (seeds).
        method: ``"t"`` (Student t), ``"bca"`` (BCa bootstrap), ``"order"`` (distribution-free
            interval of the median, :func:`median_interval`: ``mean`` then holds the median) or
            ``""`` (no interval).
    """

    mean: float
    low: float
    high: float
    n: int
    method: str = "t"

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return bool(self.n >= 2 and (self.low > 0 or self.high < 0))


def _clean(values: np.ndarray | Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def t_interval(values: np.ndarray | Sequence[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean: ``mean +- t_{n-1} s / sqrt(n)``.

    Args:
        values: Array of shape (n,), one value per seed; NaNs are dropped.
        level: Confidence level.

    Returns:
        The :class:`Interval`; with n < 2 the bounds are NaN (method ``""``).
    """
    v = _clean(values)
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "")
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, "")
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(v)) if v.std() > 0 else (mean, mean)
    return Interval(mean, float(low), float(high), n, "t")


def mean_interval(values: np.ndarray | Sequence[float], level: float = LEVEL,
                  rng: np.random.Generator | int | None = 0) -> Interval:
    """Interval of the mean over seeds: Student t below :data:`BOOTSTRAP_MIN_N` values, BCa from there.

    Args:
        values: Array of shape (n,); NaNs are dropped.
        level: Confidence level.
        rng: Seed or generator of the bootstrap resampling (used only from ``BOOTSTRAP_MIN_N``).
    """
    v = _clean(values)
    if v.size < BOOTSTRAP_MIN_N or v.std() == 0:
        return t_interval(v, level)
    res = stats.bootstrap((v,), np.mean, confidence_level=level, n_resamples=N_RESAMPLES, method="BCa",
                          random_state=np.random.default_rng(rng))
    ci = res.confidence_interval
    return Interval(float(v.mean()), float(ci.low), float(ci.high), int(v.size), "bca")


def median_interval(values: np.ndarray | Sequence[float], level: float = LEVEL) -> Interval:
    """The median with its distribution-free interval (order statistics, from the binomial
    distribution of the number of values below the median: ``scipy.stats.quantile_test``).

    Its coverage is at least ``level`` for any continuous distribution, which suits run times on
    a shared machine (a run slowed by other work is an outlier, not noise). At 95% it needs 6
    values; with fewer, the bounds are NaN (method ``""``).

    Args:
        values: Array of shape (n,), one value per seed; NaNs are dropped.
        level: Confidence level.

    Returns:
        The :class:`Interval`, its ``mean`` holding the median.
    """
    v = _clean(values)
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "")
    median = float(np.median(v))
    ci = stats.quantile_test(v, q=median, p=0.5).confidence_interval(level) if n > 1 else None
    if ci is None or math.isnan(ci.low) or math.isnan(ci.high):
        return Interval(median, math.nan, math.nan, n, "")
    return Interval(median, float(ci.low), float(ci.high), n, "order")


def t_interval_columns(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Student-t intervals of the column means of a (seeds x points) matrix (bands around curves).

    Args:
        values: Array of shape (n_seeds, n_points), no NaNs; n_seeds >= 2.
        level: Confidence level.

    Returns:
        ``(low, high)``, arrays of shape (n_points,).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    mean = v.mean(axis=0)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(axis=0, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class PairedTest:
    """Method minus baseline over the seeds both finished.

    Attributes:
        diff: Paired-t :class:`Interval` of the mean difference (method - baseline).
        p_t: Two-sided paired-t p-value (NaN with n < 2 or all differences equal and zero).
        p_wilcoxon: Two-sided Wilcoxon signed-rank p-value (exact for small n; NaN when every
            difference is 0).
        p_improve: Fraction of seeds on which the method is better (a tie counts one half).
        n: Number of paired seeds.
    """

    diff: Interval
    p_t: float
    p_wilcoxon: float
    p_improve: float
    n: int


def paired_test(method: np.ndarray | Sequence[float], baseline: np.ndarray | Sequence[float],
                lower_is_better: bool, level: float = LEVEL) -> PairedTest:
    """Paired t interval and p-value, Wilcoxon p-value and P(better) of ``method - baseline``.

    Args:
        method: Array of shape (n,), the method's value per seed.
        baseline: Array of shape (n,), the baseline's value on the same seeds (same order).
        lower_is_better: True for losses, False for accuracies.
        level: Confidence level of the interval.
    """
    m = np.asarray(method, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if m.shape != b.shape:
        raise ValueError(f"method and baseline must have the same shape, got {m.shape} and {b.shape}")
    keep = ~(np.isnan(m) | np.isnan(b))
    d = m[keep] - b[keep]
    n = int(d.size)
    diff = t_interval(d, level)
    if n == 0:
        return PairedTest(diff, math.nan, math.nan, math.nan, 0)
    better = (d < 0) if lower_is_better else (d > 0)
    p_improve = float((better.sum() + 0.5 * (d == 0).sum()) / n)
    p_t = p_w = math.nan
    if n >= 2:
        if d.std() > 0:
            p_t = float(stats.ttest_rel(m[keep], b[keep]).pvalue)
        elif d[0] != 0:
            p_t = 0.0  # every seed moved by the same nonzero amount: no sampling noise at all
        if np.any(d != 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns about ties/zeros at small n
                p_w = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return PairedTest(diff, p_t, p_w, p_improve, n)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of one family of tests (NaNs stay NaN and are not counted).

    Args:
        p_values: Array of shape (m,).

    Returns:
        Array of shape (m,).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon signed-rank (and sign-test) p-value with ``n`` pairs: 2 / 2^n."""
    return 2.0 / 2.0 ** n if n >= 1 else 1.0


def min_seeds_for_call(m: int, alpha: float = ALPHA) -> int:
    """Fewest paired seeds for which a rank test could make a call among ``m`` Holm-corrected tests.

    Holm multiplies the smallest p-value by ``m``, so some cell can be called only when
    ``m * 2 / 2^n < alpha``.

    Args:
        m: Number of comparisons in the corrected family (>= 1).
        alpha: Significance level.
    """
    n = 1
    while max(m, 1) * wilcoxon_min_p(n) >= alpha:
        n += 1
    return n


def _resampled(samples: list[np.ndarray], statistic: Callable[..., np.ndarray], draws: str,
               ) -> tuple[list[np.ndarray], Callable[..., np.ndarray]] | None:
    """The samples a stratified bootstrap resamples, and ``statistic`` over a resample of them.

    Rao and Wu's rescaling bootstrap: a sample of ``n >= 2`` values with mean ``mu`` contributes
    ``m`` draws ``x`` with replacement as ``mu + sqrt(m / (n - 1)) (x - mu)``, which gives its mean
    the unbiased variance ``s^2 / n`` (``n`` plain draws give ``(n - 1) / n`` of it). ``draws``:
    ``"n"`` (``m = n``, spread by ``sqrt(n / (n - 1))``) or ``"n-1"`` (the first ``n - 1`` of the
    ``n`` draws, themselves ``n - 1`` independent draws, unspread). A sample of one value has
    nothing to resample (and ``scipy.stats.bootstrap`` takes none), so it enters every resample as
    it is. None when no sample has two values: one seed per cell tells nothing of the seed-to-seed
    variation, so there is no interval."""
    multi = [s for s in samples if s.size >= 2]
    single = [s for s in samples if s.size < 2]
    if not multi:
        return None
    if draws == "n":
        spread = [(float(s.mean()), math.sqrt(s.size / (s.size - 1))) for s in multi]

        def rescaled(xs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
            return [mu + k * (x - mu) for x, (mu, k) in zip(xs, spread, strict=True)]
    elif draws == "n-1":
        def rescaled(xs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
            return [x[..., :-1] for x in xs]
    else:
        raise ValueError(f"draws must be 'n' or 'n-1', not {draws!r}")

    def drawn(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = xs[0].shape[:-1]
        return statistic(*rescaled(xs), *(np.broadcast_to(s, (*lead, s.size)) for s in single), axis=axis)

    return multi, drawn


def _stratified_ci(samples: list[np.ndarray], statistic: Callable[..., np.ndarray], level: float,
                   rng: np.random.Generator | int | None, draws: str) -> tuple[float, float, float]:
    """Point estimate (from all the values) and stratified percentile-bootstrap interval
    (:func:`_resampled`); NaN bounds when no sample has two values."""
    point = float(statistic(*samples, axis=-1))
    resampled = _resampled(samples, statistic, draws)
    if resampled is None:
        return point, math.nan, math.nan
    multi, fn = resampled
    if all(np.ptp(s) == 0 for s in multi):  # every resample is the data itself
        return point, point, point
    # percentile: BCa's jackknife would evaluate the rescaled statistic on samples it does not rescale
    res = stats.bootstrap(tuple(multi), fn, confidence_level=level, n_resamples=N_RESAMPLES,
                          method="percentile", vectorized=True, random_state=np.random.default_rng(rng))
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _pooled_mean(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.concatenate(samples, axis=axis).mean(axis=axis)


def _pooled_iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def aggregate_scores(scores: Sequence[np.ndarray], level: float = LEVEL,
                     rng: np.random.Generator | int | None = 0) -> dict[str, Interval]:
    """Mean and interquartile mean of normalised scores pooled over families, stratified CIs.

    Args:
        scores: One array per family, of shape (n_seeds_f,): the normalised score of each seed.
        level: Confidence level.
        rng: Seed of the bootstrap.

    Returns:
        ``{"mean": Interval, "iqm": Interval}`` (method ``"percentile"``, or ``""`` without an interval).
    """
    samples = [_clean(s) for s in scores if _clean(s).size]
    n = sum(s.size for s in samples)
    if n == 0:
        nan = Interval(math.nan, math.nan, math.nan, 0, "")
        return {"mean": nan, "iqm": nan}
    out = {}
    for name, fn in (("mean", _pooled_mean), ("iqm", _pooled_iqm)):
        point, low, high = _stratified_ci(samples, fn, level, rng, draws="n")
        out[name] = Interval(point, low, high, n, "percentile" if math.isfinite(low) else "")
    return out


def score_profile(scores: Sequence[np.ndarray], taus: np.ndarray, level: float = LEVEL,
                  rng: np.random.Generator | int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Performance profile: the share of runs whose score exceeds each threshold, with a band.

    Args:
        scores: One array per family, the normalised score of each seed.
        taus: Array of shape (k,), thresholds.
        level: Confidence level of the pointwise band (stratified percentile bootstrap).
        rng: Seed of the bootstrap.

    Returns:
        ``(fraction, low, high)``, arrays of shape (k,).
    """
    samples = [_clean(s) for s in scores if _clean(s).size]
    t = np.asarray(taus, dtype=np.float64)

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        x = np.concatenate(xs, axis=axis)
        return np.moveaxis((x[..., None, :] > t[:, None]).mean(axis=-1), -1, 0)

    frac = statistic(*samples)
    resampled = _resampled(samples, statistic, "n-1")
    if resampled is None:
        return frac, np.full_like(frac, np.nan), np.full_like(frac, np.nan)
    multi, fn = resampled
    if all(np.ptp(s) == 0 for s in multi):
        return frac, frac, frac
    res = stats.bootstrap(tuple(multi), fn, confidence_level=level, n_resamples=N_RESAMPLES,
                          method="percentile", vectorized=True, random_state=np.random.default_rng(rng))
    return frac, np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def probability_of_improvement(differences: Sequence[np.ndarray], lower_is_better: bool,
                               level: float = LEVEL, rng: np.random.Generator | int | None = 0) -> Interval:
    """P(the method beats its baseline on a seed), averaged over families, stratified bootstrap CI.

    The paired form of rliable's probability of improvement: within family ``f`` the share of seeds
    on which the method is better than its baseline on the same seed (a tie counts one half), then
    the mean over families. The design pairs seeds (same tasks and initial model), so comparing each
    run with its own pair leaves out the seed-to-seed variation both methods share, which the
    unpaired Mann-Whitney form would mix in.

    Args:
        differences: One array per family, method minus baseline per seed.
        lower_is_better: True for losses (then a negative difference is an improvement).
        level: Confidence level.
        rng: Seed of the bootstrap.
    """
    sign = -1.0 if lower_is_better else 1.0
    samples = [sign * _clean(d) for d in differences if _clean(d).size]
    if not samples:
        return Interval(math.nan, math.nan, math.nan, 0, "")

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([np.mean((x > 0) + 0.5 * (x == 0), axis=axis) for x in xs], axis=0)

    n = sum(s.size for s in samples)
    point, low, high = _stratified_ci(samples, statistic, level, rng, draws="n-1")
    return Interval(point, low, high, n, "percentile" if math.isfinite(low) else "")


def roc_auc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of each row: P(score of a positive > score of a negative), ties count one half.

    Args:
        scores: Array of shape (n_rows, n_items).
        positive: Bool array of shape (n_rows, n_items).

    Returns:
        Array of shape (n_rows,), NaN for rows without both classes.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    ranks = stats.rankdata(s, axis=1)  # average ranks for ties
    n_pos = pos.sum(axis=1)
    n_neg = pos.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
