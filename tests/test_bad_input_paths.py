"""One line, exit 2, nothing created: over-long names, bad experiment names, an --out-root file."""

from __future__ import annotations

import pytest

from gabench.commands import main


@pytest.mark.parametrize("args,named", [
    (["run", "--steps", "2", "--no-tracking", "--out", "a" * 300], "--out="),
    (["run", "--steps", "2", "--experiment", ""], "--experiment=''"),
    (["run", "--steps", "2", "--experiment", "e" * 501], "--experiment="),
    (["run", "--steps", "2", "--experiment", " padded "], "--experiment=' padded '"),
    (["compare", "STUDY", "--no-tracking", "--out-root", "afile"], "--out-root='afile'"),
    (["compare", "STUDY", "--no-tracking", "--out-root", "r" * 300], "--out-root="),
])
def test_bad_paths_and_names_fail_in_one_line_before_anything_is_created(args, named, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "afile").write_text("")
    (tmp_path / "s.toml").write_text('name = "s"\nseeds = 1\n[defaults]\nsteps = 2\n[families.sine]\n'
                                     '[methods.maml]\nalgorithm = "maml"\n')
    args = [str(tmp_path / "s.toml") if a == "STUDY" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no runs/
