"""MLflow tracking under faults and hostile input: concurrent first use of a new SQLite store
(real processes), a store left half-migrated, credentials in URIs (a real ``mlflow server``),
and what a person browsing the runs sees (names, description, CI tags, family parameters,
task-weight artifacts, windowed training curves)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import optuna
import pandas as pd
import pytest
from test_tracking import FAST, assert_same_line, free_port, mlflow_server  # noqa: F401 - a fixture

from gabench import _dask
from gabench._processes import Terminated
from gabench._redact import redact, scrub, secrets_of
from gabench.commands import main
from gabench.config import RunConfig
from gabench.tasks import FAMILIES
from gabench.tracking import MLflowTracker, check_tracking_uri, tracking_client
from gabench.tracking._mlflow import run_status
from gabench.trainer import DivergedError, Trainer

# every test here starts processes or servers (real Dask/MLflow/SQLite peers)
pytestmark = pytest.mark.integration

TINY = ["--steps", "2", "--meta-batch", "2", "--test-tasks", "4", "--val-tasks", "2", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}


# --------------------------------------------------------------------------- concurrency
def test_four_processes_create_a_new_sqlite_store_at_once(tmp_path):
    """Without the store lock, 1-3 of these 4 processes die in Alembic's migration
    (``duplicate column name: step``, ``table runs already exists``, ``Online migration expected
    to match one row``); all of them must succeed, into one experiment, and so must a later run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-m", "gabench", "run", *TINY, "--seed", str(i),
                               "--out", str(tmp_path / f"r{i}"), "--tracking-uri", uri],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "tracked in MLflow run" in out
    after = subprocess.run([sys.executable, "-m", "gabench", "run", *TINY, "--seed", "9",
                            "--out", str(tmp_path / "r9"), "--tracking-uri", uri],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert after.returncode == 0, after.stderr[-2000:]
    client = tracking_client(uri)
    exps = [e for e in client.search_experiments() if e.name == "gabench"]
    assert len(exps) == 1  # the get-or-create race made one experiment
    runs = client.search_runs([exps[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"maml · sine · s{i}" for i in (0, 1, 2, 3, 9)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert (tmp_path / "mlflow.db.lock").exists()


def test_a_store_left_half_migrated_is_repaired(tmp_path):
    """An interrupted migration leaves Alembic's scratch table behind; MLflow alone then fails on
    every open (``table _alembic_tmp_experiments already exists``) until the file is deleted."""
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER, name VARCHAR(256))")
    con.commit()
    con.close()
    client = tracking_client(f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()
    assert "experiments" in tables and not [t for t in tables if t.startswith("_alembic_tmp")]


# --------------------------------------------------------------------------- secrets
@pytest.mark.parametrize(("url", "shown", "secrets"), [
    ("postgresql://bob:hunter2@db:5432/optuna", "postgresql://bob:***@db:5432/optuna", ["hunter2"]),
    ("sqlite:///x.db?password=hunter2&timeout=3", "sqlite:///x.db?password=***&timeout=3", ["hunter2"]),
    ("http://alice:s%40cret@host:5000", "http://alice:***@host:5000", ["s%40cret", "s@cret"]),
    ("https://host/api?token=abc&x=1", "https://host/api?token=***&x=1", ["abc"]),
    ("mysql://u:p:q@h/db", "mysql://u:***@h/db", ["p:q"]),
    ("journal:/tmp/x.journal", "journal:/tmp/x.journal", []),
    ("http://[::1:5000", "http://[::1:5000", []),  # not a valid URL: returned as is
])
def test_redact(url, shown, secrets):
    assert redact(url) == shown
    assert sorted(secrets_of(url)) == sorted(secrets)
    text = f"could not reach {url} (password {secrets[0] if secrets else 'none'} refused)"
    cleaned = scrub(text, url)
    assert all(s not in cleaned for s in secrets)
    assert shown in cleaned


def test_credentials_in_the_tracking_uri_are_used_and_never_shown(mlflow_server, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    secret = "s3cret-Pw"
    with_creds = mlflow_server.replace("http://", f"http://alice:{secret}@")
    # The /health check sends the credentials as basic auth (urllib alone refused this URI).
    assert check_tracking_uri(with_creds) == with_creds
    proc = subprocess.run([sys.executable, "-m", "gabench", "run", *TINY, "--out", str(tmp_path / "r"),
                           "--tracking-uri", with_creds, "--experiment", "creds"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert secret not in proc.stderr
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
    assert run.info.status == "FINISHED"
    stored = json.dumps([run.data.params, run.data.tags])
    assert secret not in stored

    # Unreachable: one line, exit 2, the URI shown with *** for the password.
    port = free_port()
    bad = f"http://alice:{secret}@127.0.0.1:{port}"
    proc = subprocess.run([sys.executable, "-m", "gabench", "run", *TINY, "--out", str(tmp_path / "x"),
                           "--tracking-uri", bad], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert secret not in proc.stdout + proc.stderr
    assert f"alice:***@127.0.0.1:{port}" in proc.stderr and proc.stderr.count("\n") == 1


def test_tuning_never_prints_or_stores_passwords(mlflow_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?password=hunter2"
    tracking = mlflow_server.replace("http://", "http://alice:s3cret@")
    assert main(["tune", "--steps", "4", "--eval-every", "2", *FAST[:-1], "--trials", "2",
                 "--storage", storage, "--study-name", "secret", "--tracking-uri", tracking,
                 "--experiment", "tune-secrets", "--out", "tuning"]) == 0
    printed = "".join(capsys.readouterr())
    assert "password=***" in printed
    study = optuna.load_study(study_name="secret", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    stored = [json.dumps(study.user_attrs, default=str), printed]
    stored += [json.dumps(t.user_attrs, default=str) for t in study.trials]
    stored += [p.read_text(errors="replace") for p in (tmp_path / "tuning").rglob("*") if p.suffix
               in (".json", ".csv")]
    client = MlflowClient(mlflow_server)
    for run in client.search_runs([client.get_experiment_by_name("tune-secrets").experiment_id]):
        stored.append(json.dumps([run.data.params, run.data.tags]))
    for text in stored:
        assert "hunter2" not in text and "s3cret" not in text


# --------------------------------------------------------------------------- browsing
def test_run_as_seen_in_the_mlflow_ui(tmp_path):
    """Run name (distinguishing part first), experiment description, CI bounds as tags (no
    single-point charts), resolved family parameters, task-weight figure and CSV preview."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    assert main(["run", "--family", "linear-binary", "--algorithm", "reptile", "--aggregator", "ga",
                 "--steps", "6", "--outlier-fraction", "0.34", "--seed", "2", "--shots", "7",
                 "--tracking-uri", uri, "--out", str(out), "--experiment", "ui", *FAST]) == 0
    client = tracking_client(uri)
    exp = client.get_experiment_by_name("ui")
    assert "gabench runs" in exp.tags["mlflow.note.content"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "reptile+ga · linear-binary · s2 · 0.34 outliers"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert not [k for k in metrics if "ci" in k]
    for m in ("acc_post", "loss_post", "acc_pre", "loss_pre"):
        low, high = (float(v) for v in tags[f"test_ci95.{m}"].strip("[]").split(","))
        assert low <= metrics[f"test/{m}"] <= high
    # Every family parameter with its effective value: the one given and the defaults.
    family = FAMILIES["linear-binary"]
    expected = {f"family_params.{p.name}": str(p.default) for p in family.param_specs()}
    expected["family_params.shots"] = "7"
    assert {k: v for k, v in params.items() if k.startswith("family_params.")} == expected
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"task_weights.png", "weights.csv", "learning_curve.png"} <= arts
    csv = pd.read_csv(client.download_artifacts(run.info.run_id, "weights.csv", str(tmp_path)))
    parquet = pd.read_parquet(out / "weights.parquet")
    assert csv[["step", "task", "corrupted"]].equals(parquet[["step", "task", "corrupted"]])
    np.testing.assert_allclose(csv.weight, parquet.weight, rtol=1e-5)
    png = client.download_artifacts(run.info.run_id, "task_weights.png", str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json",
                                                       str(tmp_path))).read())
    assert config["config"]["family_params"] == {**{p.name: p.default for p in family.param_specs()},
                                                 "shots": 7}


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_training_curves_are_window_means_of_the_per_step_record(tmp_path, stride):
    """``train/`` points are the means (w_min/w_max: min/max) over windows of ``stride`` steps,
    at each window's last step, checked against results.parquet with pandas."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RunConfig(family="linear-binary", aggregator="ga", steps=10, meta_batch=4,
                       outlier_fraction=0.25, eval_every=4, val_tasks=4, test_tasks=4)
    tracker = MLflowTracker(uri, "windows", log_stride=stride)
    trainer = Trainer(config, [tracker], progress=False)
    trainer.log_every = 3  # flushes that do not line up with the windows
    result = trainer.fit()
    client = tracking_client(uri)
    res = result.results[result.results.split == "train"]
    for metric in ("query_loss", "w_min", "w_max", "w_mean_corrupted"):
        per_step = res[res.metric == metric].set_index("step").value.sort_index()
        window = (per_step.index - 1) // stride
        agg = {"w_min": "min", "w_max": "max"}.get(metric, "mean")
        expected = per_step.groupby(window).agg(agg)
        ends = per_step.index.to_series().groupby(window).max()
        expected = pd.Series(expected.values, index=ends.values).dropna()
        history = client.get_metric_history(tracker.run_id, f"train/{metric}")
        got = pd.Series({m.step: m.value for m in history}).sort_index()
        assert_same_line(got, expected, metric)
    assert client.get_run(tracker.run_id).data.params["train_log_stride"] == str(stride)


def test_constant_curves_cost_two_points(tmp_path):
    """The plain mean's weight statistics are constant: each curve is its first and last points;
    the losses keep every window."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = RunConfig(family="sine", steps=12, meta_batch=4, test_tasks=4)
    tracker = MLflowTracker(uri, "constant", log_stride=2)
    trainer = Trainer(config, [tracker], progress=False)
    trainer.log_every = 5
    result = trainer.fit()
    client = tracking_client(uri)
    res = result.results[result.results.split == "train"]
    for metric in ("w_min", "w_max", "w_frac_negative", "w_eff_n"):
        history = client.get_metric_history(tracker.run_id, f"train/{metric}")
        assert sorted(m.step for m in history) == [2, 12], metric
        assert {m.value for m in history} == {res[res.metric == metric].value.iloc[0]}, metric
    history = client.get_metric_history(tracker.run_id, "train/query_loss")
    assert sorted(m.step for m in history) == list(range(2, 13, 2))


def test_default_stride_bounds_the_points_per_curve(tmp_path):
    from gabench.tracking._mlflow import MAX_TRAIN_POINTS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps = 2 * MAX_TRAIN_POINTS + 5
    config = RunConfig(family="linear-binary", steps=steps, meta_batch=2, test_tasks=2)
    tracker = MLflowTracker(uri, "stride")
    Trainer(config, [tracker], progress=False).fit()
    history = tracking_client(uri).get_metric_history(tracker.run_id, "train/query_loss")
    assert tracker.stride == 3
    assert len(history) == -(-steps // 3) <= MAX_TRAIN_POINTS
    assert max(m.step for m in history) == steps


class TrialPruned(Exception):
    """Not Optuna's: a run it ends failed (the status follows the class, not its name)."""


class RunCancelled(RuntimeError):
    """Not gabench's."""


@pytest.mark.parametrize(("exc", "status"), [
    (KeyboardInterrupt(), "KILLED"),
    (SystemExit(1), "KILLED"),
    (Terminated("signal 15"), "KILLED"),
    (_dask.RunCancelled("task x was cancelled"), "KILLED"),
    (optuna.TrialPruned("diverged"), "KILLED"),
    (RuntimeError("boom"), "FAILED"),
    (DivergedError(3, "query_loss", float("nan")), "FAILED"),
    (TrialPruned("same name"), "FAILED"),
    (RunCancelled("same name"), "FAILED"),
])
def test_run_status_of_a_stopped_run_is_killed_and_of_a_broken_one_failed(exc, status):
    assert run_status(exc) == status


def test_on_fail_marks_the_run_killed_or_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class Stop(Exception):
        pass

    class Boom(MLflowTracker):
        def on_eval(self, step, split, summary):
            super().on_eval(step, split, summary)
            if split == "val" and step == 2:
                raise Stop("stopped at 2")

    for exc_type, status in ((KeyboardInterrupt, "KILLED"), (Stop, "FAILED")):
        tracker = Boom(uri, "fail")
        config = RunConfig(family="linear-binary", steps=4, eval_every=2, meta_batch=2,
                           val_tasks=2, test_tasks=2)
        with pytest.raises(Stop):
            Trainer(config, [tracker], progress=False).fit()
        tracker.on_fail(exc_type("stopped at 2"))
        run = tracking_client(uri).get_run(tracker.run_id)
        assert run.info.status == status
        assert run.data.tags["failure_reason"].endswith("stopped at 2")
        # what was trained before the failure is in MLflow
        assert len(tracking_client(uri).get_metric_history(tracker.run_id, "train/query_loss")) == 2


@contextlib.contextmanager
def other_thread():
    """A second thread alive while the block runs, waking every millisecond (so it takes the
    GIL now and then, as MLflow's or pytest-xdist's threads do): one more thread the kernel may
    hand a process-directed signal to, and a GIL handover after which the main thread checks
    for signals."""
    stop = threading.Event()

    def wake_often() -> None:
        while not stop.wait(0.001):
            pass

    thread = threading.Thread(target=wake_often, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signals_deferred_delivers_after_the_block_even_with_other_threads_running(signame):
    """Inside ``signals_deferred`` the handler does not run, whichever thread the kernel gives
    the signal to; it runs once, right after the block, and the previous handler is back."""
    import signal

    from gabench._processes import signals_deferred

    signum = getattr(signal, signame)
    events = []

    def handler(received, frame):
        events.append(("handler", received))

    previous = signal.signal(signum, handler)
    try:
        with other_thread():
            with signals_deferred():
                os.kill(os.getpid(), signum)
                os.kill(os.getpid(), signum)
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:  # time for a handler to run, were it allowed
                    sum(range(1000))
                events.append("end of block")
            assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)
    assert events == ["end of block", ("handler", signum)]


def test_sigterm_while_the_mlflow_run_is_created_still_leaves_it_killed(tmp_path, monkeypatch):
    """A SIGTERM that arrives inside ``create_run`` (the run exists in the store, its id not yet
    kept) is delivered once the id is kept, so the run is marked KILLED, never left RUNNING."""
    import signal

    from gabench._processes import sigterm_raises

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(uri, "race", plots=False)
    real = type(tracker.client).create_run

    def create_then_signal(self, *args, **kwargs):
        run = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the run exists; its id is not kept yet
        time.sleep(0.05)  # the GIL changes hands: where a handler could run, it would
        return run

    monkeypatch.setattr(type(tracker.client), "create_run", create_then_signal)
    config = RunConfig(family="sine", steps=3, meta_batch=2, val_tasks=2, test_tasks=2)
    # Another thread alive, as in a pytest-xdist worker or a process with MLflow's
    # background threads: the kernel may hand the signal to it rather than to the main thread.
    with other_thread(), sigterm_raises(), pytest.raises(Terminated):
        Trainer(config, [tracker], progress=False).fit()
    client = tracking_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_id == tracker.run_id
