"""Aggregator parameters from the command line and study files, recorded resolved, listed."""

from __future__ import annotations

import json

import pytest
from helpers import study_file

from gabench.aggregators import AGGREGATORS, TORCHJD_AGGREGATORS
from gabench.commands import main
from gabench.study import load_study


def test_every_torchjd_aggregator_is_registered():
    assert set(TORCHJD_AGGREGATORS) <= set(AGGREGATORS.values())


@pytest.mark.slow
def test_run_takes_aggregator_parameters_and_records_them_resolved(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "--steps", "2", "--test-tasks", "4", "--aggregator", "cagrad", "-A", "c=0.25",
                 "--no-tracking", "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"]["aggregator_params"] == {"c": "0.25"}  # as asked: the run's identity
    assert recorded["resolved"]["aggregator_params"] == {"c": 0.25, "norm_eps": 0.0001}  # defaults too
    assert recorded["resolved"]["family_params"]["shots"] == 10  # sine's default, recorded


def test_bad_aggregator_parameters_are_one_line_errors(tmp_path, capsys):
    for args, named in ((["--aggregator", "ga-softmax", "-A", "temp=2"], "temp"),
                        (["--aggregator", "ga-softmax", "-A", "temperature=-1"], "temperature"),
                        (["--aggregator", "mean", "-A", "c=1"], "c")):
        assert main(["run", "--steps", "2", "--no-tracking", "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
        assert not (tmp_path / "x").exists()


def test_study_methods_set_aggregator_parameters(tmp_path):
    path = study_file(tmp_path, """
        name = "s"
        seeds = 1
        [defaults]
        steps = 2
        [families.sine]
        [methods."maml+ga-softmax"]
        algorithm = "maml"
        aggregator = "ga-softmax"
        aggregator_params = { temperature = 0.3 }
    """, "s.toml")
    (run,) = load_study(path).runs
    assert run.config.aggregator_params == {"temperature": 0.3}


def test_list_shows_aggregator_parameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "temperature=1.0" in out and "c=0.5" in out
