"""MLflow tracking as a trainer callback: params, tags, metrics by step, artifacts."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gabench import __version__
from gabench._processes import signals_deferred
from gabench._provenance import git_commit
from gabench._redact import redact, scrub
from gabench.results import RunResult, Summary
from gabench.tracking._store import experiment_id, set_terminated, tracking_client
from gabench.trainer import Callback

if TYPE_CHECKING:
    from gabench.tasks import TaskFamily
    from gabench.trainer import Trainer

__all__ = ["MLflowTracker", "experiment_id", "family_params", "flatten", "learning_curve_png",
           "run_display_name", "run_status", "task_weights_png", "git_commit"]

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
#: At most this many points per ``train/`` curve: longer runs log means over windows of
#: ``ceil(steps / MAX_TRAIN_POINTS)`` steps (results.parquet keeps every step).
MAX_TRAIN_POINTS = 100
#: Seconds between sends of buffered training metrics while a run trains (so that the MLflow UI
#: follows a long run); everything is sent at each evaluation and at the end anyway.
SEND_EVERY_S = 30.0
#: ``weights.csv`` (a previewable copy of weights.parquet) is logged up to this many rows.
MAX_WEIGHT_CSV_ROWS = 25_000
#: PNGs with light zlib compression: a quarter of a figure's cost saved, files a little larger.
PNG_FAST = {"compress_level": 1}
#: Points of the raw and of the smoothed meta-train curve drawn in learning_curve.png (every
#: step stays in results.parquet).
RAW_POINTS, SMOOTH_POINTS = 300, 400


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested dicts to ``a.b`` keys with string values (MLflow params)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)
    return out


def family_params(family: TaskFamily) -> dict[str, Any]:
    """The effective constructor parameters of ``family``, defaults included (the base family
    of an :class:`~gabench.tasks.OutlierTasks` wrapper)."""
    base = getattr(family, "base", family)
    return dict(base.config())


def run_display_name(method: str, family: str, seed: Any, *details: str) -> str:
    """The MLflow run name: the distinguishing part first, e.g. ``reptile+ga · sine · s0``
    (``details`` such as a study setting appended), so that runs of different methods can be
    told apart in MLflow's run list even when the name is cut off."""
    return " · ".join([str(method), str(family), f"s{seed}", *(d for d in details if d)])


