"""Reports: analysis of synthetic study tables (known effects), the files a report writes, its
rebuild from ``data/``, bad input, and a report generated from a tiny real study."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import study_file
from scipy import stats
from statsmodels.stats.multitest import multipletests

from gabench._errors import ConfigError
from gabench.commands import main
from gabench.commands.report import report_study
from gabench.compare import run_study
from gabench.reporting import (
    COMPARISON_COLUMNS,
    Interval,
    build_report,
    fmt_interval,
    load_tables,
    primary_select,
)
from gabench.reporting._analysis import curve_frames
from gabench.reporting._data import HIST_EDGES
from gabench.results import RESULT_COLUMNS
from gabench.study import load_study

METHODS = {"maml": ("maml", "mean"), "maml+ga": ("maml", "ga")}


# --------------------------------------------------------------------------- synthetic tables
def fake_study(root: Path, *, seeds: int = 4, families: tuple[str, ...] = ("linear-binary", "sine"),
               effect: float = 0.0, noise: float = 0.05, select: bool = True, methods: dict | None = None,
               steps: int = 40, eval_every: int = 5, T: int = 4, outlier: float = 0.25,
               seed_sets: dict[str, list[int]] | None = None, name: str = "fake",
               effects: dict[str, float] | None = None, no_weights: tuple[str, ...] = ()) -> Path:
    """Write ``results.parquet``, ``weights.parquet`` and ``study.json`` of a fake study to ``root``.

    The methods' meta-test loss_post is ``1 + seed effect + noise`` for the baseline and the same
    minus ``effect`` for the GA method (so ``effect > 0`` = GA better; ``effects`` sets it per
    method label); ``sine`` has no accuracy. The labels in ``no_weights`` record NaN weights, as
    a direction-only aggregator (ConFIG) does.
    """
    methods = METHODS if methods is None else methods
    g = np.random.default_rng(0)
    rows, weights = [], []
    for family in families:
        seed_effect = g.normal(0, 0.3, seeds)
        for label, (algo, agg) in methods.items():
            for seed in (seed_sets or {}).get(label, range(seeds)):
                run = f"{family}__{label}__s{seed}"
                info = {"run": run, "family": family, "method": label, "algorithm": algo, "aggregator": agg,
                        "first_order": False, "seed": seed, "outlier_fraction": outlier}
                shift = (effects or {}).get(label, effect) if agg != "mean" else 0.0
                level = 1.0 + seed_effect[seed] - shift + g.normal(0, noise)
                metrics = ["loss_post", "loss_pre"] + ([] if family == "sine" else ["acc_post", "acc_pre"])
                for step in range(0, steps + 1, eval_every):
                    curve = level + 2.0 * np.exp(-step / 8)
                    for m in metrics:
                        v = curve if m.startswith("loss") else 1 - curve / 4
                        rows.append({**info, "step": step, "split": "val", "metric": m, "value": v})
                for sel, extra in (("final", 0.0), ("best_val", -0.01)):
                    if sel == "best_val" and not select:
                        continue
                    for m in metrics:
                        v = level + extra if m.startswith("loss") else 1 - (level + extra) / 4
                        rows.append({**info, "step": steps, "split": "test", "metric": m, "value": v,
                                     "select": sel})
                for step in range(1, steps + 1):
                    rows.append({**info, "step": step, "split": "train", "metric": "query_loss",
                                 "value": level + 2 * np.exp(-step / 8), "n": T})
                    rows.append({**info, "step": step, "split": "train", "metric": "w_frac_negative",
                                 "value": np.nan if label in no_weights else 0.25 if agg != "mean" else 0.0,
                                 "n": T})
                    rows.append({**info, "step": step, "split": "train", "metric": "w_eff_n",
                                 "value": 3.0 if agg != "mean" else float(T), "n": T})
                rows.append({**info, "step": steps, "split": "train", "metric": "wall_seconds",
                             "value": 10.0 + (2.0 if agg != "mean" else 0.0) + g.normal(0, 0.1), "n": 1})
                w = g.normal(1.0, 1.5, (steps, T)) / T if agg != "mean" else np.full((steps, T), 1 / T)
                w[0, 0] = 10.0  # one weight far outside the histogram's range
                if label in no_weights:
                    w[:] = np.nan
                corrupted = np.zeros((steps, T), dtype=bool)
                corrupted[:, 0] = outlier > 0
                weights.append(pd.DataFrame({"run": run, "step": np.repeat(np.arange(1, steps + 1), T),
                                             "task": np.tile(np.arange(T), steps),
                                             "corrupted": corrupted.ravel(),
                                             "weight": w.ravel()}))
    res = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in res:
            res[col] = np.nan
    if select:
        res["select"] = res["select"].fillna("final")
    else:
        res = res.drop(columns="select", errors="ignore")
    res = res[[c for c in RESULT_COLUMNS if select or c != "select"]]  # select=False: a table from
    # before the column existed
    root.mkdir(parents=True, exist_ok=True)
    res.to_parquet(root / "results.parquet", index=False)
    pd.concat(weights, ignore_index=True).to_parquet(root / "weights.parquet", index=False)
    (root / "study.json").write_text(json.dumps({"name": name, "families": list(families)}))
    return root


def _report(src: Path, out: Path) -> tuple[str, pd.DataFrame]:
    path = build_report(load_tables(src), out, "gabench report test")
    return path.read_text(), pd.read_csv(out / "comparisons.csv")


# --------------------------------------------------------------------------- analysis
def test_comparisons_csv_has_the_columns_and_matches_scipy_paired_t_from_data(tmp_path):
    src = fake_study(tmp_path / "runs", effect=0.02)
    _, comp = _report(src, tmp_path / "rep")
    assert list(comp.columns) == COMPARISON_COLUMNS
    assert set(comp["verdict"]) <= {"better", "worse", "unresolved"}
    assert set(comp["select"]) == {"final", "best_val"}
    # recompute every row independently from data/ with scipy
    runs = pd.read_parquet(tmp_path / "rep" / "data" / "runs.parquet")
    test = pd.read_parquet(tmp_path / "rep" / "data" / "test.parquet").merge(runs, on="run")
    for row in comp.itertuples():
        fam = row.cell.split(" / ")[0]
        part = test[(test.metric == row.metric) & (test["select"] == row.select) & (test.family_label == fam)]
        a = part[part.method == row.method].set_index("seed")["value"].sort_index()
        b = part[part.method == row.baseline].set_index("seed")["value"].sort_index()
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        assert row.n_seeds == len(a) == len(b)
        assert row.diff_mean == pytest.approx((a - b).mean(), abs=1e-12)
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert row.p_value == pytest.approx(res.pvalue, rel=1e-9)
        assert (row.baseline_mean, row.method_mean) == pytest.approx((b.mean(), a.mean()))


def test_holm_runs_over_the_primary_family_and_sets_the_verdicts(tmp_path):
    src = fake_study(tmp_path / "runs", seeds=8, effect=0.2, noise=0.02)
    _, comp = _report(src, tmp_path / "rep")
    prim = comp[(comp["select"] == "best_val") & comp["metric"].isin(["loss_post", "acc_post"])]
    assert len(prim) == 3  # loss_post on 2 families, acc_post on linear-binary only (sine has none)
    np.testing.assert_allclose(prim["p_holm"], multipletests(prim["p_value"], method="holm")[1])
    assert (prim["verdict"] == "better").all()  # a clear effect with 8 seeds
    for row in comp.itertuples():
        want = "unresolved" if not row.p_holm < 0.05 else (
            "better" if (row.diff_mean < 0) == row.metric.startswith("loss") else "worse")
        assert row.verdict == want
    _, null = _report(fake_study(tmp_path / "null", seeds=8, effect=0.0), tmp_path / "rep0")
    assert (null["verdict"] == "unresolved").all()


@pytest.mark.slow
def test_report_rebuilt_from_its_data_gives_identical_comparisons(tmp_path):
    src = fake_study(tmp_path / "runs", effect=0.05)
    text, _ = _report(src, tmp_path / "rep")
    assert main(["report", str(tmp_path / "rep" / "data"), "--reports-root", str(tmp_path / "again")]) == 0
    again = tmp_path / "again" / "fake"
    assert (again / "comparisons.csv").read_bytes() == (tmp_path / "rep" / "comparisons.csv").read_bytes()
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC|Source: `[^`]*`|```bash\n[^`]*```")
    assert strip.sub("", (again / "README.md").read_text()) == strip.sub("", text)
    for name in ("runs", "test", "curves", "run_stats", "weight_hist", "outlier_weights"):
        pd.testing.assert_frame_equal(pd.read_parquet(again / "data" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "rep" / "data" / f"{name}.parquet"))
    assert load_tables(tmp_path / "rep").source == tmp_path / "rep" / "data"  # the report directory works too
    size = sum(p.stat().st_size for p in (tmp_path / "rep" / "data").iterdir())
    assert size < 200_000


@pytest.mark.slow
def test_both_selections_are_shown_and_best_val_is_primary(tmp_path):
    text, comp = _report(fake_study(tmp_path / "runs"), tmp_path / "rep")
    assert "`select = best_val` (primary)" in text and "`select = final` (secondary)" in text
    assert "`best_val` is primary" in text
    assert primary_select(load_tables(tmp_path / "rep" / "data")) == "best_val"
    text, comp = _report(fake_study(tmp_path / "old", select=False), tmp_path / "rep_old")
    assert set(comp["select"]) == {"final"} and "`select = best_val`" not in text
    assert "recorded only the final iterate" in text


@pytest.mark.slow
def test_report_warns_about_too_few_seeds_and_states_the_requirement(tmp_path):
    text, _ = _report(fake_study(tmp_path / "runs", seeds=4), tmp_path / "rep")
    assert "Too few seeds for a distribution-free call" in text
    assert "at least 7 paired seeds" in text  # 3 primary tests: 3 * 2/2^7 < 0.05 <= 3 * 2/2^6
    text, _ = _report(fake_study(tmp_path / "many", seeds=8), tmp_path / "rep8")
    assert "Too few seeds" not in text


@pytest.mark.slow
def test_report_sections_aggregates_convergence_and_figures(tmp_path):
    text, _ = _report(fake_study(tmp_path / "runs", effect=0.05), tmp_path / "rep")
    out = tmp_path / "rep"
    for section in ("## Findings (as measured)", "## Meta-test results", "## Paired differences",
                    "## Across cells: aggregate improvement", "## Learning curves", "### Convergence",
                    "## Task weights", "## Outlier tasks", "## Wall-clock",
                    "## How the numbers are computed"):
        assert section in text, section
    agg = text.split("## Across cells")[1].split("\n## ")[0]
    assert re.search(r"\| `maml\+ga` - `maml` \| `loss_post` \| [+-]\d+\.\d% \[", agg)
    assert "stratified bootstrap" in agg and "IQM" in agg
    assert "Holm" in text and "paired-t" in text and "Wilcoxon" in text
    assert "rliable" in text  # the methods note says why the package is not used
    for png in ("curves_loss_post.png", "curves_acc_post.png", "paired_loss_post.png",
                "profile_loss_post.png",
                "weights_hist.png", "outlier_weights.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text
    assert "in the edge bins" in text  # the weight at 10 x uniform lies outside the histogram
    # no empty panel: the accuracy curves have only the family that has accuracy
    data = load_tables(out / "data")
    assert list(curve_frames(data, "val", "acc_post")) == [("linear-binary", "")]
    conv = text.split("### Convergence")[1].split("\n## ")[0]
    assert "| `maml` |" in conv


def test_wall_clock_shows_medians_with_order_statistic_intervals(tmp_path):
    src = fake_study(tmp_path / "runs", seeds=10, families=("sine",))
    res = pd.read_parquet(src / "results.parquet")
    wall = (res.metric == "wall_seconds") & (res.method == "maml")
    res.loc[wall & (res.seed == 3), "value"] = 600.0  # one run slowed by other work on the machine
    res.to_parquet(src / "results.parquet", index=False)
    text, _ = _report(src, tmp_path / "rep")
    section = text.split("## Wall-clock")[1].split("\n## ")[0]
    assert "median over seeds [95% distribution-free interval" in section
    assert "- Wall-clock: medians over seeds with a distribution-free 95% interval" in text
    for method in ("maml", "maml+ga"):
        v = np.sort(res.loc[(res.metric == "wall_seconds") & (res.method == method), "value"].to_numpy())
        iv = Interval(float(np.median(v)), float(v[1]), float(v[8]), 10, "order")  # ranks 2 and 9 of 10
        assert f"| `{method}` | {fmt_interval(iv)} |" in section
    assert "600" not in section  # the slowed run moves neither the median nor the interval
    ratio = float(np.median(v)) / float(np.median(res.loc[wall, "value"]))
    assert f"`maml+ga` / `maml`: {ratio:.2f} (ratio of the medians" in section


ZOO = {"maml": ("maml", "mean"), "maml+ga": ("maml", "ga"), "maml+upgrad": ("maml", "upgrad"),
       "maml+pcgrad": ("maml", "pcgrad"), "reptile": ("reptile", "mean"), "reptile+ga": ("reptile", "ga"),
       "reptile+upgrad": ("reptile", "upgrad")}


def test_an_aggregator_zoo_is_ranked_per_baseline_and_pooled_over_baselines(tmp_path):
    effects = {"maml+upgrad": 0.2, "maml+ga": -0.2, "maml+pcgrad": 0.0, "reptile+ga": -0.2,
               "reptile+upgrad": 0.2}
    src = fake_study(tmp_path / "runs", seeds=12, noise=0.02, methods=ZOO, effects=effects,
                     families=("linear-binary", "sine", "moons"))
    text, comp = _report(src, tmp_path / "rep")
    data = load_tables(tmp_path / "rep" / "data")
    from gabench.reporting._analysis import comparisons, normalised_scores, ranking

    rk = ranking(data, comparisons(data), "loss_post", "best_val")
    maml = rk[rk.group == "maml"]
    assert list(maml.method) == ["maml+upgrad", "maml+pcgrad", "maml+ga"] and list(maml["rank"]) == [1, 2, 3]
    assert maml.overall.iloc[0] == "better" and maml.overall.iloc[2] == "worse"
    assert list(maml.better) == [3, 0, 0] and list(maml.worse) == [0, 0, 3]
    assert set(maml.k) == {3} and maml.level.iloc[0] == pytest.approx(1 - 0.05 / 3)
    for r in rk.itertuples():  # overall: where the (Bonferroni) IQM interval lies
        assert r.overall == ("better" if r.iqm_low > 0 else "worse" if r.iqm_high < 0 else "no difference")
    assert set(rk[rk.group == "reptile"].method) == {"reptile+upgrad", "reptile+ga"}
    pooled = rk[rk.group == "all baselines"]
    assert list(pooled.method) == ["upgrad", "ga"]  # pcgrad ran with one baseline only
    # pooled: per cell and seed the mean of the two baselines' scores, then the 25%-trimmed mean
    scores = normalised_scores(data, "loss_post", "best_val")
    both = scores[scores.method.isin(["maml+upgrad", "reptile+upgrad"])]
    per_seed = both.groupby(["family_label", "setting", "seed"])["score"].mean()
    assert pooled.iloc[0].iqm == pytest.approx(stats.trim_mean(per_seed, 0.25))
    assert pooled.iloc[0].n_cells == 3 and pooled.iloc[0].n_runs == 36
    assert pooled.iloc[0].better == 6  # the cells of both pairs
    section = text.split("## Ranking")[1].split("\n## ")[0]
    assert "Better than `maml` overall: `maml+upgrad`." in section
    assert "Worse overall: `maml+ga`" in section
    assert "each weighting over every baseline" in section and "Bonferroni over the 3 rows" in section


def test_a_method_that_records_no_weights_has_no_histogram(tmp_path):
    # maml+config records NaN weights (a direction only): before, they sorted above the last
    # edge and filled its panel's edge bin, and the share of weights outside the range counted them
    methods = {**ZOO, "maml+config": ("maml", "config")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "Mean of empty slice" of its AUCs
        src = fake_study(tmp_path / "runs", seeds=3, methods=methods, no_weights=("maml+config",))
        data = load_tables(src)
    configs = set(data.runs.loc[data.runs["method"] == "maml+config", "run"])
    assert len(configs) == 6 and not configs & set(data.weight_hist["run"])
    assert not configs & set(data.outlier_weights["run"])
    auc = data.run_stats[data.run_stats["metric"].isin(["auc", "auc_late"])]
    assert not configs & set(auc["run"])
    from gabench.reporting._analysis import clipped_share, weight_histograms

    hist = weight_histograms(data)
    assert "maml+config" not in set(hist["method"])
    share = clipped_share(hist)
    # data summarised before the fix: the NaN weights counted in the last bin
    stale = pd.DataFrame({"run": sorted(configs), "bin": len(HIST_EDGES), "count": 160})
    data.weight_hist = pd.concat([data.weight_hist, stale], ignore_index=True)
    assert "maml+config" not in set(weight_histograms(data)["method"])
    assert clipped_share(weight_histograms(data)) == share


def _record_failed(src: Path, failed: dict[str, str], runs: list[dict]) -> None:
    """Lists ``failed`` in ``failed.json`` and their plan entries (``runs``) in ``study.json``."""
    (src / "failed.json").write_text(json.dumps(failed))
    meta = json.loads((src / "study.json").read_text())
    meta["runs"] = runs
    (src / "study.json").write_text(json.dumps(meta))


ZOO_EFFECTS = {"maml+upgrad": 0.2, "maml+ga": -0.2, "maml+pcgrad": 0.0, "reptile+ga": -0.2,
               "reptile+upgrad": 0.2}
ZOO_FAMILIES = ("linear-binary", "sine", "moons")


def _zoo_with_seed_11_failed(root: Path, method: str) -> Path:
    """The zoo (12 seeds) where ``method`` failed on seed 11 of every family, recorded as failed."""
    src = fake_study(root, seeds=12, noise=0.02, methods=ZOO, effects=ZOO_EFFECTS,
                     families=ZOO_FAMILIES, seed_sets={method: list(range(11))})
    runs = [f"{f}__{method}__s11" for f in ZOO_FAMILIES]
    _record_failed(src, dict.fromkeys(runs, "training diverged: query_loss=inf at step 7"),
                   [{"run_id": r, "family_label": r.split("__")[0], "setting": "", "method_label": method,
                     "seed": 11} for r in runs])
    return src


def test_no_call_favours_a_method_on_the_seeds_it_survived(tmp_path):
    # maml+upgrad is clearly better where it finished, but diverged on seed 11 of every family:
    # comparing the 11 seeds it survived would flatter it
    src = _zoo_with_seed_11_failed(tmp_path / "runs", "maml+upgrad")
    text, comp = _report(src, tmp_path / "rep")
    assert {"method_failed", "baseline_failed"} <= set(comp.columns)
    primary = comp[(comp.metric == "loss_post") & (comp["select"] == "best_val")]
    upgrad = primary[primary.method == "maml+upgrad"]
    assert len(upgrad) == 3 and (upgrad.method_failed == 1).all() and (upgrad.baseline_failed == 0).all()
    assert (upgrad.n_seeds == 11).all() and (upgrad.p_holm < 0.05).all() and (upgrad.diff_mean < 0).all()
    assert (upgrad.verdict == "unresolved").all()  # significant, but not on the seeds it survived
    other = primary[primary.method == "reptile+upgrad"]
    assert (other.verdict == "better").all() and (other.method_failed == 0).all()
    worse = primary[primary.method == "maml+ga"]
    assert (worse.verdict == "worse").all()  # a failed method can still be called worse
    assert ("`maml+upgrad` failed on 3 run(s) in 3 cell(s) (linear-binary, sine, moons): the comparisons "
            "there use the seeds both finished, and none favours it (3 call(s) withheld).") in text
    assert "this study has 12 (as few as 11 in some comparisons)." in text  # not "has 11"
    paired = text.split("## Paired differences")[1].split("\n## ")[0]
    # every paired table's maml+upgrad cell: loss 3 cells, accuracy 2 (sine has none); best_val
    # with both metrics pre and post adaptation, final with post only: 2 * 5 + 5
    assert paired.count("(method failed on 1; n=11)") == 15
    data = load_tables(tmp_path / "rep" / "data")
    from gabench.reporting._analysis import comparisons, ranking

    rk = ranking(data, comparisons(data), "loss_post", "best_val").set_index(["group", "method"])
    assert rk.loc[("maml", "maml+upgrad"), "iqm_low"] > 0
    assert rk.loc[("maml", "maml+upgrad"), "overall"] == "unresolved (failed runs)"
    assert rk.loc[("maml", "maml+upgrad"), "failed"] == 3
    assert rk.loc[("reptile", "reptile+upgrad"), "failed"] == 0
    assert (rk["baseline_failed"] == 0).all()
    assert rk.loc[("reptile", "reptile+upgrad"), "overall"] == "better"
    assert rk.loc[("all baselines", "upgrad"), "failed"] == 3


def test_failures_of_an_earlier_plan_are_counted_in_their_cells(tmp_path):
    # the failures of seed 11 were recorded under a plan with 12 seeds; the plan now lists none
    # of them (e.g. seeds = 11), but the archive keeps what that plan finished and failed
    src = _zoo_with_seed_11_failed(tmp_path / "runs", "maml+upgrad")
    _record_failed(src, json.loads((src / "failed.json").read_text()), [])
    data = load_tables(src)
    from gabench.reporting._analysis import comparisons, failed_counts

    assert failed_counts(data) == {(f, "", "maml+upgrad"): 1 for f in ZOO_FAMILIES}
    comp = comparisons(data)
    upgrad = comp[(comp.method == "maml+upgrad") & (comp.metric == "loss_post")
                  & (comp["select"] == "best_val")]
    assert (upgrad.method_failed == 1).all() and (upgrad.verdict == "unresolved").all()
    # with outlier settings the run id carries the setting: located through the runs that finished
    src2 = fake_study(tmp_path / "runs2", seeds=3, methods=ZOO, seed_sets={"maml+ga": [0, 1]})
    runs = pd.read_parquet(src2 / "results.parquet")
    runs["run"] = runs["run"] + "__outlier_fraction-0.25"
    runs.to_parquet(src2 / "results.parquet", index=False)
    w = pd.read_parquet(src2 / "weights.parquet")
    w["run"] = w["run"] + "__outlier_fraction-0.25"
    w.to_parquet(src2 / "weights.parquet", index=False)
    failed = {f"{f}__maml+ga__s2__outlier_fraction-0.25": "training diverged"
              for f in ("linear-binary", "sine")}
    failed["sine__maml+ga__s2__outlier_fraction-0.5"] = "training diverged"
    _record_failed(src2, failed, [])
    data2 = load_tables(src2)
    setting = data2.runs["setting"].iloc[0]
    assert set(data2.runs["setting"]) == {setting}  # one outlier fraction: "" (no setting column)
    # the third failure's setting has no run left anywhere: not located, not counted
    assert failed_counts(data2) == {("linear-binary", setting, "maml+ga"): 1, ("sine", setting, "maml+ga"): 1}


def test_a_baseline_that_failed_makes_no_method_worse_overall(tmp_path):
    src = _zoo_with_seed_11_failed(tmp_path / "runs", "maml")
    text, comp = _report(src, tmp_path / "rep")
    primary = comp[(comp.metric == "loss_post") & (comp["select"] == "best_val")]
    assert (primary[primary.method == "maml+ga"].verdict == "unresolved").all()  # worse, withheld
    assert (primary[primary.method == "maml+upgrad"].verdict == "better").all()  # its baseline failed
    data = load_tables(tmp_path / "rep" / "data")
    from gabench.reporting._analysis import comparisons, ranking

    rk = ranking(data, comparisons(data), "loss_post", "best_val").set_index(["group", "method"])
    assert rk.loc[("maml", "maml+ga"), "iqm_high"] < 0 and rk.loc[("maml", "maml+ga"), "baseline_failed"] == 3
    assert rk.loc[("maml", "maml+ga"), "overall"] == "unresolved (failed runs)"
    assert rk.loc[("maml", "maml+upgrad"), "overall"] == "better"
    assert rk.loc[("reptile", "reptile+ga"), "overall"] == "worse"  # reptile did not fail


def test_failures_in_a_cell_without_any_finished_run_are_named(tmp_path):
    src = fake_study(tmp_path / "runs", seeds=3)
    lost = [f"sine__maml+ga__s{s}" for s in range(3)]
    for name in ("results.parquet", "weights.parquet"):
        table = pd.read_parquet(src / name)
        table[~table["run"].isin(lost)].to_parquet(src / name, index=False)
    _record_failed(src, dict.fromkeys(lost, "diverged"),
                   [{"run_id": r, "family_label": "sine", "setting": "", "method_label": "maml+ga",
                     "seed": int(r[-1])} for r in lost])
    text, comp = _report(src, tmp_path / "rep")
    assert "sine" not in set(comp.loc[comp.method == "maml+ga", "cell"])  # nothing to compare there
    findings = text.split("## Findings")[1].split("\n## ")[0]
    lines = findings.splitlines()
    loss, acc = (next(line for line in lines if line.startswith(f"- `maml+ga` vs `maml`, `{m}`"))
                 for m in ("loss_post", "acc_post"))
    assert "`maml+ga` failed on 3 run(s) in 1 cell(s) (sine)" in loss
    assert "failed" not in acc  # sine has no accuracy


def test_comparisons_without_a_test_are_counted_as_untested_not_unresolved(tmp_path):
    # sine: maml+ga finished one seed of three (no paired t); linear-binary: its accuracy equals
    # maml's on every seed (no difference to test)
    src = fake_study(tmp_path / "runs", seeds=3)
    lost = ["sine__maml+ga__s1", "sine__maml+ga__s2"]
    w = pd.read_parquet(src / "weights.parquet")
    w[~w["run"].isin(lost)].to_parquet(src / "weights.parquet", index=False)
    _record_failed(src, dict.fromkeys(lost, "diverged"),
                   [{"run_id": r, "family_label": "sine", "setting": "", "method_label": "maml+ga",
                     "seed": int(r[-1])} for r in lost])
    res = pd.read_parquet(src / "results.parquet")
    res = res[~res["run"].isin(lost)]
    acc = (res["family"] == "linear-binary") & (res["metric"] == "acc_post") & (res["split"] == "test")
    base = res[acc & (res["method"] == "maml")].set_index(["seed", "select"])["value"]
    ga = acc & (res["method"] == "maml+ga")
    res.loc[ga, "value"] = [base[(r.seed, r.select)] for r in res[ga].itertuples()]
    res.to_parquet(src / "results.parquet", index=False)
    text, comp = _report(src, tmp_path / "rep")
    primary = comp[(comp["select"] == "best_val") & comp.metric.isin(["loss_post", "acc_post"])]
    assert primary.p_value.isna().sum() == 2 and (primary.verdict == "unresolved").all()
    findings = text.split("## Findings")[1].split("\n## ")[0]
    assert (f"Primary comparisons: {primary.p_value.notna().sum()} (metrics") in findings
    assert ("2 more could not be tested (fewer than 2 seeds that both sides finished, or the same "
            "value on every seed).") in findings
    lines = findings.splitlines()
    loss, acc_line = (next(line for line in lines if line.startswith(f"- `maml+ga` vs `maml`, `{m}`"))
                      for m in ("loss_post", "acc_post"))
    assert "unresolved in 1, untested in 1 (sine: 1 seed(s) both finished)." in loss
    assert "unresolved in 0, untested in 1 (linear-binary: equal on all 3 seeds)." in acc_line
    final = comp[(comp["select"] == "final") & comp.metric.isin(["loss_post", "acc_post"])]
    n = int(final.p_value.notna().sum())
    assert n == 1 and f"unresolved of {n} tested comparisons (2 untested)." in findings


def test_two_weightings_of_one_baseline_that_share_an_aggregator_are_not_pooled(tmp_path):
    zoo = {"maml": ("maml", "mean"), "maml+sm1": ("maml", "ga-softmax"), "maml+sm5": ("maml", "ga-softmax"),
           "reptile": ("reptile", "mean"), "reptile+sm1": ("reptile", "ga-softmax"),
           "reptile+sm5": ("reptile", "ga-softmax")}
    effects = {"maml+sm1": 0.2, "reptile+sm1": 0.2, "maml+sm5": -0.2, "reptile+sm5": -0.2}
    src = fake_study(tmp_path / "runs", seeds=8, noise=0.02, methods=zoo, effects=effects,
                     families=("linear-binary", "sine"))
    from gabench.reporting._analysis import comparisons, ranking

    data = load_tables(src)
    pooled = ranking(data, comparisons(data), "loss_post", "best_val").query("group == 'all baselines'")
    assert list(pooled.method) == ["sm1", "sm5"] and list(pooled.overall) == ["better", "worse"]


def test_no_ranking_with_one_method_per_baseline(tmp_path):
    text, _ = _report(fake_study(tmp_path / "runs", effect=0.05), tmp_path / "rep")
    assert "## Ranking" not in text
    # GA with two algorithms (the paper and outlier studies): one method per baseline, no ranking
    two = {"maml": ("maml", "mean"), "maml+ga": ("maml", "ga"), "reptile": ("reptile", "mean"),
           "reptile+ga": ("reptile", "ga")}
    text, _ = _report(fake_study(tmp_path / "runs2", methods=two, effect=0.05), tmp_path / "rep2")
    assert "## Ranking" not in text


def test_learning_curves_draw_no_empty_panel(monkeypatch, tmp_path):
    from gabench.reporting import _plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, legend=None: figs.append(fig))
    frame = pd.DataFrame({0: [0.5, 0.7], 1: [0.55, 0.72]}, index=[0, 10])
    curves = {("linear-binary", ""): {"maml": frame}, ("sine", ""): {"maml": frame.iloc[:, :0]},
              ("digits", ""): {}}  # sine has no accuracy: no panel for it, nor for digits
    plots.learning_curves(curves, plots.method_styles({"maml": ("maml", "mean", False)}), "acc",
                          tmp_path / "x.png")
    visible = [ax for ax in figs[0].axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in visible] == ["linear-binary"]


def test_weight_histogram_titles_name_the_method_with_the_most_weights_outside(monkeypatch, tmp_path):
    from gabench.reporting import _plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, legend=None: figs.append(fig))
    nb = len(HIST_EDGES) + 1
    ga, pcgrad, mean_like = np.zeros(nb), np.zeros(nb), np.zeros(nb)
    ga[5], ga[-1] = 88, 12  # 12% above the range
    pcgrad[-1] = 100  # all above (TorchJD's PCGrad sums the rows: relative weights about T)
    mean_like[10] = 50
    styles = plots.method_styles({"maml+ga": ("maml", "ga", False), "maml+pcgrad": ("maml", "pcgrad", False),
                                  "maml+upgrad": ("maml", "upgrad", False)})
    plots.weight_histograms({("sine", "a"): {"maml+ga": ga, "maml+pcgrad": pcgrad},
                             ("sine", "b"): {"maml+ga": ga, "maml+upgrad": mean_like},
                             ("sine", "c"): {"maml+upgrad": mean_like}},
                            HIST_EDGES, styles, tmp_path / "h.png")
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_visible() and ax.get_title()]
    assert "100% of maml+pcgrad's weights outside [-2, 4]" in titles[0]
    assert "12% of maml+ga's weights outside" in titles[1] and "outside" not in titles[2]
    assert [plots._share_pct(x) for x in (0.0123, 0.1, 1.0, 0.00042)] == ["1.2%", "10%", "100%", "0.042%"]


def test_curve_y_limits_keep_the_first_evaluation():
    import matplotlib.pyplot as plt

    from gabench.reporting._plots import _fit_ylim

    fig, ax = plt.subplots()
    _fit_ylim(ax, [np.array([3.0, 1.0, 0.9, 0.85])])  # untrained step 0 far above the rest
    lo, hi = ax.get_ylim()
    assert lo < 0.85 and hi > 3.0
    _fit_ylim(ax, [np.array([40.0, 1.0, 0.5])])  # a factor of 80: log axis, nothing cut off
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 0.5 and ax.get_ylim()[1] > 40.0
    plt.close(fig)


# --------------------------------------------------------------------------- bad input
def _one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_one_method_is_a_one_line_error(tmp_path, capsys):
    src = fake_study(tmp_path / "runs", methods={"maml": ("maml", "mean")})
    with pytest.raises(ConfigError, match="at least two methods"):
        load_tables(src)
    _one_line_error(capsys, ["report", str(src), "--reports-root", str(tmp_path / "r")],
                    "at least two methods")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mismatched_seeds_are_a_one_line_error_unless_recorded_as_failed(tmp_path, capsys):
    src = fake_study(tmp_path / "runs", seed_sets={"maml": [0, 1, 2], "maml+ga": [0, 1]})
    _one_line_error(capsys, ["report", str(src), "--reports-root", str(tmp_path / "r")],
                    "same seeds", "'maml+ga'", "[0, 1]")
    failed = {f"{f}__maml+ga__s2": "diverged" for f in ("linear-binary", "sine")}
    (src / "failed.json").write_text(json.dumps(failed))
    text, comp = _report(src, tmp_path / "rep")
    assert (comp["n_seeds"] == 2).all() and "## Failed runs" in text


@pytest.mark.slow
def test_corrupt_tables_are_one_line_errors(tmp_path, capsys):
    src = fake_study(tmp_path / "runs")
    data = build_report(load_tables(src), tmp_path / "rep", "x").parent / "data"
    good = (src / "results.parquet").read_bytes()
    (src / "results.parquet").write_bytes(good[: len(good) // 2])  # truncated
    _one_line_error(capsys, ["report", str(src)], "results.parquet", "readable parquet")
    (src / "results.parquet").write_bytes(good)
    (src / "study.json").write_text('{"name": "fake", ')
    _one_line_error(capsys, ["report", str(src)], "study.json", "valid JSON")
    good = (data / "test.parquet").read_bytes()
    (data / "test.parquet").write_bytes(b"not a parquet file")
    _one_line_error(capsys, ["report", str(data)], "test.parquet", "readable parquet")
    (data / "test.parquet").write_bytes(good)
    (data / "curves.parquet").unlink()
    _one_line_error(capsys, ["report", str(data)], "curves.parquet is missing")


def test_report_of_nothing_is_a_one_line_error(tmp_path, capsys):
    _one_line_error(capsys, ["report", "absent", "--runs-root", str(tmp_path)], "source='absent'")


def test_aggregates_from_one_seed_per_cell_show_no_interval_and_make_no_call(tmp_path):
    src = fake_study(tmp_path / "runs", seeds=1, methods=ZOO, effects={"maml+upgrad": 0.3})
    text, _ = _report(src, tmp_path / "rep")
    assert "(no interval)" in text and "nan" not in text.split("## Meta-test results")[0]
    ranking = text.split("## Ranking")[1].split("\n## ")[0]
    assert "**better**" not in ranking and "**worse**" not in ranking


def test_interval_formatting():
    assert fmt_interval(Interval(0.51234, 0.498, 0.5301, 5)) == "0.512 [0.498, 0.530]"
    assert fmt_interval(Interval(2.0, float("nan"), float("nan"), 1)) == "2 (n=1)"
    assert fmt_interval(Interval(2.0, float("nan"), float("nan"), 5, "")) == "2 (n=5)"  # a median
    assert fmt_interval(Interval(float("nan"), float("nan"), float("nan"), 0)) == "–"


# --------------------------------------------------------------------------- a real tiny study
TINY = """
name = "tiny-report"
seeds = 2
[defaults]
steps = 8
meta_batch = 4
eval_every = 1
val_tasks = 8
test_tasks = 16
[settings]
outlier_fraction = [0.0, 0.5]
[families.linear-binary]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = study_file(root, TINY)
    run_study(load_study(path), root / "runs")
    return root


