"""Analysis of a study's per-seed summaries: tidy tables in, tidy tables out, nothing rendered.

Every function takes a :class:`~gabench.reporting._data.ReportData` (or tables derived from it)
and returns a ``pandas.DataFrame`` (or a small dataclass); the Markdown and figures are made from
these in ``_render.py`` and ``_plots.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gabench.reporting._data import HIST_EDGES, LOWER_IS_BETTER, ReportData
from gabench.reporting._stats import (
    ALPHA,
    Interval,
    aggregate_scores,
    holm,
    mean_interval,
    median_interval,
    min_seeds_for_call,
    paired_test,
    probability_of_improvement,
    score_profile,
)
from gabench.reporting._stats import LEVEL as LEVEL_95

#: Meta-test metrics in report order, with their descriptions.
TEST_METRICS: dict[str, str] = {
    "loss_post": "meta-test query loss after adaptation (lower is better)",
    "acc_post": "meta-test query accuracy after adaptation (higher is better)",
    "loss_pre": "meta-test query loss before adaptation (lower is better)",
    "acc_pre": "meta-test query accuracy before adaptation (higher is better)",
}
#: Metrics whose comparisons form the primary family of tests (under the primary selection).
PRIMARY = ("loss_post", "acc_post")
#: Columns of ``comparisons.csv``, in order.
COMPARISON_COLUMNS = ["metric", "cell", "method", "baseline", "select", "n_seeds", "baseline_mean",
                      "method_mean", "diff_mean", "ci_low", "ci_high", "p_value", "p_holm", "verdict",
                      "method_failed", "baseline_failed"]
#: Convergence check: a late change smaller than this share of the final value is "flat".
LATE_REL = 0.01
#: Convergence check: a rise above the curve's best smaller than this share of the final value is "flat".
RISE_REL = 0.05


def primary_select(data: ReportData) -> str:
    """``best_val`` when the runs recorded it, else ``final``.

    The parameters at the best meta-validation step are chosen without looking at the meta-test
    tasks and do not compare overfitted end points, so they are the fairer comparison when present.
    """
    return "best_val" if "best_val" in set(data.test["select"]) else "final"


def cell_label(family: str, setting: str) -> str:
    """One string per cell: ``family`` or ``family / setting``."""
    return f"{family} / {setting}" if setting else family


def seed_values(data: ReportData, metric: str, select: str) -> pd.DataFrame:
    """Per-seed meta-test values: columns family_label, setting, method, seed, value."""
    t = data.test[(data.test["metric"] == metric) & (data.test["select"] == select)]
    cols = ["run", "family_label", "setting", "method", "seed"]
    return t.merge(data.runs[cols], on="run")[["family_label", "setting", "method", "seed", "value"]]


def run_metric(data: ReportData, metric: str) -> pd.DataFrame:
    """A per-run statistic (``run_stats``): columns family_label, setting, method, seed, value."""
    t = data.run_stats[data.run_stats["metric"] == metric]
    cols = ["run", "family_label", "setting", "method", "seed"]
    return t.merge(data.runs[cols], on="run")[["family_label", "setting", "method", "seed", "value"]]


def cell_intervals(values: pd.DataFrame, seed: int = 0,
                   interval: Callable[[np.ndarray], Interval] | None = None) -> pd.DataFrame:
    """Mean over seeds with its interval per (cell, method).

    Args:
        values: Columns family_label, setting, method, seed, value (from :func:`seed_values`).
        seed: Seed of the bootstrap (used only with >= 20 seeds).
        interval: The statistic and its interval of one cell's values (default
            :func:`~gabench.reporting._stats.mean_interval` with ``seed``).

    Returns:
        Columns family_label, setting, method, n_seeds, mean, low, high, interval (``t``/``bca``).
    """
    rows = []
    for (f, s, m), g in values.groupby(["family_label", "setting", "method"], sort=False):
        v = g["value"].to_numpy()
        iv = interval(v) if interval is not None else mean_interval(v, rng=seed)
        rows.append((f, s, m, iv.n, iv.mean, iv.low, iv.high, iv.method))
    return pd.DataFrame(rows, columns=["family_label", "setting", "method", "n_seeds", "mean", "low", "high",
                                       "interval"])


def _by_cell_method(vals: pd.DataFrame) -> dict[tuple[str, str, str], pd.Series]:
    """(family_label, setting, method) -> values indexed by seed."""
    return {k: g.set_index("seed")["value"] for k, g in vals.groupby(["family_label", "setting", "method"])}


def _test_family(metric: str, select: str, primary: str) -> str:
    if metric in PRIMARY:
        return "primary" if select == primary else f"secondary: select = {select}"
    return f"pre-adaptation metrics, select = {select}"


#: A study run id: ``<family_label>__<method_label>__s<seed>`` and one ``__<name>-<value>`` per
#: setting (:func:`gabench.study.load_study`).
_RUN_ID = re.compile(r"(?P<family>.+?)__(?P<method>.+?)__s(?P<seed>\d+)(?P<setting>(?:__.+)?)")


def failed_counts(data: ReportData) -> dict[tuple[str, str, str], int]:
    """Failed runs (``failed.json``: diverged, or stopped by an error) per (family_label, setting,
    method).

    A run is located through the study's plan (``study.json``'s runs). A failure the plan does not
    list (recorded under an earlier, larger plan, whose finished runs the archive keeps) is located
    through its run id: its family, method and the setting of any planned or finished run whose
    id ends the same way. Failures that neither locates (plain run directories) are not counted.
    """
    plan = {r.get("run_id"): r for r in data.meta.get("runs", []) if isinstance(r, dict)}
    settings: dict[tuple[str, str], str] = {}  # (family, run-id setting suffix) -> setting label
    if any(run_id not in plan for run_id in data.failures):  # only then are run ids parsed
        known = [(str(k), str(r.get("setting") or "")) for k, r in plan.items()]
        known += [(str(k), str(s or "")) for k, s in zip(data.runs["run"], data.runs["setting"], strict=True)]
        for run_id, setting in known:
            m = _RUN_ID.fullmatch(run_id)
            if m is not None:
                settings.setdefault((m["family"], m["setting"]), setting)
    counts: dict[tuple[str, str, str], int] = {}
    for run_id in data.failures:
        r = plan.get(run_id)
        if r is not None:
            key = (str(r.get("family_label")), str(r.get("setting") or ""), str(r.get("method_label")))
        elif (m := _RUN_ID.fullmatch(run_id)) is not None and (m["family"], m["setting"]) in settings:
            key = (m["family"], settings[(m["family"], m["setting"])], m["method"])
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def comparisons(data: ReportData) -> pd.DataFrame:
    """Every method-minus-baseline comparison: one row per metric x cell x pair x selection.

    Per row the paired-t interval and p-value of ``method - baseline`` over the seeds both ran,
    the Wilcoxon signed-rank p-value and the fraction of seeds on which the method is better.
    Holm's adjustment runs within each family of tests (column ``test_family``): ``primary`` = the
    metrics in :data:`PRIMARY` under :func:`primary_select`, every cell and pair; the other
    selection and the pre-adaptation metrics are separate (secondary) families. The verdict is
    ``better``/``worse`` when the Holm-adjusted paired-t p < 0.05, else ``unresolved``.

    A failed run (:func:`failed_counts`; columns ``method_failed`` and ``baseline_failed``) leaves
    its seed out of its cell's comparison, and the seeds left are those on which that side
    survived, which flatters it. So no call favours a side that failed in the cell: a method that
    failed on a seed is never called better there, nor its baseline's side (the method worse)
    when the baseline failed; such a call is ``unresolved``.

    Returns:
        :data:`COMPARISON_COLUMNS` plus family_label, setting, p_wilcoxon, p_improve,
        lower_is_better, test_family; ordered by selection (primary first), metric, pair, cell.
    """
    primary = primary_select(data)
    metrics = [m for m in TEST_METRICS if m in set(data.test["metric"])]
    cells = data.cells
    fails = failed_counts(data)
    rows = []
    for select in data.selections:
        for metric in metrics:
            lower = metric in LOWER_IS_BETTER
            vals = seed_values(data, metric, select)
            by = _by_cell_method(vals)
            for method, base in data.pairs.items():
                for f, s in cells:
                    if (f, s, method) not in by or (f, s, base) not in by:
                        continue
                    a, b = by[(f, s, method)].align(by[(f, s, base)], join="inner")
                    pt = paired_test(a.to_numpy(), b.to_numpy(), lower)
                    rows.append({
                        "metric": metric, "cell": cell_label(f, s), "method": method, "baseline": base,
                        "select": select, "n_seeds": pt.n, "baseline_mean": float(b.mean()),
                        "method_mean": float(a.mean()), "diff_mean": pt.diff.mean, "ci_low": pt.diff.low,
                        "ci_high": pt.diff.high, "p_value": pt.p_t, "family_label": f, "setting": s,
                        "p_wilcoxon": pt.p_wilcoxon, "p_improve": pt.p_improve, "lower_is_better": lower,
                        "test_family": _test_family(metric, select, primary),
                        "method_failed": fails.get((f, s, method), 0),
                        "baseline_failed": fails.get((f, s, base), 0)})
    extra = ["family_label", "setting", "p_wilcoxon", "p_improve", "lower_is_better", "test_family"]
    first = [c for c in COMPARISON_COLUMNS if c not in ("p_holm", "verdict")]
    out = pd.DataFrame(rows, columns=first + extra).astype({"method_failed": int, "baseline_failed": int})
    out["p_holm"] = np.nan
    for _, idx in out.groupby("test_family", sort=False).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy())
    called = out["p_holm"] < ALPHA
    better = (out["diff_mean"] < 0) == out["lower_is_better"]
    favours_failed = np.where(better, out["method_failed"] > 0, out["baseline_failed"] > 0)
    out["verdict"] = np.where(called & ~favours_failed, np.where(better, "better", "worse"), "unresolved")
    return out[COMPARISON_COLUMNS + extra]


@dataclass(frozen=True)
class SeedRequirement:
    """How many seeds the design needs before a call is possible.

    Attributes:
        n_tests: Comparisons in the primary (Holm-corrected) family.
        n_seeds: Fewest paired seeds of any primary comparison in this study.
        rank_test_min: Fewest seeds at which a Wilcoxon (or sign) test could pass Holm's first
            step among ``n_tests``: ``n_tests * 2 / 2^n < 0.05``.
        t_test_min: Fewest seeds at which a paired t test gives a p-value at all (2).
        n_seeds_max: Most paired seeds of any primary comparison (more than ``n_seeds`` where
            runs failed, which leaves their seeds out of their comparisons).
    """

    n_tests: int
    n_seeds: int
    rank_test_min: int
    t_test_min: int = 2
    n_seeds_max: int = 0

    @property
    def enough(self) -> bool:
        """The study has at least ``rank_test_min`` seeds in every primary comparison."""
        return self.n_seeds >= self.rank_test_min

    @property
    def seeds_text(self) -> str:
        """``"10"``, or ``"10 (as few as 7 in some comparisons)"`` when they differ."""
        if self.n_seeds_max > self.n_seeds:
            return f"{self.n_seeds_max} (as few as {self.n_seeds} in some comparisons)"
        return str(self.n_seeds)


def seed_requirement(comp: pd.DataFrame) -> SeedRequirement:
    """:class:`SeedRequirement` of the primary family of :func:`comparisons`."""
    prim = comp[comp["test_family"] == "primary"]
    m = int(prim["p_value"].notna().sum()) or len(prim) or 1
    n = int(prim["n_seeds"].min()) if len(prim) else 0
    most = int(prim["n_seeds"].max()) if len(prim) else 0
    return SeedRequirement(m, n, min_seeds_for_call(m), n_seeds_max=most)


def normalised_scores(data: ReportData, metric: str, select: str) -> pd.DataFrame:
    """Per-seed baseline-normalised improvement of each compared method, per cell.

    ``score = +-(method - baseline) / |mean over seeds of baseline|`` on the same seed, signed so
    that a positive score means the method is better (a lower loss, a higher accuracy): 0.05 = 5%
    better than the baseline's mean in that cell. Dividing by the baseline's level makes cells of
    different scale comparable.

    Returns:
        Columns method, baseline, family_label, setting, seed, score.
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    vals = seed_values(data, metric, select)
    by = _by_cell_method(vals)
    rows = []
    for method, base in data.pairs.items():
        for f, s in data.cells:
            if (f, s, method) not in by or (f, s, base) not in by:
                continue
            a, b = by[(f, s, method)].align(by[(f, s, base)], join="inner")
            scale = abs(float(b.mean()))
            if not scale > 0:
                continue
            for seed, x in (sign * (a - b) / scale).items():
                rows.append((method, base, f, s, int(seed), float(x)))
    return pd.DataFrame(rows, columns=["method", "baseline", "family_label", "setting", "seed", "score"])


