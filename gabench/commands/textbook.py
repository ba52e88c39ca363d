"""``gabench textbook``: the textbook's chapter-8 example as published, beside gabench's runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from gabench.commands._parser import add_command
from gabench.commands.report import DEFAULT_REPORTS_ROOT


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "textbook", run,
                    help="the textbook's chapter-8 example as published, beside gabench's runs",
                    description="Run a NumPy re-implementation of the textbook's gradient-agreement "
                    "example with its known defects (labelled as such) over many seeds, run the "
                    "corrected gabench study (studies/textbook.toml) with gabench compare, and write "
                    "the report.")
    p.add_argument("--study", default="studies/textbook.toml",
                   help="the corrected runs (studies/textbook.toml)")
    p.add_argument("--seeds", type=int, default=200, help="seeds of the textbook replica (200)")
    p.add_argument("--workers", type=int, default=1, help="processes for the gabench runs (1)")
    p.add_argument("--out-root", default="runs", help="parent of the study directory (runs)")
    p.add_argument("--reports-root", default=DEFAULT_REPORTS_ROOT,
                   help=f"parent of the report directory (default {DEFAULT_REPORTS_ROOT}; "
                        "--reports-root reports refreshes the committed one)")
    p.add_argument("--redo-changed", action="store_true",
                   help="rerun finished runs whose configuration differs from the study file")
    return p


def run(args: argparse.Namespace) -> int:
    from gabench._errors import check_int
    from gabench.commands.report import report_study
    from gabench.compare import run_study, write_parquet
    from gabench.study import load_study
    from gabench.textbook import textbook_table

    study = load_study(args.study)
    seeds = check_int("--seeds", args.seeds)
    out = Path(args.out_root) / study.name
    path = out / "textbook.parquet"
    if _replica_done(path, seeds):
        print(f"textbook example: {path} already holds {seeds} seeds (deterministic; kept)")
    else:
        table = textbook_table(seeds)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(path, table)
        print(f"textbook example as published (and ablations): {seeds} seeds -> {path}")
    result = run_study(study, args.out_root, args.workers, threads=1, redo_changed=args.redo_changed)
    failed = len(result.failures) + len(result.kept_diverged)
    if failed:
        print(f"gabench textbook: {failed} run(s) failed (listed in the report)")
    cmd = "gabench report " + study.name
    if args.out_root != "runs":
        cmd += f" --runs-root {args.out_root}"
    if args.reports_root != DEFAULT_REPORTS_ROOT:
        cmd += f" --reports-root {args.reports_root}"
    path = report_study(study.name, args.out_root, args.reports_root, command=cmd)
    print(f"report written to {path}")
    return 0


def _replica_done(path: Path, seeds: int) -> bool:
    """``path`` holds the replica for exactly ``seeds`` seeds and every variant."""
    import pandas as pd

    from gabench.textbook import VARIANTS

    if not path.is_file():
        return False
    t = pd.read_parquet(path, columns=["method", "seed"])
    return (set(t["method"]) == {f"textbook ({v})" for v in VARIANTS}
            and set(t["seed"]) == set(range(seeds)))
