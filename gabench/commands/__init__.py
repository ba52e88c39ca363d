"""The command line, ``gabench COMMAND``: the only code that parses arguments.

One module per command, each with ``add_parser(sub)`` (builds its subparser with
:func:`~gabench.commands._parser.add_command`) and ``run(args) -> int`` (executes it). Shared
option groups live in :mod:`gabench.commands._options`. Building the parser imports nothing
heavy (no torch, scikit-learn, pandas or MLflow): a command imports what it needs in ``run``,
so ``gabench --help``, ``gabench list`` and ``gabench run --help`` answer at once.

Library code below this package raises :class:`~gabench.ConfigError` for bad input and returns
data; :func:`main` turns a ``ConfigError`` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from gabench import __version__
from gabench._errors import ConfigError
from gabench.commands._parser import OneLineErrorParser

#: The commands, in the order ``gabench --help`` lists them (module names in this package).
COMMANDS: tuple[str, ...] = ("list", "run", "tune", "compare", "report", "textbook", "regression", "data")


def build_parser() -> argparse.ArgumentParser:
    """The ``gabench`` parser with every command's subparser."""
    parser = OneLineErrorParser(prog="gabench", description=(
        "Benchmark suite for task weighting in meta-learning: MAML and Reptile, with and "
        "without gradient agreement."))
    parser.add_argument("--version", action="version", version=f"gabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name in COMMANDS:
        importlib.import_module(f"gabench.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status.

    Exit status: 0 success, 1 a run failed (diverged), 2 bad input (one line on stderr, nothing
    written), 130 interrupted (finished runs and trials are kept).
    """
    import logging

    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    run: Callable[[argparse.Namespace], int] = args.run
    prog = f"gabench {args.command}"
    try:
        return run(args)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what had finished is kept (rerun the same command to resume)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a one-line report, the traceback only on request
        trainer = sys.modules.get("gabench.trainer")  # not loaded: no run can have diverged
        if trainer is not None and isinstance(exc, trainer.DivergedError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        raise
