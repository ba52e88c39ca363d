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


def cmd_run(args: argparse.Namespace) -> int:
    from gabench.trainer import Trainer

    config = config_from_args(args)
    out = Path(args.out) if args.out else _default_out(config)
    prepare_out_dir(out, args.overwrite)
    trainer = Trainer.from_config(config, progress=False if args.no_progress else None)
    result = trainer.fit()
    written = write_run(out, result, args.overwrite)
    print_summary(result, written)
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
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
