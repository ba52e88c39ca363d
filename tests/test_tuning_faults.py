"""The tuner under resumption, several processes and faults: no point is proposed twice, a
terminated or killed tuner leaves no trial RUNNING for ever and no orphaned worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import alive, children

from gabench.config import RunConfig
from gabench.tuning import (
    HEARTBEAT_ATTR,
    TrialSeededTPE,
    TuneConfig,
    make_pruner,
    make_storage,
    reap_stale_trials,
    study_changes,
    tune,
)

BASE = dict(family="sine", steps=12, eval_every=4, meta_batch=3, val_tasks=4, test_tasks=4)
CLI = ["--family", "sine", "--steps", "12", "--eval-every", "4", "--meta-batch", "3",
       "--val-tasks", "4", "--test-tasks", "4", "--no-tracking"]


def config(tmp_path: Path, name: str, trials: int, storage: str | None = None, **kw) -> TuneConfig:
    return TuneConfig(base=RunConfig(**BASE), study_name=name, trials=trials,
                      storage=storage or f"sqlite:///{tmp_path / 's.db'}", **kw)


def points(study: optuna.Study) -> list[tuple[float, float]]:
    return [(t.params["alpha"], t.params["beta"]) for t in study.trials if t.params]


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(storage))


@pytest.mark.slow
def test_resuming_never_proposes_a_finished_point_again(tmp_path):
    tune(config(tmp_path, "r", 4))
    study = tune(config(tmp_path, "r", 8))
    assert len(study.trials) == 8
    assert len(set(points(study))) == 8


@pytest.mark.slow
def test_an_uninterrupted_study_is_reproducible_from_its_seed(tmp_path):
    a = tune(config(tmp_path, "a", 5))
    b = tune(config(tmp_path, "b", 5))
    c = tune(config(tmp_path, "c", 5, sampler_seed=1))
    assert points(a) == points(b)
    assert points(a) != points(c)


def test_trial_seeds_differ_per_trial_and_per_seed():
    seeds = {TrialSeededTPE.trial_seed(s, k) for s in range(3) for k in range(50)}
    assert len(seeds) == 150


@pytest.mark.integration
def test_two_processes_on_one_journal_study_run_distinct_points(tmp_path):
    """The README's "same command on each machine", as two processes on one journal file."""
    journal = f"journal:{tmp_path / 'shared.journal'}"
    cmd = [sys.executable, "-m", "gabench", "tune", *CLI, "--storage", journal, "--study-name", "j",
           "--trials", "8"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"out{i}")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = load(journal, "j")
    # what to read if it fails (it did once, with 10 trials, under heavy load): every trial's
    # state and reason, and both processes' output
    trials = [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    assert 8 <= len(study.trials) <= 9, (trials, outs)  # one budget, at most a start race of one
    assert len(set(points(study))) == len(study.trials), (trials, outs)
    assert "RUNNING" not in [t.state.name for t in study.trials], (trials, outs)


def test_a_trial_started_elsewhere_that_has_not_finished_sampling_changes_no_setup(tmp_path):
    # a second tuner that loads the study just after the first one started a trial (RUNNING, no
    # parameter suggested yet) must not read it as a study tuned under another setup
    tc = config(tmp_path, "fresh", 1)
    storage = make_storage(tc.storage)
    started = optuna.create_study(study_name="fresh", storage=storage).ask()
    assert study_changes(load(tc.storage, "fresh"), tc) == []
    storage.set_trial_state_values(started._trial_id, optuna.trial.TrialState.FAIL)
    tune(tc)  # one trial with its search ranges
    load(tc.storage, "fresh").ask()
    assert study_changes(load(tc.storage, "fresh"), tc) == []
    # one that has sampled alpha but not yet beta (the CI failure: "beta tuned too")
    load(tc.storage, "fresh").ask().suggest_float("alpha", *tc.alpha_range, log=True)
    assert study_changes(load(tc.storage, "fresh"), tc) == []


def test_stale_running_trials_are_reaped_and_the_budget_is_met(tmp_path):
    tc = config(tmp_path, "stale", 3, stale_after_s=30.0)
    storage = make_storage(tc.storage)
    study = optuna.create_study(study_name="stale", storage=storage)
    dead = study.ask()  # a trial whose process died: RUNNING, last heartbeat long ago
    storage.set_trial_user_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    alive = study.ask()  # a trial running elsewhere right now
    storage.set_trial_user_attr(alive._trial_id, HEARTBEAT_ATTR, time.time())
    assert reap_stale_trials(study, 30.0) == [dead.number]
    states = {t.number: t.state.name for t in load(tc.storage, "stale").trials}
    assert states == {dead.number: "FAIL", alive.number: "RUNNING"}
    storage.set_trial_state_values(alive._trial_id, optuna.trial.TrialState.FAIL)
    study = tune(tc)
    # the two failed trials stay as a record and do not spend the budget: 3 are run besides them
    states = [t.state.name for t in study.trials]
    assert len(states) == 5 and states.count("FAIL") == 2 and "RUNNING" not in states


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_live_trial_reaped_by_another_process_is_abandoned_and_redone(tmp_path, monkeypatch, kind):
    # On a starved machine a live trial can miss its heartbeats and be marked FAIL by another
    # worker; its own worker then cannot report to it. That worker must go on, not crash the study.
    import gabench.tuning as tuning

    storage = (f"journal:{tmp_path / 'x.journal'}" if kind == "journal"
               else f"sqlite:///{tmp_path / 'x.db'}")
    tc = config(tmp_path, "reaped", 2, storage=storage)
    optuna.create_study(study_name="reaped", storage=make_storage(storage))

    def objective_factory(tc, parent_run_id, stop=None):
        def objective(trial):
            alpha = trial.suggest_float("alpha", *tc.alpha_range, log=True)
            trial.suggest_float("beta", *tc.beta_range, log=True)
            if trial.number == 0:  # another process reaps this trial while it runs
                trial.storage.set_trial_user_attr(trial._trial_id, "reason", "no heartbeat for 400 s")
                trial.storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
                trial.report(1.0, 0)  # raises: the trial is finished
            return alpha

        return objective

    monkeypatch.setattr(tuning, "make_objective", objective_factory)
    assert tuning._worker(tc, 0, None) == 2
    states = [t.state.name for t in load(storage, "reaped").trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]


def test_any_other_failure_of_a_trial_still_stops_the_worker(tmp_path, monkeypatch):
    import gabench.tuning as tuning

    tc = config(tmp_path, "boom", 2)
    optuna.create_study(study_name="boom", storage=make_storage(tc.storage))

    def objective_factory(tc, parent_run_id, stop=None):
        def objective(trial):
            raise RuntimeError("a bug")

        return objective

    monkeypatch.setattr(tuning, "make_objective", objective_factory)
    with pytest.raises(RuntimeError, match="a bug"):
        tuning._worker(tc, 0, None)


def test_a_journal_snapshot_with_a_torn_last_line_resumes(tmp_path):
    # a journal committed while a tuner appended to it ends in a partial line; resuming from it
    # must neither fail nor glue the next entry onto that line
    from gabench.tuning import repair_journal

    path = tmp_path / "t.journal"
    tune(config(tmp_path, "snap", 2, storage=f"journal:{path}"))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')
    assert repair_journal(path) == len(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')
    assert path.read_bytes() == whole and repair_journal(path) == 0
    path.write_bytes(whole + b'{"op_code": 5, "wor')
    study = tune(config(tmp_path, "snap", 4, storage=f"journal:{path}"))  # repaired on opening
    assert len(study.trials) == 4
    import json

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # no glued entry
    assert len(load(f"journal:{path}", "snap").trials) == 4


def test_pruner_warmup_is_counted_in_validations(tmp_path):
    pruner = make_pruner(config(tmp_path, "p", 1, prune_warmup=3))
    assert pruner._n_warmup_steps == 3 * BASE["eval_every"]


def test_the_objective_is_named_in_the_study(tmp_path):
    study = tune(config(tmp_path, "named", 1))
    assert study.metric_names == ["val loss_post"]


def _wait_for_running(storage: str, name: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = load(storage, name)
            if sum(t.state.name == "RUNNING" for t in study.trials) >= n:
                return
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {n} running trials within {timeout} s")


SLOW = ["--steps", "400", "--eval-every", "100"]  # trials long enough to be caught running


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_sigterm_stops_the_workers_and_marks_their_trials_failed(tmp_path, kind):
    storage = (f"journal:{tmp_path / 'x.journal'}" if kind == "journal"
               else f"sqlite:///{tmp_path / 'x.db'}")
    cmd = [sys.executable, "-m", "gabench", "tune", *CLI, *SLOW, "--storage", storage,
           "--study-name", "t", "--trials", "6", "--workers", "2", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _wait_for_running(storage, "t", 2)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out
    time.sleep(1)
    assert not [w for w in workers if alive(w)], out
    study = load(storage, "t")
    assert "RUNNING" not in [t.state.name for t in study.trials], out
    # a rerun meets the budget: the failed trials are redone, nothing stays RUNNING
    rerun = subprocess.run([*cmd[:-2], "--out", str(tmp_path / "o2"), "--steps", "12", "--eval-every", "4"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    states = [t.state.name for t in load(storage, "t").trials]
    assert "RUNNING" not in states and states.count("COMPLETE") + states.count("PRUNED") >= 6, states


@pytest.mark.integration
def test_kill_9_of_the_parent_takes_the_workers_with_it(tmp_path):
    storage = f"journal:{tmp_path / 'k.journal'}"
    cmd = [sys.executable, "-m", "gabench", "tune", *CLI, *SLOW, "--storage", storage,
           "--study-name", "k", "--trials", "6", "--workers", "2", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_running(storage, "k", 2)
    workers = children(proc.pid)
    assert workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)]
    # the workers marked their trials FAIL on the way out (SIGTERM from the parent's death)
    assert "RUNNING" not in [t.state.name for t in load(storage, "k").trials]