def aggregates(data: ReportData, metric: str, select: str, seed: int = 0) -> pd.DataFrame:
    """Aggregates across cells per compared pair, rliable-style, with stratified bootstrap CIs.

    - ``mean`` and ``iqm`` of :func:`normalised_scores` pooled over cells and seeds;
    - ``p_improve``: share of seeds on which the method beats its baseline on the same seed, per
      cell, averaged over cells (:func:`~gabench.reporting._stats.probability_of_improvement`).

    Returns:
        Columns method, baseline, metric, select, statistic, estimate, low, high, n_cells, n_runs,
        interval.
    """
    scores = normalised_scores(data, metric, select)
    rows = []
    for (method, base), part in scores.groupby(["method", "baseline"], sort=False):
        cells = list(dict.fromkeys(zip(part["family_label"], part["setting"], strict=True)))
        per_cell = [part[(part.family_label == f) & (part.setting == s)]["score"].to_numpy()
                    for f, s in cells]
        stats_ = aggregate_scores(per_cell, rng=seed)
        # scores are signed so that > 0 is better: the paired probability of improvement reads them
        stats_["p_improve"] = probability_of_improvement(per_cell, lower_is_better=False, rng=seed)
        for name, iv in stats_.items():
            rows.append((method, base, metric, select, name, iv.mean, iv.low, iv.high, len(cells),
                         int(part.shape[0]), iv.method))
    return pd.DataFrame(rows, columns=["method", "baseline", "metric", "select", "statistic", "estimate",
                                       "low", "high", "n_cells", "n_runs", "interval"])


