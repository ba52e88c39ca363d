"""Reports from result tables: statistics over seeds and Markdown + PNG rendering.

Reports read only result tables (``results.parquet``, ``weights.parquet`` and the small JSON
files ``gabench compare`` writes beside them), never MLflow. ``gabench report``
(:mod:`gabench.commands.report`) loads a study's tables and calls :func:`build_report`.
"""

from __future__ import annotations

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
    "Interval", "PairedDifference", "StudyTables", "bootstrap_ci", "bootstrap_ci_columns", "build_report",
    "fmt_interval", "load_tables", "paired_difference", "resolve_source", "roc_auc_rows",
]
