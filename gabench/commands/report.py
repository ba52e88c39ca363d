"""``gabench report``: write reports/<study>/README.md from a study's result tables."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from gabench.commands._parser import add_command

#: Where reports go by default: beside the runs, ignored by git, so that the demo leaves a clean
#: checkout (the committed reports/ are refreshed on purpose with ``--reports-root reports``).
DEFAULT_REPORTS_ROOT = "runs/reports"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "report", run, help="write a report (README.md, comparisons.csv, data/, figures) "
                    "from a study's result tables",
                    description="Read a study's result tables (never MLflow) and write "
                    "REPORTS_ROOT/<study>/: README.md with meta-test tables (Student-t intervals over "
                    "seeds), paired method-minus-baseline tests with Holm correction, aggregates across "
                    "families, convergence checks and weight diagnostics; comparisons.csv; data/ (the "
                    "per-seed summaries, from which `gabench report REPORTS_ROOT/<study>/data` "
                    "regenerates the report); PNG figures.")
    p.add_argument("source", help="study name (quick), study file (studies/quick.toml) or a directory "
                   "of results (runs/quick, or a directory of gabench run outputs)")
    p.add_argument("--runs-root", default="runs", help="where study names are looked up (default runs)")
    p.add_argument("--reports-root", default=DEFAULT_REPORTS_ROOT,
                   help=f"parent of the report directory (default {DEFAULT_REPORTS_ROOT}, beside the runs "
                        "and ignored by git; the committed reports are refreshed on purpose with "
                        "--reports-root reports)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling of the "
                   "aggregates (0)")
    p.add_argument("--complete-seeds", action="store_true",
                   help="report only the seeds whose planned runs have all finished or failed (for a study "
                        "still running; a compare runs its plan seed by seed); the header says which seeds "
                        "it kept and what it left out; the archive is not changed")
    g = p.add_argument_group("a tuned study (one with a [tuning] table)")
    g.add_argument("--tuning-storage", metavar="URL", default=None,
                   help="read the Optuna trials from this storage (journal:PATH, sqlite:///PATH) instead of "
                        "the one study.json names; without it they are read from there once and then kept "
                        "in the report's data/")
    g.add_argument("--untuned", metavar="DIR", default=None,
                   help="the report of the same comparison without tuning to compare verdicts with "
                        "(e.g. reports/paper), or 'none'; default: the one saved in data/, else the only "
                        "report beside this one whose study has no [tuning] table, the same methods and "
                        "per family the same budget")
    return p


def run(args: argparse.Namespace) -> int:
    parts = ["gabench", "report", str(args.source)]
    if args.runs_root != "runs":
        parts += ["--runs-root", str(args.runs_root)]
    if args.reports_root != DEFAULT_REPORTS_ROOT:
        parts += ["--reports-root", str(args.reports_root)]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.complete_seeds:
        parts.append("--complete-seeds")
    for option, value in (("--tuning-storage", args.tuning_storage), ("--untuned", args.untuned)):
        if value is not None:
            parts += [option, str(value)]
    path = report_study(args.source, args.runs_root, args.reports_root, args.seed,
                        command=shlex.join(parts), tuning_storage=args.tuning_storage, untuned=args.untuned,
                        only_complete_seeds=args.complete_seeds)
    print(f"report written to {path}")
    return 0


def report_study(source: str | Path, runs_root: str | Path = "runs",
                 reports_root: str | Path = DEFAULT_REPORTS_ROOT,
                 seed: int = 0, command: str | None = None, tuning_storage: str | None = None,
                 untuned: str | Path | None = None, only_complete_seeds: bool = False) -> Path:
    """Load a study's tables and write ``<reports_root>/<study>/README.md``; returns its path.

    The textbook section (:mod:`gabench.reporting.textbook_section`) comes first when the
    study's directory holds ``textbook.parquet`` (``gabench textbook``). A study with a
    ``[tuning]`` table gets the sections of :mod:`gabench.reporting.tuning_section`: its trials
    are read from ``tuning_storage`` (default: the storage its ``study.json`` names, unless its
    ``data/`` holds them already), and its verdicts are compared with those of the ``untuned``
    report (default: the one its ``data/`` holds, else the only candidate under ``reports_root``;
    ``"none"``: no comparison). ``only_complete_seeds``: report the seeds whose planned runs have
    all finished (:func:`~gabench.reporting._data.complete_seeds`).
    """
    from gabench.reporting import build_report, load_tables

    tables = load_tables(source, runs_root, only_complete_seeds=only_complete_seeds)
    extra = []
    if "textbook" in tables.extra:
        from gabench.reporting.textbook_section import textbook_section

        extra.append(textbook_section)
    out = Path(reports_root) / tables.name
    if tables.meta.get("tuning"):
        from gabench.reporting.tuning_section import prepare_tuning

        extra += prepare_tuning(tables, storage=tuning_storage, untuned=untuned, reports_root=reports_root,
                                out_dir=out)
    elif tuning_storage is not None or untuned is not None:
        from gabench._errors import ConfigError

        option = "--tuning-storage" if tuning_storage is not None else "--untuned"
        raise ConfigError(option, tuning_storage if tuning_storage is not None else untuned,
                          f"only for a study with a [tuning] table ({tables.name!r} has none)")
    if command is None:
        command = f"gabench report {shlex.quote(str(source))}"
    return build_report(tables, out, command, seed=seed, extra_sections=extra)
