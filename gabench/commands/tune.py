"""``gabench tune``: tune the learning rates of one or several methods with Optuna."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from gabench.commands._options import (
    add_run_options,
    add_tracking_options,
    config_from_args,
    tracking_uri_from_args,
)
from gabench.commands._parser import add_command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "tune", run, help="tune alpha and beta with Optuna",
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
    add_tracking_options(p, "gabench-tuning", "MLflow experiment name (default gabench-tuning)")
    p.set_defaults(no_progress=True)
    return p


def run(args: argparse.Namespace) -> int:
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
