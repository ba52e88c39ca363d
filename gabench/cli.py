"""Command line: ``gabench list`` and ``gabench run`` (the edge where names map to classes)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gabench import __version__
from gabench._errors import ConfigError
from gabench.aggregators import AGGREGATORS
from gabench.algorithms import ALGORITHMS
from gabench.config import OPTIMIZERS, RunConfig
from gabench.results import RunResult, prepare_out_dir, write_run
from gabench.tasks import FAMILIES
from gabench.tasks._outliers import MODES


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), as for every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


# --------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    print("Task families (parameters with defaults; set with -P KEY=VALUE or --shots/--ways):")
    for name, cls in FAMILIES.items():
        print(f"  {name:15s} {cls.description}")
        params = ", ".join(f"{p.name}={p.default}" for p in cls.param_specs())
        print(f"  {'':15s}   default alpha={cls.default_alpha}; {params}")
    print("\nAlgorithms:")
    for name, cls in ALGORITHMS.items():
        print(f"  {name:15s} {cls.description}")
    print("\nAggregators:")
    for name, cls in AGGREGATORS.items():
        print(f"  {name:15s} {cls.description}")
    print("\nOutlier modes (--outlier-mode):")
    for name, kinds in MODES.items():
        print(f"  {name:15s} for {' and '.join(kinds)} families")
    return 0


# --------------------------------------------------------------------------- run
def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options shared by ``run`` and the commands that build runs."""
    d = RunConfig()
    g = p.add_argument_group("method")
    g.add_argument("--family", default=d.family, help=f"task family (default {d.family})")
    g.add_argument("--algorithm", default=d.algorithm, help="maml or reptile")
    g.add_argument("--aggregator", default=d.aggregator, help="mean, ga or ga-book")
    g.add_argument("--first-order", action="store_true", help="first-order MAML (FOMAML)")
    g.add_argument("--alpha", type=float, default=None,
                   help="inner learning rate (default: the family's, see gabench list)")
    g.add_argument("--beta", type=float, default=d.beta, help=f"outer learning rate ({d.beta})")
    g.add_argument("--inner-steps", type=int, default=d.inner_steps)
    g.add_argument("--eval-inner-steps", type=int, default=None,
                   help="inner steps at evaluation (default: --inner-steps)")
    g.add_argument("--optimizer", default=d.optimizer, help="outer optimizer: " + ", ".join(OPTIMIZERS))
    g = p.add_argument_group("tasks")
    g.add_argument("--meta-batch", type=int, default=d.meta_batch, help="tasks per meta-batch T")
    g.add_argument("--shots", type=int, help="support examples per class (per task for regression)")
    g.add_argument("--query-shots", type=int, help="query examples per class (or per task)")
    g.add_argument("--ways", type=int, help="classes per task (N-way families)")
    g.add_argument("-P", "--param", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="family parameter (repeatable; see gabench list)")
    g.add_argument("--outlier-fraction", type=float, default=d.outlier_fraction,
                   help="fraction of each meta-train batch corrupted, in [0, 1]")
    g.add_argument("--outlier-mode", default=d.outlier_mode, help=", ".join(MODES))
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, default=d.steps, help=f"meta-iterations ({d.steps})")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="meta-validate every N steps (0 = final meta-test only)")
    g.add_argument("--val-tasks", type=int, default=d.val_tasks)
    g.add_argument("--test-tasks", type=int, default=None, help="meta-test tasks (default 600)")
    g.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated :class:`RunConfig` that the parsed options describe."""
    family_params: dict[str, Any] = dict(args.param)
    for key in ("shots", "query_shots", "ways"):
        value = getattr(args, key)
        if value is not None:
            family_params[key] = value
    config = RunConfig(
        family=args.family, family_params=family_params, algorithm=args.algorithm,
        aggregator=args.aggregator, first_order=args.first_order, alpha=args.alpha,
        beta=args.beta, inner_steps=args.inner_steps, eval_inner_steps=args.eval_inner_steps,
        meta_batch=args.meta_batch, steps=args.steps, optimizer=args.optimizer, seed=args.seed,
        outlier_fraction=args.outlier_fraction, outlier_mode=args.outlier_mode,
        eval_every=args.eval_every, val_tasks=args.val_tasks, test_tasks=args.test_tasks,
        device=args.device,
    )
    return config.validate()


def _default_out(config: RunConfig) -> Path:
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


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
                        "in the working directory)")
    g.add_argument("--experiment", default="gabench", help="MLflow experiment name (gabench)")
    g.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def tracking_uri_from_args(args: argparse.Namespace) -> str | None:
    """The checked tracking URI, or None with --no-tracking (fails before any training)."""
    if args.no_tracking:
        return None
    from gabench.tracking import check_tracking_uri, default_tracking_uri

    return check_tracking_uri(args.tracking_uri or default_tracking_uri())


def cmd_run(args: argparse.Namespace) -> int:
    from gabench.trainer import Trainer

    config = config_from_args(args)
    out = Path(args.out) if args.out else _default_out(config)
    prepare_out_dir(out, args.overwrite)
    tracking_uri = tracking_uri_from_args(args)
    callbacks = []
    tracker = None
    if tracking_uri is not None:
        from gabench.tracking import MLflowTracker

        tracker = MLflowTracker(tracking_uri, args.experiment)
        callbacks.append(tracker)
    trainer = Trainer.from_config(config, callbacks, progress=False if args.no_progress else None)
    try:
        result = trainer.fit()
    except BaseException as exc:
        if tracker is not None:
            tracker.fail(f"{type(exc).__name__}: {exc}",
                         "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    written = write_run(out, result, args.overwrite)
    print_summary(result, written)
    if tracker is not None:
        print(f"tracked in MLflow run {tracker.run_id} ({tracking_uri}, experiment "
              f"{args.experiment!r}; tracking took {tracker.seconds:.2f} s)")
    return 0


# --------------------------------------------------------------------------- tune
def cmd_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from gabench.config import parse_method
    from gabench.tuning import TuneConfig, tune

    base = config_from_args(args)
    if args.eval_every == 0:
        base = dataclasses.replace(base, eval_every=max(1, base.steps // 5))
    methods = ([m for m in args.methods.split(",") if m.strip()] if args.methods
               else [base.method])
    configs = [dataclasses.replace(base, **parse_method(m, "--methods")).validate() for m in methods]
    storage = args.storage or ("journal:optuna.journal" if args.workers > 1 else "sqlite:///optuna.db")
    prefix = args.study_name or base.family
    tracking_uri = tracking_uri_from_args(args)
    tcs = []
    for cfg in configs:
        name = prefix if (args.study_name and not args.methods) else f"{prefix}__{cfg.method}"
        tcs.append(TuneConfig(
            base=cfg, study_name=name, storage=storage, trials=args.trials, timeout=args.timeout,
            workers=args.workers, alpha_range=tuple(args.alpha_range),
            beta_range=tuple(args.beta_range),
            inner_steps_range=tuple(args.tune_inner_steps) if args.tune_inner_steps else None,
            meta_batch_range=tuple(args.tune_meta_batch) if args.tune_meta_batch else None,
            objective=args.objective, sampler_seed=args.sampler_seed, tracking_uri=tracking_uri,
            experiment=args.experiment, out=Path(args.out) / name,
        ).validate())
    if len(tcs) > 1:
        print(f"tuning {len(tcs)} methods with the same budget ({args.trials} trials"
              f"{f', {args.timeout} s' if args.timeout else ''}), sampler seed and task seeds: "
              + ", ".join(tc.base.method for tc in tcs))
    for tc in tcs:
        tune(tc)
        print(f"[{tc.study_name}] trials.csv, best.json and plots in {tc.out}/")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gabench", description=(
        "Benchmark suite for task weighting in meta-learning: MAML and Reptile, with and "
        "without gradient agreement."))
    parser.add_argument("--version", action="version", version=f"gabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="list task families, algorithms and aggregators")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="meta-train and meta-test one configuration",
                       description="Meta-train one family x algorithm x aggregator x seed, "
                       "meta-test on held-out tasks, write DIR/results.parquet, "
                       "DIR/weights.parquet and DIR/config.json.")
    add_run_options(p)
    p.add_argument("--out", help="output directory (default runs/<run name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help="tune alpha and beta with Optuna",
                       description="Tune the inner and outer learning rates (log-uniform; "
                       "optionally inner steps and meta-batch) of one or several methods with "
                       "Optuna, minimising the meta-validation loss (or maximising accuracy). "
                       "Re-running the same command resumes the study.")
    add_run_options(p)
    g = p.add_argument_group("tuning (Optuna)")
    g.add_argument("--methods", help="comma-separated methods tuned with equal budgets, e.g. "
                   "maml,maml+ga,reptile,reptile+ga (default: --algorithm/--aggregator)")
    g.add_argument("--trials", type=int, default=20,
                   help="finished trials each study should hold (20); a resumed study runs the rest")
    g.add_argument("--timeout", type=float, default=None, help="seconds per worker (no limit)")
    g.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///PATH (default sqlite:///optuna.db), "
                        "postgresql://USER:PASS@HOST/DB, or journal:PATH (default with --workers > 1)")
    g.add_argument("--study-name", default=None,
                   help="study name (default FAMILY__METHOD; with --methods a prefix)")
    g.add_argument("--workers", type=int, default=1, help="local worker processes on the study")
    g.add_argument("--alpha-range", type=float, nargs=2, default=(1e-3, 1.0), metavar=("LOW", "HIGH"))
    g.add_argument("--beta-range", type=float, nargs=2, default=(1e-4, 1e-1), metavar=("LOW", "HIGH"))
    g.add_argument("--tune-inner-steps", type=int, nargs=2, metavar=("LOW", "HIGH"),
                   help="also tune the number of inner steps")
    g.add_argument("--tune-meta-batch", type=int, nargs=2, metavar=("LOW", "HIGH"),
                   help="also tune the meta-batch size (log scale)")
    g.add_argument("--objective", default="loss",
                   help="loss (minimise val query loss) or acc (maximise val accuracy)")
    g.add_argument("--sampler-seed", type=int, default=0)
    g.add_argument("--out", default="tuning", help="where each study's trials.csv, best.json "
                   "and plots go (tuning/<study>/)")
    add_tracking_options(p)
    p.set_defaults(func=cmd_tune, experiment="gabench-tuning", no_progress=True)

    from gabench.book import add_book_parser
    from gabench.compare import add_compare_parser
    from gabench.regression import add_regression_parser
    from gabench.reporting import add_report_parser

    add_compare_parser(sub)
    add_report_parser(sub)
    add_book_parser(sub)
    add_regression_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    prog = f"gabench {args.command}"
    try:
        return func(args)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a one-line report, the traceback only on request
        from gabench.trainer import DivergedError

        if isinstance(exc, DivergedError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
