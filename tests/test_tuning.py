"""Optuna tuning: budgets, resumption, pruning of diverging trials, workers, MLflow children."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from gabench.commands import main
from gabench.tuning import make_storage

BASE = ["--family", "sine", "--steps", "12", "--eval-every", "4", "--meta-batch", "3",
        "--val-tasks", "4", "--test-tasks", "4"]


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(storage))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_tune_reports_best_and_tracks_children(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["tune", *BASE, "--trials", "4"]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed
    study = load("sqlite:///optuna.db", "sine__maml")
    assert len(study.trials) == 4 and "RUNNING" not in states(study)
    best = json.loads((tmp_path / "tuning" / "sine__maml" / "best.json").read_text())
    assert best["best_params"] == study.best_params and best["best_value"] == study.best_value
    assert (tmp_path / "tuning" / "sine__maml" / "trials.csv").read_text().count("\n") == 5
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gabench-tuning")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "sine__maml"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [f"sine__maml__t{i}" for i in range(4)]
    assert float(parent.data.params["best_alpha"]) == pytest.approx(study.best_params["alpha"])
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best.json", "optimization_history.png", "contour_alpha_beta.png",
            "param_importances.png"} <= arts


@pytest.mark.slow
def test_rerun_resumes_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", *BASE, "--storage", storage, "--study-name", "resume", "--no-tracking"]
    assert main([*args, "--trials", "2"]) == 0
    assert len(load(storage, "resume").trials) == 2
    assert main([*args, "--trials", "3"]) == 0  # one more, not three more
    assert main([*args, "--trials", "3"]) == 0  # already complete: nothing runs
    study = load(storage, "resume")
    assert [t.number for t in study.trials] == [0, 1, 2]


def test_diverging_trials_are_pruned_with_a_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["tune", *BASE, "--storage", storage, "--study-name", "div", "--no-tracking",
                 "--trials", "3", "--alpha-range", "100", "1000", "--optimizer", "sgd"]) == 0
    study = load(storage, "div")
    assert states(study) == ["PRUNED"] * 3
    assert all("diverged" in t.user_attrs["reason"] for t in study.trials)


@pytest.mark.slow
def test_several_methods_get_the_same_budget_and_suggestions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["tune", *BASE, "--storage", storage, "--no-tracking", "--trials", "2",
                 "--methods", "maml,reptile+ga"]) == 0
    a, b = load(storage, "sine__maml"), load(storage, "sine__reptile+ga")
    assert len(a.trials) == len(b.trials) == 2
    assert a.trials[0].params == b.trials[0].params  # same seeded sampler: paired suggestions


@pytest.mark.integration
def test_two_local_workers_share_one_journal_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", *BASE, "--workers", "2", "--trials", "4", "--no-tracking",
                 "--study-name", "par"]) == 0
    study = load("journal:optuna.journal", "par")  # the default storage with workers > 1
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert "RUNNING" not in states(study)


@pytest.mark.parametrize("args,named", [
    (["--storage", "redis://x"], "--storage='redis://x'"),
    (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "u:***@127.0.0.1"),
    (["--trials", "0"], "--trials=0"),
    (["--alpha-range", "1", "0.1"], "--alpha-range"),
    (["--alpha-range", "1e6", "1e8"], "--alpha-range"),
    (["--beta-range", "0.1", "1e300"], "--beta-range"),
    (["--objective", "acc"], "--objective='acc'"),
    (["--methods", "maml,sgd+ga"], "--methods='sgd+ga'"),
])
def test_bad_tuning_input(args, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", *BASE, "--no-tracking", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err and "secret" not in err, err


POSTGRES = os.environ.get("GABENCH_TEST_POSTGRES_URL")


@pytest.mark.integration
@pytest.mark.skipif(not POSTGRES and not os.environ.get("GABENCH_REQUIRE_POSTGRES"),
                    reason="set GABENCH_TEST_POSTGRES_URL (bash .ci/postgres.sh starts a server)")
def test_two_worker_processes_share_a_postgresql_study(tmp_path):
    """Two independent processes, as on two machines, run one study in PostgreSQL."""
    assert POSTGRES, "GABENCH_REQUIRE_POSTGRES is set but GABENCH_TEST_POSTGRES_URL is not"
    name = f"pg-{os.getpid()}-{tmp_path.name}"
    cmd = [sys.executable, "-m", "gabench", "tune", *BASE, "--storage", POSTGRES,
           "--study-name", name, "--trials", "6", "--no-tracking"]
    procs = [subprocess.Popen([*cmd, "--sampler-seed", str(i), "--out", str(tmp_path / f"w{i}")],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = load(POSTGRES, name)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert 6 <= len(study.trials) <= 7  # one global budget; at most a start race of one trial
    assert all(s in ("COMPLETE", "PRUNED") for s in states(study))
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)  # no trial ran twice
    ran = [sum(f"[{name}] trial " in line for line in out.splitlines()) for out in outputs]
    assert sum(ran) == len(study.trials) and min(ran) >= 1  # both processes did work
    # each process reports the best trial it saw when it left; the last to leave saw them all
    assert all(f"[{name}] best trial " in out for out in outputs)
    assert any(f"[{name}] best trial {study.best_trial.number}" in out for out in outputs)
