"""MLflow tracking as a trainer callback: params, tags, metrics by step, artifacts."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gabench import __version__
from gabench._provenance import git_commit
from gabench.results import RunResult, Summary
from gabench.tracking._uri import sqlite_path
from gabench.trainer import Callback

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from gabench.trainer import Trainer

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested dicts to ``a.b`` keys with string values (MLflow params)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)
    return out


def experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """Id of experiment ``name``, created if needed (next to the database for SQLite stores)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    db = sqlite_path(tracking_uri)
    if db is not None:
        location = (db.absolute().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MLflowTracker(Callback):
    """Mirrors a run into MLflow; the trainer, algorithms and aggregators know nothing of it.

    Logged: every config field as a param (family parameters as ``family_params.KEY``); tags
    family, algorithm, aggregator, method, seed, outlier_fraction, gabench_version, git_commit;
    metrics by step with prefixes ``train/`` (query and support loss, weight statistics),
    ``val/`` and ``test/`` (with ``_ci_low``/``_ci_high`` bounds for the meta-test); artifacts
    results.parquet, weights.parquet, config.json and learning_curve.png.

    Args:
        tracking_uri: Where to track (checked beforehand with
            :func:`~gabench.tracking.check_tracking_uri`).
        experiment: Experiment name.
        parent_run_id: Makes this run a child (an Optuna trial under its study's run).
        run_name: Defaults to the trainer's run name (``family__algorithm__aggregator__sSEED``).
        tags: Extra tags.
    """

    def __init__(self, tracking_uri: str, experiment: str = "gabench",
                 parent_run_id: str | None = None, run_name: str | None = None,
                 tags: dict[str, str] | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.extra_tags = dict(tags or {})
        self.run_id: str | None = None
        self.seconds = 0.0  # time spent in tracking calls

    def _metrics(self, items: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in items if not _is_nan(v)]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH])

    def on_start(self, trainer: Trainer) -> None:
        from mlflow.entities import Param

        t0 = time.perf_counter()
        info = trainer.run_info
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
        exp = experiment_id(self.client, self.tracking_uri, self.experiment)
        run = self.client.create_run(exp, run_name=self.run_name or info.get("run"),
                                     tags={k: str(v) for k, v in tags.items() if v is not None})
        self.run_id = run.info.run_id
        params = flatten("", trainer.config, {})
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.seconds += time.perf_counter() - t0

    def on_train_log(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        self._metrics([(f"train/{name}", v, s) for name, values in metrics.items()
                       for s, v in zip(steps.tolist(), values.tolist(), strict=True)])
        self.seconds += time.perf_counter() - t0

    def on_eval(self, step: int, split: str, summary: dict[str, Summary]) -> None:
        t0 = time.perf_counter()
        items = [(f"{split}/{m}", s.mean, step) for m, s in summary.items()]
        if split == "test":
            items += [(f"test/{m}_ci_low", s.ci_low, step) for m, s in summary.items()]
            items += [(f"test/{m}_ci_high", s.ci_high, step) for m, s in summary.items()]
        self._metrics(items)
        self.seconds += time.perf_counter() - t0

    def on_end(self, result: RunResult) -> None:
        t0 = time.perf_counter()
        self._metrics([("train/wall_seconds", result.wall_seconds, 0)])
        with tempfile.TemporaryDirectory(prefix="gabench-artifacts-") as tmp:
            out = Path(tmp)
            result.results.to_parquet(out / "results.parquet", index=False)
            result.weights.to_parquet(out / "weights.parquet", index=False)
            (out / "config.json").write_text(json.dumps(
                {"config": result.config, "test": {k: vars(v) for k, v in result.test.items()},
                 "wall_seconds": result.wall_seconds}, indent=2, default=str) + "\n")
            learning_curve_png(result, out / "learning_curve.png")
            self.client.log_artifacts(self.run_id, str(out))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.seconds += time.perf_counter() - t0

    def on_fail(self, exc: BaseException) -> None:
        """The trainer's failure hook: KILLED when stopped (Ctrl-C, SIGTERM, an Optuna prune), else FAILED."""
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__ == "TrialPruned"
        self.fail(f"{type(exc).__name__}: {exc}", "KILLED" if stopped else "FAILED")

    def fail(self, reason: str, status: str = "FAILED") -> None:
        """Mark the run as ended without success (FAILED or KILLED), with the reason as a tag."""
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status)


def _is_nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)


def learning_curve_png(result: RunResult, path: Path) -> Path:
    """Meta-train query loss (moving average) and meta-validation loss (95% CI band) by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = result.results
    train = res[(res.split == "train") & (res.metric == "query_loss")].sort_values("step")
    val = res[(res.split == "val") & (res.metric == "loss_post")].sort_values("step")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if len(train):
        window = max(1, len(train) // 50)
        smooth = train.value.rolling(window, min_periods=1).mean()
        ax.plot(train.step, train.value, color="tab:blue", alpha=0.2, lw=0.8)
        ax.plot(train.step, smooth, color="tab:blue", lw=1.5,
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
    cfg = result.config
    ax.set_title(f"{cfg.get('family')}: {cfg.get('algorithm')}"
                 f"{' (FO)' if cfg.get('first_order') else ''} + {cfg.get('aggregator')}, "
                 f"seed {cfg.get('seed')}")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
