"""Rendering: ``reports/<study>/README.md``, its figures, ``comparisons.csv`` and ``data/``.

Every number shown comes from the tidy tables of ``_analysis.py``; this module only formats them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gabench import __version__
from gabench._provenance import git_commit
from gabench.reporting import _analysis as an
from gabench.reporting import _plots as plots
from gabench.reporting._data import (
    HIST_EDGES,
    LOWER_IS_BETTER,
    ReportData,
    StudyTables,
    check_not_an_archive,
    check_report_data,
    summarise,
)
from gabench.reporting._stats import ALPHA, BOOTSTRAP_MIN_N, LEVEL, N_RESAMPLES, Interval

#: Thresholds per performance-profile figure (spanning +-1.1 x the largest |score|).
PROFILE_POINTS = 401
_SELECT_TEXT = {
    "best_val": "parameters at the best meta-validation step, evaluated on the meta-test tasks",
    "final": "the final iterate (parameters after the last meta-training step)",
}


def fmt_interval(iv: Interval) -> str:
    """``mean [low, high]`` with as many decimals as the interval's width warrants."""
    if iv.n == 0 or math.isnan(iv.mean):
        return "–"
    if iv.n < 2 or math.isnan(iv.low):
        return f"{iv.mean:.4g} (n={iv.n})"
    d = _decimals(iv.high - iv.low, iv.mean)
    return f"{iv.mean:.{d}f} [{iv.low:.{d}f}, {iv.high:.{d}f}]"


def _decimals(width: float, mean: float) -> int:
    if width > 1e-9 * max(abs(mean), 1e-12) and math.isfinite(width):
        return int(np.clip(math.ceil(-math.log10(width)) + 1, 0, 6))
    return int(np.clip(3 - math.floor(math.log10(abs(mean))) if mean else 3, 0, 6))


def fmt_p(p: float) -> str:
    """A p-value in 2 significant digits (``<1e-4`` below)."""
    if p is None or not math.isfinite(p):
        return "–"
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _pct(x: float) -> str:
    """A share as a signed percentage with one decimal, without a negative zero."""
    return f"{round(100 * x, 1) + 0.0:+.1f}%"


def _pct_ci(est: float, low: float, high: float) -> str:
    """``+1.3% [-0.4, +3.0]``, or ``+1.3% (no interval)`` where there is none (one seed per cell)."""
    if math.isnan(low) or math.isnan(high):
        return f"{_pct(est)} (no interval)"
    return f"{_pct(est)} [{_pct(low)[:-1]}, {_pct(high)[:-1]}]"


def _share_ci(est: float, low: float, high: float) -> str:
    """``0.62 [0.40, 0.80]``, or ``0.62 (no interval)``."""
    if math.isnan(low) or math.isnan(high):
        return f"{est:.2f} (no interval)"
    return f"{est:.2f} [{low:.2f}, {high:.2f}]"


def _col(cell: tuple[str, str]) -> str:
    family, setting = cell
    return f"{family}<br>{setting}" if setting else family


def _where(f: str, s: str) -> str:
    return f + (f" ({s})" if s else "")


def _iv(row: Any) -> Interval:
    return Interval(float(row["mean"]), float(row["low"]), float(row["high"]), int(row["n_seeds"]),
                    str(row["interval"]))


