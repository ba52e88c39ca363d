"""MLflow tracking against the real thing: a `mlflow server` on a loopback port, and SQLite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gabench.commands import main

FAST = ["--meta-batch", "3", "--test-tasks", "8", "--val-tasks", "4", "--no-progress"]


def assert_same_line(got: pd.Series, expected: pd.Series, name: str) -> None:
    """``got`` (step -> value) is ``expected`` with only inner points of runs of equal values
    left out: the first and last points are there, and the line through ``got`` passes through
    every expected point."""
    assert set(got.index) <= set(expected.index), name
    assert got.index[0] == expected.index[0] and got.index[-1] == expected.index[-1], name
    kept = expected.loc[got.index]
    np.testing.assert_allclose(got.values, kept.values, rtol=1e-9, err_msg=name)
    line = np.interp(expected.index, got.index, got.values)
    np.testing.assert_allclose(line, expected.values, rtol=1e-9, err_msg=name)
    for a, b in zip(got.index[:-1], got.index[1:], strict=True):  # a gap is a run of one value
        inner = expected.loc[a:b]
        if len(inner) > 2:
            assert (inner == inner.iloc[0]).all(), (name, a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),  # noqa: SIM115
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.integration
def test_run_is_tracked_on_a_real_server(mlflow_server, tmp_path, capsys):
    from mlflow import MlflowClient

    out = tmp_path / "run"
    code = main(["run", "--family", "linear-binary", "--aggregator", "ga", "--steps", "7",
                 "--eval-every", "3", "--outlier-fraction", "0.34", "--seed", "3",
                 "--tracking-uri", mlflow_server, "--experiment", "server-test", "--out", str(out),
                 *FAST])
    assert code == 0
    assert "tracked in MLflow run" in capsys.readouterr().out
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("server-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "maml+ga · linear-binary · s3 · 0.34 outliers"
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["family"] == "linear-binary" and params["aggregator"] == "ga"
    assert float(params["alpha"]) == 0.5 and params["steps"] == "7"
    assert params["outlier_fraction"] == "0.34"
    for key in ("family", "algorithm", "aggregator", "seed", "gabench_version"):
        assert key in tags
    history = client.get_metric_history(run.info.run_id, "train/query_loss")
    assert sorted(m.step for m in history) == list(range(1, 8))
    per_step = pd.read_parquet(out / "results.parquet").query("split == 'train'")
    for key in ("w_eff_n", "w_frac_negative", "w_mean_corrupted", "w_mean_clean"):
        # every step (7 steps: windows of 1), except the inner points of runs of equal values
        got = pd.Series({m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                            f"train/{key}")})
        want = per_step[per_step.metric == key].set_index("step").value.dropna()
        assert_same_line(got.sort_index(), want.sort_index(), key)
    val = client.get_metric_history(run.info.run_id, "val/acc_post")
    assert sorted(m.step for m in val) == [0, 3, 6]
    metrics = run.data.metrics
    low, high = (float(v) for v in tags["test_ci95.acc_post"].strip("[]").split(","))
    assert low <= metrics["test/acc_post"] <= high
    assert not [k for k in metrics if "_ci_" in k]  # the bounds are tags, not single-point charts
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"results.parquet", "weights.parquet", "config.json", "learning_curve.png",
                     "task_weights.png", "weights.csv"}
    local = client.download_artifacts(run.info.run_id, "results.parquet", str(tmp_path))
    pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(out / "results.parquet"))


@pytest.mark.slow
def test_default_store_is_sqlite_in_working_directory(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "--steps", "2", "--out", "r", *FAST]) == 0
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gabench")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "maml · sine · s0"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "learning_curve.png" in arts
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts next to the database


@pytest.mark.slow
def test_no_plots_leaves_the_pngs_out_and_keeps_the_rest(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", "--steps", "2", "--out", "r", *FAST, "--tracking-uri", uri, "--no-plots"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gabench").experiment_id])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert arts == {"results.parquet", "weights.parquet", "config.json", "weights.csv"}
    assert client.get_metric_history(run.info.run_id, "train/query_loss")


def test_no_tracking_writes_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "--steps", "2", "--out", "r", "--no-tracking", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.integration
def test_unreachable_server_fails_before_training(tmp_path):
    port = free_port()  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gabench", "run", "--steps", "100000",
                           "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"tracking-uri='http://127.0.0.1:{port}'" in proc.stderr
    assert "reachable MLflow server" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert time.monotonic() - start < 60  # it did not train 100000 steps first


def test_bad_tracking_uri_scheme(tmp_path, capsys):
    assert main(["run", "--tracking-uri", "ftp://x", "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "--tracking-uri='ftp://x'" in capsys.readouterr().err
