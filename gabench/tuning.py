"""Optuna tuning of the inner and outer learning rates around the one trainer.

A trial is one run whose alpha and beta (optionally inner steps and meta-batch) come from the
sampler; it reports the meta-validation metric at each validation so the pruner can stop it
early. Studies live in any Optuna storage: SQLite by default, a journal file for several
processes on one host, PostgreSQL for several machines sharing one study.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from gabench._errors import ConfigError, check_choice, check_int, check_positive
from gabench._processes import StopRequest, Terminated, die_with_parent, sigterm_raises
from gabench._redact import redact, scrub
from gabench._tuning_setup import expected_setup, recorded_setup, setup_changes
from gabench.aggregators import check_param_ranges
from gabench.config import MAX_LEARNING_RATE, RUN_SETTINGS, RunConfig
from gabench.results import Summary
from gabench.trainer import Callback, DivergedError, StopAtSafePoint, Trainer

#: The trials that spend the budget: complete, or pruned (a diverged trial is pruned). A FAIL trial
#: is one whose process died or was stopped (kill -9, SIGTERM, a lost machine): it is kept as a
#: record but redone, so an interrupted study still ends with its full budget of trials.
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OBJECTIVES = {"loss": ("loss_post", "minimize"), "acc": ("acc_post", "maximize")}
SELECTS = {"best_val": "the best meta-validation of the trial",
           "final": "the last meta-validation of the trial"}


@dataclass
class TuneConfig:
    """One Optuna study over one method."""

    base: RunConfig
    """The run being tuned; its alpha and beta (and tuned knobs) are replaced by suggestions."""
    study_name: str
    """Name of the study in the storage; the same name resumes it."""
    storage: str = "sqlite:///optuna.db"
    """Optuna storage URL, or ``journal:PATH`` for a journal file."""
    trials: int | None = 20
    """Trials (complete or pruned; failed ones, from dead or stopped processes, are redone) the
    study should hold, counted over every worker and machine sharing it; None: until the timeout."""
    timeout: float | None = None
    """Seconds each worker may spend starting new trials (None: no limit)."""
    workers: int = 1
    """Local worker processes sharing the study."""
    alpha_range: tuple[float, float] = (1e-3, 1.0)
    """Log-uniform range of the inner learning rate."""
    beta_range: tuple[float, float] = (1e-4, 1e-1)
    """Log-uniform range of the outer learning rate."""
    inner_steps_range: tuple[int, int] | None = None
    """Integer range of inner steps to tune (None: keep the base value)."""
    meta_batch_range: tuple[int, int] | None = None
    """Log-integer range of the meta-batch size to tune (None: keep the base value)."""
    aggregator_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Log-uniform ranges of parameters of the method's aggregator to tune with alpha and beta
    (name -> (low, high); floating-point parameters only, e.g. ``{"temperature": (0.05, 20.0)}``
    for ``ga-softmax``). The Optuna parameter has the aggregator parameter's name."""
    objective: str = "loss"
    """``loss``: minimise meta-val query loss after adaptation; ``acc``: maximise accuracy."""
    select: str = "best_val"
    """A trial's value: its best meta-validation (``best_val``, the checkpoint the compared runs
    are selected at) or its last one (``final``)."""
    sampler_seed: int = 0
    """Seed of the TPE sampler. Trial number k samples with a random state derived from
    (seed, k) (:class:`TrialSeededTPE`), so a resumed study, a second worker or a second machine
    never replays the points already run, and one uninterrupted single-worker study is
    reproducible from this seed."""
    prune_warmup: int = 2
    """Validations after the one at step 0 that every trial completes before the median pruner
    may stop it (counted in validations, not meta-iterations)."""
    heartbeat_s: float = 10.0
    """Seconds between a running trial's heartbeats (a user attribute in the storage)."""
    stale_after_s: float = 300.0
    """A RUNNING trial with no heartbeat for this long belongs to a process that died (kill -9,
    power loss): it is marked FAIL before the budget is counted. Generous, because a heavily
    loaded machine can starve a live worker's heartbeat for a minute or more; a live trial marked
    FAIL all the same is abandoned by its worker, which goes on with the next one."""
    tracking_uri: str | None = None
    """MLflow URI for the parent run and one child run per trial (None: no tracking)."""
    experiment: str = "gabench-tuning"
    """MLflow experiment of the study."""
    out: Path | None = None
    """Directory for trials.csv, best.json and the plots (None: no local copy)."""
    retune_changed: bool = False
    """A study whose finished trials ran under another setup (see :func:`study_changes`) is
    deleted and tuned again from scratch (False: refused with the differences)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, open_storage: bool = True) -> TuneConfig:
        """Check every field; ``open_storage`` also opens (and creates) the storage, failing early
        on a bad URL or an unreachable database (False: for readers that create nothing)."""
        self.base.validate()
        if self.trials is None and self.timeout is None:
            raise ConfigError("--trials", None, "a number of trials, or a --timeout")
        if self.trials is not None:
            check_int("--trials", self.trials)
        if self.timeout is not None:
            check_positive("--timeout", self.timeout)
        check_int("--workers", self.workers)
        check_int("--prune-warmup", self.prune_warmup, minimum=0)
        check_positive("heartbeat_s", self.heartbeat_s)
        if not self.stale_after_s > 2 * self.heartbeat_s:
            raise ConfigError("stale_after_s", self.stale_after_s,
                              f"more than twice heartbeat_s ({2 * self.heartbeat_s})")
        check_choice("--objective", self.objective, OBJECTIVES)
        check_choice("--select", self.select, SELECTS)
        if self.objective == "acc" and self.base.build_family().task_type != "classification":
            raise ConfigError("--objective", "acc", f"loss for regression family {self.base.family!r}")
        for name, (lo, hi) in (("--alpha-range", self.alpha_range), ("--beta-range", self.beta_range)):
            if not (check_positive(name, lo) < check_positive(name, hi) <= MAX_LEARNING_RATE):
                raise ConfigError(name, f"{lo} {hi}",
                                  f"LOW HIGH with 0 < LOW < HIGH <= {MAX_LEARNING_RATE:g}")
        for name, rng in (("--tune-inner-steps", self.inner_steps_range),
                          ("--tune-meta-batch", self.meta_batch_range)):
            if rng is not None and not (check_int(name, rng[0]) < check_int(name, rng[1])):
                raise ConfigError(name, f"{rng[0]} {rng[1]}", "LOW HIGH integers with 1 <= LOW < HIGH")
        check_param_ranges(self.base.aggregator, self.aggregator_ranges, "--tune-aggregator-param")
        if self.base.eval_every == 0:
            raise ConfigError("--eval-every", 0, "an integer >= 1 (tuning needs meta-validation)")
        if open_storage:
            make_storage(self.storage)  # fails early on a bad URL or an unreachable database
        return self


# --------------------------------------------------------------------------- storage
def make_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: an RDB URL (sqlite, postgresql, mysql) or ``journal:PATH``.

    Args:
        url: The storage URL.
        create: Create a missing journal file (and its folder) or SQLite database. False for
            readers (a study file's ``tuned`` block): a missing file is then an error, and
            nothing is created on disk.

    Raises:
        ConfigError: an unknown scheme, a database that cannot be reached, or (``create``
            false) a journal or SQLite file that does not exist.
    """
    _quiet_optuna()
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.name:
            raise ConfigError("--storage", url, "journal:PATH with a file name")
        if not create and not path.is_file():
            raise ConfigError("--storage", url, "an existing journal file (nothing is created when reading)")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        if create:
            repair_journal(path)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = urllib.parse.urlsplit(url).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError("--storage", redact(url), "sqlite:///PATH, postgresql://USER:PASS@HOST/DB, "
                                                    "mysql://... or journal:PATH")
    if scheme == "sqlite" and not create:
        db = urllib.parse.urlsplit(url).path[1:]  # sqlite:///rel or sqlite:////abs
        if db in ("", ":memory:") or not Path(db).is_file():
            raise ConfigError("--storage", redact(url),
                              "an existing SQLite file (nothing is created when reading)")
    kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        kwargs = {"connect_args": {"timeout": 60}}
    elif scheme == "postgresql":
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    error: Exception | None = None
    # Several processes opening a new, empty database race to create its tables; the losers
    # see an integrity error and succeed on a second try.
    for delay in (0.5, 1.0, 2.0, 0.0):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60,
                                              grace_period=180)
        except ImportError as exc:
            raise ConfigError("--storage", redact(url),
                              f"a URL whose database driver is installed ({exc})") from None
        except Exception as exc:  # sqlalchemy errors are multi-line: keep the first line
            error = exc
            time.sleep(delay)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ConfigError("--storage", redact(url), f"a reachable database ({scrub(first, url)})")


