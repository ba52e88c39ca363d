"""Reports from result tables: statistics over seeds and Markdown + PNG rendering.

Reports read only result tables (``results.parquet``, ``weights.parquet`` and the small JSON
files ``gabench compare`` writes beside them), never MLflow.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from gabench.reporting._data import StudyTables, load_tables, resolve_source
from gabench.reporting._report import build_report, fmt_interval
from gabench.reporting._stats import (
    Interval,
    PairedDifference,
    bootstrap_ci,
    bootstrap_ci_columns,
    paired_difference,
    roc_auc_rows,
)

__all__ = [
    "Interval", "PairedDifference", "StudyTables", "add_report_parser", "bootstrap_ci",
    "bootstrap_ci_columns", "build_report", "fmt_interval", "load_tables", "paired_difference",
    "report_study", "resolve_source", "roc_auc_rows",
]


def report_study(source: str | Path, runs_root: str | Path = "runs", reports_root: str | Path = "reports",
                 seed: int = 0, command: str | None = None) -> Path:
    """Load a study's tables and write ``<reports_root>/<study>/README.md``; returns its path."""
    tables = load_tables(source, runs_root)
    extra = []
    if "textbook" in tables.extra:
        from gabench.book import textbook_section

        extra.append(textbook_section)
    if command is None:
        command = f"gabench report {shlex.quote(str(source))}"
    return build_report(tables, Path(reports_root) / tables.name, command, seed=seed, extra_sections=extra)


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``gabench report`` on the CLI's subparsers."""
    p = sub.add_parser("report", help="write reports/<study>/README.md from a study's result tables",
                       description="Read a study's result tables (never MLflow) and write "
                       "REPORTS_ROOT/<study>/README.md with PNG figures: meta-test tables with "
                       "bootstrap CIs over seeds, paired GA-minus-baseline differences, learning "
                       "curves, weight diagnostics and wall-clock.")
    p.add_argument("source", help="study name (quick), study file (studies/quick.toml) or a directory "
                   "of results (runs/quick, or a directory of gabench run outputs)")
    p.add_argument("--runs-root", default="runs", help="where study names are looked up (default runs)")
    p.add_argument("--reports-root", default="reports", help="parent of the report directory (reports)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (0)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    parts = ["gabench", "report", str(args.source)]
    if args.runs_root != "runs":
        parts += ["--runs-root", str(args.runs_root)]
    if args.reports_root != "reports":
        parts += ["--reports-root", str(args.reports_root)]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    path = report_study(args.source, args.runs_root, args.reports_root, args.seed,
                        command=shlex.join(parts))
    print(f"report written to {path}")
    return 0
