"""``reports/<study>/README.md``: tables with bootstrap CIs, paired GA-minus-baseline
differences, learning curves, weight diagnostics and wall-clock, from result tables only."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from gabench import __version__
from gabench._provenance import git_commit
from gabench.reporting import _plots as plots
from gabench.reporting._data import LOWER_IS_BETTER, StudyTables
from gabench.reporting._stats import (
    N_RESAMPLES,
    Interval,
    PairedDifference,
    bootstrap_ci,
    paired_difference,
    roc_auc_rows,
)

#: Meta-test metrics in report order, with their descriptions.
TEST_METRICS: dict[str, str] = {
    "loss_post": "meta-test query loss after adaptation (lower is better)",
    "acc_post": "meta-test query accuracy after adaptation (higher is better)",
    "loss_pre": "meta-test query loss before adaptation (lower is better)",
    "acc_pre": "meta-test query accuracy before adaptation (higher is better)",
}
#: Metrics whose paired differences are the headline.
PRIMARY = ("loss_post", "acc_post")
#: Fewest paired seeds for which a difference whose CI excludes 0 is called resolved. Below it the
#: percentile bootstrap is far too narrow (3 seeds of one sign always give a CI excluding 0, while
#: a sign test on them has p = 0.25).
MIN_SEEDS_RESOLVED = 5
#: A validation curve that made more than this share of its improvement in the last quarter of
#: training is reported as still improving (``_Report.plateau_shares``).
PLATEAU_SHARE = 0.10


def fmt_interval(iv: Interval) -> str:
    """``mean [low, high]`` with as many decimals as the interval's width warrants."""
    if iv.n == 0 or math.isnan(iv.mean):
        return "–"
    if iv.n < 2 or math.isnan(iv.low):
        return f"{iv.mean:.4g} (n=1)"
    d = _decimals(iv.high - iv.low, iv.mean)
    return f"{iv.mean:.{d}f} [{iv.low:.{d}f}, {iv.high:.{d}f}]"


def _decimals(width: float, mean: float) -> int:
    if width > 1e-9 * max(abs(mean), 1e-12) and math.isfinite(width):
        return int(np.clip(math.ceil(-math.log10(width)) + 1, 0, 6))
    return int(np.clip(3 - math.floor(math.log10(abs(mean))) if mean else 3, 0, 6))


def _col(cell: tuple[str, str]) -> str:
    family, setting = cell
    return f"{family}<br>{setting}" if setting else family


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


