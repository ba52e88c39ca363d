"""Executing a study's plan: which runs are due, in this process or a pool of workers, progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gabench import __version__
from gabench._atomic import read_json, write_json
from gabench._errors import ConfigError, StorageFullError, check_int, check_positive
from gabench._provenance import git_commit
from gabench.compare._archive import DIVERGED_CONFIGS, archived_configs, archived_state, update_archive
from gabench.compare._execute import execute_run, one_line
from gabench.compare._signals import sigterm_stops, worker_init
from gabench.compare._state import (
    config_diff,
    read_config,
    rebuild_table,
    recorded_form,
    remove_leftovers,
    run_state,
    study_lock,
)
from gabench.compare._tracking import CallbacksFor, no_callbacks
from gabench.study import PlannedRun, Study

#: Seconds between rebuilds of the study table while a long compare runs (so that
#: ``gabench report`` can show the runs finished so far). A study with an archive has its archive
#: updated instead (the report reads it): a rebuild reads every finished run's tables again, which
#: grows with the study (20 s for 540 runs), while the archive adds only the new runs. Its table
#: is rebuilt at the end (and meanwhile only when the archive cannot be updated).
REBUILD_EVERY_S = 600.0

#: The clock of ``timeout`` (a module attribute, so that tests can move it).
_now = time.monotonic


@dataclass
class CompareResult:
    """What :func:`run_study` did.

    Attributes:
        study_dir: ``<out-root>/<study>``.
        planned: Number of runs in the plan.
        finished: Planned runs with results on disk at the end.
        ran: Runs executed by this call.
        failures: Run id -> one-line reason, for runs that stopped (e.g. diverged, or whose
            results could not be written on a full disk).
        storage_errors: One line per study file (table, ``failed.json``, ``study.json``) that
            could not be written on a full disk (``PATH: no space left on device``); the file
            kept its previous content, and the next compare rewrites it.
        not_started: Runs left unstarted because ``timeout`` had passed (the next compare runs
            them).
        kept_diverged: Run id -> reason, for runs that diverged in an earlier compare with the
            planned configuration and were not rerun (they stay failed; ``retry_diverged`` reruns
            them).
    """

    study_dir: Path
    planned: int
    finished: int
    ran: int
    failures: dict[str, str] = field(default_factory=dict)
    storage_errors: list[str] = field(default_factory=list)
    not_started: int = 0
    kept_diverged: dict[str, str] = field(default_factory=dict)


def check_timeout(timeout: float | None, scheduler: str | None) -> float | None:
    """``--timeout`` checked: None, or a number of seconds > 0 without ``--scheduler``
    (:class:`ConfigError` otherwise)."""
    if timeout is None:
        return None
    timeout = check_positive("--timeout", timeout)
    if scheduler is not None:
        raise ConfigError("--timeout", timeout, (
            "no --timeout with --scheduler (a Dask cluster is handed every run at once; "
            "stop it with Ctrl-C, finished runs are kept)"))
    return timeout


def run_study(study: Study, out_root: str | Path = "runs", workers: int = 1, *,
              callbacks_for: CallbacksFor = no_callbacks,
              redo_changed: bool = False, threads: int | None = 1,
              log: TextIO | None = None, scheduler: str | None = None,
              timeout: float | None = None, retry_diverged: bool = False) -> CompareResult:
    """Run every unfinished run of ``study`` and rebuild the study table.

    A run that diverged (a non-finite loss) is a result of its configuration, not a fault: it is
    recorded with that configuration and a later compare keeps it as failed instead of running it
    again (``retry_diverged`` reruns it; a changed configuration does too). Rerunning only the
    failures, e.g. on another machine whose floating-point rounding differs, until they finish
    would make every finished fraction and mean of the study a survivor's. Runs that failed
    otherwise (killed, disk full, any other error) are rerun.

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
        scheduler: Address of a Dask scheduler (``tcp://HOST:8786``): the runs execute on its
            workers and come back here to be written (:mod:`gabench._dask`; ``workers`` and
            ``threads`` are then not used, and tracking goes to ``callbacks_for``'s server).
        timeout: Seconds after which no run is started (the runs already started finish, then
            the tables and the archive are written as at the end of the plan); the runs left are
            counted in :attr:`CompareResult.not_started`, and the next call runs them. None: no
            limit. Not with ``scheduler``.
        retry_diverged: Rerun the runs that diverged in an earlier compare.

    Returns:
        A :class:`CompareResult`.

    Raises:
        ConfigError: another compare holds the study directory, or finished runs have a
            different configuration and ``redo_changed`` is false.
    """
    log = log or sys.stderr
    workers = check_int("--workers", workers)
    timeout = check_timeout(timeout, scheduler)
    with sigterm_stops():
        return _run_study(study, out_root, workers, callbacks_for, redo_changed, threads, log, scheduler,
                          timeout, retry_diverged)


def _run_study(study: Study, out_root: str | Path, workers: int, callbacks_for: CallbacksFor,
               redo_changed: bool, threads: int | None, log: TextIO,
               scheduler: str | None = None, timeout: float | None = None,
               retry_diverged: bool = False) -> CompareResult:
    if threads is not None:
        threads = check_int("--threads", threads)
    study_dir = Path(out_root) / study.name
    prepare_study_dir(study_dir)
    with study_lock(study_dir):
        remove_leftovers(study_dir)
        commit = git_commit()
        previous = read_json(study_dir / "study.json")
        provenance: dict[str, str] = {k: v for k, v in previous.get("run_commits", {}).items()
                                      if (study_dir / k).is_dir()}
        earlier = {} if retry_diverged else earlier_divergences(study, study_dir, previous)
        # until the plan is checked, study.json keeps every recorded divergence (a compare killed
        # before then loses none); then the kept ones and this compare's
        diverged_configs: dict[str, dict[str, Any]] = {k: c for k, (_, c) in earlier.items()}

        def write_meta() -> None:
            summary = study.summary()
            for entry, run in zip(summary["runs"], study.runs, strict=True):
                entry.update(task_shape(run, study_dir / run.run_id))
            write_json(study_dir / "study.json", {
                **summary, "gabench_version": __version__, "git_commit": commit,
                "run_commits": provenance, DIVERGED_CONFIGS: diverged_configs})

        write_meta()
        archived = archived_configs(study.archive) if study.archive is not None else {}
        todo, changed, in_archive = [], [], 0
        kept: dict[str, str] = {}
        for run in study.runs:
            state = run_state(study_dir / run.run_id, run.config)
            if state == "missing" and archived:
                state = archived_state(run, archived)
                in_archive += state == "finished"
                where_changed = "archive"
            else:
                where_changed = "local"
            if state == "changed":
                changed.append((run, where_changed))
            if state == "missing" and (reason := kept_divergence(run, earlier)) is not None:  # kept
                kept[run.run_id] = reason
                continue
            if state != "finished":
                todo.append(run)
        for run_id in set(diverged_configs) - set(kept):
            del diverged_configs[run_id]
        if changed and not redo_changed:
            first, where_changed = changed[0]
            if where_changed == "local":
                place = study_dir / first.run_id
                diff = config_diff(read_config(place), first.config)
            else:
                place = f"{first.run_id} in the archive {study.archive}"
                diff = config_diff(archived[first.run_id], first.config)
            raise ConfigError("--redo-changed", False, (
                f"it to rerun the {len(changed)} finished run(s) whose configuration differs from "
                f"{study.path} (e.g. {place}: {diff}), or another --out-root"))
        done = len(study.runs) - len(todo) - len(kept)
        where = f"on the Dask cluster {scheduler}" if scheduler else f"with {workers} worker(s)"
        archived_note = f" ({in_archive} of them in the archive {study.archive}/)" if in_archive else ""
        kept_note = (f", {len(kept)} diverged earlier (kept as failed; --retry-diverged reruns them)"
                     if kept else "")
        print(f"{study.name}: {len(study.runs)} runs planned, {done} finished already{archived_note}"
              f"{kept_note}, {len(todo)} to run {where} -> {study_dir}/", file=log, flush=True)
        failures: dict[str, str] = {}
        storage_errors: list[str] = []

        def keep_going(write: Callable[[], Any]) -> Any:
            """``write()``, or None with its one line kept when the disk is full."""
            try:
                return write()
            except StorageFullError as exc:
                if str(exc) not in storage_errors:
                    storage_errors.append(str(exc))
                return None

        def archive_runs() -> bool:
            """Add the finished runs to the study's archive; a failure is one line, not the end.
            Returns whether the archive holds them (False also for a study without one)."""
            if study.archive is None:
                return False
            try:
                update_archive(study, study_dir, {**kept, **failures})
                return True
            except StorageFullError:
                raise
            except Exception as exc:  # the runs stay in study_dir and the next compare archives them
                line = (f"{study.archive}: archive not updated ({one_line(exc)}); the finished runs stay in "
                        f"{study_dir}/ and the next compare archives them")
                if line not in storage_errors:
                    storage_errors.append(line)
                return False

        by_id = {r.run_id: r for r in study.runs}
        ran = 0
        start = last_rebuild = time.monotonic()
        deadline = None if timeout is None else _now() + timeout
        try:
            replace = {r.run_id for r in todo if (study_dir / r.run_id).exists()}
            outcomes = (_execute_on_dask(todo, study.name, study_dir, scheduler, callbacks_for, replace, log)
                        if scheduler else
                        _execute(todo, study.name, study_dir, workers, callbacks_for, replace, threads,
                                 deadline))
            for outcome in outcomes:
                ran += 1
                done += outcome["ok"]
                if outcome["ok"]:
                    on = f" on {outcome['machine']}" if outcome.get("machine") else ""
                    provenance[outcome["run_id"]] = f"gabench {__version__} {commit or 'unknown'}{on}"
                else:
                    failures[outcome["run_id"]] = outcome["message"]
                    if outcome.get("diverged"):
                        diverged_configs[outcome["run_id"]] = recorded_form(by_id[outcome["run_id"]].config)
                _progress(log, time.monotonic() - start, ran, len(todo), done, len(study.runs), outcome)
                if time.monotonic() - last_rebuild > REBUILD_EVERY_S:  # `gabench report` meanwhile
                    keep_going(write_meta)
                    if not keep_going(archive_runs):  # a report reads the archive when there is one
                        keep_going(lambda: rebuild_table(study, study_dir))
                    last_rebuild = time.monotonic()
        finally:
            # on a full disk each of these keeps its previous file (written atomically) and
            # leaves one line; a rerun after freeing space rewrites them from the finished runs
            finished = keep_going(lambda: rebuild_table(study, study_dir))
            keep_going(lambda: write_json(study_dir / "failed.json", {**kept, **failures}))
            keep_going(write_meta)
            keep_going(archive_runs)
            if finished is None:
                finished = sum(run_state(study_dir / r.run_id, r.config) == "finished" for r in study.runs)
            finished += in_archive
            if storage_errors and sys.exc_info()[0] is not None:  # stopped: say it here
                for line in storage_errors:
                    print(f"error: {line}", file=log, flush=True)
    return CompareResult(study_dir, len(study.runs), finished, ran, failures, storage_errors,
                         not_started=len(todo) - ran if deadline is not None else 0, kept_diverged=kept)


def earlier_divergences(study: Study, study_dir: Path,
                        previous: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run id -> (reason, configuration) of the runs that diverged in an earlier compare: those the
    study directory's ``failed.json`` and ``study.json`` (``previous``) record, and, for a study
    with an archive, those the archive records (whichever machine ran them). A failure recorded
    without its configuration (another kind of failure, or an archive older than this record)
    is not one."""
    sources = [(previous, read_json(study_dir / "failed.json"))]
    if study.archive is not None:
        sources.insert(0, (read_json(study.archive / "study.json"), read_json(study.archive / "failed.json")))
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for meta, failed in sources:
        configs = meta.get(DIVERGED_CONFIGS)
        if not isinstance(configs, dict):
            continue
        for run_id, config in configs.items():
            reason = failed.get(run_id)
            if isinstance(reason, str) and isinstance(config, dict):
                found[run_id] = (reason, config)
    return found


def kept_divergence(run: PlannedRun, earlier: dict[str, tuple[str, dict[str, Any]]]) -> str | None:
    """The reason ``run`` diverged earlier (:func:`earlier_divergences`) when it did so with its
    planned configuration (a compare keeps it as failed), else None (never diverged, or with
    another configuration: it runs again)."""
    recorded = earlier.get(run.run_id)
    if recorded is None or config_diff(recorded[1], run.config):
        return None
    return recorded[0]


#: The task shape that ``study.json`` records per run (the report's hyperparameter table shows it).
SHAPE_PARAMS: tuple[str, ...] = ("ways", "shots", "query_shots")


def task_shape(run: PlannedRun, run_dir: Path) -> dict[str, Any]:
    """``ways``, ``shots`` and ``query_shots`` of a run's family (None where the family has no
    such parameter): the resolved values its ``config.json`` recorded when it finished, else the
    family's defaults overridden by the study file's parameters."""
    resolved = read_json(run_dir / "config.json").get("resolved", {}).get("family_params")
    if not isinstance(resolved, dict):
        from gabench.tasks import FAMILIES

        cls = FAMILIES.get(run.config.family)
        defaults = {p.name: p.default for p in cls.param_specs()} if cls is not None else {}
        resolved = {**defaults, **run.config.family_params}
    return {key: resolved.get(key) for key in SHAPE_PARAMS}


def prepare_study_dir(study_dir: Path) -> None:
    """Create ``study_dir`` (``--out-root``/<study>), or raise one :class:`ConfigError` line."""
    from gabench.results import check_path_names

    root = study_dir.parent
    check_path_names("--out-root", study_dir)
    for path in (root, study_dir):
        if path.exists() and not path.is_dir():
            raise ConfigError("--out-root", str(root), f"a directory ({path} is a file)")
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--out-root", str(root), f"a writable directory ({exc.strerror})") from None


def _execute(todo: list[PlannedRun], study: str, study_dir: Path, workers: int,
             callbacks_for: CallbacksFor, replace: set[str], threads: int | None,
             deadline: float | None = None) -> Iterator[dict[str, Any]]:
    """Run ``todo`` (in this process or a pool of ``workers``), yielding each run's outcome as it
    finishes; no run is started once :data:`_now` reaches ``deadline`` (those started finish)."""

    def expired() -> bool:
        return deadline is not None and _now() >= deadline
    if workers == 1 or len(todo) <= 1:
        for run in todo:
            if expired():
                return
            yield execute_run(run, study, study_dir / run.run_id, run.run_id in replace, callbacks_for,
                              threads)
        return
    import multiprocessing
    import os

    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=worker_init, initargs=(os.getpid(),))
    pending: set[Future[dict[str, Any]]] = set()
    queue = list(reversed(todo))
    # Submitted lazily, so that Ctrl-C cancels little. A pool hands a worker the next submitted
    # run as soon as it is free, so a submitted run counts as started: without a time limit a
    # few are kept in hand to keep the workers busy, with one only as many as there are workers.
    in_hand = 2 * workers if deadline is None else workers

    def submit_more() -> None:
        while queue and len(pending) < in_hand and not expired():
            run = queue.pop()
            pending.add(pool.submit(execute_run, run, study, study_dir / run.run_id,
                                    run.run_id in replace, callbacks_for, threads))

    try:
        submit_more()
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            submit_more()  # before the outcomes are handled (which may take a while): workers are free
            for fut in finished:
                yield fut.result()
    except BaseException:
        procs = list(getattr(pool, "_processes", {}).values())
        for proc in procs:
            proc.terminate()  # a half-written run leaves only a temporary directory
        for proc in procs:  # let each mark its run KILLED before this process (their parent) exits
            proc.join(timeout=60)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _execute_on_dask(todo: list[PlannedRun], study: str, study_dir: Path, scheduler: str,
                     callbacks_for: CallbacksFor, replace: set[str], log: TextIO) -> Iterator[dict[str, Any]]:
    from gabench._dask import execute_on_dask
    from gabench.results import write_run

    def write(run: PlannedRun, result: Any) -> None:
        write_run(study_dir / run.run_id, result, overwrite=run.run_id in replace)

    tracking_uri = getattr(callbacks_for, "tracking_uri", None)
    experiment = getattr(callbacks_for, "experiment", None)
    yield from execute_on_dask(todo, study, scheduler, write=write, tracking_uri=tracking_uri,
                               experiment=experiment, log=log)


def _progress(log: TextIO, elapsed: float, ran: int, total: int, done: int, planned: int,
              outcome: dict[str, Any]) -> None:
    eta = elapsed / ran * (total - ran)
    status = outcome["message"] if outcome["ok"] else f"FAILED: {outcome['message']}"
    print(f"[{done:>{len(str(planned))}}/{planned}] {outcome['run_id']} {outcome['seconds']:.1f}s {status}"
          f" | elapsed {_hms(elapsed)}, ETA {_hms(eta)}", file=log, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