def repair_journal(path: Path) -> int:
    """Cut a torn last line off an Optuna journal file; returns the bytes removed.

    A journal copied or committed while a process was appending to it (a snapshot of a running
    study, as `studies/tuned.journal` is committed) can end in a partial line. Optuna reads such
    a file, ignoring the partial line, but appending after it would glue the next entry onto it
    and leave an unreadable line in the middle. The cut is made under the journal's own lock
    (the one Optuna's writers take), so it never races a writer.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file():
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return 0
            # find the last newline (scan backwards in blocks); keep everything up to it
            end, block = size, 1 << 16
            keep = 0
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                chunk = f.read(end - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                end = start
            f.truncate(keep)
            return size - keep
    finally:
        lock.release()


# --------------------------------------------------------------------------- trials
class ValidationReporter(Callback):
    """Feeds each meta-validation to ``trial.report`` and prunes when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool = False) -> None:
        self.trial, self.metric, self.maximize = trial, metric, maximize
        self.last: float | None = None
        self.last_step: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def on_eval(self, step: int, split: str, summary: dict[str, Summary]) -> None:
        if split != "val":
            return
        value = summary[self.metric].mean
        if not math.isfinite(value):
            reason = f"diverged: val {self.metric}={value} at step {step}"
            self.trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)
        self.trial.report(value, step)
        self.last, self.last_step = value, step
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_step = value, step
        if self.trial.should_prune():
            reason = f"pruned at step {step} (val {self.metric}={value:.4f})"
            self.trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)


