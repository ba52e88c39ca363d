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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna

from gabench._errors import ConfigError, check_choice, check_int, check_positive
from gabench._redact import redact, scrub  # redact: also imported from here by gabench.study
from gabench.config import RunConfig
from gabench.results import Summary
from gabench.trainer import Callback, DivergedError, Trainer

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
OBJECTIVES = {"loss": ("loss_post", "minimize"), "acc": ("acc_post", "maximize")}


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
    """Trials (complete, pruned or failed) the study should hold, counted over every worker and
    machine sharing it; None: until the timeout."""
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
    objective: str = "loss"
    """``loss``: minimise meta-val query loss after adaptation; ``acc``: maximise accuracy."""
    sampler_seed: int = 0
    """Seed of the TPE sampler (worker i uses seed + i)."""
    tracking_uri: str | None = None
    """MLflow URI for the parent run and one child run per trial (None: no tracking)."""
    experiment: str = "gabench-tuning"
    """MLflow experiment of the study."""
    out: Path | None = None
    """Directory for trials.csv, best.json and the plots (None: no local copy)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TuneConfig:
        self.base.validate()
        if self.trials is None and self.timeout is None:
            raise ConfigError("--trials", None, "a number of trials, or a --timeout")
        if self.trials is not None:
            check_int("--trials", self.trials)
        if self.timeout is not None:
            check_positive("--timeout", self.timeout)
        check_int("--workers", self.workers)
        check_choice("--objective", self.objective, OBJECTIVES)
        if self.objective == "acc" and self.base.build_family().task_type != "classification":
            raise ConfigError("--objective", "acc", f"loss for regression family {self.base.family!r}")
        for name, (lo, hi) in (("--alpha-range", self.alpha_range), ("--beta-range", self.beta_range)):
            if not (check_positive(name, lo) < check_positive(name, hi)):
                raise ConfigError(name, f"{lo} {hi}", "LOW HIGH with 0 < LOW < HIGH")
        for name, rng in (("--tune-inner-steps", self.inner_steps_range),
                          ("--tune-meta-batch", self.meta_batch_range)):
            if rng is not None and not (check_int(name, rng[0]) < check_int(name, rng[1])):
                raise ConfigError(name, f"{rng[0]} {rng[1]}", "LOW HIGH integers with 1 <= LOW < HIGH")
        if self.base.eval_every == 0:
            raise ConfigError("--eval-every", 0, "an integer >= 1 (tuning needs meta-validation)")
        make_storage(self.storage)  # fails early on a bad URL or an unreachable database
        return self


# --------------------------------------------------------------------------- storage
def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: an RDB URL (sqlite, postgresql, mysql) or ``journal:PATH``.

    Raises:
        ConfigError: an unknown scheme or a database that cannot be reached.
    """
    _quiet_optuna()
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.name:
            raise ConfigError("--storage", url, "journal:PATH with a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = urllib.parse.urlsplit(url).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError("--storage", redact(url), "sqlite:///PATH, postgresql://USER:PASS@HOST/DB, "
                                                    "mysql://... or journal:PATH")
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


