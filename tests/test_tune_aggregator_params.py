"""Aggregator parameters (e.g. ga-softmax's temperature) tuned by Optuna beside alpha and beta."""

from __future__ import annotations

import math
import re

import optuna
import pytest
from helpers import TUNED_STUDY, study_file

from gabench._errors import ConfigError
from gabench.aggregators import check_param_ranges
from gabench.commands import main
from gabench.config import RunConfig
from gabench.study import StudyError, Tuned, load_study
from gabench.tuning import TuneConfig, suggest_config, tune

SOFTMAX = TUNED_STUDY + '''[methods."maml+softmax"]
algorithm = "maml"
aggregator = "ga-softmax"
aggregator_params = { temperature = 2.0 }
tuning = { temperature = [0.05, 20.0] }
'''


@pytest.mark.parametrize("aggregator, ranges, match", [
    ("ga-softmax", {"tau": (0.1, 1.0)},
     "tau.*floating-point parameter of aggregator 'ga-softmax' \\(temperature\\)"),
    ("ga", {"temperature": (0.1, 1.0)}, "aggregator 'ga' has no floating-point parameter"),
    ("pcgrad", {"seed": (1.0, 2.0)}, "seed.*no floating-point parameter"),  # an int parameter
    ("ga-softmax", {"temperature": (1.0, 0.5)}, "LOW < HIGH with 0 < LOW"),
    ("ga-softmax", {"temperature": (0.0, 0.5)}, "LOW < HIGH with 0 < LOW"),
    ("ga-softmax", {"temperature": (0.1, math.inf)}, "LOW < HIGH with 0 < LOW"),
])
def test_bad_ranges_are_one_line_errors(aggregator, ranges, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_param_ranges(aggregator, ranges, "--tune-aggregator-param")
    assert "\n" not in str(info.value) and "--tune-aggregator-param" in str(info.value)


def test_a_trial_suggests_the_parameter_log_uniformly_and_keeps_the_others():
    base = RunConfig(family="sine", aggregator="ga-softmax", aggregator_params={"temperature": 2.0})
    tc = TuneConfig(base=base, study_name="s", aggregator_ranges={"temperature": (0.05, 20.0)})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        config = suggest_config(trial, tc)
        seen.append(config.aggregator_params["temperature"])
        assert trial.params["temperature"] == config.aggregator_params["temperature"]
        study.tell(trial, 0.0)
    assert all(0.05 <= t <= 20.0 for t in seen) and min(seen) < 1.0 < max(seen)
    dist = study.trials[0].distributions["temperature"]
    assert dist.log and (dist.low, dist.high) == (0.05, 20.0)
    assert base.aggregator_params == {"temperature": 2.0}  # the base config is not changed


def test_tune_runs_trials_with_the_suggested_temperature(tmp_path):
    base = RunConfig(family="sine", aggregator="ga-softmax", steps=4, eval_every=2, meta_batch=2, val_tasks=4)
    tc = TuneConfig(base=base, study_name="soft", storage=f"sqlite:///{tmp_path / 'o.db'}", trials=3,
                    aggregator_ranges={"temperature": (0.1, 10.0)}).validate()
    study = tune(tc)
    temps = [t.params["temperature"] for t in study.trials]
    assert len(set(temps)) == 3 and all(0.1 <= t <= 10.0 for t in temps)


def test_study_file_method_tuning_reaches_the_tuning_task_and_the_compared_runs(tmp_path):
    study = load_study(study_file(tmp_path, SOFTMAX, "tt.toml"), resolve_tuned=False)
    tasks = {t.name: t for t in study.tuning_tasks}
    assert tasks["tt__sine__maml+softmax"].aggregator_ranges == {"temperature": (0.05, 20.0)}
    assert tasks["tt__sine__maml+ga"].aggregator_ranges == {}

    def fake(ref: Tuned) -> dict[str, float]:
        best = {"alpha": 0.05, "beta": 0.002}
        return {**best, "temperature": 0.3} if ref.study.endswith("softmax") else best

    study = load_study(study_file(tmp_path, SOFTMAX, "tt.toml"), load_tuned=fake)
    soft = [r.config for r in study.runs if r.method_label == "maml+softmax"]
    assert soft and {c.aggregator_params["temperature"] for c in soft} == {0.3}
    assert {c.alpha for c in soft} == {0.05}


def test_a_tuned_reference_takes_only_the_parameters_the_aggregator_has(tmp_path):
    text = '''
name = "w"
seeds = 1
[defaults]
steps = 3
[families.sine]
[methods.maml]
algorithm = "maml"
tuned = { storage = "sqlite:///x.db", study = "m" }
[methods."maml+softmax"]
algorithm = "maml"
aggregator = "ga-softmax"
tuned = { storage = "sqlite:///x.db", study = "s" }
'''
    best = {"m": {"alpha": 0.1, "beta": 0.01, "temperature": 5.0, "inner_steps": 3},
            "s": {"alpha": 0.2, "beta": 0.02, "temperature": 0.7}}
    study = load_study(study_file(tmp_path, text, "w.toml"), load_tuned=lambda ref: best[ref.study])
    cfg = {r.method_label: r.config for r in study.runs}
    assert cfg["maml"].aggregator_params == {} and cfg["maml"].inner_steps == 1
    assert cfg["maml+softmax"].aggregator_params == {"temperature": 0.7} and cfg["maml+softmax"].alpha == 0.2


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("tuning = { temperature = [0.05, 20.0] }", "tuning = { tau = [0.05, 20.0] }"),
     'methods."maml+softmax".tuning'),
    (lambda t: t.replace("tuning = { temperature = [0.05, 20.0] }", "tuning = { temperature = 3 }"),
     'methods."maml+softmax".tuning.temperature'),
    (lambda t: t.replace("tuning = { temperature = [0.05, 20.0] }", "tuning = { temperature = [2, 1] }"),
     'methods."maml+softmax".tuning'),
])
def test_bad_method_tuning_tables_name_the_key(tmp_path, edit, key):
    with pytest.raises(StudyError, match=re.escape(f"{key}: ")) as info:
        load_study(study_file(tmp_path, edit(SOFTMAX), "tt.toml"), resolve_tuned=False)
    assert "\n" not in str(info.value)