class _Sections:
    """The Markdown sections of one report, from the analysis tables."""

    def __init__(self, d: ReportData, out: Path, command: str, seed: int) -> None:
        self.d, self.out, self.command, self.seed = d, out, command, seed
        self.cells, self.methods, self.pairs = d.cells, d.methods, d.pairs
        self.info = d.method_info
        self.fails = an.failed_counts(d)
        self._cells_of: dict[str, list[tuple[str, str]]] = {}
        self.styles = plots.method_styles(self.info)
        self.primary = an.primary_select(d)
        self.selects = d.selections
        self.metrics = [m for m in an.TEST_METRICS if m in set(d.test["metric"])]
        self.comp = an.comparisons(d)
        self.req = an.seed_requirement(self.comp)
        self.conv = an.convergence(d)
        self.agg = pd.concat([an.aggregates(d, m, s, seed) for s in self.selects for m in an.PRIMARY
                              if m in self.metrics], ignore_index=True) if self.pairs else pd.DataFrame()

    # ------------------------------------------------------------------ header and plan
    def header(self) -> str:
        meta, n_runs = self.d.meta, len(self.d.runs)
        lines = [f"# Study `{self.d.name}`", ""]
        if meta.get("description"):
            lines += [meta["description"], ""]
        commits = meta.get("run_commits") or {}
        counts = pd.Series(list(commits.values())).value_counts() if commits else pd.Series(dtype=int)
        if len(counts):
            produced = "; ".join(f"{k} ({v} runs)" for k, v in counts.items())
            missing = n_runs - int(counts.sum())
            if missing > 0:
                produced += f"; not recorded ({missing} runs, made before gabench recorded it)"
        else:
            produced = f"gabench {meta.get('gabench_version', '?')} {meta.get('git_commit') or 'unknown'}"
        planned = len(meta.get("runs", [])) or n_runs
        cover = f" of {planned} planned" if planned != n_runs else ", all planned runs finished"
        if self.d.failures:
            cover += f"; {len(self.d.failures)} failed, listed at the end"
        lines += ["Regenerate this report (it reads only the result tables, or its own `data/`):", "",
                  "```bash", self.command, "```", ""]
        if meta.get("file"):
            lines += [f"The runs come from `gabench compare {meta['file']}` (resumable; finished runs are "
                      f"kept).",
                      ""]
        lines += [
            f"- Runs produced by (gabench version, git commit): {produced}.",
            f"- Report written by gabench {__version__}, git commit `{git_commit() or 'unknown'}`, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            f"- Source: `{self.d.source}` ({n_runs} runs{cover}). Per-seed summaries: `data/`; every "
            f"comparison: `comparisons.csv`."]
        if self.d.subset:
            lines.append(f"- **Partial report** {self.d.subset}")
        return "\n".join([*lines, ""])

    def plan(self) -> str:
        seeds = sorted(self.d.runs["seed"].unique())
        lines = ["## What was compared", "",
                 "- Cells (family / setting): " + ", ".join(an.cell_label(*c) for c in self.cells) + ".",
                 f"- Methods: {', '.join(f'`{m}`' for m in self.methods)}; compared pairs (method - "
                 f"baseline): "
                 + (", ".join(f"`{a}` - `{b}`" for a, b in self.pairs.items()) or "none") + ".",
                 f"- Seeds: {len(seeds)} ({', '.join(map(str, seeds))}). A seed fixes the task streams and "
                 f"the initial model of every method (paired comparisons).",
                 "- Model selection: " + "; ".join(
                     f"`{s}` = {_SELECT_TEXT.get(s, s)}" + (" (**primary**)" if s == self.primary else "")
                     for s in self.selects) + "." + self.select_reason(), ""]
        hp = self.hyperparameters()
        if hp:
            lines += ["<details><summary>Hyperparameters of each family x method</summary>", "", hp, "",
                      "</details>", ""]
        return "\n".join(lines)

    def select_reason(self) -> str:
        if self.primary == "best_val":
            return (" `best_val` is primary: it is chosen on meta-validation tasks only, and it does not "
                    "compare end points that have overfitted (or not yet converged) at the fixed budget; "
                    "`final` is shown beside it.")
        return " These runs recorded only the final iterate, so `final` is primary."

    def hyperparameters(self) -> str:
        runs = self.d.meta.get("runs", [])
        if not runs or "alpha" not in runs[0]:
            return ""
        frame = pd.DataFrame(runs)
        keys = [k for k in ["ways", "shots", "query_shots",  # the task shape (resolved family parameters)
                            "alpha", "beta", "inner_steps", "meta_batch", "steps", "optimizer", "eval_every"]
                if k in frame]
        rows = []
        for (f, m), g in frame.groupby(["family_label", "method_label"], sort=False):
            vals = [", ".join(sorted({"-" if v is None or v != v else f"{v:g}" if isinstance(v, float)
                                      else str(v) for v in g[k]})) for k in keys]
            rows.append([f, m, *vals])
        return md_table(["family", "method", *keys], rows)

    # ------------------------------------------------------------------ findings
    def findings(self) -> str:
        lines = ["## Findings (as measured)", ""]
        prim = self.comp[self.comp["test_family"] == "primary"]
        if prim.empty:
            return "\n".join(lines + ["No paired comparison could be made.", ""])
        untested = len(prim) - self.req.n_tests  # n_tests counts those with a p-value
        lines.append(f"Primary comparisons: {self.req.n_tests} (metrics "
                     f"{', '.join(f'`{m}`' for m in an.PRIMARY)} x cells x pairs, `select = "
                     f"{self.primary}`), Holm-corrected together; a cell is **better**/**worse** only when "
                     f"its Holm-adjusted paired-t p < {ALPHA:g}."
                     + (f" {untested} more could not be tested (fewer than 2 seeds that both sides "
                        "finished, or the same value on every seed)." if untested else ""))
        lines.append("")
        if not self.req.enough:
            lines += [self.seed_warning(), ""]
        for metric in an.PRIMARY:
            by_pair = prim[prim["metric"] == metric].groupby(["method", "baseline"], sort=False)
            for (method, base), part in by_pair:
                lines.append(self._finding_line(metric, method, base, part))
        other = self.comp[(self.comp["test_family"] != "primary") & self.comp["metric"].isin(an.PRIMARY)]
        if not other.empty:
            sel = other["select"].iloc[0]
            n_b, n_w = int((other["verdict"] == "better").sum()), int((other["verdict"] == "worse").sum())
            tested = int(other["p_value"].notna().sum())
            lines.append(f"- With `select = {sel}` (secondary, Holm-corrected as its own family): {n_b} "
                         f"better, {n_w} worse, {tested - n_b - n_w} unresolved of {tested} tested "
                         "comparisons" + (f" ({len(other) - tested} untested)" if len(other) > tested
                                          else "") + ".")
        if not self.agg.empty:
            a = self.agg[(self.agg["select"] == self.primary)]
            for (method, base, metric), part in a.groupby(["method", "baseline", "metric"], sort=False):
                r = part.set_index("statistic")
                iqm, poi = r.loc["iqm"], r.loc["p_improve"]
                lines.append(f"- Across cells, `{method}` vs `{base}`, `{metric}`: IQM of the normalised "
                             f"improvement {_pct_ci(iqm.estimate, iqm.low, iqm.high)}, P(`{method}` beats "
                             f"`{base}`) = {_share_ci(poi.estimate, poi.low, poi.high)}.")
        flagged = self.conv[self.conv["flag"].isin(["still improving", "rising (overfitting)"])] \
            if not self.conv.empty else self.conv
        if len(flagged):
            names = "; ".join(f"`{r.method}` on {_where(r.family_label, r.setting)}: {r.flag}"
                              for r in flagged.itertuples())
            lines.append(f"- Convergence: {len(flagged)} of {len(self.conv)} curves are not flat at the end "
                         f"({names}); see \"Convergence\". Their `final` values compare methods before "
                         f"convergence or after overfitting.")
        elif len(self.conv):
            lines.append(f"- Convergence: all {len(self.conv)} curves are flat at the end (see "
                         f"\"Convergence\").")
        lines += ["", "These statements are generated from `comparisons.csv` and the tables below.", ""]
        return "\n".join(lines)

    def _finding_line(self, metric: str, method: str, base: str, part: pd.DataFrame) -> str:
        def names(v: str) -> str:
            sel = part[part["verdict"] == v]
            return ", ".join(_where(r.family_label, r.setting) for r in sel.itertuples())

        nb, nw = int((part["verdict"] == "better").sum()), int((part["verdict"] == "worse").sum())
        untested = part[part["p_value"].isna()]
        where = ", ".join(f"{_where(r.family_label, r.setting)}: "
                          + (f"{r.n_seeds} seed(s) both finished" if r.n_seeds < 2
                             else f"equal on all {r.n_seeds} seeds") for r in untested.itertuples())
        text = (f"- `{method}` vs `{base}`, `{metric}`: better in {nb} of {len(part)} cell(s)"
                + (f" ({names('better')})" if nb else "") + f", worse in {nw}"
                + (f" ({names('worse')})" if nw else "")
                + f", unresolved in {len(part) - nb - nw - len(untested)}"
                + (f", untested in {len(untested)} ({where})" if len(untested) else "") + ".")
        raw = int((part["p_value"] < ALPHA).sum())
        if raw != nb + nw:
            text += f" (Before the Holm correction {raw} cell(s) had p < {ALPHA:g}.)"
        better = (part["diff_mean"] < 0) == part["lower_is_better"]
        for side, who, favoured in (("method_failed", method, better), ("baseline_failed", base, ~better)):
            hit = [(c, k) for c in self._metric_cells(metric) if (k := self.fails.get((*c, who), 0))]
            if hit:
                withheld = int(((part["p_holm"] < ALPHA) & (part["verdict"] == "unresolved")
                                & (part[side] > 0) & favoured).sum())
                text += (f" `{who}` failed on {sum(k for _, k in hit)} run(s) in {len(hit)} cell(s) "
                         f"({', '.join(_where(*c) for c, _ in hit)}): the comparisons there use the seeds "
                         "both finished, and none favours it"
                         + (f" ({withheld} call(s) withheld)" if withheld else "") + ".")
        rel = (part["diff_mean"] / part["baseline_mean"].abs()).replace([np.inf, -np.inf], np.nan).dropna()
        if len(rel):
            text += (f" Relative to the baseline's mean the differences range from {_pct(rel.min())} to "
                     f"{_pct(rel.max())}.")
        return text

    def _metric_cells(self, metric: str) -> list[tuple[str, str]]:
        """The cells in which some run has ``metric`` (a family without accuracy has no acc_*);
        computed once per metric (every findings line of the metric asks)."""
        if metric not in self._cells_of:
            runs = self.d.test.loc[self.d.test["metric"] == metric, "run"]
            where = self.d.runs.loc[self.d.runs["run"].isin(runs), ["family_label", "setting"]]
            has = set(zip(where["family_label"], where["setting"], strict=True))
            self._cells_of[metric] = [c for c in self.cells if c in has]
        return self._cells_of[metric]

    def seed_warning(self) -> str:
        r = self.req
        return (f"> **Too few seeds for a distribution-free call.** With {r.n_tests} Holm-corrected primary "
                f"comparisons, a Wilcoxon signed-rank (or sign) test can pass only with at least "
                f"{r.rank_test_min} paired seeds ({r.n_tests} x 2/2^n < {ALPHA:g}); this study has "
                f"{r.seeds_text}. The paired t test can still make calls from {r.t_test_min} seeds, but they "
                f"rest on its normality assumption, which so few seeds cannot check.")

    # ------------------------------------------------------------------ tables
    def test_tables(self) -> str:
        lines = ["## Meta-test results", "",
                 f"Mean over seeds [{LEVEL:.0%} interval over seeds: Student t below {BOOTSTRAP_MIN_N} "
                 f"seeds, BCa bootstrap from there]; each seed's value is itself the mean over the held-out "
                 f"meta-test tasks.", ""]
        for select in self.selects:
            metrics = self.metrics if select == self.primary else [m for m in self.metrics if m in an.PRIMARY]
            tag = "primary selection" if select == self.primary else "secondary selection"
            for metric in metrics:
                ivs = an.cell_intervals(an.seed_values(self.d, metric, select), self.seed)
                if ivs.empty:
                    continue
                idx = {(r.family_label, r.setting, r.method): r for r in ivs.itertuples()}
                rows = [[f"`{m}`", *[fmt_interval(_iv(idx[(f, s, m)]._asdict())) if (f, s, m) in idx else "–"
                                     for f, s in self.cells]] for m in self.methods]
                lines += [f"### `{metric}`, `select = {select}` ({tag}): {an.TEST_METRICS[metric]}", "",
                          md_table(["method", *map(_col, self.cells)], rows), ""]
        return "\n".join(lines)

    def differences(self) -> str:
        lines = ["## Paired differences: method minus its baseline", "",
                 f"For each seed, the method's meta-test value minus its baseline's on the same seed (same "
                 f"tasks and initial model). Cells: mean difference [{LEVEL:.0%} paired-t interval]; p = "
                 f"paired-t p-value, p_W = Wilcoxon signed-rank p-value, p_H = Holm-adjusted paired-t "
                 f"p-value within the cell's family of tests; **better**/**worse** when p_H < {ALPHA:g}, "
                 "unless the call favours a side that failed on a seed of the cell (then it is withheld).",
                 ""]
        if not self.pairs:
            return "\n".join(lines + ["No method with a baseline in this study.", ""])
        for select in self.selects:
            metrics = self.metrics if select == self.primary else [m for m in self.metrics if m in an.PRIMARY]
            for metric in metrics:
                part = self.comp[(self.comp["metric"] == metric) & (self.comp["select"] == select)]
                if part.empty:
                    continue
                lower = metric in LOWER_IS_BETTER
                idx = {(r.family_label, r.setting, r.method): r for r in part.itertuples()}
                rows = []
                for method, base in self.pairs.items():
                    row = [f"`{method}` - `{base}`"]
                    for f, s in self.cells:
                        r = idx.get((f, s, method))
                        if r is None:
                            row.append("–")
                            continue
                        iv = Interval(r.diff_mean, r.ci_low, r.ci_high, r.n_seeds)
                        mark = f" **{r.verdict}**" if r.verdict != "unresolved" else ""
                        sides = (("method", r.method_failed), ("baseline", r.baseline_failed))
                        failed = ", ".join(f"{who} failed on {k}" for who, k in sides if k)
                        row.append(f"{fmt_interval(iv)}<br>p={fmt_p(r.p_value)}, p_W={fmt_p(r.p_wilcoxon)}, "
                                   f"p_H={fmt_p(r.p_holm)}{mark}"
                                   + (f"<br>({failed}; n={r.n_seeds})" if failed else ""))
                    rows.append(row)
                sign = "negative" if lower else "positive"
                fam = part["test_family"].iloc[0]
                lines += [f"### `{metric}`, `select = {select}` ({sign} = method better; family: {fam})", "",
                          md_table(["method - baseline", *map(_col, self.cells)], rows), ""]
                if metric in an.PRIMARY and select == self.primary:
                    name = f"paired_{metric}.png"
                    frows = [(an.cell_label(r.family_label, r.setting), r.method,
                              *(100 * v / abs(r.baseline_mean) for v in (r.diff_mean, r.ci_low, r.ci_high)))
                             for r in part.itertuples() if r.baseline_mean]
                    if frows:
                        plots.forest(frows, self.styles, f"(method - baseline) / baseline mean, % of "
                                                         f"{metric} "
                                     f"({sign} = method better)", self.out / name)
                        lines += ["The same differences relative to the baseline's mean (in %), with their "
                                  "intervals:", "", f"![paired differences {metric}]({name})", ""]
        return "\n".join(lines)

    def aggregates(self) -> str:
        if self.agg.empty:
            return ""
        lines = ["## Across cells: aggregate improvement", "",
                 f"Per cell and seed, the normalised score is the method's improvement over its baseline on "
                 f"the same seed relative to the baseline's mean in that cell (`+-(method - baseline) / "
                 f"|baseline mean|`, positive = better; 5% = 5% better). Mean and interquartile mean (IQM, "
                 f"the mean of the middle 50% of runs) pool all cells and seeds; P(improve) = the share of "
                 f"seeds on which the method beats its baseline on the same seed (ties one half), averaged "
                 f"over cells (the paired form of rliable's probability of improvement). Intervals: "
                 f"{LEVEL:.0%} stratified percentile bootstrap (seeds resampled within each cell, rescaled "
                 f"as Rao and Wu's bootstrap for small cells: see the methods).", ""]
        for select in self.selects:
            a = self.agg[self.agg["select"] == select]
            rows = []
            for (method, base, metric), part in a.groupby(["method", "baseline", "metric"], sort=False):
                r = part.set_index("statistic")

                def pct(k: str, r: pd.DataFrame = r) -> str:
                    return _pct_ci(r.at[k, "estimate"], r.at[k, "low"], r.at[k, "high"])

                poi = r.loc["p_improve"]
                rows.append([f"`{method}` - `{base}`", f"`{metric}`", pct("mean"), pct("iqm"),
                             _share_ci(poi.estimate, poi.low, poi.high),
                             f"{int(r.at['mean', 'n_cells'])} x {int(r.at['mean', 'n_runs'])} runs"])
            tag = "primary" if select == self.primary else "secondary"
            lines += [f"### `select = {select}` ({tag})", "",
                      md_table(["pair", "metric", "mean score", "IQM score", "P(improve)", "cells x runs"],
                               rows),
                      ""]
        for metric in [m for m in an.PRIMARY if m in self.metrics]:
            scores = an.normalised_scores(self.d, metric, self.primary)
            if scores.empty:
                continue
            lim = max(1.1 * float(scores["score"].abs().max()), 1e-3)
            prof = an.performance_profile(scores, np.linspace(-lim, lim, PROFILE_POINTS), self.seed)
            data = {f"{m} - {b}": (g["tau"].to_numpy(), g["fraction"].to_numpy(), g["low"].to_numpy(),
                                   g["high"].to_numpy())
                    for (m, b), g in prof.groupby(["method", "baseline"], sort=False)}
            name = f"profile_{metric}.png"
            plots.performance_profile(data, self.styles, f"normalised improvement tau ({metric}, "
                                      f"select = {self.primary})", self.out / name)
            lines += [f"Performance profile of `{metric}` (`select = {self.primary}`): the fraction of runs "
                      f"whose normalised improvement exceeds tau, with a 95% pointwise band (stratified "
                      f"bootstrap); a curve above 0.5 at tau = 0 improves more runs than it worsens.", "",
                      f"![performance profile {metric}]({name})", ""]
        return "\n".join(lines)

    def ranking(self) -> str:
        """The weightings compared with one baseline, ranked (only for an aggregator zoo)."""
        if not self.pairs:
            return ""
        lines: list[str] = []
        for metric in [m for m in an.PRIMARY if m in self.metrics]:
            rk = an.ranking(self.d, self.comp, metric, self.primary, self.seed)
            for group, part in rk.groupby("group", sort=False):
                pooled = group == "all baselines"
                rows = [[str(r.rank), f"`{r.method}`", _pct_ci(r.iqm, r.iqm_low, r.iqm_high),
                         _pct_ci(r.mean, r.mean_low, r.mean_high),
                         _share_ci(r.p_improve, r.p_low, r.p_high),
                         f"{r.better} / {r.worse} / {r.unresolved}", f"{r.n_cells} x {r.n_runs}",
                         f"{r.failed} / {r.baseline_failed}",
                         f"**{r.overall}**" if r.overall in ("better", "worse") else r.overall]
                        for r in part.itertuples()]
                k, level = int(part["k"].iloc[0]), float(part["level"].iloc[0])
                if pooled:
                    title = (f"### `{metric}`: each weighting over every baseline it ran with (per seed, "
                             f"the mean of its baselines' scores)")
                    against = "the baselines"
                else:
                    title = f"### `{metric}`: the methods compared with `{group}`"
                    against = f"`{group}`"
                winners = ", ".join(f"`{m}`" for m in part.loc[part["overall"] == "better", "method"])
                losers = ", ".join(f"`{m}`" for m in part.loc[part["overall"] == "worse", "method"])
                verdict = (f"Better than {against} overall: {winners}." if winners
                           else f"None of the {k} is better than {against} overall.")
                verdict += f" Worse overall: {losers}." if losers else ""
                lines += [title, "",
                          f"Intervals at {level:.2%} (Bonferroni over the {k} rows).", "",
                          md_table(["rank", "weighting" if pooled else "method", "IQM score", "mean score",
                                    "P(improve)", "cells better / worse / unresolved", "cells x runs",
                                    "failed runs (method / baseline)", "overall"], rows), "", verdict, ""]
        if not lines:
            return ""
        intro = [f"## Ranking: does any weighting beat its baseline? (`select = {self.primary}`)", "",
                 "The methods compared with the same baseline, ranked by the interquartile mean of their "
                 "normalised scores over every cell (as in \"Across cells\"; positive = better than the "
                 "baseline). Each group's intervals are Bonferroni-adjusted for its number of rows, and "
                 "**overall** is better (worse) when the IQM's interval lies above (below) 0, so the "
                 "chance of any wrong overall call in a group stays below 5%. Where intervals overlap, the "
                 "order between those methods is not established; a method that lacks some cells is "
                 "ranked over fewer (\"cells x runs\"). The cell counts are the Holm-corrected verdicts "
                 "of the primary family. A failed (diverged) run leaves its seed out of the scores, which "
                 "flatters the side that failed: a method with failed runs is never called better overall, "
                 "nor worse when its baseline failed.", ""]
        return "\n".join(intro + lines)

    def by_setting(self) -> str:
        parsed = {}
        for f, s in self.cells:
            m = re.fullmatch(r"([\w.]+)=(-?[\d.eE+-]+)", s)
            if not m:
                return ""
            parsed[(f, s)] = (m.group(1), float(m.group(2)))
        keys = {k for k, _ in parsed.values()}
        if len(keys) != 1 or len({v for _, v in parsed.values()}) < 2:
            return ""
        key = keys.pop()
        lines = [f"## Meta-test metrics against `{key}` (`select = {self.primary}`)", "",
                 "Mean over seeds with a 95% interval band; the paired differences above say whether a "
                 "method and its baseline differ at each point.", ""]
        for metric in [m for m in an.PRIMARY if m in self.metrics]:
            ivs = an.cell_intervals(an.seed_values(self.d, metric, self.primary), self.seed)
            out: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
            for f in dict.fromkeys(f for f, _ in self.cells):
                by_method = {}
                for m in self.methods:
                    sel = ivs[(ivs.family_label == f) & (ivs.method == m)]
                    pts = sorted((parsed[(f, r.setting)][1], r.mean, r.low, r.high) for r in sel.itertuples())
                    if pts:
                        arr = np.array(pts).T
                        by_method[m] = (arr[0], arr[1], arr[2], arr[3])
                if by_method:
                    out[f] = by_method
            if out:
                name = f"by_setting_{metric}.png"
                plots.by_setting(out, self.styles, key, f"test {metric}", self.out / name)
                lines += [f"![{metric} against {key}]({name})", ""]
        return "\n".join(lines)

    # ------------------------------------------------------------------ curves and convergence
    def curves(self) -> str:
        split, _ = an.curve_metric(self.d)
        lines = ["## Learning curves", ""]
        hline = math.log(2) if set(self.d.runs["family"]) <= {"book-binary", "textbook-binary"} else None
        if split == "train":
            lines += ["No meta-validation during training (eval_every = 0): the curves show the "
                      "meta-training query loss after adaptation, averaged over bins of 2% of the steps.", ""]
            plots.learning_curves(an.curve_frames(self.d, "train", "query_loss"), self.styles, "train query "
                                                                                               "loss",
                                  self.out / "curves_train.png", hline=hline)
            lines += ["![learning curves](curves_train.png)", ""]
        else:
            lines += ["Meta-validation metrics on a fixed set of held-out tasks, mean over seeds with a 95% "
                      "Student-t band over seeds (panels only for cells that have the metric).", ""]
            for metric in ("loss_post", "acc_post"):
                frames = an.curve_frames(self.d, "val", metric)
                if not frames:
                    continue
                name = f"curves_{metric}.png"
                plots.learning_curves(frames, self.styles, f"val {metric}", self.out / name,
                                      hline=hline if metric == "loss_post" else None)
                lines += [f"![validation {metric}]({name})", ""]
        return "\n".join(lines + self.convergence())

    def convergence(self) -> list[str]:
        c = self.conv
        if c.empty:
            return []
        split, metric = c["split"].iloc[0], c["metric"].iloc[0]
        idx = {(r.family_label, r.setting, r.method): r for r in c.itertuples()}
        rows = []
        for m in self.methods:
            row = [f"`{m}`"]
            for f, s in self.cells:
                r = idx.get((f, s, m))
                if r is None or not math.isfinite(r.final):
                    row.append("–")
                    continue
                mark = "" if r.flag == "flat" else f" **{r.flag}**"
                row.append(f"{_pct(r.late_rel)} / {_pct(r.rise_rel)}{mark}")
            rows.append(row)
        return ["### Convergence", "",
                f"On the {split} `{metric}` curve of each cell and method: **late change** = the mean over "
                f"seeds of (the mean of the evaluations in the last 10% of the steps) minus (the mean of "
                f"those in 65-75%), and **rise** = the final value minus the value at the best step of the "
                f"seed-mean curve, both relative to the final value (late change / rise). A curve is **still "
                f"improving** when it fell by more than {100 * an.LATE_REL:g}% of its final value and more "
                f"than twice its standard error over seeds (its between-seed noise); **rising "
                f"(overfitting)** when it rose by as much, or ended more than {100 * an.RISE_REL:g}% (and "
                f"twice that rise's standard error) above its best step. Unlike the share of the whole "
                f"improvement since initialisation, this sees a slow tail after a steep start.", "",
                md_table(["method", *map(_col, self.cells)], rows), ""]

    # ------------------------------------------------------------------ weights
    def weights(self) -> str:
        weighted = [m for m, (_, agg, _) in self.info.items() if agg != "mean"]
        lines = ["## Task weights", ""]
        if not weighted:
            return "\n".join(lines + ["Every method weights tasks uniformly (1/T).", ""])
        lines += ["Relative weight = T x w_i, so uniform weighting (MAML, Reptile) is 1 for every task; GA "
                  "weights sum in absolute value to 1 and a task whose update points against the batch "
                  "average gets a negative weight. Fraction negative and effective number of tasks "
                  "(`(sum|w|)^2 / sum w^2`, as a fraction of T) are averaged over all meta-training steps, "
                  "then over seeds [95% interval].", ""]
        for metric, title in (("w_frac_negative", "fraction of negative weights"),
                              ("w_eff_frac", "effective number of tasks / T")):
            ivs = an.run_metric_intervals(self.d, metric, self.seed)
            if ivs.empty:
                continue
            idx = {(r.family_label, r.setting, r.method): r for r in ivs.itertuples()}
            rows = [[f"`{m}`", *[fmt_interval(_iv(idx[(f, s, m)]._asdict())) if (f, s, m) in idx else "–"
                                 for f, s in self.cells]] for m in weighted]
            lines += [f"### {title}", "", md_table(["method", *map(_col, self.cells)], rows), ""]
        hist = an.weight_histograms(self.d)
        if not hist.empty:
            nb = len(HIST_EDGES) + 1
            data: dict[tuple[str, str], dict[str, np.ndarray]] = {}
            for (f, s, m), g in hist.groupby(["family_label", "setting", "method"], sort=False):
                counts = np.zeros(nb)
                counts[g["bin"].to_numpy()] = g["count"].to_numpy()
                data.setdefault((f, s), {})[m] = counts
            data = {c: data[c] for c in self.cells if c in data}
            plots.weight_histograms(data, HIST_EDGES, self.styles, self.out / "weights_hist.png")
            share = an.clipped_share(hist)
            lines += ["Distribution of relative weights over all steps, tasks and seeds"
                      + (f" ({100 * share:.2g}% of all weights lie outside [{HIST_EDGES[0]:g}, "
                         f"{HIST_EDGES[-1]:g}] and are drawn in the edge bins; each affected panel names the "
                         f"method with the largest share outside, and that share)" if share else "")
                      + ":", "", "![weight distributions](weights_hist.png)", ""]
        return "\n".join(lines)

    def outliers(self) -> str:
        ow = self.d.outlier_weights
        if ow.empty:
            return ""
        runs = self.d.runs.set_index("run")
        lines = ["## Outlier tasks: do the weights find them?", "",
                 "Meta-training batches contain corrupted tasks (`outlier_fraction` of each batch, rounded "
                 "half to even: the first row gives the counts as run); meta-validation and meta-test tasks "
                 "are clean. **AUC** = probability that a random clean task of a batch gets a larger weight "
                 "than a random corrupted task of the same batch (ties one half), per meta-training step, "
                 "averaged over steps, then over seeds [95% interval]. 0.5 = the weights do not tell them "
                 "apart (uniform weights score exactly 0.5); 1 = every corrupted task is weighted below "
                 "every clean one.", ""]
        out_runs = set(ow["run"])
        cells = [c for c in self.cells if any(
            (runs.at[r, "family_label"], runs.at[r, "setting"]) == c for r in out_runs)]
        counts = {}
        for r in out_runs:
            counts.setdefault((runs.at[r, "family_label"], runs.at[r, "setting"]), set()).update(
                str(runs.at[r, "corrupted_per_batch"]).split(", "))
        rows = [["corrupted tasks per meta-training batch",
                 *[", ".join(sorted(counts.get(c, {"–"}))) for c in cells]]]
        for metric, suffix in (("auc", ""), ("auc_late", " (last 10% of steps)")):
            ivs = an.run_metric_intervals(self.d, metric, self.seed)
            idx = {(r.family_label, r.setting, r.method): r for r in ivs.itertuples()}
            for m in self.methods:
                if self.info[m][1] == "mean":
                    continue
                rows.append([f"`{m}`{suffix}", *[fmt_interval(_iv(idx[(*c, m)]._asdict())) if (*c, m) in idx
                                                  else "–" for c in cells]])
        lines += [md_table(["method", *map(_col, cells)], rows), ""]
        tr = ow.join(runs[["family_label", "setting", "method"]], on="run")
        keys = ["family_label", "setting", "method", "corrupted", "step"]
        mean = tr.groupby(keys, sort=False)["rel"].mean()
        traces: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in cells}
        for (f, s, m, flag), part in mean.groupby(level=[0, 1, 2, 3], sort=False):
            p = part.droplevel([0, 1, 2, 3]).sort_index()
            traces[(f, s)][f"{m} ({'corrupted' if flag else 'clean'})"] = (p.index.to_numpy(), p.to_numpy())
        plots.smoothed_lines(traces, self.styles, "mean relative weight T * w",
                             self.out / "outlier_weights.png",
                             hline=1.0)
        lines += ["Mean relative weight of corrupted (solid) and clean (dotted) tasks over meta-training "
                  "(averaged over bins of 2% of the steps, then over seeds; 1 = uniform):", "",
                  "![weights of corrupted and clean tasks](outlier_weights.png)", ""]
        return "\n".join(lines)

    def wall_clock(self) -> str:
        ivs = an.run_metric_medians(self.d, "wall_seconds")
        if ivs.empty:
            return ""
        idx = {(r.family_label, r.setting, r.method): r for r in ivs.itertuples()}
        rows = [[f"`{m}`", *[fmt_interval(_iv(idx[(f, s, m)]._asdict())) if (f, s, m) in idx else "–"
                             for f, s in self.cells]] for m in self.methods]
        lines = ["## Wall-clock", "",
                 "Seconds of meta-training per run (including meta-validation; the final meta-test is not "
                 "counted), median over seeds [95% distribution-free interval from order statistics, "
                 "`scipy.stats.quantile_test`; it needs 6 seeds]. Medians, because a run slowed by other "
                 "work on the machine is an outlier, not noise. Runs may have shared the CPU with other "
                 "runs (`--workers`), so compare methods within a study, not across machines.", "",
                 md_table(["method", *map(_col, self.cells)], rows), ""]
        ratios = an.time_ratios(self.d)
        parts = [f"`{m}` / `{b}`: {g['ratio'].median():.2f} (ratio of the medians, median over cells; range "
                 f"{g['ratio'].min():.2f}-{g['ratio'].max():.2f})"
                 for (m, b), g in ratios.groupby(["method", "baseline"], sort=False)]
        if parts:
            lines += ["Time ratio method / baseline: " + "; ".join(parts) + ".", ""]
        return "\n".join(lines)

    def failures(self) -> str:
        if not self.d.failures:
            return ""
        rows = [[f"`{k}`", v] for k, v in self.d.failures.items()]
        return "\n".join([
            "## Failed runs", "",
            "Not in the tables above (the rest of their cell is; comparisons use the seeds both methods "
            "finished). A divergence is its run's first outcome: a resumed compare keeps it rather than "
            "running it again, since near the edge of stability whether a run diverges depends on the "
            "machine's floating-point rounding, and rerunning only the failures until they finish would "
            "select survivors.", "", md_table(["run", "reason"], rows), ""])

    def methods_note(self) -> str:
        fams = list(dict.fromkeys(self.comp["test_family"])) if not self.comp.empty else []
        return "\n".join([
            "## How the numbers are computed", "",
            f"- Means over seeds: {LEVEL:.0%} Student-t interval (`scipy.stats.t`) below {BOOTSTRAP_MIN_N} "
            f"seeds, BCa bootstrap (`scipy.stats.bootstrap`, {N_RESAMPLES} resamples, seed {self.seed}) from "
            f"{BOOTSTRAP_MIN_N} on. A percentile bootstrap over 3-10 seeds covers the mean far less often "
            f"than 95%; the t interval keeps its coverage at small n (tested by simulation in "
            f"`tests/test_stats.py`). Each seed's value is the mean over meta-test tasks (its own t interval "
            f"over tasks is in `results.parquet`).",
            "- Failed runs (diverged, or stopped by an error) leave their seed out of their cell's "
            "comparisons, so the seeds compared are those on which that side survived: no call favours a "
            "side that failed in the cell (columns `method_failed`, `baseline_failed` of `comparisons.csv`), "
            "and a method with failed runs is never called better overall in the ranking.",
            f"- Wall-clock: medians over seeds with a distribution-free {LEVEL:.0%} interval from order "
            "statistics (`scipy.stats.quantile_test`), since a run slowed by other work on the machine is an "
            "outlier that would move a mean.",
            "- Paired differences (method - baseline, same seed): paired-t interval and p-value "
            "(`scipy.stats.ttest_rel`, the primary test) and the Wilcoxon signed-rank p-value "
            "(`scipy.stats.wilcoxon`, exact at small n) beside it.",
            "- Multiple comparisons: Holm's step-down adjustment "
            "(`statsmodels.stats.multitest.multipletests`) within each family of tests: "
            "" + "; ".join(f"`{f}`" for f in fams) + ". The primary family is "
                                                                                  "every "
            f"cell x compared pair for {', '.join(f'`{m}`' for m in an.PRIMARY)} with `select = "
            f"{self.primary}` ({self.req.n_tests} tests). Verdict **better**/**worse** only when the "
            f"Holm-adjusted paired-t p < {ALPHA:g}, else **unresolved**.",
            f"- Seeds needed: the smallest two-sided Wilcoxon/sign-test p with n seeds is 2/2^n, and Holm "
            f"multiplies the smallest p by the number of tests, so a distribution-free call among "
            f"{self.req.n_tests} tests needs >= {self.req.rank_test_min} seeds; this study has "
            f"{self.req.seeds_text}.",
            "- Aggregates across cells follow Agarwal et al. (NeurIPS 2021, rliable): mean and IQM of "
            "normalised scores and the probability of improvement (paired: each seed against its own "
            "baseline run, since the design pairs seeds) with stratified percentile-bootstrap intervals, "
            "computed with scipy (`scipy.stats.bootstrap` with one sample per cell, "
            "`scipy.stats.trim_mean`). A plain bootstrap within a cell of n seeds shrinks the variance "
            "of its mean by (n - 1) / n, and its intervals covered 79% at 2 seeds per cell, 88% at 3, so "
            "the resamples follow Rao and Wu's rescaling bootstrap (JASA 1988), which keeps it whole: for "
            "the mean and IQM, a cell's resampled seeds are spread about its mean by sqrt(n / (n - 1)); for "
            "P(improve), a cell contributes n - 1 draws (coverage tested in `tests/test_stats.py`). A cell "
            "of one seed enters every resample as it is; with no cell of two, there is no interval. The "
            "`rliable` package itself (1.2.0) was not used: it requires `arch` < 8, and arch 7.2 fails to "
            "import under pandas 3 (arch 8.0 imports; rliable does not allow it). Its stratified bootstrap "
            "is the plain one, without the rescaling above.",
            "- Model selection: " + "; ".join(f"`{s}` = {_SELECT_TEXT.get(s, s)}" for s in self.selects)
            + f". Primary: `{self.primary}`.",
            "- Machine-readable: `comparisons.csv` (one row per metric x cell x pair x selection: means, "
            "paired-t interval, p, Holm p, verdict) and `data/` (per-seed summaries; `gabench report <this "
            "dir>/data` rebuilds this report without the runs).",
            self.tuning_note(), ""])

    def tuning_note(self) -> str:
        if self.d.meta.get("tuning"):
            return ("- Alpha and beta of every family x method are the best trial of its Optuna study, tuned "
                    "on meta-validation tasks with a task seed that no compared run uses (see \"Tuning\"); "
                    "nothing was tuned on meta-test tasks. The other hyperparameters are those of the study "
                    "file.")
        return "- Nothing here was tuned to an outcome: hyperparameters are those of the study file."


