"""``gabench regression``: rerun the fixed-seed regression study and compare it with the baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from gabench.commands._parser import add_command

DEFAULT_STUDY = Path("tests/regression/study.toml")
DEFAULT_BASELINES = Path("tests/regression/baselines.csv")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "regression", run,
                    help="rerun the fixed-seed regression study and compare to baselines",
                    description="Rerun the fixed-seed study tests/regression/study.toml and compare "
                    "its metrics with tests/regression/baselines.csv, each within its tolerance "
                    "|got - expected| <= atol + rtol * |expected|; exit 1 with a table of the "
                    "differences. --update rewrites the baselines on purpose.")
    p.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"the study ({DEFAULT_STUDY})")
    p.add_argument("--baselines", type=Path, default=DEFAULT_BASELINES, help=f"({DEFAULT_BASELINES})")
    p.add_argument("--update", action="store_true", help="rewrite the baselines from a fresh run")
    p.add_argument("--out-root", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    return p


def run(args: argparse.Namespace) -> int:
    from gabench.regression import check

    return check(args.study, args.baselines, args.update, args.out_root)