def suggest_config(trial: optuna.Trial, tc: TuneConfig) -> RunConfig:
    """The run of ``trial``: the base config with suggested alpha, beta (and tuned knobs)."""
    changes: dict[str, Any] = {
        "alpha": trial.suggest_float("alpha", *tc.alpha_range, log=True),
        "beta": trial.suggest_float("beta", *tc.beta_range, log=True),
    }
    if tc.inner_steps_range is not None:
        changes["inner_steps"] = trial.suggest_int("inner_steps", *tc.inner_steps_range)
    if tc.meta_batch_range is not None:
        changes["meta_batch"] = trial.suggest_int("meta_batch", *tc.meta_batch_range, log=True)
    if tc.aggregator_ranges:
        params = dict(tc.base.aggregator_params)
        for name, (lo, hi) in tc.aggregator_ranges.items():
            params[name] = trial.suggest_float(name, lo, hi, log=True)
        changes["aggregator_params"] = params
    return dataclasses.replace(tc.base, **changes)


def make_objective(tc: TuneConfig, parent_run_id: str | None,
                   stop: StopRequest | None = None) -> Callable[[optuna.Trial], float]:
    metric = OBJECTIVES[tc.objective][0]

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, tc)
        reporter = ValidationReporter(trial, metric, OBJECTIVES[tc.objective][1] == "maximize")
        callbacks: list[Callback] = [] if stop is None else [StopAtSafePoint(stop)]
        tracker = None
        if tc.tracking_uri is not None:
            from gabench.tracking import MLflowTracker

            # no per-trial PNGs: a trial's curves are its metrics; the study's plots go to the parent
            tracker = MLflowTracker(tc.tracking_uri, tc.experiment, parent_run_id=parent_run_id, plots=False,
                                    run_name=f"{tc.study_name}__t{trial.number}",
                                    tags={"optuna_study": tc.study_name,
                                          "optuna_trial": str(trial.number)})
            # Before the reporter: a validation that prunes the trial is logged first.
            callbacks.append(tracker)
        callbacks.append(reporter)
        try:  # a failure is recorded by the callbacks' on_fail (the MLflow run: FAILED or KILLED)
            # no meta-test: tuning selects on meta-validation only (and does not peek)
            Trainer(config, callbacks, progress=False, meta_test=False).fit()
        except DivergedError as exc:
            trial.set_user_attr("reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        if tracker is not None:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
        assert reporter.last is not None and reporter.best is not None  # eval_every >= 1
        if tc.select == "final":
            trial.set_user_attr("val_step", reporter.last_step)
            return reporter.last
        trial.set_user_attr("val_step", reporter.best_step)
        return reporter.best

    return objective


def _print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in trial.params.items())
    if trial.state == optuna.trial.TrialState.COMPLETE:
        what = f"value={trial.value:.4f}"
    else:
        what = f"{trial.state.name.lower()}: {trial.user_attrs.get('reason', '')}"
    print(f"[{study.study_name}] trial {trial.number}: {params} -> {what}", flush=True)


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler whose random state is derived from (seed, trial number).

    A plain ``TPESampler(seed=s)`` starts from the same random state in every process, so a
    resumed study, a second local worker and a second machine replay the random start-up points
    (and, given the same history, the same TPE proposals) that were already run. Here trial
    number k samples with a fresh ``TPESampler`` seeded from ``SeedSequence([seed, k])``: trial
    numbers are unique within a study, so no process proposes another's points again, and one
    uninterrupted single-worker study (the same history before each trial) is reproducible from
    ``seed``. Everything else is TPE as configured by Optuna (``constant_liar`` on, so parallel
    workers avoid the regions of running trials).
    """

    def __init__(self, seed: int, **tpe_kwargs: Any) -> None:
        self.seed = seed
        self._kwargs = tpe_kwargs
        self._per_trial: dict[int, optuna.samplers.TPESampler] = {}

    @staticmethod
    def trial_seed(seed: int, number: int) -> int:
        """The seed of trial ``number``'s sampler."""
        return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])

    def _sampler(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        sampler = self._per_trial.get(trial._trial_id)
        if sampler is None:
            sampler = optuna.samplers.TPESampler(seed=self.trial_seed(self.seed, trial.number),
                                                 **self._kwargs)
            self._per_trial[trial._trial_id] = sampler
        return sampler

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: Any) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Any) -> None:
        sampler = self._per_trial.pop(trial._trial_id, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: each trial's random state is derived from (seed, number)."""


def make_sampler(tc: TuneConfig) -> optuna.samplers.BaseSampler:
    return TrialSeededTPE(tc.sampler_seed)


HEARTBEAT_ATTR = "gabench_heartbeat"


class _Heartbeat:
    """While a trial runs, writes the time into its user attribute ``gabench_heartbeat`` every
    ``interval`` seconds (any storage: SQLite, PostgreSQL, journal files), so that a trial
    whose process died can be told from one still running on another machine."""

    def __init__(self, study: optuna.Study, interval: float) -> None:
        import threading

        self.study, self.interval = study, interval
        self._stop = threading.Event()
        self._trial_id: int | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="gabench-heartbeat", daemon=True)
        self._thread.start()

    def beat(self, trial_id: int | None) -> None:
        """Beat now for ``trial_id`` and keep beating for it (None: stop beating)."""
        with self._lock:
            self._trial_id = trial_id
        if trial_id is not None:
            self._write(trial_id)

    def _write(self, trial_id: int) -> None:
        try:
            self.study._storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except Exception:  # the trial finished meanwhile (or the storage hiccuped): next beat
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trial_id = self._trial_id
            if trial_id is not None:
                self._write(trial_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def reap_stale_trials(study: optuna.Study, stale_after_s: float) -> list[int]:
    """Mark FAIL the RUNNING trials whose last heartbeat (or start, if none) is older than
    ``stale_after_s``: their process died without finishing them. Returns their numbers."""
    now = time.time()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        last = t.user_attrs.get(HEARTBEAT_ATTR)
        if last is None:
            last = t.datetime_start.timestamp() if t.datetime_start else now
        if now - float(last) <= stale_after_s:
            continue
        try:
            study._storage.set_trial_user_attr(
                t._trial_id, "reason", f"no heartbeat for {now - float(last):.0f} s: its process died")
            if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                reaped.append(t.number)
        except Exception:  # finished or reaped by another process meanwhile
            continue
    return reaped


def _worker(tc: TuneConfig, index: int, parent_run_id: str | None, parent_pid: int | None = None) -> int:
    """One worker: run trials of the shared study until it holds ``tc.trials`` trials.

    The budget is global: before each trial the worker reaps stale trials (dead processes) and
    counts the study's finished and running trials (from every worker and machine), so workers
    that start at different times share one budget. SIGTERM (also sent when the parent dies)
    marks the running trial FAIL and ends the worker. Returns the number of trials it ran.
    """
    import torch

    if parent_pid is not None:
        die_with_parent(parent_pid)
    if tc.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tc.workers))
    _quiet_optuna()
    study = optuna.load_study(study_name=tc.study_name, storage=make_storage(tc.storage),
                              sampler=make_sampler(tc), pruner=make_pruner(tc))
    stop = StopRequest()
    objective = make_objective(tc, parent_run_id, stop)
    heartbeat = _Heartbeat(study, tc.heartbeat_s)

    current: list[int] = []

    def beating(trial: optuna.Trial) -> float:
        current[:] = [trial._trial_id]
        heartbeat.beat(trial._trial_id)
        try:
            return objective(trial)
        finally:
            heartbeat.beat(None)

    deadline = None if tc.timeout is None else time.monotonic() + tc.timeout
    ran = 0
    try:
        with stop.catching():
            while deadline is None or time.monotonic() < deadline:
                stop.check()
                reaped = reap_stale_trials(study, tc.stale_after_s)
                if reaped:
                    print(f"[{study.study_name}] marked {len(reaped)} stale RUNNING trial(s) FAIL "
                          f"(no heartbeat for {tc.stale_after_s:.0f} s): {reaped}", flush=True)
                if tc.trials is not None and counted_trials(study) >= tc.trials:
                    break
                current.clear()
                try:
                    study.optimize(beating, n_trials=1, callbacks=[_print_trial], catch=())
                except Exception:
                    if not current or not _finished_elsewhere(study, current[0]):
                        raise
                    trial = study._storage.get_trial(current[0])
                    print(f"[{study.study_name}] trial {trial.number} was marked {trial.state.name} by "
                          f"another process ({trial.user_attrs.get('reason', 'no reason given')}) while "
                          "it ran here: abandoned; it spends no budget and the study goes on", flush=True)
                    continue
                ran += 1
    except Terminated:
        if parent_pid is None:
            raise
        # A pool worker: its running trial is marked FAIL by now; leave at once rather than
        # return to the pool and wait for work from a parent that may be gone.
        heartbeat.close()
        os._exit(128 + 15)
    finally:
        heartbeat.close()
    return ran


