"""Reports from result tables: analysis over seeds (tidy tables) and rendering (Markdown + PNG).

Reports read only result tables (``results.parquet``, ``weights.parquet`` and the small JSON
files ``gabench compare`` writes beside them) or a report's own ``data/`` directory, never MLflow.
``gabench report`` (:mod:`gabench.commands.report`) loads them and calls :func:`build_report`.

- ``_data``: loading, validation and the per-seed summaries (:class:`ReportData`);
- ``_stats``: intervals, paired tests, Holm, stratified-bootstrap aggregates (pure functions);
- ``_analysis``: tidy tables from the summaries (comparisons, aggregates, convergence, ...);
- ``_render`` and ``_plots``: the README, ``comparisons.csv``, ``data/`` and the figures.
"""

from __future__ import annotations

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
    median_interval,
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
    "median_interval", "min_seeds_for_call", "normalised_scores", "paired_test", "performance_profile",
    "primary_select", "probability_of_improvement", "read_raw_tables", "read_report_data", "resolve_source",
    "roc_auc_rows", "score_profile", "seed_requirement", "seed_values", "summarise", "t_interval",
    "t_interval_columns",
]

