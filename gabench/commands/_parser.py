"""The argument parser of every command: one-line errors, and the one subparser skeleton."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), as for every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_command(sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], *,
                help: str, description: str) -> argparse.ArgumentParser:
    """Register the subcommand ``name`` whose ``run(args)`` executes it; returns its parser."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(run=run)
    return p


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)`` (an argparse ``type``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