def _finished_elsewhere(study: optuna.Study, trial_id: int) -> bool:
    """Whether trial ``trial_id`` was marked FAIL by another process (reaped as stale while it
    still ran here, e.g. when a loaded machine starved its heartbeat)."""
    try:
        trial = study._storage.get_trial(trial_id)
    except Exception:
        return False
    return trial.state == optuna.trial.TrialState.FAIL and "no heartbeat" in str(
        trial.user_attrs.get("reason", ""))


def _quiet_optuna() -> None:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_pruner(tc: TuneConfig | None = None) -> optuna.pruners.BasePruner:
    """Median pruning once 5 trials have finished; a trial is first compared after
    ``tc.prune_warmup`` validations beyond the one at step 0 (steps are meta-iterations, so the
    warm-up is ``prune_warmup * eval_every`` of them)."""
    warmup = 2 if tc is None else tc.prune_warmup
    every = 1 if tc is None else tc.base.eval_every
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup * every)


def finished_trials(study: optuna.Study) -> int:
    """Trials that spent the budget: complete or pruned (see :data:`FINISHED`)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def counted_trials(study: optuna.Study) -> int:
    """Trials that count against the budget: finished ones and those running now."""
    return len(study.get_trials(deepcopy=False,
                                states=(*FINISHED, optuna.trial.TrialState.RUNNING)))


# --------------------------------------------------------------------------- setup checks
def tuned_ranges(tc: TuneConfig) -> dict[str, tuple[float, float]]:
    """Optuna parameter name -> (low, high) of everything ``tc`` tunes."""
    ranges: dict[str, tuple[float, float]] = {"alpha": tc.alpha_range, "beta": tc.beta_range}
    if tc.inner_steps_range is not None:
        ranges["inner_steps"] = tc.inner_steps_range
    if tc.meta_batch_range is not None:
        ranges["meta_batch"] = tc.meta_batch_range
    ranges.update(tc.aggregator_ranges)
    return ranges


def resolved_config(config: Mapping[str, Any], tuned: set[str]) -> dict[str, Any]:
    """A run configuration (``RunConfig.to_dict()``) with its plug-ins' parameters resolved: the
    family's and the aggregator's defaults filled in and strings parsed (so ``{}`` and
    ``{shots: 10}`` compare equal when 10 is the default), and ``eval_inner_steps`` unset read as
    ``inner_steps`` (unless the sampler sets the inner steps). Left as given where it cannot be
    built (a family or aggregator this version no longer has)."""
    out = dict(config)
    try:
        cfg = RunConfig.from_dict({k: v for k, v in config.items() if k in RUN_SETTINGS})
        from gabench.tasks import make_family

        out["family_params"] = make_family(cfg.family, cfg.family_params).config()
        out["aggregator_params"] = cfg.build_aggregator().config()
    except Exception:  # noqa: BLE001 - compared as written instead
        return out
    if out.get("eval_inner_steps") is None and "inner_steps" not in tuned:
        out["eval_inner_steps"] = cfg.inner_steps
    return out


def expected_tuning_setup(tc: TuneConfig) -> dict[str, Any]:
    """The setup ``tc`` asks for (see :mod:`gabench._tuning_setup`)."""
    return expected_setup(tc.base.to_dict(), tc.objective, tc.select, tuned_ranges(tc), resolved_config)


#: The trials whose setup counts: finished ones and those running now.
COUNTED = (*FINISHED, optuna.trial.TrialState.RUNNING)


def study_setup(study: optuna.Study, tuned: set[str] | None = None) -> dict[str, Any] | None:
    """The setup the study's trials ran under (None: no such trial): its finished trials, and
    its running ones that have sampled every name of ``tuned`` (None: finished trials only).

    A running trial whose objective has not sampled every tuned parameter yet has partial search
    ranges (none, or alpha without beta); read as another setup, they made two tuners started
    together on one study refuse each other ("beta tuned too").
    """
    trials = [t for t in study.get_trials(deepcopy=False, states=COUNTED)
              if t.state != optuna.trial.TrialState.RUNNING
              or (tuned is not None and t.distributions and tuned <= set(t.distributions))]
    return recorded_setup(study.user_attrs, (t.distributions for t in trials), resolved_config)


def run_defaults() -> dict[str, Any]:
    """Every run setting's default (for studies recorded before a setting existed)."""
    out = {}
    for f in dataclasses.fields(RunConfig):
        out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    return out