@pytest.mark.slow
def test_report_of_a_tiny_study(tiny_runs):
    root = tiny_runs
    code = main(["report", "tiny-report", "--runs-root", str(root / "runs"),
                 "--reports-root", str(root / "reports")])
    assert code == 0
    out = root / "reports" / "tiny-report"
    text = (out / "README.md").read_text()
    assert "gabench report tiny-report --runs-root" in text  # the command that regenerates it
    assert re.search(r"git commit `[^`]+`", text) and "gabench 0." in text
    table = text.split("### `loss_post`")[1].split("###")[0]
    assert "| `maml` |" in table and "| `maml+ga` |" in table
    assert "linear-binary<br>outlier_fraction=0.5" in table
    assert len(re.findall(r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]", table)) == 2 * 2  # mean [CI] cells
    assert "Too few seeds" in text
    comp = pd.read_csv(out / "comparisons.csv")
    # 2 cells x 4 metrics x 2 selections (the runs meta-validate, so best_val rows exist)
    assert list(comp.columns) == COMPARISON_COLUMNS and len(comp) == 2 * 4 * 2
    assert set(comp["select"]) == {"final", "best_val"}
    assert ((comp["verdict"] == "unresolved") == ~(comp["p_holm"] < 0.05)).all()
    outliers = text.split("## Outlier tasks")[1].split("\n## ")[0]
    assert "| corrupted tasks per meta-training batch | 2 of 4 |" in outliers  # round(0.5 * 4)
    assert main(["report", "tiny-report", "--runs-root", str(root / "runs"),
                 "--reports-root", str(root / "reports2")]) == 0
    again = root / "reports2" / "tiny-report" / "README.md"
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC|reports2?")
    assert strip.sub("", again.read_text()) == strip.sub("", text)  # deterministic


def test_report_of_a_directory_of_plain_runs(tmp_path):
    fast = ["--steps", "3", "--meta-batch", "3", "--test-tasks", "8", "--no-progress", "--no-tracking"]
    for agg in ("mean", "ga"):
        for seed in ("0", "1"):
            assert main(["run", "--family", "sine", "--aggregator", agg, "--seed", seed,
                         "--out", str(tmp_path / "runs" / f"{agg}{seed}"), *fast]) == 0
    path = report_study(tmp_path / "runs", reports_root=tmp_path / "reports")
    text = path.read_text()
    assert path.parent.name == "runs" and "`maml+ga` - `maml`" in text
