"""The command line: outputs of a run, and one-line errors (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from gabench.cli import main

FAST = ["--steps", "4", "--meta-batch", "3", "--test-tasks", "8", "--no-progress", "--no-tracking"]


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("book-binary", "linear-binary", "sine", "classification", "moons", "circles",
                 "blobs", "regression", "digits", "maml", "reptile", "mean", "ga", "ga-book"):
        assert f"  {name} " in out


def test_run_writes_tables_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--family", "moons", "--aggregator", "ga", "--eval-every", "2",
                 "--outlier-fraction", "0.34", "-P", "noise=0.2", "--out", str(out), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "acc_post" in printed and "95% CI" in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "results.parquet",
                                                     "weights.parquet"]
    res = pd.read_parquet(out / "results.parquet")
    for col in ("family", "algorithm", "aggregator", "seed", "step", "split", "metric", "value"):
        assert col in res
    assert set(res.split) == {"train", "val", "test"}
    w = pd.read_parquet(out / "weights.parquet")
    assert list(w.columns) == ["run", "step", "task", "corrupted", "weight"]
    assert w.corrupted.groupby(w.step).sum().eq(1).all()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["family_params"] == {"noise": "0.2"}
    assert cfg["config"]["alpha"] == 0.5  # the family's default, recorded as used
    assert set(cfg["test"]) == {"loss_pre", "loss_post", "acc_pre", "acc_post"}


BAD = [
    (["--family", "nope"], "family='nope'"),
    (["--algorithm", "sgd"], "algorithm='sgd'"),
    (["--aggregator", "median"], "aggregator='median'"),
    (["--alpha", "-0.1"], "alpha=-0.1"),
    (["--alpha", "0"], "alpha=0.0"),
    (["--beta", "0"], "beta=0.0"),
    (["--shots", "0"], "shots=0"),
    (["--family", "digits", "--shots", "200"], "shots=200"),
    (["--family", "digits", "--ways", "20"], "ways=20"),
    (["--family", "sine", "--ways", "5"], "sine.ways=5"),
    (["-P", "colour=red"], "sine.colour"),
    (["--outlier-fraction", "1.5"], "outlier_fraction=1.5"),
    (["--outlier-fraction", "-0.1"], "outlier_fraction=-0.1"),
    (["--outlier-mode", "flip"], "outlier_mode='flip'"),
    (["--algorithm", "reptile", "--first-order"], "first_order=True"),
    (["--device", "tpu"], "device='tpu'"),
    (["--meta-batch", "0"], "meta_batch=0"),
    (["--alpha", "abc"], "--alpha"),
]


@pytest.mark.parametrize("args,named", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(args, named, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc_info:
        sys.exit(main(["run", *FAST, *args, "--out", str(out)]))
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_and_existing_results(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["run", "--out", str(blocker / "sub"), *FAST]) == 2
    assert "--out=" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"
    done = tmp_path / "done"
    assert main(["run", "--out", str(done), *FAST]) == 0
    before = (done / "results.parquet").read_bytes()
    assert main(["run", "--out", str(done), "--seed", "1", *FAST]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (done / "results.parquet").read_bytes() == before  # nothing lost or corrupted
    assert main(["run", "--out", str(done), "--seed", "1", "--overwrite", *FAST]) == 0
    assert pd.read_parquet(done / "results.parquet").seed.eq(1).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "file"]


@pytest.mark.integration
def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gabench", "run", "--alpha", "-1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "alpha=-1.0" in proc.stderr
    assert list(tmp_path.iterdir()) == []