def study_changes(study: optuna.Study, tc: TuneConfig) -> list[str]:
    """How ``tc``'s setup differs from the one the study's trials ran under: run settings
    (steps, family parameters, outlier fraction, ...; not alpha, beta, the meta-test or the
    device), objective, selection and search ranges. [] when the same, or no trial has finished
    or is running with every parameter ``tc`` tunes sampled (see :func:`study_setup`)."""
    return setup_changes(study_setup(study, set(tuned_ranges(tc))), expected_tuning_setup(tc), run_defaults())


def existing_studies(tcs: list[TuneConfig]) -> list[tuple[TuneConfig, optuna.Study | None]]:
    """Each of ``tcs`` with its Optuna study, or None where the storage or the study does not
    exist yet; each storage is opened once, for reading (nothing is created)."""
    opened: dict[str, optuna.storages.BaseStorage | None] = {}
    out: list[tuple[TuneConfig, optuna.Study | None]] = []
    for tc in tcs:
        if tc.storage not in opened:
            try:
                opened[tc.storage] = make_storage(tc.storage, create=False)
            except ConfigError:
                opened[tc.storage] = None
        storage, study = opened[tc.storage], None
        if storage is not None:
            try:
                study = optuna.load_study(study_name=tc.study_name, storage=storage)
            except KeyError:
                pass
        out.append((tc, study))
    return out


