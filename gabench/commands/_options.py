"""Option groups shared by several commands: the run settings and the MLflow tracking options.

The run options are derived from the declarations of :data:`gabench.config.RUN_SETTINGS`: one
option per :class:`~gabench.config.RunConfig` field, plus ``--shots``, ``--query-shots``,
``--ways`` and ``-P KEY=VALUE`` for the family parameters and ``-A KEY=VALUE`` for the
aggregator's.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gabench.commands._parser import key_value
from gabench.config import FAMILY_SIZE_PARAMS, RUN_SETTINGS, RunConfig

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str}
_METAVARS = {"int": "N", "float": "X"}
#: Help of the family parameters most families share, which get their own options.
_FAMILY_SIZE_HELP = {
    "shots": "support examples per class (per task for regression)",
    "query_shots": "query examples per class (or per task)",
    "ways": "classes per task (N-way families)",
}


def run_defaults() -> dict[str, Any]:
    """Each run setting's default value."""
    defaults = RunConfig()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(RunConfig)}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One option per run setting, grouped as method, tasks and schedule."""
    groups = {name: p.add_argument_group(name) for name in ("method", "tasks", "schedule")}
    defaults = run_defaults()
    for name, decl in RUN_SETTINGS.items():
        g = groups[decl.group]
        if name == "aggregator_params":
            g.add_argument("-A", "--aggregator-param", action="append", type=key_value, default=[],
                           metavar="KEY=VALUE", help="aggregator parameter (repeatable; see gabench list)")
            continue
        if decl.kind == "params":
            for key in FAMILY_SIZE_PARAMS:
                g.add_argument(f"--{key.replace('_', '-')}", type=int, metavar="N",
                               help=f"{_FAMILY_SIZE_HELP[key]}; the family parameter {key}")
            g.add_argument("-P", "--param", action="append", type=key_value, default=[],
                           metavar="KEY=VALUE", help="family parameter (repeatable; see gabench list)")
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults[name]
        if decl.kind == "bool":
            g.add_argument(flag, action="store_true", help=decl.help)
            continue
        shown = "" if default is None else f" (default {default})"
        g.add_argument(flag, type=_TYPES[decl.kind], default=default,
                       metavar=decl.metavar or _METAVARS.get(decl.kind, name.upper()),
                       help=decl.help + shown)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated :class:`RunConfig` that the parsed options describe."""
    family_params: dict[str, Any] = dict(args.param)
    for key in FAMILY_SIZE_PARAMS:
        value = getattr(args, key)
        if value is not None:
            family_params[key] = value
    values = {name: getattr(args, name) for name, decl in RUN_SETTINGS.items() if decl.kind != "params"}
    return RunConfig(family_params=family_params, aggregator_params=dict(args.aggregator_param),
                     **values).validate(memory=True)


def add_tracking_options(p: argparse.ArgumentParser, experiment: str | None = "gabench",
                         experiment_help: str = "MLflow experiment name (default gabench)",
                         plots: bool = True) -> None:
    """``--tracking-uri``, ``--experiment`` (default ``experiment``), ``--no-tracking`` and, with
    ``plots``, ``--no-plots``."""
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
                        "in the working directory)")
    g.add_argument("--experiment", default=experiment, help=experiment_help)
    g.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    if not plots:
        return
    g.add_argument("--no-plots", action="store_true",
                   help="leave each run's learning-curve and task-weight PNGs out of MLflow (the "
                        "metrics and tables stay; about half of the tracking cost of a short run)")


def tracking_uri_from_args(args: argparse.Namespace) -> str | None:
    """The checked tracking URI, or None with --no-tracking (fails before any training)."""
    if args.no_tracking:
        return None
    experiment = getattr(args, "experiment", None)
    if experiment is not None and not (0 < len(experiment) <= 500 and experiment == experiment.strip()):
        from gabench._errors import ConfigError

        raise ConfigError("--experiment", experiment if len(experiment) <= 60 else experiment[:60] + "...",
                          "a name of 1 to 500 characters without surrounding spaces (MLflow's limit)")
    from gabench.tracking import check_tracking_uri, default_tracking_uri

    return check_tracking_uri(args.tracking_uri or default_tracking_uri())
