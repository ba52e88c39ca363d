"""A tuning study's trials belong to one setup: resuming under another (more steps, a new search
range, another objective) is refused, naming the differences, or with --retune-changed starts
that study again; compared runs never take their learning rates from trials of another setup."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from helpers import TUNED_STUDY, study_file

from gabench._errors import ConfigError
from gabench._tuning_setup import expected_setup, recorded_setup, setup_changes
from gabench.commands import main
from gabench.config import RunConfig
from gabench.study import StudyError, load_study
from gabench.tuning import (
    SetupChangedError,
    TuneConfig,
    expected_tuning_setup,
    make_storage,
    run_defaults,
    study_changes,
    tune,
)


@dataclasses.dataclass
class Dist:  # the two attributes of an Optuna distribution the record reads
    low: float
    high: float


BASE = {"family": "sine", "steps": 100, "eval_every": 10, "alpha": 0.01, "beta": 0.001,
        "test_tasks": 600, "device": "cpu", "aggregator_params": {"temperature": 1.0, "eps": 0.1}}


def _recorded(config=BASE, ranges=None, objective="loss", select="best_val", trials=2):
    ranges = ranges or {"alpha": (0.001, 1.0), "beta": (1e-4, 0.1)}
    dists = [{k: Dist(*v) for k, v in ranges.items()}] * trials
    return recorded_setup({"base_config": config, "objective": objective, "select": select}, dists)


def _changes(recorded, config=BASE, ranges=None, objective="loss", select="best_val"):
    ranges = ranges or {"alpha": (0.001, 1.0), "beta": (1e-4, 0.1)}
    return setup_changes(recorded, expected_setup(config, objective, select, ranges),
                         {"eval_inner_steps": None, "outlier_fraction": 0.0})


def test_the_same_setup_has_no_changes_and_alpha_beta_test_tasks_device_do_not_count():
    assert _changes(_recorded()) == []
    other = {**BASE, "alpha": 0.5, "beta": 0.05, "test_tasks": 10, "device": "cuda", "eval_batch": 7}
    assert _changes(_recorded(), config=other) == []


def test_run_settings_ranges_objective_and_select_are_named_with_old_and_new_values():
    assert _changes(_recorded(), config={**BASE, "steps": 300}) == ["steps 100 -> 300"]
    assert _changes(_recorded(), ranges={"alpha": (1e-4, 1.0), "beta": (1e-4, 0.1)}) == [
        "alpha range [0.001, 1] -> [0.0001, 1]"]
    assert _changes(_recorded(), objective="acc", select="final") == [
        "objective loss -> acc", "select best_val -> final"]
    assert _changes(_recorded(), config={**BASE, "aggregator_params": {"temperature": 1.0, "eps": 0.2}}) == [
        "aggregator_params {eps=0.1, temperature=1} -> {eps=0.2, temperature=1}"]


def test_a_tuned_aggregator_parameter_is_a_range_not_a_run_setting():
    ranges = {"alpha": (0.001, 1.0), "beta": (1e-4, 0.1), "temperature": (0.05, 20.0)}
    recorded = _recorded(ranges=ranges)
    # the sampler sets the temperature: its value in the base config does not matter
    other = {**BASE, "aggregator_params": {"temperature": 3.0, "eps": 0.1}}
    assert _changes(recorded, config=other, ranges=ranges) == []
    assert "temperature no longer tuned (was [0.05, 20])" in _changes(recorded)
    assert "temperature tuned too (range [0.05, 20])" in _changes(_recorded(), ranges=ranges)


def test_a_setting_added_after_the_study_was_recorded_counts_at_its_default():
    assert _changes(_recorded(), config={**BASE, "outlier_fraction": 0.0}) == []
    assert _changes(_recorded(), config={**BASE, "outlier_fraction": 0.1}) == ["outlier_fraction 0 -> 0.1"]


def test_no_finished_trial_means_nothing_to_compare_and_mixed_ranges_are_reported():
    assert recorded_setup({"base_config": BASE}, []) is None
    assert _changes(None, config={**BASE, "steps": 5}) == []
    mixed = recorded_setup({"base_config": BASE}, [{"alpha": Dist(0.001, 1.0), "beta": Dist(1e-4, 0.1)},
                                                   {"alpha": Dist(0.01, 1.0), "beta": Dist(1e-4, 0.1)}])
    assert "mix several search ranges" in _changes(mixed)[0]


def test_run_defaults_are_the_run_configs_defaults():
    defaults = run_defaults()
    assert defaults["steps"] == RunConfig().steps and defaults["aggregator_params"] == {}
    assert set(defaults) == {f.name for f in dataclasses.fields(RunConfig)}


# ------------------------------------------------------------------ with real Optuna studies
def _tc(tmp_path, **changes) -> TuneConfig:
    base = RunConfig(family="sine", steps=4, eval_every=2, meta_batch=2, val_tasks=4, test_tasks=4,
                     seed=1000)
    base = dataclasses.replace(base, **{k: v for k, v in changes.items() if hasattr(base, k)})
    rest = {"trials": 2, **{k: v for k, v in changes.items() if not hasattr(base, k)}}
    return TuneConfig(base=base, study_name="s", storage=f"journal:{tmp_path / 'j.journal'}",
                      **rest).validate()


def _trials(tmp_path):
    storage = make_storage(f"journal:{tmp_path / 'j.journal'}", create=False)
    return optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)


def test_resuming_under_other_steps_is_refused_and_nothing_runs(tmp_path):
    tune(_tc(tmp_path))
    before = [(t.number, t.params) for t in _trials(tmp_path)]
    with pytest.raises(ConfigError, match=r"steps 4 -> 8\).*not be comparable") as info:
        tune(_tc(tmp_path, steps=8, trials=3))
    assert info.value.param == "--retune-changed"
    assert [(t.number, t.params) for t in _trials(tmp_path)] == before
    # the same setup resumes as before
    study = tune(_tc(tmp_path, trials=3))
    assert len(study.trials) == 3 and study_changes(study, _tc(tmp_path)) == []


def test_retune_changed_deletes_the_old_trials_and_tunes_from_scratch(tmp_path, capsys):
    tune(_tc(tmp_path, alpha_range=(0.01, 1.0)))
    study = tune(_tc(tmp_path, alpha_range=(0.001, 1.0), retune_changed=True))
    assert "deleted its 2 trials" in capsys.readouterr().out
    assert len(study.trials) == 2
    alpha = {(t.distributions["alpha"].low, t.distributions["alpha"].high) for t in study.trials}
    assert alpha == {(0.001, 1.0)}
    assert study.user_attrs["base_config"]["steps"] == 4
    # an unchanged study is left alone by --retune-changed
    again = tune(_tc(tmp_path, alpha_range=(0.001, 1.0), retune_changed=True))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_plug_in_defaults_written_out_or_left_unset_are_the_same_setup(tmp_path):
    tune(_tc(tmp_path))
    storage = make_storage(f"journal:{tmp_path / 'j.journal'}", create=False)
    study = optuna.load_study(study_name="s", storage=storage)
    for tc in (_tc(tmp_path, family_params={"shots": 10}),    # sine's default, written out
               _tc(tmp_path, family_params={"shots": "10"}),  # as -P shots=10 gives it
               _tc(tmp_path, eval_inner_steps=1)):            # what unset means (inner_steps)
        assert study_changes(study, tc) == []
    (change,) = study_changes(study, _tc(tmp_path, family_params={"shots": 5}))
    assert change.startswith("family_params {") and "shots=10" in change and "shots=5}" in change
    assert study_changes(study, _tc(tmp_path, eval_inner_steps=3)) == ["eval_inner_steps 1 -> 3"]


def test_a_changed_objective_is_retuned_in_the_new_direction(tmp_path):
    tune(_tc(tmp_path, family="linear-binary"))
    with pytest.raises(SetupChangedError, match="objective loss -> acc"):
        tune(_tc(tmp_path, family="linear-binary", objective="acc"))
    study = tune(_tc(tmp_path, family="linear-binary", objective="acc", retune_changed=True))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and len(study.trials) == 2
    assert study.user_attrs["objective"] == "acc"


def test_a_running_trial_of_another_setup_counts_and_is_never_deleted_under_it(tmp_path):
    old = _tc(tmp_path)
    storage = make_storage(old.storage)
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("base_config", old.base.to_dict())
    trial = study.ask()  # another process's trial, running now (fresh)
    trial.suggest_float("alpha", *old.alpha_range, log=True)
    trial.suggest_float("beta", *old.beta_range, log=True)
    new = _tc(tmp_path, steps=8)
    assert study_changes(study, new) == ["steps 4 -> 8"]
    with pytest.raises(SetupChangedError, match="its 1 trials ran under another setup"):
        tune(new)
    with pytest.raises(ConfigError, match="no trial running on Optuna study 's'"):
        tune(_tc(tmp_path, steps=8, retune_changed=True))
    assert [t.state for t in optuna.load_study(study_name="s", storage=storage).trials] == [
        optuna.trial.TrialState.RUNNING]
    # the same setup joins the running study and leaves its recorded setup alone
    joined = tune(_tc(tmp_path, trials=2))
    assert joined.user_attrs["base_config"] == old.base.to_dict()
    assert expected_tuning_setup(old) == expected_tuning_setup(_tc(tmp_path))


def test_plan_of_a_study_not_tuned_yet_creates_nothing(tmp_path, capsys):
    path = study_file(tmp_path, TUNED_STUDY, "tt.toml")
    assert main(["tune", "--study", str(path), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tt__sine__maml\tnot started (0 of 2 trials)"
    assert out[-1] == "0 of 4 Optuna studies hold their 2 trials"
    assert not (tmp_path / "tt.journal").exists()
    assert main(["tune", "--plan"]) == 2
    assert "--plan=True" in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_file_whose_budget_changed_is_refused_by_compare_and_retuned_cell_by_cell(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, TUNED_STUDY, "tt.toml")
    assert main(["tune", "--study", str(path), "--no-tracking"]) == 0
    load_study(path)  # every cell tuned under the file's setup
    # more steps for sine only: its two cells changed, linear-binary's did not
    text = TUNED_STUDY.replace("[families.sine]\n", "[families.sine]\nsteps = 8\n")
    path.write_text(text)
    changed = r"tt__sine__maml'.*another setup \(steps 6 -> 8\).*--retune-changed"
    with pytest.raises(StudyError, match=changed):
        load_study(path)
    capsys.readouterr()
    assert main(["compare", str(path), "--out-root", "runs", "--no-tracking"]) == 2
    assert "--retune-changed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # tune refuses before any trial runs, naming both changed cells
    journal = (tmp_path / "tt.journal").read_bytes()
    assert main(["tune", "--study", str(path), "--no-tracking"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tt__sine__maml'" in err and "tt__sine__maml+ga" in err
    assert (tmp_path / "tt.journal").read_bytes() == journal
    assert main(["tune", "--study", str(path), "--plan"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert plan[0] == "tt__sine__maml\ttuned under another setup (steps 6 -> 8): --retune-changed"
    assert plan[2] == "tt__linear-binary__maml\t2 of 2 trials (tuned)"
    assert plan[-1] == "2 of 4 Optuna studies hold their 2 trials"
    assert (tmp_path / "tt.journal").read_bytes() == journal
    journal_url = f"journal:{tmp_path / 'tt.journal'}"
    lb = {t.number: t.params for t in optuna.load_study(
        study_name="tt__linear-binary__maml", storage=make_storage(journal_url)).trials}
    assert main(["tune", "--study", str(path), "--no-tracking", "--retune-changed"]) == 0
    out = capsys.readouterr().out
    assert out.count("will be tuned again from scratch") == 2
    storage = make_storage(f"journal:{tmp_path / 'tt.journal'}")
    sine = optuna.load_study(study_name="tt__sine__maml", storage=storage)
    assert sine.user_attrs["base_config"]["steps"] == 8 and len(sine.trials) == 2
    assert {t.number: t.params for t in optuna.load_study(
        study_name="tt__linear-binary__maml", storage=storage).trials} == lb
    study = load_study(path)
    assert {r.config.steps for r in study.runs if r.family_label == "sine"} == {8}
    assert json.loads(json.dumps(study.summary()))["name"] == "tt"
    # each load reads the storage as it is then (nothing is cached between loads)
    sine.add_trial(optuna.trial.create_trial(params={"alpha": 0.0123, "beta": 0.00123},
                                             distributions=sine.trials[0].distributions, value=-1.0))
    again = load_study(path)
    assert {r.config.alpha for r in again.runs if r.run_id.startswith("sine__maml__")} == {0.0123}