def changed_studies(tcs: list[TuneConfig]) -> list[tuple[str, int, list[str]]]:
    """The existing studies among ``tcs`` tuned under another setup: (name, finished trials,
    changes). Reads only: a storage that does not exist yet holds none."""
    out = []
    for tc, study in existing_studies(tcs):
        if study is None:
            continue
        changes = study_changes(study, tc)
        if changes:
            out.append((tc.study_name, len(study.get_trials(deepcopy=False, states=COUNTED)), changes))
    return out


class SetupChangedError(ConfigError):
    """Optuna studies whose trials ran under another setup than the one asked for (one line)."""

    def __init__(self, changed: list[tuple[str, int, list[str]]]) -> None:
        self.changed = changed
        parts = [f"Optuna study {name!r}: its {n} trials ran under another setup ({'; '.join(ch)})"
                 for name, n, ch in changed]
        message = "; ".join(parts) + ("; new trials would not be comparable with them: rerun with "
                                      "--retune-changed to delete them and tune again from scratch")
        ConfigError.__init__(self, "--retune-changed", False, message)
        ValueError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.changed,))


def cell_states(tcs: list[TuneConfig]) -> list[tuple[str, str]]:
    """For ``gabench tune --study --plan``: each study's state as (text, kind), kind one of
    ``missing``, ``partial``, ``tuned`` and ``changed``; reads only (nothing is created)."""
    out = []
    for tc, study in existing_studies(tcs):
        if study is None:
            out.append((f"not started (0 of {tc.trials} trials)", "missing"))
            continue
        changes = study_changes(study, tc)
        if changes:
            out.append((f"tuned under another setup ({'; '.join(changes)}): --retune-changed", "changed"))
            continue
        done = finished_trials(study)
        running = counted_trials(study) - done
        extra = f", {running} running" if running else ""
        full = tc.trials is not None and done >= tc.trials
        out.append((f"{done} of {tc.trials} trials{extra}" + (" (tuned)" if full else ""),
                    "tuned" if full else "partial"))
    return out


def _retune_if_changed(tc: TuneConfig, storage: optuna.storages.BaseStorage) -> None:
    """Before the study is created or resumed: if it exists and its trials ran under another
    setup, refuse (:class:`SetupChangedError`), or under ``retune_changed`` delete it, which
    is refused while any of its trials is running elsewhere (stale ones are reaped first)."""
    try:
        study = optuna.load_study(study_name=tc.study_name, storage=storage)
    except KeyError:
        return
    changes = study_changes(study, tc)
    if not changes:
        return
    counted = len(study.get_trials(deepcopy=False, states=COUNTED))
    if not tc.retune_changed:
        raise SetupChangedError([(tc.study_name, counted, changes)])
    reap_stale_trials(study, tc.stale_after_s)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        raise ConfigError("--retune-changed", True, (
            f"no trial running on Optuna study {tc.study_name!r} before it is deleted ({len(running)} "
            f"are: stop the tuner that runs them, or wait until their heartbeat is {tc.stale_after_s:.0f} s "
            "old if their process died)"))
    optuna.delete_study(study_name=tc.study_name, storage=storage)
    print(f"[{tc.study_name}] deleted its {counted} trials, which ran under another setup "
          f"({'; '.join(changes)}); tuning it again from scratch", flush=True)


