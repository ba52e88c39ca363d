"""``gabench compare``: run a study file's plan (resumable) and build its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gabench.commands._options import add_tracking_options, tracking_uri_from_args
from gabench.commands._parser import add_command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "compare", run, help="run a study file's plan (resumable) and build its table",
                    description="Run every run of a study file into OUT_ROOT/<study>/<run id>/, "
                    "skipping finished runs (rerun after an interruption to resume), then "
                    "rebuild OUT_ROOT/<study>/results.parquet and weights.parquet. Each run is "
                    "also an MLflow run (experiment gabench-<study>) unless --no-tracking.")
    p.add_argument("study", help="study file, e.g. studies/quick.toml")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once, each in its own process (default 1: one at a time, in this process)")
    p.add_argument("--out-root", default="runs", help="parent of the study directory (default runs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1; more only pays for large models)")
    p.add_argument("--redo-changed", action="store_true",
                   help="rerun finished runs whose configuration differs from the study file")
    p.add_argument("--retry-diverged", action="store_true",
                   help="rerun the runs that diverged in an earlier compare (by default a divergence "
                        "is kept as that configuration's result, on any machine: rerunning only the "
                        "failures until they finish would bias the study towards its survivors)")
    p.add_argument("--plan", action="store_true", help="print the planned runs and exit")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="start no run SECONDS after the command started (those started finish, the "
                        "tables and archive are written); the same command runs the rest "
                        "(default: no limit)")
    p.add_argument("--device", default=None,
                   help="run every planned run on this device (cpu, cuda, cuda:N), whatever the study "
                        "file says; finished runs are not redone for a device change")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on an existing Dask cluster (tcp://HOST:8786; needs pip install "
                        "gabench[dask]); results come back here; tracking needs a server "
                        "(--tracking-uri http://...) or --no-tracking")
    add_tracking_options(p, None, "MLflow experiment name (default gabench-<study>)")
    return p


def run(args: argparse.Namespace) -> int:
    import time

    started = time.monotonic()  # --timeout counts from here
    from gabench._errors import StorageFullError, check_int
    from gabench.compare import (
        CallbacksFor,
        Terminated,
        TrackRuns,
        check_timeout,
        no_callbacks,
        run_state,
        run_study,
    )
    from gabench.study import load_study

    study = load_study(args.study)
    if args.device is not None:
        import dataclasses

        from gabench.config import resolve_device

        resolve_device(args.device)  # unknown or unavailable: one line, before anything is written
        study.runs = [dataclasses.replace(r, config=dataclasses.replace(r.config, device=args.device))
                      for r in study.runs]
    workers = check_int("--workers", args.workers)
    timeout = check_timeout(args.timeout, args.scheduler)
    if args.plan:
        from gabench._atomic import read_json
        from gabench.compare import archived_configs, archived_state, earlier_divergences, kept_divergence

        study_dir = Path(args.out_root) / study.name
        archived = archived_configs(study.archive) if study.archive is not None else {}
        diverged = earlier_divergences(study, study_dir, read_json(study_dir / "study.json"))
        for planned in study.runs:
            state = run_state(study_dir / planned.run_id, planned.config)
            if state == "missing" and archived_state(planned, archived) != "missing":
                state = f"{archived_state(planned, archived)} (archive)"
            if state == "missing" and planned.run_id in diverged:
                state = ("diverged (kept as failed)" if kept_divergence(planned, diverged) is not None
                         else "diverged with another configuration (runs again)")
            print(f"{planned.run_id}\t{state}")
        print(f"{len(study.runs)} runs", file=sys.stderr)
        return 0
    tracking_uri = tracking_uri_from_args(args)  # an unreachable server fails here, before any run
    if args.scheduler is not None:
        from gabench._dask import check_scheduler

        # before anything is written: the scheduler answers, the workers run this gabench and
        # reach the tracking server (a SQLite store on this machine is refused)
        check_scheduler(args.scheduler, tracking_uri)
    callbacks_for: CallbacksFor = no_callbacks
    experiment = None
    if tracking_uri is not None:
        callbacks_for = TrackRuns(tracking_uri, args.experiment, plots=not args.no_plots)
        experiment = callbacks_for.prepare(study.name)
    left = None if timeout is None else max(timeout - (time.monotonic() - started), 1e-9)
    try:
        out = run_study(study, args.out_root, workers, callbacks_for=callbacks_for,
                        redo_changed=args.redo_changed, threads=args.threads, scheduler=args.scheduler,
                        timeout=left, retry_diverged=args.retry_diverged)
    except StorageFullError as exc:  # before any run: nothing was run
        print(f"gabench compare: error: {exc}; free space and run the same command again",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"gabench compare: {how}; finished runs are kept in {Path(args.out_root) / study.name}/"
              f"; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    table = out.study_dir / "results.parquet"
    rebuilt = not any(line.startswith(f"{table}:") for line in out.storage_errors)
    print(f"{out.finished}/{out.planned} runs finished; table: {table}"
          + ("" if rebuilt else " (not rebuilt: no space left)")
          + (f"; archive: {study.archive}/ (gabench report reads it)"
             if study.archive is not None and not any(line.startswith(f"{study.archive}:")
                                                      for line in out.storage_errors) else ""))
    if tracking_uri is not None:
        from gabench._redact import redact

        print(f"tracked in MLflow ({redact(tracking_uri)}, experiment {experiment!r})")
    if out.not_started:
        print(f"gabench compare: --timeout {timeout:g} s reached: {out.not_started} run(s) not started; "
              "run the same command again to run them (finished runs are kept)", file=sys.stderr)
    for line in out.storage_errors:
        print(f"gabench compare: error: {line}", file=sys.stderr)
    if out.failures:  # one line per failed run
        print(f"gabench compare: error: {len(out.failures)} run(s) failed:", file=sys.stderr)
        for run_id, reason in out.failures.items():
            print(f"  {run_id}: {reason}", file=sys.stderr)
    if out.kept_diverged:  # listed when they diverged; still without a result
        print(f"gabench compare: {len(out.kept_diverged)} run(s) diverged in an earlier compare and are "
              f"kept as failed (failed.json lists them; --retry-diverged reruns them)", file=sys.stderr)
    if out.storage_errors or out.failures or out.kept_diverged:
        if out.storage_errors or any("no space left on device" in r for r in out.failures.values()):
            print("gabench compare: free space and run the same command again to resume "
                  "(finished runs are kept)", file=sys.stderr)
        return 1
    return 0
