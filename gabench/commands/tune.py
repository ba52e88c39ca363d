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
    g.add_argument("--tune-aggregator-param", nargs=3, action="append", default=None,
                   metavar=("NAME", "LOW", "HIGH"),
                   help="also tune a floating-point parameter of the aggregator, log-uniform in [LOW, "
                        "HIGH] (repeatable), e.g. temperature 0.05 20 for ga-softmax")
    g.add_argument("--objective", default="loss",
                   help="loss (minimise val query loss) or acc (maximise val accuracy)")
    g.add_argument("--select", default="best_val",
                   help="a trial's value: its best meta-validation (best_val, the checkpoint compared "
                        "runs are selected at) or its last (final) (default best_val)")
    g.add_argument("--sampler-seed", type=int, default=0,
                   help="seed of the TPE sampler; trial k samples from (seed, k), so resumes and other "
                        "workers never replay a finished point (0)")
    g.add_argument("--prune-warmup", type=int, default=2, metavar="N",
                   help="validations after the one at step 0 that every trial completes before the "
                        "median pruner may stop it (2)")
    g.add_argument("--retune-changed", action="store_true",
                   help="delete and tune again from scratch any existing study whose finished trials "
                        "ran under another setup (other steps, family parameters, search ranges, "
                        "objective, ...); without it such a study is refused, naming the differences")
    g.add_argument("--out", default="tuning", help="where each study's trials.csv, best.json "
                   "and plots go (tuning/<study>/)")
    g = p.add_argument_group("a study file's tuning protocol")
    g.add_argument("--study", metavar="FILE", default=None,
                   help="tune every family x method of a study file with a [tuning] table, one "
                        "Optuna study each, as the file says (run settings, ranges, trials, seeds); "
                        "resumable: rerun to continue. Only --workers, --timeout, --families, "
                        "--methods, --out and tracking options may be added")
    g.add_argument("--families", default=None,
                   help="with --study: comma-separated family labels to tune (default all)")
    g.add_argument("--plan", action="store_true",
                   help="with --study: print each cell's Optuna study and its state (trials finished "
                        "of the budget, running, or tuned under another setup) and exit; reads only")
    # no --no-plots: trials never draw per-run PNGs (their curves are metrics)
    add_tracking_options(p, "gabench-tuning", "MLflow experiment name (default gabench-tuning)",
                         plots=False)
    p.set_defaults(no_progress=True, parser=p)
    return p


#: Options that may accompany --study (the file sets every other one).
STUDY_OPTIONS = ("study", "families", "methods", "workers", "timeout", "out", "tracking_uri",
                 "experiment", "no_tracking", "retune_changed", "plan")


def run(args: argparse.Namespace) -> int:
    from gabench.config import parse_method
    from gabench.tuning import TuneConfig, tune

    if args.study is not None:
        return run_study_tuning(args)
    for option, given in (("--families", args.families), ("--plan", args.plan or None)):
        if given is not None:
            from gabench._errors import ConfigError

            raise ConfigError(option, given, "only with --study (use --family for one study)")
    base = config_from_args(args)
    if args.eval_every == 0:
        base = dataclasses.replace(base, eval_every=max(1, base.steps // 5))
    methods = ([m for m in args.methods.split(",") if m.strip()] if args.methods
               else [base.method])
    configs = [dataclasses.replace(base, **parse_method(m, "--methods")).validate() for m in methods]
    storage = args.storage or ("journal:optuna.journal" if args.workers > 1 else "sqlite:///optuna.db")
    prefix = args.study_name or base.family
    aggregator_ranges = _aggregator_ranges(args.tune_aggregator_param)
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
            aggregator_ranges=aggregator_ranges,
            objective=args.objective, select=args.select, sampler_seed=args.sampler_seed,
            prune_warmup=args.prune_warmup,
            tracking_uri=tracking_uri, retune_changed=args.retune_changed,
            experiment=args.experiment, out=Path(args.out) / name,
        ).validate())
    check_changed(tcs)
    if len(tcs) > 1:
        print(f"tuning {len(tcs)} methods with the same budget ({args.trials} trials"
              f"{f', {args.timeout} s' if args.timeout else ''}), sampler seed and task seeds: "
              + ", ".join(tc.base.method for tc in tcs))
    for tc in tcs:
        tune(tc)
        print(f"[{tc.study_name}] trials.csv, best.json and plots in {tc.out}/")
    return 0


