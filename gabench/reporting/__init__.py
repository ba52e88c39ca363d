"""Reports from result tables: analysis over seeds (tidy tables) and rendering (Markdown + PNG).

Reports read only result tables (``results.parquet``, ``weights.parquet`` and the small JSON
files ``gabench compare`` writes beside them) or a report's own ``data/`` directory, never MLflow.

- ``_data``: loading, validation and the per-seed summaries (:class:`ReportData`);
- ``_stats``: intervals, paired tests, Holm, stratified-bootstrap aggregates (pure functions);
- ``_analysis``: tidy tables from the summaries (comparisons, aggregates, convergence, ...);
- ``_render`` and ``_plots``: the README, ``comparisons.csv``, ``data/`` and the figures.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from gabench.reporting._analysis import (
    COMPARISON_COLUMNS,
    aggregates,
    cell_intervals,
    comparisons,
    convergence,
    convergence_of,
    normalised_scores,
    performance_profile,
    primary_select,
    seed_requirement,
    seed_values,
)
from gabench.reporting._data import (
    ReportData,
    StudyTables,
    check_report_data,
    load_tables,
    read_raw_tables,
    read_report_data,
    resolve_source,
    summarise,
)
from gabench.reporting._render import build_report, fmt_interval, md_table
from gabench.reporting._stats import (
    Interval,
    PairedTest,
    aggregate_scores,
    holm,
    mean_interval,
    min_seeds_for_call,
    paired_test,
    probability_of_improvement,
    roc_auc_rows,
    score_profile,
    t_interval,
    t_interval_columns,
)

__all__ = [
    "COMPARISON_COLUMNS", "Interval", "PairedTest", "ReportData", "StudyTables", "add_report_parser",
    "aggregate_scores", "aggregates", "build_report", "cell_intervals", "check_report_data", "comparisons",
    "convergence", "convergence_of", "fmt_interval", "holm", "load_tables", "md_table", "mean_interval",
    "min_seeds_for_call", "normalised_scores", "paired_test", "performance_profile", "primary_select",
    "probability_of_improvement", "read_raw_tables", "read_report_data", "report_study", "resolve_source",
    "roc_auc_rows", "score_profile", "seed_requirement", "seed_values", "summarise", "t_interval",
    "t_interval_columns",
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