class MLflowTracker(Callback):
    """Mirrors a run into MLflow; the trainer, algorithms and aggregators know nothing of it.

    Logged:

    - params: every config field; ``family_params.KEY`` for every family parameter with its
      effective value (defaults included); ``train_log_stride``.
    - tags: family, algorithm, aggregator, method, seed, outlier_fraction, gabench_version,
      git_commit; ``test_ci95.METRIC`` (``[low, high]``, the 95% CI over meta-test tasks).
    - metrics: ``train/*`` (query and support loss, weight statistics) as means over windows of
      ``train_log_stride`` steps (``w_min``/``w_max``: min/max over the window), logged at the
      window's last step, at most :data:`MAX_TRAIN_POINTS` points per curve, sent in batches;
      a run of windows with equal values is sent as its first and last points (the line chart
      is the same; the plain mean's constant weight statistics cost two points each);
      ``val/*`` at each meta-validation; ``test/*`` once (means; the bounds are in the tags and
      config.json, so that they do not fill the chart view with single points).
    - artifacts: results.parquet (every step), weights.parquet, config.json (with the resolved
      family parameters and the test summaries), learning_curve.png, task_weights.png (when
      the weights vary: not for the plain mean, whose weights are all 1/T; neither PNG when
      ``plots`` is False) and, up to
      :data:`MAX_WEIGHT_CSV_ROWS` rows, weights.csv (previewable in the UI).

    Args:
        tracking_uri: Where to track (checked beforehand with
            :func:`~gabench.tracking.check_tracking_uri`).
        experiment: Experiment name.
        parent_run_id: Makes this run a child (an Optuna trial under its study's run).
        run_name: Defaults to :func:`run_display_name` of the run (``method · family · sSEED``).
        tags: Extra tags.
        description: Description of the experiment if this run creates it (default
            :data:`~gabench.tracking.DEFAULT_DESCRIPTION`).
        log_stride: Steps per logged ``train/`` point (None: ``ceil(steps / MAX_TRAIN_POINTS)``).
        plots: Render learning_curve.png and task_weights.png at the end of the run. Each costs
            about 0.1 s of CPU (matplotlib), a few percent of a default sine run; False leaves
            them out (every number they show stays in results.parquet and weights.parquet, and
            MLflow's own charts draw the ``train/`` and ``val/`` curves).
    """

    def __init__(self, tracking_uri: str, experiment: str = "gabench",
                 parent_run_id: str | None = None, run_name: str | None = None,
                 tags: dict[str, str] | None = None, description: str | None = None,
                 log_stride: int | None = None, plots: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.display_uri = redact(tracking_uri)
        self.client = tracking_client(tracking_uri)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.extra_tags = dict(tags or {})
        self.description = description
        self.log_stride = log_stride
        self.plots = plots
        self.stride = 1
        self.total_steps = 0
        self.run_id: str | None = None
        self.seconds = 0.0  # time spent in tracking calls
        self._pending_steps: list[np.ndarray] = []
        self._pending: dict[str, list[np.ndarray]] = {}
        self._outbox: list[tuple[str, float, int]] = []
        self._last_value: dict[str, float] = {}  # per train/ metric, the value of its current run
        self._held: dict[str, tuple[float, int]] = {}  # the run's last point, not yet sent
        self._tag_box: dict[str, str] = {}
        self._last_send = time.monotonic()
        self._family: TaskFamily | None = None

    # ------------------------------------------------------------------ sending
    def _send(self) -> None:
        """Send the buffered metrics and tags, in as few ``log_batch`` calls as MLflow allows."""
        from mlflow.entities import Metric

        items, self._outbox = self._outbox, []
        tags, self._tag_box = self._tag_box, {}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in items if not _is_nan(v)]
        first = True
        for i in range(0, max(len(metrics), 1), MAX_BATCH):
            batch = metrics[i:i + MAX_BATCH]
            if batch or (first and tags):
                self.client.log_batch(self.run_id, metrics=batch, tags=_tags(tags) if first else [])
            first = False
        self._last_send = time.monotonic()

    def _windows(self, final: bool) -> None:
        """Move the complete windows of pending per-step values to the outbox (all of them
        when ``final``)."""
        if not self._pending_steps:
            if final:
                self._release_held()
            return
        steps = np.concatenate(self._pending_steps)
        values = {k: np.concatenate(v) for k, v in self._pending.items()}
        stride = self.stride
        upto = int(steps[-1]) if (final or steps[-1] >= self.total_steps) else (
            int(steps[-1]) // stride * stride)
        n = int(np.searchsorted(steps, upto, side="right"))
        if n == 0:
            return
        window = (steps[:n] - 1) // stride
        starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        ends = np.maximum.reduceat(steps[:n], starts)
        for name, v in values.items():
            x = v[:n].astype(np.float64)
            if name == "w_min":
                agg = np.fmin.reduceat(x, starts)
            elif name == "w_max":
                agg = np.fmax.reduceat(x, starts)
            else:
                finite = np.isfinite(x)
                count = np.add.reduceat(finite.astype(np.float64), starts)
                total = np.add.reduceat(np.where(finite, x, 0.0), starts)
                with np.errstate(invalid="ignore", divide="ignore"):
                    agg = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            self._elide(f"train/{name}", agg.tolist(), ends.tolist())
        self._pending_steps = [steps[n:]] if n < len(steps) else []
        self._pending = {k: [v[n:]] for k, v in values.items()} if n < len(steps) else {}
        if final:
            self._release_held()

    def _release_held(self) -> None:
        """Send the last points of the runs of equal values still open (see :meth:`_elide`)."""
        self._outbox.extend((key, v, s) for key, (v, s) in self._held.items())
        self._held.clear()

    def _elide(self, key: str, values: list[float], steps: list[int]) -> None:
        """Move the points of a ``train/`` curve to the outbox, except the inner points of each
        run of equal values: a run is sent as its first and last points, which MLflow's line
        charts join into the same flat line (the plain mean's weight statistics are constant,
        so their curves cost two points instead of one per window)."""
        last, held = self._last_value.get(key), self._held.pop(key, None)
        for v, s in zip(values, steps, strict=True):
            if last is not None and (v == last or (math.isnan(v) and math.isnan(last))):
                held = (v, s)  # inside a run: only its last point so far is kept
                continue
            if held is not None:
                self._outbox.append((key, *held))
                held = None
            self._outbox.append((key, v, s))
            last = v
        if last is not None:
            self._last_value[key] = last
        if held is not None:
            self._held[key] = held

    # ------------------------------------------------------------------ hooks
    def on_start(self, trainer: Trainer) -> None:
        from mlflow.entities import Param

        t0 = time.perf_counter()
        info = trainer.run_info
        self._family = trainer.family
        self.total_steps = int(trainer.steps)
        self.stride = int(self.log_stride or max(1, math.ceil(self.total_steps / MAX_TRAIN_POINTS)))
        tags = {
            "family": info.get("family"), "algorithm": info.get("algorithm"),
            "aggregator": info.get("aggregator"), "method": info.get("method"),
            "seed": info.get("seed"), "outlier_fraction": info.get("outlier_fraction"),
            "gabench_version": __version__, **self.extra_tags,
        }
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        exp = experiment_id(self.client, self.tracking_uri, self.experiment, self.description)
        name = self.run_name
        if name is None:
            outliers = info.get("outlier_fraction") or 0
            name = run_display_name(info.get("method", ""), info.get("family", ""),
                                    info.get("seed", ""),
                                    f"{float(outliers):g} outliers" if outliers else "")
        # A SIGTERM between the creation of the run and keeping its id would leave a RUNNING run
        # that on_fail cannot find: the signal is delivered once the id is kept.
        with signals_deferred():
            run = self.client.create_run(exp, run_name=name,
                                         tags={k: str(v) for k, v in tags.items() if v is not None})
            self.run_id = run.info.run_id
        config = dict(trainer.config)
        config.pop("family_params", None)
        params = flatten("", config, {})
        params.update(flatten("family_params", family_params(trainer.family), {}))
        params["train_log_stride"] = str(self.stride)
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self._last_send = time.monotonic()
        self.seconds += time.perf_counter() - t0

    def on_train_log(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        self._pending_steps.append(np.asarray(steps))
        for name, values in metrics.items():
            self._pending.setdefault(name, []).append(np.asarray(values))
        self._windows(final=False)
        if len(self._outbox) >= MAX_BATCH or time.monotonic() - self._last_send > SEND_EVERY_S:
            self._send()
        self.seconds += time.perf_counter() - t0

    def on_eval(self, step: int, split: str, summary: dict[str, Summary]) -> None:
        t0 = time.perf_counter()
        self._windows(final=split == "test")
        self._outbox.extend((f"{split}/{m}", s.mean, step) for m, s in summary.items())
        if split == "test":  # sent with the rest at the end (or by fail)
            self._tag_box.update({f"test_ci95.{m}": f"[{s.ci_low:.6g}, {s.ci_high:.6g}]"
                                  for m, s in summary.items()})
        elif time.monotonic() - self._last_send > SEND_EVERY_S:
            self._send()
        self.seconds += time.perf_counter() - t0

    def on_end(self, result: RunResult) -> None:
        t0 = time.perf_counter()
        self._windows(final=True)
        self._outbox.append(("train/wall_seconds", result.wall_seconds, 0))
        config = dict(result.config)
        if self._family is not None:
            config["family_params"] = family_params(self._family)
        # The metrics go out on another thread while this one writes the artifacts: a store's
        # commit mostly waits for the disk (SQLite syncs its file), the figures need the CPU.
        with tempfile.TemporaryDirectory(prefix="gabench-artifacts-") as tmp, \
                ThreadPoolExecutor(1, thread_name_prefix="gabench-mlflow") as pool:
            sent = pool.submit(self._send)
            out = Path(tmp)
            result.results.to_parquet(out / "results.parquet", index=False)
            result.weights.to_parquet(out / "weights.parquet", index=False)
            (out / "config.json").write_text(json.dumps(
                {"config": config, "test": {k: vars(v) for k, v in result.test.items()},
                 "wall_seconds": result.wall_seconds, "train_log_stride": self.stride},
                indent=2, default=str) + "\n")
            if self.plots:
                learning_curve_png(result, out / "learning_curve.png")
                weights = result.weights.weight.to_numpy()
                if len(weights) and np.ptp(weights) > 1e-12 * max(1.0, abs(float(weights[0]))):
                    task_weights_png(result, out / "task_weights.png")  # not for the mean's 1/T
            if 0 < len(result.weights) <= MAX_WEIGHT_CSV_ROWS:
                _write_csv(result.weights, out / "weights.csv")
            sent.result()  # raises what the sending raised
            self.client.log_artifacts(self.run_id, str(out))
        set_terminated(self.client, self.run_id, "FINISHED", self.tracking_uri)
        self.seconds += time.perf_counter() - t0

    def on_fail(self, exc: BaseException) -> None:
        """The trainer's failure hook: KILLED when the run was stopped (Ctrl-C, SIGTERM, an Optuna
        prune, a cancelled Dask task), FAILED otherwise (see :func:`run_status`)."""
        self.fail(f"{type(exc).__name__}: {exc}", run_status(exc))

    def fail(self, reason: str, status: str = "FAILED") -> None:
        """Mark the run as ended without success (FAILED or KILLED), with the reason as a tag
        (the metrics buffered so far are sent first)."""
        if self.run_id is None:
            return
        try:
            self._windows(final=True)
            self._send()
        except Exception:  # the reason and status matter more than the last points
            self._outbox = []
        self.client.set_tag(self.run_id, "failure_reason", scrub(reason, self.tracking_uri)[:5000])
        set_terminated(self.client, self.run_id, status, self.tracking_uri)


def run_status(exc: BaseException) -> str:
    """The MLflow status of a run that ``exc`` ended.

    KILLED when the run was stopped rather than broken: Ctrl-C or SIGTERM (``KeyboardInterrupt``,
    ``SystemExit``), an Optuna prune (``optuna.TrialPruned``) or a gabench exception whose class
    sets ``gabench_run_status = "KILLED"`` (a cancelled Dask task); FAILED otherwise.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "KILLED"
    if getattr(exc, "gabench_run_status", None) == "KILLED":
        return "KILLED"
    optuna = sys.modules.get("optuna")  # a TrialPruned means optuna is imported: never import it here
    if optuna is not None and isinstance(exc, optuna.TrialPruned):
        return "KILLED"
    return "FAILED"


def _write_csv(table: Any, path: Path) -> None:
    """``table`` (a DataFrame) as CSV, written by Arrow (ten times faster than pandas)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.Table.from_pandas(table, preserve_index=False), str(path))


def _tags(items: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in items.items()]


def _is_nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn with Agg, without pyplot (no global state, no GUI backend), with
    fixed margins (``tight_layout`` would draw every figure twice: a third of the tracker's cost)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    fig.subplots_adjust(left=0.11, right=0.98, top=0.91, bottom=0.13)
    return fig


def _title(cfg: dict[str, Any], what: str) -> str:
    algo = "fomaml" if cfg.get("first_order") else cfg.get("algorithm")
    method = algo if cfg.get("aggregator") == "mean" else f"{algo}+{cfg.get('aggregator')}"
    outliers = cfg.get("outlier_fraction") or 0
    return (f"{what}: {method} on {cfg.get('family')}, seed {cfg.get('seed')}"
            f"{f', {float(outliers):.0%} outlier tasks' if outliers else ''}")


def learning_curve_png(result: RunResult, path: Path) -> Path:
    """Meta-train query loss (moving average) and meta-validation loss (95% CI band) by step."""
    res = result.results
    train = res[(res.split == "train") & (res.metric == "query_loss")].sort_values("step")
    val = res[(res.split == "val") & (res.metric == "loss_post")].sort_values("step")
    fig = _figure(7, 4)
    ax = fig.subplots()
    if len(train):
        window = max(1, len(train) // 50)
        smooth = train.value.rolling(window, min_periods=1).mean()
        # At most ~RAW_POINTS raw and ~SMOOTH_POINTS smoothed points are drawn: a 630-pixel-wide
        # figure shows no more, and Agg's time grows with the length of a jagged line.
        raw, thin = max(1, len(train) // RAW_POINTS), max(1, len(train) // SMOOTH_POINTS)
        ax.plot(train.step.iloc[::raw], train.value.iloc[::raw], color="tab:blue", alpha=0.2, lw=0.8)
        ax.plot(train.step.iloc[::thin], smooth.iloc[::thin], color="tab:blue", lw=1.5,
                label=f"meta-train query loss (moving mean, {window} steps)")
    if len(val):
        ax.plot(val.step, val.value, "o-", color="tab:orange", lw=1.5, ms=3,
                label="meta-val query loss after adaptation")
        ax.fill_between(val.step, val.ci_low, val.ci_high, color="tab:orange", alpha=0.25,
                        label="95% CI over val tasks")
    test = result.test.get("loss_post")
    if test is not None:
        ax.axhline(test.mean, color="tab:green", ls="--", lw=1,
                   label=f"meta-test loss after adaptation: {test.mean:.3f}")
    ax.set_title(_title(result.config, "Learning curve"), fontsize=10)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, pil_kwargs=PNG_FAST)
    return path


def task_weights_png(result: RunResult, path: Path, max_points: int = 5_000) -> Path:
    """The weight of every task of every meta-batch over training, corrupted tasks marked.

    Each dot is one task of one meta-batch (a subsample of steps when there are more than
    ``max_points`` dots); the lines are the mean weight of the clean and of the corrupted tasks
    per step (moving mean); the dashed line is ``1/T``, the weight of the plain mean.
    """
    w = result.weights
    fig = _figure(7, 4)
    ax = fig.subplots()
    values = w.weight.to_numpy()
    if len(w) and np.ptp(values) <= 1e-12 * max(1.0, abs(float(values[0]))):
        # The plain mean (or any constant weighting): one line says it all.
        T = int(w.task.max()) + 1
        ax.plot([w.step.min(), w.step.max()], [values[0]] * 2, color="tab:blue", lw=1.5,
                label=f"every task: weight {values[0]:.4g} (1/T = 1/{T})")
        ax.legend(fontsize=8)
    elif len(w):
        T = int(w.task.max()) + 1
        steps = np.sort(w.step.unique())
        keep = steps[::max(1, math.ceil(len(w) / max_points))]
        dots = w[w.step.isin(keep)]
        clean, bad = dots[~dots.corrupted], dots[dots.corrupted]
        alpha = min(0.7, max(0.15, 1000 / max(1, len(dots))))
        ax.scatter(clean.step, clean.weight, s=4, color="tab:blue", alpha=alpha, lw=0,
                   label="clean task")
        if len(bad):
            ax.scatter(bad.step, bad.weight, s=9, color="tab:red", alpha=0.6, marker="x", lw=0.7,
                       label="corrupted task")
        window = max(1, len(steps) // 50)
        means = w.groupby(["step", "corrupted"]).weight.mean().unstack("corrupted")
        for flag, color, label in ((False, "tab:blue", "clean"), (True, "tab:red", "corrupted")):
            if flag in means:
                ax.plot(means.index, means[flag].rolling(window, min_periods=1).mean(), color=color,
                        lw=1.5, label=f"mean weight, {label} (moving mean, {window} steps)")
        ax.axhline(1 / T, color="black", ls="--", lw=0.8, label=f"1/T = 1/{T} (plain mean)")
        ax.legend(fontsize=7, markerscale=2)
    else:
        ax.text(0.5, 0.5, "no meta-training steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(_title(result.config, "Task weights"), fontsize=10)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("task weight in its meta-batch")
    ax.grid(alpha=0.3)
    fig.savefig(path, pil_kwargs=PNG_FAST)
    return path