#: Columns of :func:`ranking`.
RANKING_COLUMNS = ["group", "method", "rank", "k", "level", "iqm", "iqm_low", "iqm_high", "mean", "mean_low",
                   "mean_high", "p_improve", "p_low", "p_high", "n_cells", "n_runs", "better", "worse",
                   "unresolved", "overall", "failed", "baseline_failed"]


def ranking(data: ReportData, comp: pd.DataFrame, metric: str, select: str, seed: int = 0) -> pd.DataFrame:
    """The compared methods ranked by the interquartile mean of their normalised scores, for a
    study that compares several weightings with one baseline (an aggregator zoo).

    Groups exist only when some baseline has at least two compared methods:

    - per such baseline (group = its label): each of its methods, its :func:`normalised_scores`
      pooled over the cells (stratified bootstrap, seeds resampled within each cell);
    - ``all baselines``, when at least two weightings ran with two or more baselines each: a
      weighting is a method label ``<baseline>+<name>`` (e.g. ``maml+upgrad`` and
      ``reptile+upgrad`` are ``upgrad``), with one method per baseline; per cell and seed its
      score is the mean of its baselines' scores on that seed (the baselines share the seed's
      tasks, so resampling the seed keeps them together, and each baseline weighs the same).

    Intervals are Bonferroni-adjusted within each group (level ``1 - 0.05 / k`` for its ``k``
    methods), and ``overall`` is ``better`` when the IQM's interval lies above 0, ``worse`` when
    it lies below, ``no difference`` otherwise: with k methods in a group, the chance of calling
    any of them wrongly stays below 5%. ``better``/``worse``/``unresolved`` count the cells of
    ``comp`` (:func:`comparisons`) with that verdict for ``metric`` under ``select``. ``failed``
    and ``baseline_failed`` count the failed runs of the method and of its baselines in its cells
    (:func:`failed_counts`): their seeds are not in the scores, which flatters the side that
    failed, so a method with failed runs is never called ``better`` overall, nor ``worse`` when
    its baseline failed (``unresolved (failed runs)`` instead). Without an interval (one seed per
    cell) the call is ``no difference``.

    Returns:
        Columns :data:`RANKING_COLUMNS`, each group sorted by IQM (best first); empty when no
        baseline has two compared methods.
    """
    scores = normalised_scores(data, metric, select)
    per_base: dict[str, list[str]] = {}
    for method, base in data.pairs.items():
        per_base.setdefault(base, []).append(method)
    if scores.empty or not any(len(m) >= 2 for m in per_base.values()):
        return pd.DataFrame(columns=RANKING_COLUMNS)
    by_pair = {key: part.set_index("seed")["score"]
               for key, part in scores.groupby(["method", "baseline", "family_label", "setting"], sort=False)}
    cells = list(dict.fromkeys(zip(scores["family_label"], scores["setting"], strict=True)))
    verdicts = comp[(comp["metric"] == metric) & (comp["select"] == select)]
    counts = verdicts.groupby(["method", "baseline", "verdict"]).size().to_dict()
    fails = failed_counts(data)

    def pair_cells(method: str, base: str) -> list[pd.Series]:
        return [by_pair[(method, base, f, s)] for f, s in cells if (method, base, f, s) in by_pair]

    groups: dict[str, dict[str, tuple[list[np.ndarray], list[tuple[str, str]]]]] = {}
    for base, methods in per_base.items():
        if len(methods) >= 2:
            groups[base] = {m: ([x.to_numpy() for x in pair_cells(m, base)], [(m, base)]) for m in methods}
    weightings: dict[str, dict[str, str]] = {}  # name -> {baseline: method}
    for method, base in data.pairs.items():
        if method.startswith(base + "+"):
            weightings.setdefault(method[len(base) + 1:], {}).setdefault(base, method)
    pooled = {}
    for name, members in weightings.items():
        if len(members) < 2:
            continue
        per_cell = []
        for f, s in cells:
            cols = {b: by_pair[(m, b, f, s)] for b, m in members.items() if (m, b, f, s) in by_pair}
            if len(cols) == len(members):  # a cell counts where every baseline has it
                per_cell.append(pd.DataFrame(cols).dropna().mean(axis=1).to_numpy())
        pooled[name] = (per_cell, [(m, b) for b, m in members.items()])
    if len(pooled) >= 2:
        groups["all baselines"] = pooled
    rows = []
    for group, members in groups.items():
        k = len(members)
        level = 1 - (1 - LEVEL_95) / k
        for label, (per_cell, pairs) in members.items():
            per_cell = [x for x in per_cell if x.size]
            if not per_cell:
                continue
            agg = aggregate_scores(per_cell, level=level, rng=seed)
            poi = probability_of_improvement(per_cell, lower_is_better=False, level=level, rng=seed)
            iqm = agg["iqm"]
            failed = sum(fails.get((f, s, m), 0) for m, _ in pairs for f, s in cells)
            base_failed = sum(fails.get((f, s, b), 0) for b in {b for _, b in pairs} for f, s in cells)
            if iqm.low > 0:
                overall = "better" if not failed else "unresolved (failed runs)"
            elif iqm.high < 0:
                overall = "worse" if not base_failed else "unresolved (failed runs)"
            else:  # the interval holds 0, or there is none
                overall = "no difference"
            tally = {v: sum(counts.get((m, b, v), 0) for m, b in pairs)
                     for v in ("better", "worse", "unresolved")}
            rows.append([group, label, 0, k, level, iqm.mean, iqm.low, iqm.high, agg["mean"].mean,
                         agg["mean"].low, agg["mean"].high, poi.mean, poi.low, poi.high, len(per_cell),
                         int(sum(x.size for x in per_cell)), tally["better"], tally["worse"],
                         tally["unresolved"], overall, failed, base_failed])
    out = pd.DataFrame(rows, columns=RANKING_COLUMNS)
    order = list(groups)
    out["_g"] = out["group"].map(order.index)
    out = out.sort_values(["_g", "iqm"], ascending=[True, False], kind="stable").drop(columns="_g")
    out["rank"] = out.groupby("group", sort=False).cumcount() + 1
    return out.reset_index(drop=True)