def test_method_tuning_needs_a_tuning_table(tmp_path):
    text = SOFTMAX.replace("[tuning]", "[unused]").split("[unused]")[0] + SOFTMAX.split("[defaults]", 1)[1]
    text = "\n".join(line for line in text.splitlines() if "tuning = { alpha_range" not in line)
    text = text.replace("\nsteps = 6", "[defaults]\nsteps = 6", 1)
    with pytest.raises(StudyError, match=r'methods."maml\+softmax".tuning: only in a study with a \['):
        load_study(study_file(tmp_path, text, "tt.toml"))


def test_cli_option_is_checked_in_one_line(capsys):
    code = main(["tune", "--family", "sine", "--aggregator", "ga-softmax", "--tune-aggregator-param",
                 "temperature", "0.1", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--tune-aggregator-param" in err[0] and "numbers" in err[0]
    code = main(["tune", "--family", "sine", "--aggregator", "ga", "--tune-aggregator-param",
                 "temperature", "0.1", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no floating-point parameter" in err[0]


def test_the_tuning_report_shows_the_tuned_aggregator_parameter_with_its_position(tmp_path):
    import pandas as pd

    from gabench.reporting.tuning_section import _trial_row, cell_summary

    study = optuna.create_study()
    dists = {"alpha": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
             "beta": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
             "temperature": optuna.distributions.FloatDistribution(0.05, 20.0, log=True)}
    for value, temp in ((0.5, 1.0), (0.2, 19.0)):  # the best trial's temperature is near the top
        study.add_trial(optuna.trial.create_trial(params={"alpha": 0.1, "beta": 0.01, "temperature": temp},
                                                  distributions=dists, value=value))
    trials = pd.DataFrame([_trial_row("s", t) for t in study.trials])
    studies = pd.DataFrame([{"study": "s", "family_label": "sine", "setting": "", "method": "maml+softmax",
                             "direction": "minimize"}])
    cells = cell_summary(studies, trials, budget=2)
    assert cells.loc[0, "other_params"] == "temperature=19 (0.99; **EDGE** high)"
    plain = trials.assign(params='{"alpha": 0.1, "beta": 0.01}')
    assert cell_summary(studies, plain, budget=2).loc[0, "other_params"] == ""


def test_a_cell_tuned_before_its_aggregator_range_was_added_is_refused(tmp_path):
    with pytest.raises(StudyError, match=r"maml\+softmax.*tuning: the best trial of Optuna study "
                                         r"'tt__sine__maml\+softmax' has no parameter 'temperature'"):
        load_study(study_file(tmp_path, SOFTMAX, "tt.toml"),
                   load_tuned=lambda ref: {"alpha": 0.1, "beta": 0.01})