# --------------------------------------------------------------------------- trials
class ValidationReporter(Callback):
    """Feeds each meta-validation to ``trial.report`` and prunes when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.last: float | None = None
        self.last_step: int | None = None

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
    return dataclasses.replace(tc.base, **changes)


def make_objective(tc: TuneConfig, parent_run_id: str | None) -> Callable[[optuna.Trial], float]:
    metric = OBJECTIVES[tc.objective][0]

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, tc)
        reporter = ValidationReporter(trial, metric)
        callbacks: list[Callback] = [reporter]
        tracker = None
        if tc.tracking_uri is not None:
            from gabench.tracking import MLflowTracker

            tracker = MLflowTracker(tc.tracking_uri, tc.experiment, parent_run_id=parent_run_id,
                                    run_name=f"{tc.study_name}__t{trial.number}",
                                    tags={"optuna_study": tc.study_name,
                                          "optuna_trial": str(trial.number)})
            callbacks.append(tracker)
        try:
            result = Trainer.from_config(config, callbacks, progress=False).fit()
        except DivergedError as exc:
            trial.set_user_attr("reason", str(exc))
            if tracker is not None:
                tracker.fail(str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned as exc:
            if tracker is not None:
                tracker.fail(str(exc), "KILLED")
            raise
        if tracker is not None:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
        for name, s in result.test.items():
            trial.set_user_attr(f"test_{name}", s.mean)
        assert reporter.last is not None  # eval_every >= 1 guarantees a validation
        trial.set_user_attr("val_step", reporter.last_step)
        return reporter.last

    return objective


def _print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in trial.params.items())
    if trial.state == optuna.trial.TrialState.COMPLETE:
        what = f"value={trial.value:.4f}"
    else:
        what = f"{trial.state.name.lower()}: {trial.user_attrs.get('reason', '')}"
    print(f"[{study.study_name}] trial {trial.number}: {params} -> {what}", flush=True)


def _worker(tc: TuneConfig, index: int, parent_run_id: str | None) -> int:
    """One worker: run trials of the shared study until it holds ``tc.trials`` trials.

    The budget is global: before each trial the worker counts the study's finished and running
    trials (from every worker and machine), so workers that start at different times share one
    budget. Returns the number of trials this worker ran.
    """
    import torch

    if tc.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tc.workers))
    _quiet_optuna()
    study = optuna.load_study(
        study_name=tc.study_name, storage=make_storage(tc.storage),
        sampler=optuna.samplers.TPESampler(seed=tc.sampler_seed + index),
        pruner=make_pruner(),
    )
    objective = make_objective(tc, parent_run_id)
    deadline = None if tc.timeout is None else time.monotonic() + tc.timeout
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        if tc.trials is not None and counted_trials(study) >= tc.trials:
            break
        study.optimize(objective, n_trials=1, callbacks=[_print_trial], catch=())
        ran += 1
    return ran


def _quiet_optuna() -> None:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_pruner() -> optuna.pruners.BasePruner:
    """Median pruning once 5 trials have finished, after each trial's first validation."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def finished_trials(study: optuna.Study) -> int:
    """Trials that ended: complete, pruned or failed."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def counted_trials(study: optuna.Study) -> int:
    """Trials that count against the budget: finished ones and those running now."""
    return len(study.get_trials(deepcopy=False,
                                states=(*FINISHED, optuna.trial.TrialState.RUNNING)))


# --------------------------------------------------------------------------- study
def tune(tc: TuneConfig) -> optuna.Study:
    """Create or resume the study, run the trials (in ``workers`` processes), report the best.

    Re-running with the same storage and study name resumes: ``trials`` is the number of
    finished trials the study should hold, so an interrupted study is completed, not restarted.
    """
    tc.validate()
    _quiet_optuna()
    direction = OBJECTIVES[tc.objective][1]
    storage = make_storage(tc.storage)
    study = optuna.create_study(storage=storage, study_name=tc.study_name, direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=tc.sampler_seed),
                                pruner=make_pruner(), load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("--objective", tc.objective,
                          f"the direction study {tc.study_name!r} was created with "
                          f"({study.direction.name.lower()})")
    if not study.user_attrs.get("base_config"):
        study.set_user_attr("base_config", tc.base.to_dict())
        study.set_user_attr("objective", tc.objective)
    parent = _parent_run(study, tc)
    done = finished_trials(study)
    remaining = None if tc.trials is None else max(0, tc.trials - done)
    print(f"study {tc.study_name!r} in {redact(tc.storage)}: {done} finished trials, "
          f"{'running until timeout' if remaining is None else f'{remaining} to run'}"
          f" on {tc.workers} worker(s)", flush=True)
    if remaining != 0:
        if tc.workers == 1:
            _worker(tc, 0, parent)
        else:
            with ProcessPoolExecutor(tc.workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_worker, tc, i, parent) for i in range(tc.workers)]
                for f in futures:
                    f.result()
    study = optuna.load_study(study_name=tc.study_name, storage=storage)
    summarise(study, tc, parent)
    return study


def _parent_run(study: optuna.Study, tc: TuneConfig) -> str | None:
    """The study's MLflow parent run, created once and remembered in the study."""
    if tc.tracking_uri is None:
        return None
    from mlflow import MlflowClient

    from gabench.tracking._mlflow import experiment_id, git_commit

    client = MlflowClient(tc.tracking_uri)
    key = f"mlflow_parent_run_id::{redact(tc.tracking_uri)}"  # never the password
    run_id = study.user_attrs.get(key)
    if run_id:
        try:
            client.get_run(run_id)
            return run_id
        except Exception:  # deleted or another store: make a new one
            pass
    exp = experiment_id(client, tc.tracking_uri, tc.experiment)
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
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param

            client = MlflowClient(tc.tracking_uri)
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
