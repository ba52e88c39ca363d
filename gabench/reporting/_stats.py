"""Statistics over seeds: percentile-bootstrap confidence intervals, paired differences, ROC AUC.

Every function takes its randomness as an argument (a seed or a ``numpy.random.Generator``), so a
report is reproducible to the last digit.

References:
    B. Efron, R. Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile interval).
    R. Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
    NeurIPS 2021 (interval estimates and probability of improvement over seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Bootstrap resamples used by the reports.
N_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean with a confidence interval.

    Attributes:
        mean: The sample mean.
        low: Lower bound (NaN with fewer than 2 values).
        high: Upper bound (NaN with fewer than 2 values).
        n: Number of values (seeds).
    """

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return bool(self.n >= 2 and (self.low > 0 or self.high < 0))


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_resamples: int = N_RESAMPLES,
                 rng: np.random.Generator | int | None = 0) -> Interval:
    """Percentile-bootstrap confidence interval of the mean.

    Args:
        values: Array of shape (n,), one value per seed; NaNs are dropped.
        level: Confidence level.
        n_resamples: Bootstrap resamples (each draws n values with replacement).
        rng: Generator or seed of the resampling.

    Returns:
        The :class:`Interval`. With n < 2 the bounds are NaN. With few seeds the percentile
        interval is too narrow (with 3 seeds there are only 10 distinct resamples), so reports
        state the number of seeds beside it.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if n == 1:
        return Interval(float(v[0]), float("nan"), float("nan"), 1)
    low, high = bootstrap_ci_columns(v[:, None], level, n_resamples, rng)
    return Interval(float(v.mean()), float(low[0]), float(high[0]), n)


def bootstrap_ci_columns(values: np.ndarray, level: float = 0.95, n_resamples: int = N_RESAMPLES,
                         rng: np.random.Generator | int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap intervals of the column means of a (seeds x points) matrix.

    The same seed resamples are applied to every column (one curve = one seed), which is what a
    band around a learning curve needs.

    Args:
        values: Array of shape (n_seeds, n_points), no NaNs.
        level: Confidence level.
        n_resamples: Bootstrap resamples.
        rng: Generator or seed of the resampling.

    Returns:
        ``(low, high)``, arrays of shape (n_points,).
    """
    v = np.asarray(values, dtype=np.float64)
    gen = np.random.default_rng(rng)
    n = v.shape[0]
    idx = gen.integers(0, n, size=(n_resamples, n))
    means = v[idx].mean(axis=1)  # (n_resamples, n_points)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class PairedDifference:
    """GA minus its baseline over seeds that both finished.

    Attributes:
        diff: :class:`Interval` of the mean paired difference (GA - baseline).
        p_improve: Fraction of seeds on which GA is better than its baseline (lower loss or
            higher accuracy; a tie counts one half).
        n: Number of paired seeds.
    """

    diff: Interval
    p_improve: float
    n: int


def paired_difference(treatment: np.ndarray, baseline: np.ndarray, lower_is_better: bool,
                      level: float = 0.95, n_resamples: int = N_RESAMPLES,
                      rng: np.random.Generator | int | None = 0) -> PairedDifference:
    """Paired difference ``treatment - baseline`` with a bootstrap CI and P(improvement).

    Args:
        treatment: Array of shape (n,), GA's value on each seed.
        baseline: Array of shape (n,), the baseline's value on the same seeds (same order).
        lower_is_better: True for losses, False for accuracies.
        level: Confidence level.
        n_resamples: Bootstrap resamples.
        rng: Generator or seed of the resampling.
    """
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if t.shape != b.shape:
        raise ValueError(f"treatment and baseline must have the same shape, got {t.shape} and {b.shape}")
    keep = ~(np.isnan(t) | np.isnan(b))
    d = t[keep] - b[keep]
    n = int(d.size)
    if n == 0:
        return PairedDifference(bootstrap_ci(d), float("nan"), 0)
    better = (d < 0) if lower_is_better else (d > 0)
    p = float((better.sum() + 0.5 * (d == 0).sum()) / n)
    return PairedDifference(bootstrap_ci(d, level, n_resamples, rng), p, n)


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
