"""The regression check's comparison and its readable diff (the study itself runs in tox -e regression)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import gabench.compare
import gabench.study
from gabench.compare import CompareResult
from gabench.regression import (
    compare_to_baselines,
    extract_metrics,
    format_failures,
    run_regression_study,
    update_baselines,
)


def table(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r, "split": "test", "metric": m, "step": 10, "value": v}
                         for (r, m), v in values.items()])


def test_drift_missing_and_new_metrics_are_reported_readably(tmp_path):
    base = table({("a", "loss_post"): 1.0, ("a", "acc_post"): 0.5, ("b", "loss_post"): 2.0})
    base["rtol"], base["atol"] = 1e-3, 1e-6
    got = table({("a", "loss_post"): 1.0005, ("a", "acc_post"): 0.51, ("c", "loss_post"): 3.0})
    bad = compare_to_baselines(got, base)
    problems = dict(zip(zip(bad.run, bad.metric, strict=True), bad.problem, strict=True))
    assert problems == {("a", "acc_post"): "drifted", ("b", "loss_post"): "missing from the new run",
                        ("c", "loss_post"): "not in the baselines"}
    text = format_failures(bad, len(base), tmp_path / "baselines.csv")
    line = next(x for x in text.splitlines() if "acc_post" in x)
    assert line.split()[4:] == ["0.5", "0.51", "0.01", "0.0005", "drifted"]  # expected, got, |diff|, tol
    assert "--update" in text


def test_update_keeps_existing_tolerances(tmp_path):
    path = tmp_path / "b.csv"
    got = table({("a", "loss_post"): 1.0, ("a", "acc_post"): 0.5})
    update_baselines(got, path)
    old = pd.read_csv(path)
    old.loc[old.metric == "acc_post", "atol"] = 0.01
    old.to_csv(path, index=False)
    update_baselines(table({("a", "loss_post"): 1.1, ("a", "acc_post"): 0.6, ("b", "x"): 1.0}), path)
    new = pd.read_csv(path).set_index("metric")
    assert new.loc["acc_post", "atol"] == 0.01 and new.loc["acc_post", "value"] == 0.6
    assert compare_to_baselines(table({("a", "loss_post"): 1.1, ("a", "acc_post"): 0.605, ("b", "x"): 1.0}),
                                pd.read_csv(path)).empty


def test_extract_metrics_reads_test_val_and_train_summaries():
    rows = []
    for step in (1, 2):
        rows += [{"run": "r", "split": "train", "metric": "query_loss", "step": step, "value": float(step)},
                 {"run": "r", "split": "train", "metric": "w_min", "step": step, "value": 0.1 * step}]
    rows += [{"run": "r", "split": "train", "metric": "wall_seconds", "step": 2, "value": 9.0},
             {"run": "r", "split": "val", "metric": "loss_post", "step": 2, "value": 0.7},
             {"run": "r", "split": "test", "metric": "loss_post", "step": 2, "value": 0.6}]
    m = extract_metrics(pd.DataFrame(rows)).set_index(["split", "metric", "step"])["value"]
    assert m[("train", "query_loss", 2)] == 2.0 and m[("train", "query_loss_mean_over_steps", -1)] == 1.5
    assert m[("train", "w_min_mean_over_steps", -1)] == 0.15000000000000002
    assert ("train", "wall_seconds", 2) not in m and m[("test", "loss_post", 2)] == 0.6


def test_regression_run_names_every_failed_run(tmp_path, monkeypatch):
    """A run that diverged now and one kept as diverged by an earlier compare both fail the check, by name."""
    result = CompareResult(tmp_path, planned=3, finished=1, ran=2, failures={"a": "diverged at step 5"},
                           kept_diverged={"b": "diverged at step 9"})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave this test process's threads alone
    monkeypatch.setattr(gabench.study, "load_study", lambda path: None)
    monkeypatch.setattr(gabench.compare, "run_study", lambda *args, **kwargs: result)
    with pytest.raises(RuntimeError) as err:
        run_regression_study(tmp_path / "study.toml", tmp_path)
    assert "'a': 'diverged at step 5'" in str(err.value) and "'b': 'diverged at step 9'" in str(err.value)