def performance_profile(scores: pd.DataFrame, taus: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Fraction of runs (cell x seed) whose normalised score exceeds each threshold, per pair, with a
    95% pointwise band (stratified bootstrap: seeds resampled within each cell).

    Args:
        scores: From :func:`normalised_scores`.
        taus: Array of shape (k,), thresholds.
        seed: Seed of the bootstrap.

    Returns:
        Columns method, baseline, tau, fraction, low, high.
    """
    rows = []
    for (method, base), part in scores.groupby(["method", "baseline"], sort=False):
        per_cell = [g["score"].to_numpy() for _, g in part.groupby(["family_label", "setting"], sort=False)]
        frac, low, high = score_profile(per_cell, taus, rng=seed)
        rows += [(method, base, float(t), float(v), float(lo), float(hi))
                 for t, v, lo, hi in zip(taus, frac, low, high, strict=True)]
    return pd.DataFrame(rows, columns=["method", "baseline", "tau", "fraction", "low", "high"])


def curve_metric(data: ReportData) -> tuple[str, str]:
    """``(split, metric)`` of the curves the convergence check reads: val loss_post, else train query_loss."""
    c = data.curves
    if ((c["split"] == "val") & (c["metric"] == "loss_post")).any():
        return "val", "loss_post"
    return "train", "query_loss"


def curve_frames(data: ReportData, split: str, metric: str) -> dict[tuple[str, str], dict[str, pd.DataFrame]]:
    """cell -> method -> DataFrame (index step, one column per seed) of one curve metric."""
    c = data.curves[(data.curves["split"] == split) & (data.curves["metric"] == metric)]
    c = c.merge(data.runs[["run", "family_label", "setting", "method", "seed"]], on="run")
    out: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}
    for cell in data.cells:
        part = c[(c.family_label == cell[0]) & (c.setting == cell[1])]
        by_method = {}
        for m in data.methods:
            pm = part[part.method == m]
            if not pm.empty:
                by_method[m] = pm.pivot_table(index="step", columns="seed", values="value")
        if by_method:
            out[cell] = by_method
    return out


def convergence_of(curve: pd.DataFrame) -> dict[str, float | str | int]:
    """Has a loss curve converged? Its late change against its final value and the seeds' noise.

    With the steps scaled to [0, 1] and per seed: ``final`` = mean of the evaluations after 0.9,
    ``late`` = ``final`` minus the mean of the evaluations in (0.65, 0.75] (the change over the
    last quarter or so), ``rise`` = ``final`` minus the value at the best step of the seed-mean
    curve. The between-seed noise of each is twice its standard error over seeds (``2 sd / sqrt(n)``;
    0 with one seed): a change smaller than that may be evaluation noise. The curve is

    - ``still improving`` when the mean late change is below ``-max(LATE_REL |final|, noise)``;
    - ``rising (overfitting)`` when the mean late change is above ``max(LATE_REL |final|, noise)``,
      or the mean rise above the best step exceeds ``max(RISE_REL |final|, its noise)``;
    - ``flat`` otherwise.

    The share of the whole improvement since initialisation made late (the earlier rule) hides a
    slow tail after a steep start; this rule compares the late change with the level reached.

    Args:
        curve: DataFrame with index step and one column per seed (loss values; lower is better).

    Returns:
        Dict with n_seeds, final, late_change, late_rel, late_noise, rise, rise_rel, rise_noise,
        best_step, flag.
    """
    frame = curve.dropna(axis=1).sort_index()
    steps = frame.index.to_numpy(dtype=float)
    v = frame.to_numpy().T  # (seeds, evaluations)
    n = v.shape[0]
    if n == 0 or len(steps) < 4:
        return {"n_seeds": n, "final": math.nan, "late_change": math.nan, "late_rel": math.nan,
                "late_noise": math.nan, "rise": math.nan, "rise_rel": math.nan, "rise_noise": math.nan,
                "best_step": math.nan,
                "flag": "too short"}
    x = (steps - steps[0]) / (steps[-1] - steps[0])
    late = x > 0.9
    mid = (x > 0.65) & (x <= 0.75)
    if not mid.any():
        mid = np.arange(len(x)) == int(np.argmin(np.abs(x - 0.75)))
    final = v[:, late].mean(axis=1)
    change = final - v[:, mid].mean(axis=1)
    best = int(np.argmin(v.mean(axis=0)))
    rise = final - v[:, best]
    fm = float(final.mean())
    def noise(x: np.ndarray) -> float:
        return float(2 * x.std(ddof=1) / math.sqrt(n)) if n >= 2 else 0.0

    late_noise, rise_noise = noise(change), noise(rise)
    scale = abs(fm) if fm else 1.0
    dc, dr = float(change.mean()), float(rise.mean())
    if dc < -max(LATE_REL * scale, late_noise):
        flag = "still improving"
    elif dc > max(LATE_REL * scale, late_noise) or dr > max(RISE_REL * scale, rise_noise):
        flag = "rising (overfitting)"
    else:
        flag = "flat"
    return {"n_seeds": n, "final": fm, "late_change": dc, "late_rel": dc / scale, "late_noise": late_noise,
            "rise": dr, "rise_rel": dr / scale, "rise_noise": rise_noise, "best_step": float(steps[best]),
            "flag": flag}


def convergence(data: ReportData) -> pd.DataFrame:
    """:func:`convergence_of` for every (cell, method) curve of :func:`curve_metric`.

    Returns:
        Columns family_label, setting, method, split, metric, then those of :func:`convergence_of`.
    """
    split, metric = curve_metric(data)
    rows = []
    for (f, s), by_method in curve_frames(data, split, metric).items():
        for m, frame in by_method.items():
            rows.append({"family_label": f, "setting": s, "method": m, "split": split, "metric": metric,
                         **convergence_of(frame)})
    return pd.DataFrame(rows)


def run_metric_intervals(data: ReportData, metric: str, seed: int = 0) -> pd.DataFrame:
    """:func:`cell_intervals` of a per-run statistic (wall_seconds, w_frac_negative, auc, ...)."""
    return cell_intervals(run_metric(data, metric), seed)


def run_metric_medians(data: ReportData, metric: str) -> pd.DataFrame:
    """Per (cell, method): the median of a per-run statistic over seeds with its distribution-free
    interval (:func:`~gabench.reporting._stats.median_interval`), in the columns of
    :func:`cell_intervals` (``mean`` holds the median, ``interval`` is ``order`` or empty)."""
    return cell_intervals(run_metric(data, metric), interval=median_interval)


def time_ratios(data: ReportData) -> pd.DataFrame:
    """Wall-clock ratio method / baseline of the medians over seeds, per cell: method, baseline,
    cell, ratio."""
    w = run_metric(data, "wall_seconds").groupby(["family_label", "setting", "method"])["value"].median()
    rows = []
    for method, base in data.pairs.items():
        for f, s in data.cells:
            if (f, s, method) in w.index and (f, s, base) in w.index and w[(f, s, base)] > 0:
                rows.append((method, base, cell_label(f, s), float(w[(f, s, method)] / w[(f, s, base)])))
    return pd.DataFrame(rows, columns=["method", "baseline", "cell", "ratio"])


def weight_histograms(data: ReportData) -> pd.DataFrame:
    """Histogram counts of relative weights summed over seeds, per cell and weighted method.

    Returns:
        Columns family_label, setting, method, bin, count; ``bin`` indexes the intervals of
        :data:`~gabench.reporting._data.HIST_EDGES` shifted by one (0 = below the first edge,
        ``len(HIST_EDGES)`` = above the last). A run that recorded no weights (its
        ``w_frac_negative`` is NaN) has none, also in data summarised before such runs were left
        out of ``weight_hist``, where their NaN weights counted in the last bin.
    """
    st = data.run_stats[data.run_stats["metric"] == "w_frac_negative"]
    unweighted = set(st.loc[st["value"].isna(), "run"])
    h = data.weight_hist[~data.weight_hist["run"].isin(unweighted)]
    h = h.merge(data.runs[["run", "family_label", "setting", "method"]], on="run")
    return h.groupby(["family_label", "setting", "method", "bin"], sort=False)["count"].sum().reset_index()


def clipped_share(hist: pd.DataFrame) -> float:
    """Share of the weights in :func:`weight_histograms` outside the histogram's range."""
    total = hist["count"].sum()
    out = hist.loc[(hist["bin"] == 0) | (hist["bin"] == len(HIST_EDGES)), "count"].sum()
    return float(out / total) if total else 0.0