def build_report(data: ReportData | StudyTables, out_dir: str | Path, command: str, seed: int = 0,
                 extra_sections: list[Callable[[Any, Path], str]] | None = None) -> Path:
    """Write ``README.md``, PNG figures, ``comparisons.csv`` and ``data/`` for one study.

    Args:
        data: From :func:`~gabench.reporting.load_tables` (or raw :class:`StudyTables`, summarised here).
        out_dir: Report directory (created; figures in it are replaced).
        command: The command that regenerates the report (written at the top).
        seed: Seed of every bootstrap (the report is deterministic).
        extra_sections: Callables ``(data, out_dir) -> markdown`` placed after the findings.

    Returns:
        The path of ``README.md``.

    Raises:
        ConfigError: see :func:`~gabench.reporting._data.check_report_data`.
    """
    if isinstance(data, StudyTables):
        data = summarise(data)
    check_report_data(data)
    out = Path(out_dir)
    check_not_an_archive(out / "data", data)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    r = _Sections(data, out, command, seed)
    if Path(data.source).resolve() == (out / "data").resolve() and data.configs:
        data.write_extras(out / "data")  # the archive it was read from: a compare may have added runs
    else:
        data.write(out / "data")
    r.comp[an.COMPARISON_COLUMNS].to_csv(out / "comparisons.csv", index=False)
    parts = [r.header(), r.findings()]
    for section in extra_sections or []:
        parts.append(section(data, out))
    parts += [r.plan(), r.test_tables(), r.differences(), r.aggregates(), r.ranking(), r.by_setting(),
              r.curves(),
              r.weights(), r.outliers(), r.wall_clock(), r.failures(), r.methods_note()]
    text = "\n".join(p for p in parts if p).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    path = out / "README.md"
    path.write_text(text)
    return path
