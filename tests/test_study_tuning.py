"""A study file's [tuning] protocol: parsed and checked, one Optuna study per cell, compared runs
take the best trial only once every cell holds its budget."""

from __future__ import annotations

import json

import optuna
import pytest
from helpers import TUNED_STUDY, study_file

from gabench.commands import main
from gabench.study import StudyError, Tuned, best_params, load_study

TUNED = TUNED_STUDY


def write(tmp_path, text: str = TUNED, name: str = "tt.toml"):
    return study_file(tmp_path, text, name)


def test_tuning_tasks_one_per_cell_with_the_tuning_seed_and_family_ranges(tmp_path):
    study = load_study(write(tmp_path), resolve_tuned=False)
    assert study.tuning is not None and study.tuning.trials == 2
    # a relative journal is next to the study file, wherever the command runs
    assert study.tuning.storage == f"journal:{tmp_path / 'tt.journal'}"
    names = [t.name for t in study.tuning_tasks]
    assert names == ["tt__sine__maml", "tt__sine__maml+ga", "tt__linear-binary__maml",
                     "tt__linear-binary__maml+ga"]
    assert {t.config.seed for t in study.tuning_tasks} == {1000}
    assert {t.alpha_range for t in study.tuning_tasks if t.family_label == "sine"} == {(0.001, 0.1)}
    assert {t.alpha_range for t in study.tuning_tasks if t.family_label != "sine"} == {(0.01, 1.0)}
    assert {t.beta_range for t in study.tuning_tasks} == {(0.0001, 0.01)}
    assert study.summary()["tuning"]["seed"] == 1000


def test_grid_points_get_their_own_tuning_study(tmp_path):
    text = TUNED + '[settings]\noutlier_fraction = [0.0, 0.25]\n'
    study = load_study(write(tmp_path, text), resolve_tuned=False)
    assert "tt__sine__maml__outlier_fraction-0.25" in [t.name for t in study.tuning_tasks]
    assert len(study.tuning_tasks) == 8


def test_runs_take_the_best_trial_of_their_cell_and_require_the_full_budget(tmp_path):
    asked: list[Tuned] = []

    def fake(ref: Tuned) -> dict[str, float]:
        asked.append(ref)
        return {"alpha": 0.05 if "sine" in ref.study else 0.3, "beta": 0.002}

    study = load_study(write(tmp_path), load_tuned=fake)
    assert {r.config.alpha for r in study.runs if r.family_label == "sine"} == {0.05}
    assert {r.config.alpha for r in study.runs if r.family_label == "linear-binary"} == {0.3}
    assert {r.config.beta for r in study.runs} == {0.002}
    assert {a.min_trials for a in asked} == {2}
    assert {a.study for a in asked} == {t.name for t in study.tuning_tasks}


def _journal(tmp_path, name: str, values: list[float]) -> str:
    url = f"journal:{tmp_path / 'j.journal'}"
    from gabench.tuning import make_storage

    study = optuna.create_study(study_name=name, storage=make_storage(url))
    for i, v in enumerate(values):
        study.enqueue_trial({"alpha": 0.1 * (i + 1), "beta": 0.001})
        study.optimize(lambda t, v=v: (t.suggest_float("alpha", 0.01, 1, log=True),
                                       t.suggest_float("beta", 1e-4, 1e-2, log=True), v)[2], n_trials=1)
    return url


def test_an_unfinished_tuning_study_is_refused(tmp_path):
    url = _journal(tmp_path, "s", [0.5, 0.2])
    assert best_params(Tuned(url, "s", 2)) == {"alpha": 0.2, "beta": 0.001}
    with pytest.raises(ValueError, match="holds 2 of its 3 trials"):
        best_params(Tuned(url, "s", 3))


@pytest.mark.parametrize("edit, key, problem", [
    ('seed = 1000', 'tuning.seed', "also an evaluation seed"),
    ('trials = 2', 'tuning.trials', "expected an integer"),
    ('alpha_range = [0.01, 1.0]', 'tuning.alpha_range', "0 < LOW < HIGH"),
    ('storage = "journal:tt.journal"', 'tuning.storage', "missing"),
    ('objective = "acc"', 'tuning.objective', "expected one of"),
])
def test_bad_tuning_tables_name_the_key(tmp_path, edit, key, problem):
    replacement = {"seed = 1000": "seed = 1", "trials = 2": "trials = 0",
                   "alpha_range = [0.01, 1.0]": "alpha_range = [1.0, 0.01]",
                   'storage = "journal:tt.journal"': 'storage = ""',
                   'objective = "acc"': 'objective = "auc"'}[edit]
    text = TUNED.replace(edit, replacement) if edit in TUNED else TUNED.replace(
        "[tuning]\n", f"[tuning]\n{replacement}\n")
    with pytest.raises(StudyError, match=problem) as info:
        load_study(write(tmp_path, text), resolve_tuned=False)
    assert info.value.key == key


