"""``gabench compare``: run a study's plan, resumably, and rebuild its one long result table.

Each planned run is exactly a ``gabench run`` (:meth:`Trainer.from_config` then
:func:`~gabench.results.write_run`) into its own directory ``<out-root>/<study>/<run id>/``,
written atomically (a temporary directory renamed into place). A run directory therefore
exists only when the run finished, so after an interruption, even ``kill -9``, the same command
skips the finished runs, removes leftover temporary directories and redoes the rest: no run is
lost or counted twice. At the end (and every 10 minutes meanwhile) the study table
``<out-root>/<study>/results.parquet`` (and ``weights.parquet``) is rebuilt from the finished
runs of the plan.

Tracking: ``run_study(..., callbacks_for=f)`` calls ``f(run, study_name)`` in the process that
runs each planned run and passes the returned :class:`~gabench.trainer.Callback` objects to the
trainer; ``f`` must be picklable (worker processes are spawned). ``gabench compare`` passes a
:class:`TrackRuns`, so that every run is an MLflow run as with ``gabench run`` (``--no-tracking``
turns it off). A run that diverges or is stopped is marked FAILED or KILLED in MLflow.

Stopping: Ctrl-C or SIGTERM stops the worker processes (their unfinished runs leave only
temporary directories, removed at the next start) and keeps every finished run.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from gabench import __version__
from gabench._errors import ConfigError, check_int
from gabench._provenance import git_commit
from gabench.config import RunConfig
from gabench.results import RESULT_COLUMNS, WEIGHT_COLUMNS
from gabench.study import PlannedRun, Study, load_study
from gabench.trainer import Callback

#: Columns the study table adds to :data:`~gabench.results.RESULT_COLUMNS`.
STUDY_COLUMNS: tuple[str, ...] = ("study", "family_label", "setting")
#: Seconds between rebuilds of the study table while a long compare runs (so that
#: ``gabench report`` can show the runs finished so far).
REBUILD_EVERY_S = 600.0
#: Config fields that may differ between a finished run and the plan without making it stale.
IGNORED_FIELDS: tuple[str, ...] = ("device", "eval_batch")



CallbacksFor = Callable[[PlannedRun, str], list[Callback]]


def no_callbacks(run: PlannedRun, study: str) -> list[Callback]:
    """The default tracking hook: no callbacks."""
    return []


@dataclass(frozen=True)
class TrackRuns:
    """Tracking hook of ``gabench compare``: one MLflow run per planned run.

    The MLflow run is named ``<study>__<run id>`` and tagged with the study, the run id, the
    family and method labels of the study file and the setting, on top of what
    :class:`~gabench.tracking.MLflowTracker` logs for every run.

    Attributes:
        tracking_uri: MLflow tracking URI (checked beforehand).
        experiment: Experiment name; None: ``gabench-<study>``.
    """

    tracking_uri: str
    experiment: str | None = None

    def prepare(self, study: str) -> str:
        """Create (or find) the experiment in this process, before any worker starts: a new
        SQLite store gets its tables here, not from two workers racing to migrate it."""
        from mlflow import MlflowClient

        from gabench.tracking._mlflow import experiment_id

        name = self.experiment or f"gabench-{study}"
        experiment_id(MlflowClient(self.tracking_uri), self.tracking_uri, name)
        return name

    def __call__(self, run: PlannedRun, study: str) -> list[Callback]:
        from gabench.tracking import MLflowTracker

        tags = {"study": study, "study_run": run.run_id, "family_label": run.family_label,
                "method_label": run.method_label}
        if run.setting:
            tags["setting"] = run.setting_label
        return [MLflowTracker(self.tracking_uri, self.experiment or f"gabench-{study}",
                              run_name=f"{study}__{run.run_id}", tags=tags)]


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so that a terminated compare stops like an interrupted one."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


_IN_WORKER = False  # set in worker processes of a pool
_RUN_ACTIVE = False  # a run is training in this process


def _worker_sigterm(signum: int, frame: Any) -> None:
    """A pool worker being stopped: let the active run mark itself KILLED, then exit."""
    if _RUN_ACTIVE:
        raise Terminated(f"signal {signum}")
    os._exit(128 + signum)


@dataclass
class CompareResult:
    """What :func:`run_study` did.

    Attributes:
        study_dir: ``<out-root>/<study>``.
        planned: Number of runs in the plan.
        finished: Planned runs with results on disk at the end.
        ran: Runs executed by this call.
        failures: Run id -> one-line reason, for runs that stopped (e.g. diverged).
    """

    study_dir: Path
    planned: int
    finished: int
    ran: int
    failures: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- one run
def execute_run(run: PlannedRun, study: str, out_dir: Path, overwrite: bool = False,
                callbacks_for: CallbacksFor = no_callbacks,
                threads: int | None = None) -> dict[str, Any]:
    """Train, meta-test and write one planned run, as ``gabench run`` does.

    Args:
        run: The planned run.
        study: Study name (recorded in every row).
        out_dir: The run's directory (written atomically).
        overwrite: Replace an existing directory (a run whose configuration changed).
        callbacks_for: The tracking hook.
        threads: Torch threads while this run trains (None: leave the setting alone); the
            previous setting is restored afterwards.

    Returns:
        ``{"run_id", "ok", "seconds", "message"}``; ``ok`` is false when training diverged
        (nothing is written then).
    """
    import torch

    from gabench.results import write_run
    from gabench.trainer import DivergedError, Trainer

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    global _RUN_ACTIVE
    start = time.perf_counter()
    callbacks = callbacks_for(run, study)
    _RUN_ACTIVE = True
    try:
        trainer = Trainer.from_config(run.config, callbacks=callbacks, progress=False)
        result = trainer.fit()
    except BaseException as exc:
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
        for cb in callbacks:  # e.g. the MLflow run: FAILED (diverged) or KILLED (stopped)
            fail = getattr(cb, "fail", None)
            if fail is not None:
                try:
                    fail(f"{type(exc).__name__}: {exc}", "KILLED" if stopped else "FAILED")
                except Exception:  # noqa: BLE001 - the run's own error is the one to report
                    pass
        if isinstance(exc, DivergedError):
            return {"run_id": run.run_id, "ok": False, "seconds": time.perf_counter() - start,
                    "message": str(exc)}
        if _IN_WORKER and isinstance(exc, Terminated):
            os._exit(143)  # never go on to another queued run
        raise
    finally:
        _RUN_ACTIVE = False
        torch.set_num_threads(previous)
    label_tables(result.results, result.weights, run, study)
    result.extra = {**result.extra, "study": {
        "name": study, "run_id": run.run_id, "family_label": run.family_label,
        "method_label": run.method_label, "setting": run.setting}}
    write_run(out_dir, result, overwrite=overwrite)
    post = result.test.get("loss_post")
    return {"run_id": run.run_id, "ok": True, "seconds": time.perf_counter() - start,
            "message": f"loss_post={post.mean:.4g}" if post is not None else ""}


def label_tables(results: pd.DataFrame, weights: pd.DataFrame, run: PlannedRun, study: str) -> None:
    """Give a run's tables the study's identity: unique run id, method label, setting (in place)."""
    results["run"] = run.run_id
    results["method"] = run.method_label
    results["study"] = study
    results["family_label"] = run.family_label
    results["setting"] = run.setting_label
    weights["run"] = run.run_id


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, _worker_sigterm)  # the parent's terminate(): mark the run KILLED
    global _IN_WORKER
    _IN_WORKER = True


# --------------------------------------------------------------------------- the study
def run_study(study: Study, out_root: str | Path = "runs", workers: int = 1, *,
              callbacks_for: CallbacksFor = no_callbacks,
              redo_changed: bool = False, threads: int | None = 1,
              log: TextIO | None = None) -> CompareResult:
    """Run every unfinished run of ``study`` and rebuild the study table.

    Args:
        study: A loaded study (:func:`~gabench.study.load_study`).
        out_root: Runs go to ``out_root/<study name>/<run id>/``.
        workers: Processes running at once (1: in this process).
        threads: Torch threads per run (default 1: gabench's models are small, and several
            threads per process on a busy machine cost far more in synchronisation than they
            gain; None leaves torch's setting alone).
        callbacks_for: Tracking hook, ``(run, study name) -> list of callbacks`` (picklable).
        redo_changed: Rerun finished runs whose recorded configuration differs from the plan
            (otherwise that is an error).
        log: Where progress lines go (default stderr).

    Returns:
        A :class:`CompareResult`.

    Raises:
        ConfigError: another compare holds the study directory, or finished runs have a
            different configuration and ``redo_changed`` is false.
    """
    log = log or sys.stderr
    workers = check_int("--workers", workers)
    with _sigterm_stops():
        return _run_study(study, out_root, workers, callbacks_for, redo_changed, threads, log)


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While a study runs in the main thread, SIGTERM raises :class:`Terminated` (so the worker
    processes are stopped, not orphaned, and the study table is rebuilt)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_study(study: Study, out_root: str | Path, workers: int, callbacks_for: CallbacksFor,
               redo_changed: bool, threads: int | None, log: TextIO) -> CompareResult:
    if threads is not None:
        threads = check_int("--threads", threads)
    study_dir = Path(out_root) / study.name
    study_dir.mkdir(parents=True, exist_ok=True)
    with _lock(study_dir):
        _remove_leftovers(study_dir)
        commit = git_commit()
        previous = _read_json(study_dir / "study.json")
        provenance: dict[str, str] = {k: v for k, v in previous.get("run_commits", {}).items()
                                      if (study_dir / k).is_dir()}

        def write_meta() -> None:
            _write_json(study_dir / "study.json", {
                **study.summary(), "gabench_version": __version__, "git_commit": commit,
                "run_commits": provenance})

        write_meta()
        todo, changed = [], []
        for run in study.runs:
            state = run_state(study_dir / run.run_id, run.config)
            if state == "changed":
                changed.append(run)
            if state != "finished":
                todo.append(run)
        if changed and not redo_changed:
            first = changed[0]
            diff = config_diff(_read_config(study_dir / first.run_id), first.config)
            raise ConfigError("--redo-changed", False, (
                f"it to rerun the {len(changed)} finished run(s) whose configuration differs from "
                f"{study.path} (e.g. {study_dir / first.run_id}: {diff}), or another --out-root"))
        done = len(study.runs) - len(todo)
        print(f"{study.name}: {len(study.runs)} runs planned, {done} finished already, "
              f"{len(todo)} to run with {workers} worker(s) -> {study_dir}/", file=log, flush=True)
        failures: dict[str, str] = {}
        ran = 0
        start = last_rebuild = time.monotonic()
        try:
            for outcome in _execute(todo, study.name, study_dir, workers, callbacks_for,
                                    {r.run_id for r in todo if (study_dir / r.run_id).exists()}, threads):
                ran += 1
                done += outcome["ok"]
                if outcome["ok"]:
                    provenance[outcome["run_id"]] = f"gabench {__version__} {commit or 'unknown'}"
                else:
                    failures[outcome["run_id"]] = outcome["message"]
                _progress(log, time.monotonic() - start, ran, len(todo), done, len(study.runs), outcome)
                if time.monotonic() - last_rebuild > REBUILD_EVERY_S:  # `gabench report` meanwhile
                    rebuild_table(study, study_dir)
                    write_meta()
                    last_rebuild = time.monotonic()
        finally:
            finished = rebuild_table(study, study_dir)
            _write_json(study_dir / "failed.json", failures)
            write_meta()
    return CompareResult(study_dir, len(study.runs), finished, ran, failures)


def _execute(todo: list[PlannedRun], study: str, study_dir: Path, workers: int,
             callbacks_for: CallbacksFor,
             replace: set[str], threads: int | None) -> Iterator[dict[str, Any]]:
    if workers == 1 or len(todo) <= 1:
        for run in todo:
            yield execute_run(run, study, study_dir / run.run_id, run.run_id in replace, callbacks_for,
                              threads)
        return
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    pending: set[Future[dict[str, Any]]] = set()
    queue = list(reversed(todo))
    try:
        while queue or pending:
            while queue and len(pending) < 2 * workers:  # submit lazily: Ctrl-C cancels little
                run = queue.pop()
                pending.add(pool.submit(execute_run, run, study, study_dir / run.run_id,
                                        run.run_id in replace, callbacks_for, threads))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()  # a half-written run leaves only a temporary directory
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _progress(log: TextIO, elapsed: float, ran: int, total: int, done: int, planned: int,
              outcome: dict[str, Any]) -> None:
    eta = elapsed / ran * (total - ran)
    status = outcome["message"] if outcome["ok"] else f"FAILED: {outcome['message']}"
    print(f"[{done:>{len(str(planned))}}/{planned}] {outcome['run_id']} {outcome['seconds']:.1f}s {status}"
          f" | elapsed {_hms(elapsed)}, ETA {_hms(eta)}", file=log, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------- state on disk
def run_state(path: Path, config: RunConfig) -> str:
    """``"missing"``, ``"finished"`` or ``"changed"`` (finished with another configuration)."""
    if not (path / "config.json").is_file() or not (path / "results.parquet").is_file():
        return "missing"
    return "finished" if not config_diff(_read_config(path), config) else "changed"


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())["config"]


def config_diff(recorded: dict[str, Any], config: RunConfig) -> str:
    """The first field where ``recorded`` differs from ``config`` (``""`` when none does)."""
    planned = json.loads(json.dumps(config.to_dict(), default=str))
    defaults = json.loads(json.dumps(dataclasses.asdict(RunConfig()), default=str))
    for key in sorted(set(recorded) | set(planned)):
        if key in IGNORED_FIELDS:
            continue
        if key not in recorded and planned.get(key) == defaults.get(key):
            continue  # a setting added to gabench after the run, at its default: same run
        if recorded.get(key) != planned.get(key):
            return f"{key}: {recorded.get(key)!r} recorded, {planned.get(key)!r} planned"
    return ""


def _remove_leftovers(study_dir: Path) -> None:
    """Temporary directories of runs that were interrupted while writing."""
    for entry in study_dir.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


@contextmanager
def _lock(study_dir: Path) -> Iterator[None]:
    """One compare per study directory at a time (the kernel releases it if we are killed)."""
    fd = os.open(study_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("--out-root", str(study_dir.parent),
                              f"a directory where no other gabench compare is running on "
                              f"{study_dir.name} (one holds {study_dir}/.lock)") from None
        yield
    finally:
        os.close(fd)


def rebuild_table(study: Study, study_dir: Path) -> int:
    """Concatenate the finished runs of the plan into ``results.parquet`` and ``weights.parquet``.

    Returns the number of finished runs. Files are replaced atomically.
    """
    results, weights = [], []
    for run in study.runs:
        path = study_dir / run.run_id
        if run_state(path, run.config) != "finished":
            continue
        results.append(pd.read_parquet(path / "results.parquet"))
        weights.append(pd.read_parquet(path / "weights.parquet"))
    columns = [*RESULT_COLUMNS, *STUDY_COLUMNS]
    res = pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=columns)
    wts = pd.concat(weights, ignore_index=True) if weights else pd.DataFrame(columns=list(WEIGHT_COLUMNS))
    _write_parquet(study_dir / "results.parquet", res[columns])
    _write_parquet(study_dir / "weights.parquet", wts[list(WEIGHT_COLUMNS)])
    return len(results)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command line
def add_compare_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``gabench compare`` on the CLI's subparsers."""
    from gabench.cli import add_tracking_options

    p = sub.add_parser("compare", help="run a study file's plan (resumable) and build its table",
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
    p.add_argument("--plan", action="store_true", help="print the planned runs and exit")
    add_tracking_options(p)
    p.set_defaults(func=cmd_compare, experiment=None)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    workers = check_int("--workers", args.workers)
    if args.plan:
        for run in study.runs:
            state = run_state(Path(args.out_root) / study.name / run.run_id, run.config)
            print(f"{run.run_id}\t{state}")
        print(f"{len(study.runs)} runs", file=sys.stderr)
        return 0
    from gabench.cli import tracking_uri_from_args

    tracking_uri = tracking_uri_from_args(args)  # an unreachable server fails here, before any run
    callbacks_for: CallbacksFor = no_callbacks
    experiment = None
    if tracking_uri is not None:
        callbacks_for = TrackRuns(tracking_uri, args.experiment)
        experiment = callbacks_for.prepare(study.name)
    try:
        out = run_study(study, args.out_root, workers, callbacks_for=callbacks_for,
                        redo_changed=args.redo_changed, threads=args.threads)
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"gabench compare: {how}; finished runs are kept in {Path(args.out_root) / study.name}/"
              f"; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    print(f"{out.finished}/{out.planned} runs finished; table: {out.study_dir / 'results.parquet'}")
    if tracking_uri is not None:
        print(f"tracked in MLflow ({tracking_uri}, experiment {experiment!r})")
    if out.failures:
        print(f"gabench compare: error: {len(out.failures)} run(s) failed: "
              + "; ".join(f"{k}: {v}" for k, v in out.failures.items()), file=sys.stderr)
        return 1
    return 0
