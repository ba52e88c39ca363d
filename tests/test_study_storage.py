"""Reading a study file's ``tuned`` block never creates an Optuna storage (issue: study files
wrote outside the output directories, even with --plan)."""

from __future__ import annotations

import pytest
from helpers import study_file

from gabench.commands import main

STUDY = """
name = "demo"
seeds = 1
[defaults]
steps = 3
[families.sine]
[methods.maml]
algorithm = "maml"
tuned = {{ storage = "{storage}", study = "{{family}}__{{method}}" }}
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_missing_tuned_storage_is_an_error_and_nothing_is_created(tmp_path, capsys, kind):
    target = tmp_path / "some" / "new" / "dir" / ("x.journal" if kind == "journal" else "x.db")
    storage = f"journal:{target}" if kind == "journal" else f"sqlite:///{target}"
    path = study_file(tmp_path, STUDY.format(storage=storage), "s.toml")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["compare", str(path), "--plan", "--out-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tuned" in err[0] and "nothing is created" in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "some").exists()
