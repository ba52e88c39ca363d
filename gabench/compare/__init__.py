"""Running a study's plan, resumably, and rebuilding its one long result table (``gabench compare``).

Each planned run is exactly a ``gabench run`` (:class:`~gabench.trainer.Trainer` then
:func:`~gabench.results.write_run`) into its own directory ``<out-root>/<study>/<run id>/``,
written atomically (a temporary directory renamed into place). A run directory therefore
exists only when the run finished, so after an interruption, even ``kill -9``, the same command
skips the finished runs, removes leftover temporary directories and redoes the rest: no run is
lost or counted twice. At the end (and every 10 minutes meanwhile) the study table
``<out-root>/<study>/results.parquet`` (and ``weights.parquet``) is rebuilt from the finished
runs of the plan; for a study with an ``archive`` the archive is updated every 10 minutes
instead (:mod:`gabench.compare._archive`) and the table is rebuilt at the end.

Tracking: ``run_study(..., callbacks_for=f)`` calls ``f(run, study_name)`` in the process that
runs each planned run and passes the returned :class:`~gabench.trainer.Callback` objects to the
trainer; ``f`` must be picklable (worker processes are spawned). ``gabench compare`` passes a
:class:`TrackRuns`, so that every run is an MLflow run as with ``gabench run``. A run that
diverges or is stopped is marked FAILED or KILLED in MLflow by the tracker's
:meth:`~gabench.trainer.Callback.on_fail`.

Divergences: a run that diverges is listed in ``failed.json`` and its configuration recorded in
``study.json`` (``diverged_configs``; the archive keeps both). A resumed compare, on any machine,
keeps it as failed instead of rerunning it, while the configuration is unchanged: a divergence is
that configuration's result, and floating-point rounding differs between machines, so rerunning
only the failures until they finish would leave every finished fraction and mean a survivor's.
``--retry-diverged`` reruns them. Runs that failed otherwise are rerun.

Stopping: Ctrl-C or SIGTERM stops the worker processes (their unfinished runs leave only
temporary directories, removed at the next start) and keeps every finished run. A worker's run
stops at the trainer's next hook (:class:`~gabench.trainer.StopAtSafePoint`), never inside a
tracking-store write.

Modules: :mod:`~gabench.compare._schedule` (the plan: what to run, in which processes, progress),
:mod:`~gabench.compare._execute` (one run), :mod:`~gabench.compare._state` (run state and the
study table on disk), :mod:`~gabench.compare._signals` (SIGTERM in the parent and the workers),
:mod:`~gabench.compare._tracking` (the tracking hook), :mod:`~gabench.compare._archive` (the
study's archive: compact summaries of its finished runs that outlive the machine).
"""

from gabench._atomic import write_parquet
from gabench.compare._archive import archived_configs, archived_state, update_archive
from gabench.compare._execute import execute_run, label_tables, one_line, train_planned
from gabench.compare._schedule import (
    REBUILD_EVERY_S,
    CompareResult,
    check_timeout,
    earlier_divergences,
    kept_divergence,
    run_study,
)
from gabench.compare._signals import Terminated
from gabench.compare._state import (
    IGNORED_FIELDS,
    STUDY_COLUMNS,
    config_diff,
    rebuild_table,
    run_state,
)
from gabench.compare._tracking import CallbacksFor, TrackRuns, no_callbacks

__all__ = [
    "archived_configs", "archived_state", "one_line", "train_planned", "update_archive",
    "IGNORED_FIELDS", "REBUILD_EVERY_S", "STUDY_COLUMNS", "CallbacksFor", "CompareResult", "Terminated",
    "TrackRuns", "config_diff", "execute_run", "label_tables", "no_callbacks", "rebuild_table",
    "check_timeout", "earlier_divergences", "kept_divergence", "run_state", "run_study", "write_parquet",
]
