"""The one outer loop: sample -> adapt -> weights -> outer step -> evaluate -> callbacks."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gabench._errors import check_int
from gabench._memory import check_run_memory
from gabench._processes import StopRequest
from gabench._provenance import machine
from gabench.aggregators import Aggregator, weight_stats
from gabench.algorithms import Algorithm, Learner, StepResult
from gabench.config import RunConfig, resolve_device
from gabench.results import RESULT_COLUMNS, WEIGHT_COLUMNS, RunResult, Summary
from gabench.tasks import OutlierTasks, TaskBatch, TaskFamily, init_generator, task_rng

EVAL_METRICS = ("loss_pre", "loss_post", "acc_pre", "acc_post")


class DivergedError(RuntimeError):
    """Meta-training produced a non-finite loss.

    Attributes:
        step: The meta-iteration at which it was noticed.
        metric: Which value was not finite.
    """

    def __init__(self, step: int, metric: str, value: float) -> None:
        self.step, self.metric, self.value = step, metric, value
        super().__init__(f"training diverged: {metric}={value} at step {step}; "
                         "try a smaller alpha or beta")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.metric, self.value))


class Callback:
    """Hooks the trainer calls; every method is optional. Callbacks may raise to stop a run
    (an Optuna pruner raises ``TrialPruned`` from :meth:`on_eval`)."""

    def on_start(self, trainer: Trainer) -> None:
        """Before the first meta-iteration."""

    def on_train_log(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        """A block of per-step meta-training metrics (arrays aligned with ``steps``)."""

    def on_eval(self, step: int, split: str, summary: dict[str, Summary]) -> None:
        """After a meta-validation (``split="val"``) or the final meta-test (``"test"``)."""

    def on_end(self, result: RunResult) -> None:
        """After the final meta-test, with everything the run produced."""

    def on_fail(self, exc: BaseException) -> None:
        """The run stopped without a result: ``exc`` is what stopped it (a :class:`DivergedError`,
        any other exception, ``KeyboardInterrupt``, or what a callback raised, such as Optuna's
        ``TrialPruned``). The trainer re-raises ``exc`` afterwards; an error raised here becomes
        a ``RuntimeWarning``, so that the run's own error is the one raised."""


