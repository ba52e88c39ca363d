"""The demo leaves a clean checkout: reports go beside the runs by default, and everything the
demo writes (runs, the MLflow store and its artifacts, Optuna's database) is ignored by git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gabench.commands import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_reports_go_beside_the_runs_by_default():
    for command in ("report", "textbook"):
        args = build_parser().parse_args([command, "quick"] if command == "report" else [command])
        assert Path(args.reports_root).parts[0] == "runs"


def test_what_the_demo_writes_is_ignored_by_git():
    paths = ["runs/quick/x/results.parquet", "runs/reports/quick/README.md", "mlflow.db",
             "mlartifacts/1/abc/artifacts/config.json", "optuna.db"]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths
