"""``gabench run``: meta-train and meta-test one configuration, write its tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gabench.commands._options import (
    add_run_options,
    add_tracking_options,
    config_from_args,
    tracking_uri_from_args,
)
from gabench.commands._parser import add_command

if TYPE_CHECKING:
    from gabench.config import RunConfig
    from gabench.results import RunResult


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "run", run, help="meta-train and meta-test one configuration",
                    description="Meta-train one family x algorithm x aggregator x seed, "
                    "meta-test on held-out tasks, write DIR/results.parquet, "
                    "DIR/weights.parquet and DIR/config.json.")
    add_run_options(p)
    p.add_argument("--out", help="output directory (default runs/<run name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from gabench.results import prepare_out_dir, write_run
    from gabench.trainer import Trainer

    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    prepare_out_dir(out, args.overwrite)
    tracking_uri = tracking_uri_from_args(args)
    callbacks = []
    tracker = None
    if tracking_uri is not None:
        from gabench.tracking import MLflowTracker

        tracker = MLflowTracker(tracking_uri, args.experiment, plots=not args.no_plots)
        callbacks.append(tracker)
    # a failure is recorded by the tracker's on_fail (MLflow run FAILED or KILLED)
    result = Trainer(config, callbacks, progress=False if args.no_progress else None).fit()
    written = write_run(out, result, args.overwrite)
    print_summary(result, written)
    if tracker is not None:
        from gabench._redact import redact

        print(f"tracked in MLflow run {tracker.run_id} ({redact(tracking_uri)}, experiment "
              f"{args.experiment!r}; tracking took {tracker.seconds:.2f} s)")
    return 0


def default_out(config: RunConfig) -> Path:
    """``runs/<run name>``, or ``runs/<run name>-N`` when that is taken."""
    base = Path("runs") / config.run_name
    candidate, i = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def print_summary(result: RunResult, out: Path | None = None, file: Any = None) -> None:
    """The final meta-test metrics with their 95% CIs over tasks."""
    file = file or sys.stdout
    cfg = result.config
    n = next(iter(result.test.values())).n if result.test else 0
    print(f"meta-test of {cfg.get('family')} {cfg.get('algorithm')}"
          f"{' (first order)' if cfg.get('first_order') else ''} + {cfg.get('aggregator')}, "
          f"seed {cfg.get('seed')}: {n} held-out tasks, mean [95% CI]", file=file)
    for name, s in result.test.items():
        print(f"  {name:10s} {s}", file=file)
    print(f"  meta-training took {result.wall_seconds:.1f} s", file=file)
    if out is not None:
        print(f"results written to {out}/ (results.parquet, weights.parquet, config.json)",
              file=file)