# --------------------------------------------------------------------------- study
def tune(tc: TuneConfig) -> optuna.Study:
    """Create or resume the study, run the trials (in ``workers`` processes), report the best.

    Re-running with the same storage and study name resumes: ``trials`` is the number of
    finished trials the study should hold, so an interrupted study is completed, not restarted.
    Trials left RUNNING by a process that died are marked FAIL first (no heartbeat for
    ``stale_after_s``); SIGTERM stops the workers, whose running trials are marked FAIL.
    A study whose finished trials ran under another setup (:func:`study_changes`) is refused,
    or with ``retune_changed`` deleted and tuned again from scratch.
    """
    tc.validate()
    _quiet_optuna()
    direction = OBJECTIVES[tc.objective][1]
    storage = make_storage(tc.storage)
    _retune_if_changed(tc, storage)
    study = optuna.create_study(storage=storage, study_name=tc.study_name, direction=direction,
                                sampler=make_sampler(tc), pruner=make_pruner(tc), load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("--objective", tc.objective,
                          f"the direction study {tc.study_name!r} was created with "
                          f"({study.direction.name.lower()})")
    if not study.user_attrs.get("base_config") or not study.get_trials(deepcopy=False, states=COUNTED):
        # a new study, or one whose trials all failed: the setup is this one's (never while
        # another process's trials are running: they ran under the setup recorded)
        study.set_user_attr("base_config", tc.base.to_dict())
        study.set_user_attr("objective", tc.objective)
        study.set_user_attr("select", tc.select)
    if not study.metric_names:
        study.set_metric_names([objective_name(tc)])
    parent = _parent_run(study, tc)
    reaped = reap_stale_trials(study, tc.stale_after_s)
    if reaped:
        print(f"[{tc.study_name}] marked {len(reaped)} stale RUNNING trial(s) FAIL (no heartbeat for "
              f"{tc.stale_after_s:.0f} s): {reaped}", flush=True)
    done = finished_trials(study)
    running = counted_trials(study) - done
    remaining = None if tc.trials is None else max(0, tc.trials - done - running)
    print(f"study {tc.study_name!r} in {redact(tc.storage)}: {done} finished trials"
          f"{f', {running} running elsewhere' if running else ''}, "
          f"{'running until timeout' if remaining is None else f'{remaining} to run'}"
          f" on {tc.workers} worker(s)", flush=True)
    if remaining != 0:
        if tc.workers == 1:
            _worker(tc, 0, parent)
        else:
            _run_workers(tc, parent)
    study = optuna.load_study(study_name=tc.study_name, storage=storage)
    summarise(study, tc, parent)
    return study


def objective_name(tc: TuneConfig) -> str:
    """The study's metric name, e.g. ``val loss_post`` (shown by optuna-dashboard and plots)."""
    return f"val {OBJECTIVES[tc.objective][0]}"


def _run_workers(tc: TuneConfig, parent_run_id: str | None) -> None:
    """``tc.workers`` processes on the study; they die with this process, and SIGTERM or Ctrl-C
    here stops them (each marks its running trial FAIL) before re-raising."""
    import signal

    pool = ProcessPoolExecutor(tc.workers, mp_context=get_context("spawn"))
    futures = [pool.submit(_worker, tc, i, parent_run_id, os.getpid()) for i in range(tc.workers)]
    try:
        with sigterm_raises():
            for f in futures:
                f.result()
    except BaseException:
        procs = list(getattr(pool, "_processes", {}).values())
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)  # the worker marks its trial FAIL and exits
        for proc in procs:
            proc.join(timeout=30)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _parent_run(study: optuna.Study, tc: TuneConfig) -> str | None:
    """The study's MLflow parent run, created once and remembered in the study."""
    if tc.tracking_uri is None:
        return None
    from gabench.tracking import experiment_id, tracking_client
    from gabench.tracking._mlflow import git_commit

    client = tracking_client(tc.tracking_uri)
    key = f"mlflow_parent_run_id::{redact(tc.tracking_uri)}"  # never the password
    run_id = study.user_attrs.get(key)
    if run_id:
        try:
            client.get_run(run_id)
            return run_id
        except Exception:  # deleted or another store: make a new one
            pass
    exp = experiment_id(client, tc.tracking_uri, tc.experiment,
                        "Optuna studies of gabench (`gabench tune`): one parent run per study, one child "
                        "run per trial (meta-validation only; no meta-test inside tuning).")
    tags = {"optuna_study": tc.study_name, "family": tc.base.family, "method": tc.base.method,
            "storage": redact(tc.storage)}
    if git_commit():
        tags["git_commit"] = git_commit()
    run = client.create_run(exp, run_name=tc.study_name, tags=tags)
    study.set_user_attr(key, run.info.run_id)
    return run.info.run_id


