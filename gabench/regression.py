"""Numerical regression check: rerun a small fixed-seed study and compare it with stored baselines.

``gabench regression`` (``tox -e regression``; the command is :mod:`gabench.commands.regression`) runs
``tests/regression/study.toml`` into a temporary directory, extracts the metrics listed below
and compares each with ``tests/regression/baselines.csv`` within that row's tolerance:
``|got - expected| <= atol + rtol * |expected|``. Any drift, missing or new metric fails with a
table naming the run, metric, expected and obtained values and the tolerance.

``gabench regression --update`` rewrites the baselines from a fresh run (on purpose:
commit the new file with a note on why the numbers changed). Tolerances of existing rows are
kept; new rows get the defaults.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gabench._errors import ConfigError

#: Default tolerances of new rows. Reordering float32 sums (e.g. 2 torch threads instead of 1)
#: moved these metrics by at most 6e-8 (relative) when measured; a changed algorithm, seed stream
#: or formula moves them by far more than 1e-4.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
KEY = ["run", "split", "metric", "step"]


def extract_metrics(results: pd.DataFrame) -> pd.DataFrame:
    """The compared numbers of a study table: one row per (run, split, metric, step).

    - every meta-test metric (``split=test``; ``test_best_val`` for the parameters selected on
      meta-validation), and the meta-validation ones at every evaluation;
    - the meta-training query and support losses at the last step and their mean over all steps;
    - the means over steps of every weight statistic (``w_*``).
    """
    held_out = results[results.split.isin(["test", "val"])]
    if "select" in held_out:  # the best-validation meta-test rows are a split of their own here
        best = held_out["select"] == "best_val"
        held_out = held_out.assign(split=held_out["split"].where(~best, "test_best_val"))
    test = held_out[[*KEY, "value"]]
    train = results[(results.split == "train") & (results.metric != "wall_seconds")]
    last = train[train.step == train.groupby("run")["step"].transform("max")]
    last = last[last.metric.isin(["query_loss", "support_loss"])][[*KEY, "value"]]
    mean = train.groupby(["run", "metric"], as_index=False)["value"].mean()
    mean = mean.assign(split="train", step=-1, metric=mean.metric + "_mean_over_steps")
    out = pd.concat([test, last, mean[[*KEY, "value"]]], ignore_index=True)
    out["step"] = out["step"].astype(int)
    return out.sort_values(KEY).reset_index(drop=True)


def run_regression_study(study_file: Path, out_root: Path) -> pd.DataFrame:
    """Run the study (one process, one torch thread: the numbers do not depend on the machine's
    core count) and return :func:`extract_metrics` of its table."""
    import torch

    from gabench.compare import run_study
    from gabench.study import load_study

    torch.set_num_threads(1)
    study = load_study(study_file)
    result = run_study(study, out_root, workers=1, log=sys.stderr)
    failed = {**result.kept_diverged, **result.failures}
    if failed:
        raise RuntimeError(f"regression study runs failed: {failed}")
    return extract_metrics(pd.read_parquet(result.study_dir / "results.parquet"))


def compare_to_baselines(got: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Rows that fail: drifted beyond tolerance, missing from the new run, or not in the baselines.

    Returns a table with ``run, split, metric, step, expected, got, diff, tolerance, problem``
    (empty when everything matches).
    """
    merged = baselines.merge(got, on=KEY, how="outer", suffixes=("", "_got"), indicator=True)
    merged = merged.rename(columns={"value": "expected", "value_got": "got"})
    tol = merged["atol"].fillna(DEFAULT_ATOL) + merged["rtol"].fillna(DEFAULT_RTOL) * merged["expected"].abs()
    merged["tolerance"] = tol
    merged["diff"] = (merged["got"] - merged["expected"]).abs()
    both_nan = merged["expected"].isna() & merged["got"].isna() & (merged["_merge"] == "both")
    drift = (merged["_merge"] == "both") & ~both_nan & ~(merged["diff"] <= tol)
    merged["problem"] = np.select(
        [merged["_merge"] == "left_only", merged["_merge"] == "right_only", drift],
        ["missing from the new run", "not in the baselines", "drifted"], default="")
    bad = merged[merged["problem"] != ""]
    return bad[[*KEY, "expected", "got", "diff", "tolerance", "problem"]].reset_index(drop=True)


def format_failures(bad: pd.DataFrame, n_total: int, baselines_file: Path) -> str:
    """A readable diff of the failing rows."""
    lines = [f"regression: {len(bad)} of {n_total} metrics differ from {baselines_file}:",
             f"{'run':34s} {'split':5s} {'metric':28s} {'step':>5s} {'expected':>13s} {'got':>13s} "
             f"{'|diff|':>9s} {'tolerance':>9s}  problem"]
    for r in bad.itertuples(index=False):
        lines.append(f"{r.run:34s} {r.split:5s} {r.metric:28s} {r.step:5d} {_num(r.expected):>13s} "
                     f"{_num(r.got):>13s} {_num(r.diff, 2):>9s} {_num(r.tolerance, 2):>9s}  {r.problem}")
    lines.append("tolerance = atol + rtol * |expected| (columns of the baselines file). If the change is "
                 "intended, refresh the baselines: gabench regression --update")
    return "\n".join(lines)


def _num(x: Any, digits: int = 7) -> str:
    return "-" if pd.isna(x) else f"{x:.{digits}g}"


def update_baselines(got: pd.DataFrame, baselines_file: Path) -> pd.DataFrame:
    """Write ``got`` as the new baselines, keeping the tolerances of rows that existed."""
    new = got.copy()
    new["rtol"], new["atol"] = DEFAULT_RTOL, DEFAULT_ATOL
    if baselines_file.is_file():
        old = pd.read_csv(baselines_file)
        tol = old.set_index(KEY)[["rtol", "atol"]]
        idx = new.set_index(KEY).index
        known = idx.isin(tol.index)
        new.loc[known, ["rtol", "atol"]] = tol.loc[idx[known]].to_numpy()
    baselines_file.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(baselines_file, index=False, float_format="%.9g")
    return new


def check(study_file: Path, baselines_file: Path, update: bool = False, out_root: Path | None = None) -> int:
    """Run the check (or the refresh); returns the exit status."""
    if not study_file.is_file():
        raise ConfigError("--study", str(study_file), "an existing study file (run from the repository root)")
    if not update and not baselines_file.is_file():
        raise ConfigError("--baselines", str(baselines_file),
                          "an existing baselines file (create it with --update)")
    with tempfile.TemporaryDirectory(prefix="gabench-regression-") as tmp:
        got = run_regression_study(study_file, out_root or Path(tmp))
    if update:
        update_baselines(got, baselines_file)
        print(f"regression: wrote {len(got)} baselines to {baselines_file}")
        return 0
    baselines = pd.read_csv(baselines_file)
    bad = compare_to_baselines(got, baselines)
    if len(bad):
        print(format_failures(bad, len(baselines), baselines_file), file=sys.stderr)
        return 1
    print(f"regression: all {len(baselines)} metrics match {baselines_file} within tolerance")
    return 0
