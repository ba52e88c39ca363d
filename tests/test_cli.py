"""The command line: outputs of a run, and one-line errors (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from gabench.commands import main

FAST = ["--steps", "4", "--meta-batch", "3", "--test-tasks", "8", "--no-progress", "--no-tracking"]


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("textbook-binary", "linear-binary", "sine", "classification", "moons", "circles",
                 "blobs", "regression", "digits", "maml", "reptile", "mean", "ga", "ga-textbook"):
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
    # upper bounds: refused up front, before anything is created
    (["--steps", "1e15"], "--steps"),
    (["--steps", "1000000000000000"], "steps=1000000000000000"),
    (["--seed", "36893488147419103233"], "seed=36893488147419103233"),
    (["--seed", "-1"], "seed=-1"),
    (["--meta-batch", "1000000000"], "meta_batch=1000000000"),
    (["--shots", "1000000000"], "shots=1000000000"),
    (["-P", "ways=1000000000"], "ways='1000000000'"),
    (["--val-tasks", "10000000000", "--eval-every", "1"], "val_tasks=10000000000"),
    (["--test-tasks", "10000000000"], "test_tasks=10000000000"),
    (["--eval-every", "100000000000"], "eval_every=100000000000"),
    (["--inner-steps", "1000000"], "inner_steps=1000000"),
    (["--alpha", "1e300"], "alpha=1e+300"),
    (["--beta", "inf"], "beta=inf"),
    (["--beta", "nan"], "beta=nan"),
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


def test_every_run_setting_is_one_cli_option_and_one_study_key():
    """The options of `gabench run` and the study keys are derived from the RunConfig declarations."""
    import dataclasses

    from gabench.commands import build_parser
    from gabench.commands._options import config_from_args
    from gabench.config import RUN_SETTINGS, RunConfig
    from gabench.study import METHOD_KEYS, RUN_KEYS

    assert list(RUN_SETTINGS) == [f.name for f in dataclasses.fields(RunConfig)]
    changed = {"family": "moons", "algorithm": "reptile", "aggregator": "ga", "alpha": 0.3, "beta": 0.01,
               "inner_steps": 3, "eval_inner_steps": 4, "optimizer": "sgd", "meta_batch": 7,
               "outlier_fraction": 0.25, "outlier_mode": "flip", "steps": 11, "seed": 5, "eval_every": 2,
               "val_tasks": 9, "test_tasks": 13, "eval_batch": 17, "device": "cpu"}
    argv = ["run", "--shots", "2", "-P", "noise=0.3"]
    for name, value in changed.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    assert cfg == RunConfig(family_params={"noise": "0.3", "shots": 2}, **changed)
    flag_only = {"family_params", "aggregator_params", "first_order"}  # -P/--shots, -A, a switch
    assert set(changed) | flag_only == set(RUN_SETTINGS)
    assert build_parser().parse_args(["run", "--first-order"]).first_order is True
    structural = {"family", "family_params", "seed"}
    method_only = {"algorithm", "aggregator", "aggregator_params", "first_order"}
    assert set(RUN_KEYS) == set(RUN_SETTINGS) - structural - method_only
    assert set(METHOD_KEYS) == method_only


def test_run_config_validate_checks_every_declared_bound():
    from gabench import ConfigError
    from gabench.config import MAX_SEED, RunConfig

    RunConfig(seed=MAX_SEED, steps=0).validate()
    for bad in ({"seed": MAX_SEED + 1}, {"steps": 1.5}, {"alpha": float("nan")}, {"beta": True},
                {"first_order": "yes"}, {"optimizer": "rmsprop"}, {"eval_batch": 0}, {"device": 0}):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}="):
            RunConfig(**bad).validate()


def test_list_catalog_is_read_statically_and_matches_the_classes():
    """`gabench list` reads the registries' source (no torch); it must say what the classes say.

    A plug-in registered in FAMILIES, ALGORITHMS or AGGREGATORS with literal class attributes
    (name, description, default_alpha) and literal __init__ defaults is picked up as it is; if
    this test fails with NotStatic, make those literals (or gabench list falls back to importing).
    """
    from gabench.commands._catalog import imported_catalog, static_catalog

    assert static_catalog() == imported_catalog()


def _in_subprocess(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_start_up_imports_nothing_heavy():
    """--help, --version, list and run --help build the parser and answer without torch & co."""
    out = _in_subprocess(
        "import contextlib, io, sys\n"
        "from gabench.commands import main\n"
        "for argv in (['--help'], ['--version'], ['run', '--help'], ['tune', '--help'], ['list']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'pandas', 'mlflow', 'optuna', 'scipy', 'numpy')\n"
        "             if m in sys.modules))\n")
    assert out == "[]"


@pytest.mark.integration
def test_library_loads_no_command_code():
    out = _in_subprocess(
        "import sys\n"
        "import gabench.trainer, gabench.compare, gabench.tuning, gabench.study, gabench.regression\n"
        "import gabench.reporting, gabench.reporting.textbook_section, gabench.textbook, gabench.tracking\n"
        "print(sorted(m for m in sys.modules if m.startswith('gabench.commands')))\n")
    assert out == "[]"


def test_only_the_commands_package_imports_argparse_or_commands():
    import ast
    from pathlib import Path

    import gabench

    root = Path(gabench.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] in ("commands", "__main__.py"):  # `python -m gabench`
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n == "argparse" or n.startswith("gabench.commands")]
    assert offenders == []