def summarise(study: optuna.Study, tc: TuneConfig, parent_run_id: str | None) -> dict[str, Any]:
    """Best trial, trials.csv and Optuna's plots: to ``tc.out`` and the MLflow parent run."""
    import tempfile

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    summary = {
        "study": tc.study_name, "storage": redact(tc.storage), "objective": tc.objective,
        "direction": study.direction.name.lower(),
        "trials": {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                   for s in optuna.trial.TrialState},
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_trial": None if best is None else best.number,
    }
    if best is None:
        print(f"[{tc.study_name}] no trial completed", flush=True)
    else:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in best.params.items())
        print(f"[{tc.study_name}] best trial {best.number}: {params} -> val "
              f"{OBJECTIVES[tc.objective][0]} {best.value:.4f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gabench-tune-") as tmp:
        out = Path(tmp)
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        (out / "best.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if best is not None:
            write_plots(study, out)
        if tc.out is not None:
            tc.out.mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                (tc.out / f.name).write_bytes(f.read_bytes())
        if parent_run_id is not None:
            from mlflow.entities import Metric, Param

            from gabench.tracking import tracking_client

            client = tracking_client(tc.tracking_uri)
            client.log_artifacts(parent_run_id, str(out))
            now = int(time.time() * 1000)
            metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in summary["trials"].items()]
            params = []
            if best is not None:
                metrics.append(Metric("best_value", float(best.value), now, 0))
                client.set_tag(parent_run_id, "best_params", json.dumps(best.params))
                existing = client.get_run(parent_run_id).data.params
                params = [Param(f"best_{k}", str(v)) for k, v in best.params.items()
                          if f"best_{k}" not in existing]
                client.set_tag(parent_run_id, "best_trial", str(best.number))
            client.log_batch(parent_run_id, metrics=metrics, params=params)
            from gabench.tracking import set_terminated  # MLflow's "View run" line, redacted

            set_terminated(client, parent_run_id, "FINISHED", tc.tracking_uri)
    return summary


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history, parameter importances and the alpha x beta contour as PNGs.

    Titles name the study and the objective. A loss objective whose values are all positive is
    drawn on a log scale (history: log y axis; contour: colours by log10 of the loss), so that
    one diverging trial does not flatten every other one; log-scaled parameter axes get at most
    a few, slanted tick labels, so that they do not overlap.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator
    from optuna.visualization import matplotlib as ovm

    metric = OBJECTIVES.get(study.user_attrs.get("objective", "loss"), OBJECTIVES["loss"])[0]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = [t.value for t in complete if t.value is not None]
    log_loss = study.direction.name == "MINIMIZE" and bool(values) and min(values) > 0
    better = "lower" if study.direction.name == "MINIMIZE" else "higher"
    name = f"val {metric}"
    contour_kwargs: dict[str, Any] = {"target_name": name}
    if log_loss:
        contour_kwargs = {"target": lambda t: math.log10(t.value), "target_name": f"log10 {name}"}
    written = []
    plots: list[tuple[str, str, Callable[[], Any]]] = [
        ("optimization_history.png", f"{study.study_name}: {name} by trial ({better} is better)",
         lambda: ovm.plot_optimization_history(study, target_name=name)),
        ("contour_alpha_beta.png", f"{study.study_name}: {contour_kwargs['target_name']} over "
                                   "alpha and beta (completed trials)",
         lambda: ovm.plot_contour(study, params=["alpha", "beta"], **contour_kwargs)),
    ]
    if len(complete) >= 2:
        plots.append(("param_importances.png",
                      f"{study.study_name}: importance of each tuned parameter for {name}",
                      lambda: ovm.plot_param_importances(study, target_name=name)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backends are "experimental"
        for filename, title, make in plots:
            try:
                ax = make()
            except (ValueError, RuntimeError) as exc:  # too few trials for this plot
                print(f"[{study.study_name}] {filename} skipped: {exc}", file=sys.stderr)
                continue
            axes = list(ax.flat) if hasattr(ax, "flat") else [ax]
            fig = axes[0].figure
            for a in axes:
                a.set_title("")
                for axis in (a.xaxis, a.yaxis):
                    if axis.get_scale() == "log":
                        axis.set_major_locator(LogLocator(numticks=5))
                if a.xaxis.get_scale() == "log":
                    a.tick_params(axis="x", labelrotation=30)
            if filename == "optimization_history.png":
                axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
                if log_loss:
                    axes[0].set_yscale("log")
            fig.suptitle(title, fontsize=10)
            fig.set_size_inches(7, 5)
            fig.tight_layout()
            fig.savefig(out / filename, dpi=110)
            plt.close(fig)
            written.append(out / filename)
    return written
