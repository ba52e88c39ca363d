"""``gabench report``: write reports/<study>/README.md from a study's result tables."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from gabench.commands._parser import add_command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "report", run, help="write reports/<study>/README.md from a study's result tables",
                    description="Read a study's result tables (never MLflow) and write "
                    "REPORTS_ROOT/<study>/README.md with PNG figures: meta-test tables with "
                    "bootstrap CIs over seeds, paired GA-minus-baseline differences, learning "
                    "curves, weight diagnostics and wall-clock.")
    p.add_argument("source", help="study name (quick), study file (studies/quick.toml) or a directory "
                   "of results (runs/quick, or a directory of gabench run outputs)")
    p.add_argument("--runs-root", default="runs", help="where study names are looked up (default runs)")
    p.add_argument("--reports-root", default="reports", help="parent of the report directory (reports)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (0)")
    return p


def run(args: argparse.Namespace) -> int:
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


def report_study(source: str | Path, runs_root: str | Path = "runs", reports_root: str | Path = "reports",
                 seed: int = 0, command: str | None = None) -> Path:
    """Load a study's tables and write ``<reports_root>/<study>/README.md``; returns its path.

    The textbook section (:mod:`gabench.reporting.textbook_section`) comes first when the
    study's directory holds ``textbook.parquet`` (``gabench textbook``).
    """
    from gabench.reporting import build_report, load_tables

    tables = load_tables(source, runs_root)
    extra = []
    if "textbook" in tables.extra:
        from gabench.reporting.textbook_section import textbook_section

        extra.append(textbook_section)
    if command is None:
        command = f"gabench report {shlex.quote(str(source))}"
    return build_report(tables, Path(reports_root) / tables.name, command, seed=seed, extra_sections=extra)