class _Report:
    """Builds one report; each section method returns Markdown."""

    def __init__(self, t: StudyTables, out_dir: Path, command: str, seed: int) -> None:
        self.t, self.out, self.command, self.seed = t, out_dir, command, seed
        self.res = t.results
        self.evals = self.res[self.res["split"] != "train"]  # small: val and test rows
        self._train: dict[str, pd.DataFrame] = {}
        self._per_seed: dict[tuple[str, str], dict[tuple[str, str, str], pd.Series]] = {}
        self.cells = t.cells
        self.methods = t.methods
        self.info = t.method_info
        self.pairs = t.pairs
        self.styles = plots.method_styles(self.info)
        self.runs = t.runs_per_cell()
        self.n_seeds = self.runs.groupby(["family_label", "setting", "method"])["seed"].nunique()

    # ------------------------------------------------------------------ data access
    def rows(self, split: str, metric: str) -> pd.DataFrame:
        """All rows of one split and metric (training rows are cached per metric)."""
        if split != "train":
            return self.evals[(self.evals["split"] == split) & (self.evals["metric"] == metric)]
        if not self._train:
            train = self.res[self.res["split"] == "train"]
            self._train = {str(m): g for m, g in train.groupby("metric", sort=False)}
        return self._train.get(metric, self.res.iloc[:0])

    def values(self, split: str, metric: str) -> pd.DataFrame:
        """Rows family_label, setting, method, seed, value for one metric (the last step of each run)."""
        sel = self.rows(split, metric)
        if split != "test":
            sel = sel[sel["step"] == sel.groupby("run")["step"].transform("max")]
        return sel[["family_label", "setting", "method", "seed", "value"]]

    def per_seed(self, split: str, metric: str) -> dict[tuple[str, str, str], pd.Series]:
        """(family_label, setting, method) -> values indexed by seed (cached)."""
        if (split, metric) not in self._per_seed:
            frame = self.values(split, metric)
            self._per_seed[(split, metric)] = {
                (f, s, m): g.set_index("seed")["value"].sort_index()
                for (f, s, m), g in frame.groupby(["family_label", "setting", "method"], sort=False)}
        return self._per_seed[(split, metric)]

    def interval(self, values: pd.Series | np.ndarray) -> Interval:
        return bootstrap_ci(np.asarray(values, dtype=float), rng=self.seed)

    # ------------------------------------------------------------------ sections
    def header(self) -> str:
        meta = self.t.meta
        lines = [f"# Study `{self.t.name}`", ""]
        if meta.get("description"):
            lines += [meta["description"], ""]
        commits = meta.get("run_commits") or {}
        counts = pd.Series(list(commits.values())).value_counts() if commits else pd.Series(dtype=int)
        if len(counts):
            produced = "; ".join(f"{k} ({v} runs)" for k, v in counts.items())
            missing = self.runs.shape[0] - int(counts.sum())
            if missing > 0:
                produced += f"; not recorded ({missing} runs, made before gabench recorded it)"
        else:
            produced = f"gabench {meta.get('gabench_version', '?')} {meta.get('git_commit') or 'unknown'}"
        lines += [
            "Regenerate this report (it reads only the result tables):",
            "", "```bash", self.command, "```", "",
        ]
        if meta.get("file"):
            lines += [f"The runs come from `gabench compare {meta['file']}` (resumable; finished runs "
                      "are kept).", ""]
        lines += [
            f"- Runs produced by (gabench version, git commit): {produced}.",
            f"- Report written by gabench {__version__}, git commit `{_git()}`, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            f"- Result table: `{self.t.source}/results.parquet` ({self.runs.shape[0]} runs"
            + self.coverage() + ").",
            "",
        ]
        return "\n".join(lines)

    def coverage(self) -> str:
        planned = len(self.t.meta.get("runs", [])) or self.runs.shape[0]
        text = f" of {planned} planned" if planned != self.runs.shape[0] else ", all planned runs finished"
        if self.t.failures:
            text += f"; {len(self.t.failures)} failed, listed at the end"
        return text

    def plan(self) -> str:
        seeds = sorted(self.runs["seed"].unique())
        lines = ["## What was compared", "",
                 "- Cells (family / setting): "
                 + ", ".join(_col(c).replace("<br>", " / ") for c in self.cells) + ".",
                 f"- Methods: {', '.join(f'`{m}`' for m in self.methods)}; compared pairs (GA - baseline): "
                 + (", ".join(f"`{a}` - `{b}`" for a, b in self.pairs.items()) or "none") + ".",
                 f"- Seeds: {len(seeds)} ({', '.join(map(str, seeds))}). A seed fixes the task streams and "
                 "the initial model of every method (paired comparisons).", ""]
        hp = self.hyperparameters()
        if hp:
            lines += ["<details><summary>Hyperparameters of each family x method</summary>", "", hp, "",
                      "</details>", ""]
        return "\n".join(lines)

    def hyperparameters(self) -> str:
        runs = self.t.meta.get("runs", [])
        if not runs or "alpha" not in runs[0]:
            return ""
        frame = pd.DataFrame(runs)
        keys = ["alpha", "beta", "inner_steps", "meta_batch", "steps", "optimizer", "eval_every"]
        keys = [k for k in keys if k in frame]
        rows = []
        for (f, m), g in frame.groupby(["family_label", "method_label"], sort=False):
            vals = [", ".join(sorted({f"{v:g}" if isinstance(v, float) else str(v) for v in g[k]}))
                    for k in keys]
            rows.append([f, m, *vals])
        return _md_table(["family", "method", *keys], rows)

    def test_tables(self) -> str:
        lines = ["## Meta-test results", "",
                 "Mean over seeds [95% percentile-bootstrap CI over seeds]; each seed's value is itself the "
                 f"mean over the held-out meta-test tasks. {self.seeds_note()}", ""]
        present = set(self.evals.loc[self.evals["split"] == "test", "metric"])
        for metric, desc in TEST_METRICS.items():
            if metric not in present:
                continue
            data = self.per_seed("test", metric)
            rows = []
            for m in self.methods:
                rows.append([f"`{m}`", *[fmt_interval(self.interval(data[(f, s, m)])) if (f, s, m) in data
                                         else "–" for f, s in self.cells]])
            lines += [f"### `{metric}`: {desc}", "", _md_table(["method", *map(_col, self.cells)], rows), ""]
        return "\n".join(lines)

    def seeds_note(self) -> str:
        n = self.n_seeds.min() if len(self.n_seeds) else 0
        if n < MIN_SEEDS_RESOLVED:
            return (f"With {n} seeds per cell the bootstrap interval is coarse and too narrow; read it as "
                    "a rough indication, not a test.")
        return f"{n} seeds per cell (at least)."

    def differences(self) -> tuple[str, dict[str, dict[tuple[str, str, str], PairedDifference]]]:
        lines = ["## Does GA help? Paired differences GA minus its baseline", "",
                 "For each seed, the GA method's meta-test value minus its baseline's on the same seed (the "
                 "same tasks and initial model). Cells: mean difference [95% bootstrap CI over seeds]; "
                 "**P** = probability of improvement, the fraction of seeds on which GA is better than its "
                 "baseline (lower loss or higher accuracy; ties count one half). A difference is marked "
                 f"**better** or **worse** when its CI excludes 0 and at least {MIN_SEEDS_RESOLVED} seeds "
                 "are paired.", ""]
        results: dict[str, dict[tuple[str, str, str], PairedDifference]] = {}
        present = set(self.evals.loc[self.evals["split"] == "test", "metric"])
        if not self.pairs:
            return "\n".join(lines + ["No GA method with a baseline in this study.", ""]), results
        for metric in [m for m in TEST_METRICS if m in present]:
            data = self.per_seed("test", metric)
            lower = metric in LOWER_IS_BETTER
            res: dict[tuple[str, str, str], PairedDifference] = {}
            rows = []
            forest_rows = []
            for ga, base in self.pairs.items():
                row = [f"`{ga}` - `{base}`"]
                for f, s in self.cells:
                    if (f, s, ga) not in data or (f, s, base) not in data:
                        row.append("–")
                        continue
                    a, b = data[(f, s, ga)].align(data[(f, s, base)], join="inner")
                    pdiff = paired_difference(a.to_numpy(), b.to_numpy(), lower, rng=self.seed)
                    res[(f, s, ga)] = pdiff
                    mark = ""
                    if _resolved(pdiff):
                        better = (pdiff.diff.mean < 0) == lower
                        mark = " **better**" if better else " **worse**"
                    row.append(f"{fmt_interval(pdiff.diff)}<br>P={pdiff.p_improve:.2f}{mark}")
                    scale = abs(float(b.mean()))
                    if scale > 0:
                        rel = [100 * v / scale for v in (pdiff.diff.mean, pdiff.diff.low, pdiff.diff.high)]
                        forest_rows.append((_col((f, s)).replace("<br>", " "), ga, *rel))
                rows.append(row)
            results[metric] = res
            sign = "negative" if lower else "positive"
            lines += [f"### `{metric}` ({sign} = GA better)", "",
                      _md_table(["GA - baseline", *map(_col, self.cells)], rows), ""]
            if metric in PRIMARY and forest_rows:
                name = f"paired_{metric}.png"
                plots.forest(forest_rows, self.styles,
                             f"(GA - baseline) / baseline mean, % of {metric} ({sign} = GA better)",
                             self.out / name)
                lines += ["The same differences relative to the baseline's mean (in %), with their CIs:", "",
                          f"![paired differences {metric}]({name})", ""]
        return "\n".join(lines), results

    def findings(self, diffs: dict[str, dict[tuple[str, str, str], PairedDifference]]) -> str:
        lines = ["## Findings (as measured)", ""]
        if not diffs:
            return "\n".join(lines + ["No paired comparison could be made.", ""])
        for metric in PRIMARY:
            res = diffs.get(metric)
            if not res:
                continue
            lower = metric in LOWER_IS_BETTER
            for ga, base in self.pairs.items():
                cells = [(c, d) for c, d in res.items() if c[2] == ga]
                if not cells:
                    continue
                n = len(cells)

                def names(cs: list[tuple[str, str, str]]) -> str:
                    return ", ".join(f"{f}" + (f" ({s})" if s else "") for f, s, _ in cs)

                if all(d.n >= MIN_SEEDS_RESOLVED for _, d in cells):
                    better = [c for c, d in cells if _resolved(d) and (d.diff.mean < 0) == lower]
                    worse = [c for c, d in cells if _resolved(d) and (d.diff.mean < 0) != lower]
                    text = (f"- `{ga}` vs `{base}`, `{metric}`: GA better in {len(better)} of {n} cells"
                            + (f" ({names(better)})" if better else "")
                            + f", worse in {len(worse)}" + (f" ({names(worse)})" if worse else "")
                            + f", no resolved difference in {n - len(better) - len(worse)}.")
                else:
                    better = [c for c, d in cells if d.p_improve == 1]
                    worse = [c for c, d in cells if d.p_improve == 0]
                    k = min(d.n for _, d in cells)
                    text = (f"- `{ga}` vs `{base}`, `{metric}` (only {k} paired seeds, too few to resolve a "
                            f"difference): GA better on every seed in {len(better)} of {n} cells"
                            + (f" ({names(better)})" if better else "")
                            + f", worse on every seed in {len(worse)}"
                            + (f" ({names(worse)})" if worse else "")
                            + f", mixed in {n - len(better) - len(worse)}.")
                rel = [d.diff.mean / abs(self.baseline_mean(metric, c[0], c[1], base)) for c, d in cells
                       if self.baseline_mean(metric, c[0], c[1], base)]
                if rel:
                    text += (f" Relative to the baseline's mean the differences range from "
                             f"{100 * min(rel):+.1f}% to {100 * max(rel):+.1f}%.")
                lines.append(text)
        late = self.still_improving()
        if late:
            lines.append(f"- Budget: {len(late)} validation-loss curve(s) were still improving at the end "
                         f"({_names(late)}; see \"Have the curves flattened?\"), so those cells compare "
                         "methods before convergence.")
        lines += ["", "These statements are generated from the tables below; \"better\"/\"worse\" means the "
                  f"95% bootstrap CI of the paired difference excludes 0 with at least {MIN_SEEDS_RESOLVED} "
                  "paired seeds; it is not a multiple-comparison-corrected test.", ""]
        return "\n".join(lines)

    def baseline_mean(self, metric: str, f: str, s: str, base: str) -> float:
        v = self.per_seed("test", metric).get((f, s, base))
        return float(v.mean()) if v is not None and len(v) else 0.0

    def curves(self) -> str:
        val = self.evals[self.evals["split"] == "val"]
        lines = ["## Learning curves", ""]
        if val.empty:
            lines += ["No meta-validation during training (eval_every = 0): the curves show the "
                      "meta-training query loss after adaptation, a moving average over 2% of the steps.", ""]
            tr = self.rows("train", "query_loss")
            curves = self.curve_frames(tr, smooth=True)
            plots.learning_curves(curves, self.styles, "train query loss", self.out / "curves_train.png",
                                  hline=self.hline(), seed=self.seed)
            return "\n".join(lines + ["![learning curves](curves_train.png)", ""])
        lines += ["Meta-validation metrics on a fixed set of held-out tasks, mean over seeds with a 95% "
                  "bootstrap band over seeds.", ""]
        for metric in ("loss_post", "acc_post"):
            sel = val[val["metric"] == metric]
            if sel.empty:
                continue
            name = f"curves_{metric}.png"
            plots.learning_curves(self.curve_frames(sel), self.styles, f"val {metric}", self.out / name,
                                  hline=self.hline() if metric == "loss_post" else None, seed=self.seed)
            lines += [f"![validation {metric}]({name})", ""]
        lines += self.plateau()
        return "\n".join(lines)

    @functools.cached_property
    def plateau_shares(self) -> dict[tuple[str, str, str], float]:
        """Have the validation curves flattened? Share of each curve's improvement made late.

        On the seed-mean curve of val ``loss_post``: ``a`` = its mean over the evaluations in
        (65%, 75%] of the steps, ``b`` = over the last 10%, ``first`` = the first evaluation;
        the share is ``(a - b) / (first - b)``: the part of the whole improvement still made in
        the last quarter or so of training (about 0 when flat, negative when the loss rose).
        Keys (family_label, setting, method); curves with fewer than 4 evaluations are left out.
        """
        val = self.rows("val", "loss_post")
        out: dict[tuple[str, str, str], float] = {}
        for (f, s, m), part in val.groupby(["family_label", "setting", "method"], sort=False):
            curve = part.groupby("step")["value"].mean().sort_index()
            if len(curve) < 4:
                continue
            steps = curve.index.to_numpy(dtype=float) / float(curve.index.max())
            a, b = curve[(steps > 0.65) & (steps <= 0.75)], curve[steps > 0.9]
            if a.empty or b.empty or curve.iloc[0] == b.mean():
                continue
            out[(f, s, m)] = float((a.mean() - b.mean()) / (curve.iloc[0] - b.mean()))
        return out

    def still_improving(self) -> list[tuple[str, str, str]]:
        shares = self.plateau_shares
        return [(f, s, m) for m in self.methods for f, s in self.cells
                if shares.get((f, s, m), 0.0) > PLATEAU_SHARE]

    def plateau(self) -> list[str]:
        shares = self.plateau_shares
        if not shares:
            return []
        rows = [[f"`{m}`", *[("–" if (f, s, m) not in shares else f"{round(100 * shares[(f, s, m)])}%"
                               + (" (still improving)" if shares[(f, s, m)] > PLATEAU_SHARE else ""))
                              for f, s in self.cells]] for m in self.methods]
        lines = ["### Have the curves flattened?", "",
                 "Share of each validation-loss curve's improvement (first evaluation to the mean of the "
                 "last 10% of the steps) still made between about 70% of the steps (mean over the "
                 "evaluations in 65-75%) and the end, on the mean over seeds: about 0 = flat by then, "
                 f"negative = the loss rose; above {100 * PLATEAU_SHARE:.0f}% is marked still improving.", "",
                 _md_table(["method", *map(_col, self.cells)], rows), ""]
        late = self.still_improving()
        if late:
            lines += ["Still improving at the end (a longer budget could change these cells): "
                      f"{_names(late)}.", ""]
        else:
            lines += [f"Every curve had flattened (under {100 * PLATEAU_SHARE:.0f}% of its improvement "
                      "in the last quarter).", ""]
        return lines

    def hline(self) -> float | None:
        fams = set(self.t.run_table["family"])
        return math.log(2) if fams == {"textbook-binary"} else None

    def curve_frames(self, sel: pd.DataFrame, smooth: bool = False) -> dict:
        out: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}
        for cell in self.cells:
            part = sel[(sel.family_label == cell[0]) & (sel.setting == cell[1])]
            by_method = {}
            for m in self.methods:
                pm = part[part.method == m]
                if pm.empty:
                    continue
                frame = pm.pivot_table(index="step", columns="seed", values="value")
                if smooth:
                    window = max(1, len(frame) // 50)
                    frame = frame.rolling(window, min_periods=1).mean().iloc[::window]
                by_method[m] = frame
            out[cell] = by_method
        return out

    def weights(self) -> str:
        ga_methods = [m for m, (_, agg, _) in self.info.items() if agg != "mean"]
        lines = ["## Task weights", ""]
        if not ga_methods:
            return "\n".join(lines + ["Every method weights tasks uniformly (1/T).", ""])
        lines += ["Relative weight = T x w_i, so uniform weighting (MAML, Reptile) is 1 for every task; GA "
                  "weights sum in absolute value to 1 and a task whose update points against the batch "
                  "average gets a negative weight. Fraction negative and effective number of tasks "
                  "(`(sum|w|)^2 / sum w^2`, as a fraction of T) are averaged over all meta-training steps, "
                  "then over seeds [95% bootstrap CI].", ""]
        for metric, title in (("w_frac_negative", "fraction of negative weights"),
                              ("w_eff_n", "effective number of tasks / T")):
            tr = self.rows("train", metric)
            per_run = tr.groupby(["family_label", "setting", "method", "seed"])["value"].mean()
            if metric == "w_eff_n":
                T = tr.groupby(["family_label", "setting", "method", "seed"])["n"].first()
                per_run = per_run / T
            rows = []
            for m in ga_methods:
                row = [f"`{m}`"]
                for f, s in self.cells:
                    try:
                        v = per_run.loc[(f, s, m)]
                    except KeyError:
                        row.append("–")
                        continue
                    row.append(fmt_interval(self.interval(v.to_numpy())))
                rows.append(row)
            lines += [f"### {title}", "", _md_table(["method", *map(_col, self.cells)], rows), ""]
        hist = self.weight_hist(ga_methods)
        if hist:
            plots.weight_histograms(hist, self.styles, self.out / "weights_hist.png")
            lines += ["Distribution of relative weights over all steps, tasks and seeds:", "",
                      "![weight distributions](weights_hist.png)", ""]
        return "\n".join(lines)

    def weight_frame(self) -> pd.DataFrame:
        if not hasattr(self, "_wf"):
            w = self.t.weights
            runs = self.runs.set_index("run")
            w = w[w["run"].isin(runs.index)]
            w = w.join(runs, on="run")
            T = w.groupby("run")["task"].transform("max") + 1
            self._wf = w.assign(rel=w["weight"] * T)
        return self._wf

    def weight_hist(self, methods: list[str]) -> dict:
        w = self.weight_frame()
        if w.empty:
            return {}
        rng = np.random.default_rng(self.seed)
        out = {}
        for cell in self.cells:
            part = w[(w.family_label == cell[0]) & (w.setting == cell[1])]
            by = {}
            for m in methods:
                v = part.loc[part.method == m, "rel"].to_numpy()
                if v.size > 200_000:
                    v = rng.choice(v, 200_000, replace=False)
                if v.size:
                    by[m] = v
            if by:
                out[cell] = by
        return out

    def outliers(self) -> str:
        w = self.weight_frame()
        if w.empty or not w["corrupted"].any():
            return ""
        lines = ["## Outlier tasks: do the weights find them?", "",
                 "Meta-training batches contain corrupted tasks (`outlier_fraction` of each batch, rounded "
                 "half to even: the first row gives the counts as run); "
                 "meta-validation and meta-test tasks are clean. **AUC** = probability that a random clean "
                 "task of a batch gets a larger weight than a random corrupted task of the same batch (ties "
                 "one half), computed per meta-training step, averaged over steps, then over seeds [95% "
                 "bootstrap CI]. 0.5 = the weights do not tell them apart (uniform weights score exactly "
                 "0.5); 1 = every corrupted task is weighted below every clean one.", ""]
        ga_methods = {m for m, (_, agg, _) in self.info.items() if agg != "mean"}
        w = w[w["method"].isin(ga_methods)]
        with_outliers = set(map(tuple, w.loc[w["corrupted"], ["family_label", "setting"]]
                                .drop_duplicates().to_numpy()))
        cells = [c for c in self.cells if c in with_outliers]
        auc: dict[tuple[str, str, str], list[float]] = {}
        late: dict[tuple[str, str, str], list[float]] = {}
        w = w[w.set_index(["family_label", "setting"]).index.isin(cells)]
        w = w.sort_values(["run", "step", "task"], kind="stable")
        for (f, s, m, _), g in w.groupby(["family_label", "setting", "method", "seed"], sort=False):
            steps = g["step"].nunique()
            wt = g["weight"].to_numpy().reshape(steps, -1)  # (steps, T), one run per group
            ct = g["corrupted"].to_numpy().reshape(steps, -1)
            a = roc_auc_rows(wt, ~ct)
            auc.setdefault((f, s, m), []).append(float(np.nanmean(a)))
            late.setdefault((f, s, m), []).append(float(np.nanmean(a[-max(1, steps // 10):])))
        means = w.groupby(["family_label", "setting", "method", "step", "corrupted"])["rel"].mean()
        lines_data: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in cells}
        for (f, s, m), part in means.groupby(level=[0, 1, 2], sort=False):
            curve = part.droplevel([0, 1, 2]).unstack()
            window = max(1, len(curve) // 50)
            sm = curve.rolling(window, min_periods=1).mean().iloc[::window]
            for flag, name in ((True, "corrupted"), (False, "clean")):
                if flag in sm:
                    lines_data[(f, s)][f"{m} ({name})"] = (sm.index.to_numpy(), sm[flag].to_numpy())
        # what a fraction meant in tasks (round half to even: 0.1 of 25 tasks is 2, not 3)
        per_batch = w.groupby(["family_label", "setting", "run", "step"])["corrupted"].agg(["sum", "size"])
        counts = {c: sorted({f"{int(k)} of {int(n)}" for k, n in part.to_numpy()})
                  for c, part in per_batch.groupby(level=[0, 1], sort=False)}
        rows = [["corrupted tasks per meta-training batch",
                 *[", ".join(counts.get(c, ["–"])) for c in cells]]]
        for m in self.methods:
            if self.info[m][1] == "mean":
                continue
            rows.append([f"`{m}`", *[fmt_interval(self.interval(auc[(*c, m)])) if (*c, m) in auc else "–"
                                      for c in cells]])
            rows.append([f"`{m}` (last 10% of steps)",
                         *[fmt_interval(self.interval(late[(*c, m)])) if (*c, m) in late else "–"
                           for c in cells]])
        lines += [_md_table(["method", *map(_col, cells)], rows), ""]
        plots.smoothed_lines(lines_data, self.styles, "mean relative weight T * w",
                             self.out / "outlier_weights.png", hline=1.0)
        lines += ["Mean relative weight of corrupted (solid) and clean (dotted) tasks over meta-training "
                  "(moving average, mean over seeds; 1 = uniform):", "",
                  "![weights of corrupted and clean tasks](outlier_weights.png)", ""]
        return "\n".join(lines)

    def by_setting(self) -> str:
        """Metric vs a single numeric setting (e.g. outlier fraction), when every cell has one."""
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
        lines = [f"## Meta-test metrics against `{key}`", "",
                 "Mean over seeds with a 95% bootstrap band; the paired differences above say whether GA "
                 "and its baseline differ at each point.", ""]
        present = set(self.evals.loc[self.evals["split"] == "test", "metric"])
        for metric in [m for m in PRIMARY if m in present]:
            data = self.per_seed("test", metric)
            out: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
            for f in dict.fromkeys(f for f, _ in self.cells):
                by_method = {}
                for m in self.methods:
                    pts = sorted((parsed[(f, s)][1], *self._iv(data[(f, s, m)]))
                                 for (f2, s) in parsed if f2 == f and (f, s, m) in data)
                    if pts:
                        arr = np.array(pts).T
                        by_method[m] = (arr[0], arr[1], arr[2], arr[3])
                if by_method:
                    out[f] = by_method
            if not out:
                continue
            name = f"by_setting_{metric}.png"
            plots.by_setting(out, self.styles, key, f"test {metric}", self.out / name)
            lines += [f"![{metric} against {key}]({name})", ""]
        return "\n".join(lines)

    def _iv(self, values: pd.Series) -> tuple[float, float, float]:
        iv = self.interval(values)
        return iv.mean, iv.low, iv.high

    def wall_clock(self) -> str:
        data = self.per_seed("train", "wall_seconds")
        lines = ["## Wall-clock", "",
                 "Seconds of meta-training per run (including meta-validation; the final meta-test is not "
                 "counted), mean [95% bootstrap CI over seeds]. Runs may have shared the CPU with other "
                 "runs (`--workers`), so compare methods within a study, not across machines.", ""]
        rows = []
        for m in self.methods:
            rows.append([f"`{m}`", *[fmt_interval(self.interval(data[(f, s, m)])) if (f, s, m) in data
                                     else "–" for f, s in self.cells]])
        lines += [_md_table(["method", *map(_col, self.cells)], rows), ""]
        ratios = []
        for ga, base in self.pairs.items():
            r = [data[(f, s, ga)].mean() / data[(f, s, base)].mean() for f, s in self.cells
                 if (f, s, ga) in data and (f, s, base) in data and data[(f, s, base)].mean() > 0]
            if r:
                ratios.append(f"`{ga}` / `{base}`: {np.median(r):.2f} (median over cells; range "
                              f"{min(r):.2f}-{max(r):.2f})")
        if ratios:
            lines += ["Time ratio GA / baseline: " + "; ".join(ratios) + ".", ""]
        return "\n".join(lines)

    def failures(self) -> str:
        if not self.t.failures:
            return ""
        rows = [[f"`{k}`", v] for k, v in self.t.failures.items()]
        return "\n".join(["## Failed runs", "", "Not in the tables above (the rest of their cell is).", "",
                          _md_table(["run", "reason"], rows), ""])


def _names(cells: list[tuple[str, str, str]]) -> str:
    """```method` on family (setting)`` for each cell, comma-separated."""
    return ", ".join(f"`{m}` on {f}" + (f" ({s})" if s else "") for f, s, m in cells)


def _resolved(d: PairedDifference) -> bool:
    return d.n >= MIN_SEEDS_RESOLVED and d.diff.excludes_zero


def build_report(tables: StudyTables, out_dir: str | Path, command: str, seed: int = 0,
                 extra_sections: list[Callable[[StudyTables, Path], str]] | None = None) -> Path:
    """Write ``README.md`` and PNG figures for one study's tables.

    Args:
        tables: From :func:`~gabench.reporting.load_tables`.
        out_dir: Report directory (created; files in it are replaced).
        command: The command that regenerates the report (written at the top).
        seed: Seed of every bootstrap (the report is deterministic).
        extra_sections: Callables ``(tables, out_dir) -> markdown`` placed after the findings.

    Returns:
        The path of ``README.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    r = _Report(tables, out, command, seed)
    diff_md, diffs = r.differences()
    parts = [r.header(), r.findings(diffs)]
    for section in extra_sections or []:
        parts.append(section(tables, out))
    parts += [r.plan(), r.test_tables(), diff_md, r.by_setting(), r.curves(), r.weights(), r.outliers(),
              r.wall_clock(), r.failures(), _stats_note(seed)]
    text = "\n".join(p for p in parts if p).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    path = out / "README.md"
    path.write_text(text)
    return path


def _stats_note(seed: int) -> str:
    return (
        "## How the numbers are computed\n\n"
        f"- Confidence intervals: percentile bootstrap of the mean over seeds, {N_RESAMPLES} resamples, "
        f"resampling seed {seed} (deterministic). The per-seed value is the mean over meta-test tasks "
        "(its own t-interval over tasks is in `results.parquet`: `ci_low`, `ci_high`).\n"
        "- Paired differences use the seeds both methods finished; P = fraction of those seeds on which "
        "GA is better.\n"
        "- Nothing here was tuned to an outcome: hyperparameters are those of the study file.\n"
    )


def _git() -> str:
    return git_commit() or "unknown"
