"""The report's hyperparameter table shows each cell's task shape (ways, shots, query_shots), from
the family parameters the runs resolved (defaults included), which ``study.json`` records."""

from __future__ import annotations

import json

import pytest
from helpers import study_file

from gabench.commands import main
from gabench.compare._schedule import task_shape
from gabench.study import load_study

STUDY = """
name = "shapes"
seeds = 2
[defaults]
steps = 3
meta_batch = 2
test_tasks = 4
eval_every = 0
[families.sine]
[families.digits-3w]
family = "digits"
params = { ways = 3, shots = 2 }
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


@pytest.mark.slow
def test_the_hyperparameter_table_shows_the_resolved_task_shape(tmp_path):
    path = study_file(tmp_path, STUDY, "shapes.toml")
    study = load_study(path)
    digits = next(r for r in study.runs if r.family_label == "digits-3w")
    # before the run: the family's defaults (query_shots 15) under the study file's parameters
    assert task_shape(digits, tmp_path / "nowhere") == {"ways": 3, "shots": 2, "query_shots": 15}
    runs = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(runs), "--no-tracking"]) == 0
    recorded = json.loads((runs / "shapes" / "study.json").read_text())["runs"]
    shapes = {r["run_id"]: (r["ways"], r["shots"], r["query_shots"]) for r in recorded}
    assert shapes == {"sine__maml__s0": (None, 10, 10), "sine__maml__s1": (None, 10, 10),
                      "sine__maml+ga__s0": (None, 10, 10), "sine__maml+ga__s1": (None, 10, 10),
                      "digits-3w__maml__s0": (3, 2, 15), "digits-3w__maml__s1": (3, 2, 15),
                      "digits-3w__maml+ga__s0": (3, 2, 15), "digits-3w__maml+ga__s1": (3, 2, 15)}
    assert main(["report", "shapes", "--runs-root", str(runs), "--reports-root", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "shapes" / "README.md").read_text()
    table = text.split("<summary>Hyperparameters of each family x method</summary>")[1].split("</details>")[0]
    assert "| family | method | ways | shots | query_shots | alpha |" in table
    assert "| sine | maml+ga | - | 10 | 10 | 0.01 |" in table  # sine has no ways parameter
    assert "| digits-3w | maml | 3 | 2 | 15 | 0.5 |" in table