@pytest.mark.parametrize("where, key", [
    ("[defaults]\nalpha = 0.1\n", "defaults.alpha"),
    ("[families.sine]\nbeta = 0.1\n", "families.sine.beta"),
    ('[methods.maml]\ntuned = { storage = "sqlite:///x.db", study = "x" }\n', "methods.maml.tuned"),
])
def test_alpha_and_beta_cannot_be_set_beside_tuning(tmp_path, where, key):
    header = where.split("\n", 1)[0]
    text = TUNED.replace(header + "\n", where, 1)
    with pytest.raises(StudyError, match="tuning") as info:
        load_study(write(tmp_path, text), resolve_tuned=False)
    assert info.value.key == key


def test_family_tuning_without_a_tuning_table_is_refused(tmp_path):
    text = TUNED.split("[tuning]")[0] + "[defaults]" + TUNED.split("[defaults]")[1]
    with pytest.raises(StudyError, match="only a study with a \\[tuning\\] table") as info:
        load_study(write(tmp_path, text))
    assert info.value.key == "families.sine.tuning"


@pytest.mark.slow
def test_tune_study_then_compare_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path)
    # the comparison refuses before tuning, naming the command to run
    assert main(["compare", str(path), "--out-root", "runs", "--no-tracking"]) == 2
    assert f"gabench tune --study {path}" in capsys.readouterr().err
    assert main(["tune", "--study", str(path), "--no-tracking", "--families", "sine"]) == 0
    out = capsys.readouterr().out
    assert "2 Optuna studies" in out and "[2/2] tt__sine__maml+ga" in out
    # half tuned: still refused, naming a linear-binary cell
    assert main(["compare", str(path), "--out-root", "runs", "--no-tracking"]) == 2
    assert "tt__linear-binary__maml" in capsys.readouterr().err
    assert main(["tune", "--study", str(path), "--no-tracking"]) == 0
    out = capsys.readouterr().out
    assert "tt__sine__maml' in" in out and "2 finished trials, 0 to run" in out  # resumed, not rerun
    journal = tmp_path / "tt.journal"
    for task in load_study(path, resolve_tuned=False).tuning_tasks:
        study = optuna.load_study(study_name=task.name,
                                  storage=optuna.storages.JournalStorage(
                                      optuna.storages.journal.JournalFileBackend(str(journal))))
        assert len(study.trials) == 2
        assert study.user_attrs["select"] == "best_val"
        assert study.metric_names == ["val loss_post"]
        for t in study.trials:
            assert t.params["alpha"] <= (0.1 if task.family_label == "sine" else 1.0)
            if t.state == optuna.trial.TrialState.COMPLETE:  # the best validation of the trial
                assert t.value == min(t.intermediate_values.values())
    assert main(["compare", str(path), "--out-root", "runs", "--no-tracking"]) == 0
    plan = json.loads((tmp_path / "runs/tt/study.json").read_text())
    best = best_params(Tuned(f"journal:{journal}", "tt__sine__maml+ga", 2))
    run = next(r for r in plan["runs"] if r["run_id"] == "sine__maml+ga__s1")
    assert (run["alpha"], run["beta"]) == (pytest.approx(best["alpha"]), pytest.approx(best["beta"]))


@pytest.mark.parametrize("argv, param", [
    (["--alpha", "0.1"], "--alpha"),
    (["--trials", "5"], "--trials"),
    (["--families", "nope"], "--families"),
    (["--methods", "reptile"], "--methods"),
])
def test_tune_study_refuses_options_the_file_sets(tmp_path, capsys, argv, param):
    path = write(tmp_path)
    assert main(["tune", "--study", str(path), "--no-tracking", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and param in err[0]
    assert not (tmp_path / "tt.journal").exists()


def test_tune_study_needs_a_tuning_table(tmp_path, capsys):
    path = write(tmp_path, TUNED.split("[tuning]")[0] + "[defaults]" + TUNED.split("[defaults]")[1]
                 .replace('tuning = { alpha_range = [0.001, 0.1] }\n', ""))
    assert main(["tune", "--study", str(path), "--no-tracking"]) == 2
    assert "a study file with a [tuning] table" in capsys.readouterr().err


def test_families_without_study_is_refused(capsys):
    assert main(["tune", "--families", "sine", "--no-tracking"]) == 2
    assert "--families" in capsys.readouterr().err