class StopAtSafePoint(Callback):
    """Stops a run at the trainer's next hook after a stop was requested: it raises
    :class:`~gabench._processes.Terminated` from :meth:`on_start`, :meth:`on_train_log` and
    :meth:`on_eval` once ``request`` (a :class:`~gabench._processes.StopRequest`) holds a signal.

    A SIGTERM handler that raises lands wherever the process happens to be, e.g. half-way
    through a tracking-store write, whose failure handling then cannot end the MLflow run; a
    handler that only fills ``request`` lets the run stop here instead. Put this callback
    first, so that it raises before the other callbacks of the same hook write anything.
    """

    def __init__(self, request: StopRequest) -> None:
        self.request = request

    def on_start(self, trainer: Trainer) -> None:
        self.request.check()

    def on_train_log(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        self.request.check()

    def on_eval(self, step: int, split: str, summary: dict[str, Summary]) -> None:
        self.request.check()


class Trainer:
    """Meta-trains one model with one algorithm and one aggregator on one task family.

    Everything the run does is read from ``config``; the plug-ins are built from its registry
    names unless given as instances (a family, algorithm or aggregator of your own, see
    docs/extending.md).

    Args:
        config: The run configuration (validated here).
        callbacks: Called at the hooks of :class:`Callback`.
        progress: Show a progress bar (None: only on a terminal).
        family: A task family instance to use instead of ``config.family`` (its ``name`` is
            recorded; ``config.outlier_fraction`` still wraps it in outlier tasks).
        algorithm: An algorithm instance to use instead of ``config.algorithm``
            (``config.alpha``, ``inner_steps`` and ``first_order`` are then not used).
        aggregator: An aggregator instance to use instead of ``config.aggregator``.
        log_every: Steps between flushes of the training metrics to callbacks.
        fast_path: Use the batched fast path of :class:`~gabench.algorithms.FastMLP` where the
            model and loss allow it (same numbers as the general vmap path, several times
            faster); False forces the general path.
        num_threads: Torch intra-op CPU threads while :meth:`fit` runs on a CPU device (the
            previous setting is restored afterwards); None leaves torch's setting. The default
            1 is much faster for gabench's small kernels: on a 2-core machine that other
            processes also use, two spinning OpenMP threads made meta-training 10-25x slower.
        meta_test: Evaluate on the meta-test tasks at the end (False for hyperparameter tuning,
            which must select on meta-validation only and not spend time on, or peek at, the
            meta-test).

    Attributes:
        run_config: The validated :class:`~gabench.config.RunConfig` (plug-in names replaced by
            those of the given instances).
        config: What the result records: ``run_config`` as a dict, alpha resolved.
        run_info: Identification columns written on every result row.
    """

    def __init__(self, config: RunConfig, callbacks: Sequence[Callback] = (),
                 progress: bool | None = None, *, family: TaskFamily | None = None,
                 algorithm: Algorithm | None = None, aggregator: Aggregator | None = None,
                 log_every: int = 50, fast_path: bool = True, num_threads: int | None = 1,
                 meta_test: bool = True) -> None:
        given = {"family": family, "algorithm": algorithm, "aggregator": aggregator}
        names = {k: v.name for k, v in given.items() if v is not None}
        config = dataclasses.replace(config, **names) if names else config
        config.validate(plugins=tuple(names))
        self.run_config = config
        family = config.build_family(family)
        check_run_memory(config, family)  # before anything is allocated: one line if it cannot fit
        base = family.base if isinstance(family, OutlierTasks) else family
        alpha = float(config.alpha) if config.alpha is not None else float(type(base).default_alpha)
        self.family = family
        self.algorithm = algorithm if algorithm is not None else config.build_algorithm(alpha)
        self.aggregator = aggregator if aggregator is not None else config.build_aggregator()
        self.beta, self.optimizer_name = config.beta, config.optimizer
        self.meta_batch, self.steps, self.seed = config.meta_batch, config.steps, config.seed
        self.eval_every, self.val_tasks = config.eval_every, config.val_tasks
        self.eval_batch = config.eval_batch
        self.test_tasks = config.test_tasks or family.default_meta_test_tasks
        self.eval_inner_steps = config.eval_inner_steps
        self.device = resolve_device(config.device)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.run_info: dict[str, Any] = {
            "run": config.run_name, "family": config.family, "method": config.method,
            "algorithm": config.algorithm, "aggregator": config.aggregator,
            "first_order": config.first_order, "seed": config.seed,
            "outlier_fraction": config.outlier_fraction,
        }
        self.config: dict[str, Any] = {**dataclasses.asdict(config),
                                       "alpha": float(getattr(self.algorithm, "alpha", alpha))}
        # The plug-ins' effective parameters, defaults included (``config`` keeps what was asked
        # for, which is what identifies the run): recorded in config.json and MLflow.
        self.resolved: dict[str, Any] = {
            "family_params": dict(base.config()) if hasattr(base, "config") else {},
            "aggregator_params": self.aggregator.config() if hasattr(self.aggregator, "config") else {},
        }
        self.log_every = log_every
        self.meta_test = meta_test
        self.num_threads = None if num_threads is None else check_int("num_threads", num_threads)
        self.outliers = isinstance(family, OutlierTasks) and family.fraction > 0
        self.model = family.make_model(init_generator(self.seed, family.name)).to(self.device)
        self.learner = Learner(self.model, family.loss, family.accuracy,
                               loss_kind=family_loss_kind(family), fast_path=fast_path)
        self.params = dict(self.model.named_parameters())
        # The parameters are views into one flat buffer, which the optimizer updates: the outer
        # step is one (fused) optimizer call on one tensor instead of a dozen small ops per
        # parameter. The model, its parameters and state_dict behave as before.
        self.flat_params = _share_flat_buffer(list(self.params.values()))
        if config.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.flat_params], lr=self.beta,
                                                                     fused=True)
        else:
            self.optimizer = torch.optim.SGD([self.flat_params], lr=self.beta)

    # ------------------------------------------------------------------ evaluation
    def _eval_batches(self, split: str, n_tasks: int) -> list[TaskBatch]:
        rng = task_rng(self.seed, self.family.name, split)
        sizes = [min(self.eval_batch, n_tasks - i) for i in range(0, n_tasks, self.eval_batch)]
        return [self.family.sample(n, split, rng).to(self.device) for n in sizes]

    def evaluate(self, batches: list[TaskBatch], split: str = "val", step: int = 0) -> dict[str, Summary]:
        """Adapt to every held-out task and summarise the query metrics over tasks.

        Raises:
            DivergedError: a task's loss is not finite. Dropping such tasks would average over
                the tasks where the model still works and bias the comparison; a non-finite
                held-out result is a diverged run.
        """
        per_task: dict[str, list[np.ndarray]] = {m: [] for m in EVAL_METRICS}
        for batch in batches:
            out = self.algorithm.evaluate(self.learner, self.params, batch, self.eval_inner_steps)
            for m in EVAL_METRICS:
                per_task[m].append(out[m].double().cpu().numpy())
        values = {m: np.concatenate(v) for m, v in per_task.items()}
        if self.family.task_type == "regression":
            values = {m: v for m, v in values.items() if not m.startswith("acc")}
        for m, v in values.items():
            bad = ~np.isfinite(v)
            if bad.any():
                raise DivergedError(step, f"{split} {m} ({int(bad.sum())} of {v.size} tasks)",
                                    float(v[bad][0]))
        return {m: Summary.of(v) for m, v in values.items()}

    # ------------------------------------------------------------------ training
    def train_step(self, batch: TaskBatch) -> StepResult:
        """One meta-iteration on ``batch``: adapt, weight, outer step (the body of :meth:`fit`).

        Args:
            batch: A meta-batch of ``meta_batch`` tasks (moved to the trainer's device here).

        Returns:
            What the algorithm computed; the parameters have been updated.
        """
        if batch.support_x.device != self.device:
            batch = batch.to(self.device)
        res = self.algorithm.step(self.learner, self.params, batch, self.aggregator)
        self.flat_params.grad = torch.cat([res.direction[k].reshape(-1) for k in self.params])
        self.optimizer.step()
        return res

    def fit(self) -> RunResult:
        """Meta-train for ``steps`` iterations, then meta-test; returns all result rows.

        If the run stops without a result (divergence, any exception, ``KeyboardInterrupt``),
        every callback's :meth:`Callback.on_fail` is called, then the exception is re-raised.
        """
        previous = torch.get_num_threads()
        if self.num_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        try:
            return self._fit()
        except BaseException as exc:
            for cb in self.callbacks:
                try:
                    cb.on_fail(exc)
                except Exception as err:  # the run's own error is the one to raise
                    warnings.warn(f"{type(cb).__name__}.on_fail failed: {type(err).__name__}: {err}",
                                  RuntimeWarning, stacklevel=2)
            raise
        finally:
            torch.set_num_threads(previous)

    def _fit(self) -> RunResult:
        for cb in self.callbacks:
            cb.on_start(self)
        T = self.meta_batch
        train_rng = task_rng(self.seed, self.family.name, "train")
        val_batches = self._eval_batches("val", self.val_tasks) if self.eval_every else []
        rows: list[dict[str, Any]] = []
        stat_names = ["support_loss", "query_loss", "w_min", "w_max", "w_frac_negative", "w_eff_n"]
        if self.outliers:
            stat_names += ["w_mean_corrupted", "w_mean_clean"]
        train_log = torch.empty(self.steps, len(stat_names), dtype=torch.float64)
        weight_log = torch.empty(self.steps, T, dtype=torch.float64)
        corrupt_log = torch.zeros(self.steps, T, dtype=torch.bool)
        # Per step only references are kept; statistics are computed for a block of steps at a
        # flush (a few ops per block instead of a dozen small ops per step).
        pending: list[tuple[torch.Tensor, ...]] = []
        flushed = 0

        def flush(upto: int) -> None:
            nonlocal flushed, pending
            if not pending:
                return
            support, query, weights, corrupted = (torch.stack(v) for v in zip(*pending, strict=True))
            ws = weight_stats(weights, corrupted.to(weights.device) if self.outliers else None)
            block = torch.stack([support.mean(-1), query.mean(-1), *ws.values()], dim=1).double().cpu()
            train_log[flushed:upto] = block
            weight_log[flushed:upto] = weights.double().cpu()
            corrupt_log[flushed:upto] = corrupted.cpu()
            bad = ~torch.isfinite(block[:, :2])
            if bool(bad.any()):
                i, j = (int(v) for v in bad.nonzero()[0])
                raise DivergedError(flushed + i + 1, stat_names[j], float(block[i, j]))
            steps = np.arange(flushed + 1, upto + 1)
            metrics = {name: block[:, j].numpy() for j, name in enumerate(stat_names)}
            for cb in self.callbacks:
                cb.on_train_log(steps, metrics)
            pending = []
            flushed = upto
            bar.set_postfix(query_loss=f"{float(block[-1, 1]):.4f}", refresh=False)

        # Model selection on meta-validation: the parameters at the lowest validation query loss
        # after adaptation are kept and meta-tested beside the final iterate.
        best: dict[str, Any] = {"value": math.inf, "step": None, "params": None}

        def validate(step: int) -> None:
            summary = self.evaluate(val_batches, "val", step)
            rows.extend(self._rows(step, "val", summary))
            value = summary["loss_post"].mean
            if value < best["value"]:
                best.update(value=value, step=step, params=self.flat_params.detach().clone())
            for cb in self.callbacks:
                cb.on_eval(step, "val", summary)

        bar = tqdm(total=self.steps, desc=self.run_info.get("run", "train"), file=sys.stderr,
                   disable=(not self.progress) if self.progress is not None else None,
                   mininterval=0.5, leave=False)
        start = time.perf_counter()
        if self.eval_every:
            validate(0)
        for step in range(1, self.steps + 1):
            batch = self.family.sample(T, "train", train_rng)
            res = self.train_step(batch)
            pending.append((res.support_loss, res.query_loss, res.weights, batch.corrupted))
            bar.update(1)
            if step % self.log_every == 0 or step == self.steps:
                flush(step)
            if self.eval_every and step % self.eval_every == 0:
                flush(step)
                validate(step)
        bar.close()
        wall = time.perf_counter() - start

        test: dict[str, Summary] = {}
        test_best: dict[str, Summary] | None = None
        if self.meta_test:
            test_batches = self._eval_batches("test", self.test_tasks)
            test = self.evaluate(test_batches, "test", self.steps)
            rows.extend(self._rows(self.steps, "test", test, select="final"))
            for cb in self.callbacks:
                cb.on_eval(self.steps, "test", test)
            if best["step"] is not None:
                test_best = test if best["step"] == self.steps else self._evaluate_at(
                    best["params"], test_batches, best["step"])
                rows.extend(self._rows(best["step"], "test", test_best, select="best_val"))
                for cb in self.callbacks:
                    cb.on_eval(best["step"], "test_best_val", test_best)
        rows.append(self._row(self.steps, "train", "wall_seconds", Summary(wall, np.nan, np.nan, 1)))
        result = RunResult(
            config=self.config, results=self._table(rows, train_log, stat_names),
            weights=self._weights_table(weight_log, corrupt_log), test=test, wall_seconds=wall,
            test_best_val=test_best, best_val_step=best["step"],
            extra={"resolved": self.resolved, "machine": machine()},
        )
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    # ------------------------------------------------------------------ tables
    def _evaluate_at(self, flat: torch.Tensor, batches: list[TaskBatch], step: int) -> dict[str, Summary]:
        """Meta-test with the parameters ``flat`` (then restore the current ones)."""
        current = self.flat_params.detach().clone()
        with torch.no_grad():
            self.flat_params.copy_(flat)
        try:
            return self.evaluate(batches, "test (best val)", step)
        finally:
            with torch.no_grad():
                self.flat_params.copy_(current)

    def _row(self, step: int, split: str, metric: str, s: Summary,
             select: str | None = None) -> dict[str, Any]:
        return {**self.run_info, "step": step, "split": split, "metric": metric,
                "value": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n, "select": select}

    def _rows(self, step: int, split: str, summary: dict[str, Summary],
              select: str | None = None) -> list[dict[str, Any]]:
        return [self._row(step, split, m, s, select) for m, s in summary.items()]

    def _table(self, rows: list[dict[str, Any]], train_log: torch.Tensor,
               stat_names: list[str]) -> pd.DataFrame:
        n = train_log.shape[0]
        train = pd.DataFrame({
            "step": np.tile(np.arange(1, n + 1), len(stat_names)),
            "split": "train",
            "metric": np.repeat(stat_names, n),
            "value": train_log.T.reshape(-1).numpy(),
            "ci_low": np.nan, "ci_high": np.nan, "n": self.meta_batch,
        })
        for key, value in self.run_info.items():
            train[key] = value
        table = pd.concat([train, pd.DataFrame(rows)], ignore_index=True)
        for col in RESULT_COLUMNS:
            if col not in table:
                table[col] = None
        return table[list(RESULT_COLUMNS)]

    def _weights_table(self, weight_log: torch.Tensor, corrupt_log: torch.Tensor) -> pd.DataFrame:
        steps, T = weight_log.shape
        return pd.DataFrame({
            "run": self.run_info.get("run", ""),
            "step": np.repeat(np.arange(1, steps + 1), T),
            "task": np.tile(np.arange(T), steps),
            "corrupted": corrupt_log.reshape(-1).numpy(),
            "weight": weight_log.reshape(-1).numpy(),
        })[list(WEIGHT_COLUMNS)]


def family_loss_kind(family: TaskFamily) -> str | None:
    """Which standard loss :meth:`TaskFamily.loss` computes for ``family`` (see
    :data:`~gabench.algorithms.LOSS_KINDS`), or None when the family defines its own loss.

    This is what lets the trainer's :class:`~gabench.algorithms.Learner` take the fast path.
    """
    base = family.base if isinstance(family, OutlierTasks) else family
    if type(base).loss is not TaskFamily.loss:
        return None
    if family.task_type == "regression":
        return "mse"
    return "bce" if family.n_outputs == 1 else "ce"


def _share_flat_buffer(params: list[torch.Tensor]) -> torch.nn.Parameter:
    """Move ``params`` into one flat buffer (each becomes a view of it) and return the buffer.

    The parameters stay leaf ``nn.Parameter`` objects with their values; an in-place update of
    the returned buffer (what the optimizer does) updates all of them.
    """
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for p in params:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            offset += n
    return torch.nn.Parameter(flat)