def run_study_tuning(args: argparse.Namespace) -> int:
    """``gabench tune --study FILE``: every (family, method) Optuna study of the file, in order."""
    import time

    from gabench._errors import ConfigError
    from gabench.study import load_study
    from gabench.tuning import TuneConfig, tune

    parser = args.parser
    for action in parser._actions:
        dest = action.dest
        if dest in STUDY_OPTIONS or dest == "help" or not action.option_strings:
            continue
        if getattr(args, dest, None) != action.default:
            raise ConfigError(action.option_strings[-1], getattr(args, dest),
                              "nothing with --study: the study file's [tuning] table and run settings "
                              "set it")
    study = load_study(args.study, resolve_tuned=False)
    if study.tuning is None:
        raise ConfigError("--study", args.study, "a study file with a [tuning] table")
    tasks = study.tuning_tasks
    for option, attr, known in (("--families", "family_label", study.families),
                                ("--methods", "method_label", list(study.methods))):
        chosen = getattr(args, option.lstrip("-"))
        if chosen is None:
            continue
        wanted = [x.strip() for x in chosen.split(",") if x.strip()]
        unknown = [x for x in wanted if x not in known]
        if unknown or not wanted:
            raise ConfigError(option, chosen, "comma-separated labels of the study: " + ", ".join(known))
        tasks = [t for t in tasks if getattr(t, attr) in wanted]
    t = study.tuning
    tracking_uri = tracking_uri_from_args(args)
    tcs = [TuneConfig(
        base=task.config, study_name=task.name, storage=t.storage, trials=t.trials, timeout=args.timeout,
        workers=args.workers, alpha_range=task.alpha_range, beta_range=task.beta_range,
        aggregator_ranges=task.aggregator_ranges, objective=t.objective, select=t.select,
        sampler_seed=t.sampler_seed, prune_warmup=t.prune_warmup,
        tracking_uri=tracking_uri, experiment=args.experiment, out=Path(args.out) / task.name,
        retune_changed=args.retune_changed,
    ).validate(open_storage=not args.plan) for task in tasks]
    if args.plan:
        return print_plan(tcs, t.trials)
    check_changed(tcs)
    print(f"{study.name}: {len(tcs)} Optuna studies (family x method), {t.trials} trials each, "
          f"sampler seed {t.sampler_seed}, task seed {t.seed}, storage {t.storage}", flush=True)
    start = time.monotonic()
    for i, tc in enumerate(tcs, 1):
        print(f"[{i}/{len(tcs)}] {tc.study_name} (elapsed {_clock(time.monotonic() - start)})", flush=True)
        tune(tc)
    print(f"{study.name}: all {len(tcs)} studies hold {t.trials} trials; next: "
          f"gabench compare {args.study}", flush=True)
    return 0


def print_plan(tcs: list, budget: int) -> int:
    """``--plan``: one line per cell (study name, then its state), then a count; creates nothing."""
    from gabench.tuning import cell_states

    states = cell_states(tcs)
    for tc, (state, _) in zip(tcs, states, strict=True):
        print(f"{tc.study_name}\t{state}")
    done = sum(kind == "tuned" for _, kind in states)
    print(f"{done} of {len(tcs)} Optuna studies hold their {budget} trials")
    return 0


def check_changed(tcs: list) -> None:
    """Before any trial runs: refuse existing studies tuned under another setup (unless
    ``--retune-changed``, which names the studies it will tune again)."""
    from gabench.tuning import SetupChangedError, changed_studies

    changed = changed_studies(tcs)
    if not changed:
        return
    if not tcs[0].retune_changed:
        raise SetupChangedError(changed)
    for name, counted, changes in changed:
        print(f"{name}: {counted} trials ran under another setup ({'; '.join(changes)}); "
              "it will be tuned again from scratch", flush=True)


def _aggregator_ranges(given: list[list[str]] | None) -> dict[str, tuple[float, float]]:
    """``--tune-aggregator-param NAME LOW HIGH`` (repeated) as name -> (low, high)."""
    from gabench._errors import ConfigError

    out: dict[str, tuple[float, float]] = {}
    for name, lo, hi in given or []:
        try:
            out[name] = (float(lo), float(hi))
        except ValueError:
            raise ConfigError("--tune-aggregator-param", f"{name} {lo} {hi}",
                              "NAME LOW HIGH with LOW and HIGH numbers") from None
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
