"""The one outer loop: sample -> adapt -> weights -> outer step -> evaluate -> callbacks."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gabench._errors import check_int
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


class Trainer:
    """Meta-trains one model with one algorithm and one aggregator on one task family.

    Args:
        family: Task family (possibly wrapped in :class:`~gabench.tasks.OutlierTasks`).
        algorithm: MAML or Reptile instance.
        aggregator: Task weighting.
        beta: Outer learning rate.
        optimizer: ``"adam"`` or ``"sgd"``.
        meta_batch: Tasks per meta-batch T.
        steps: Meta-iterations.
        seed: Base seed of task streams and initialisation.
        eval_every: Meta-validate every N steps (0: never).
        val_tasks: Size of the fixed meta-validation task set.
        test_tasks: Held-out meta-test tasks (None: the family's default).
        eval_batch: Tasks adapted at once when evaluating.
        eval_inner_steps: Inner steps when evaluating (None: the algorithm's).
        device: Torch device.
        callbacks: Called at the hooks of :class:`Callback`.
        progress: Show a progress bar (None: only on a terminal).
        run_info: Identification columns written on every result row.
        config: The full run configuration, recorded in the result.
        log_every: Steps between flushes of the training metrics to callbacks.
        fast_path: Use the batched fast path of :class:`~gabench.algorithms.FastMLP` where the
            model and loss allow it (same numbers as the general vmap path, several times
            faster); False forces the general path.
        num_threads: Torch intra-op CPU threads while :meth:`fit` runs on a CPU device (the
            previous setting is restored afterwards); None leaves torch's setting. The default
            1 is much faster for gabench's small kernels: on a 2-core machine that other
            processes also use, two spinning OpenMP threads made meta-training 10-25x slower.
    """

    def __init__(self, family: TaskFamily, algorithm: Algorithm, aggregator: Aggregator, *,
                 beta: float, optimizer: str = "adam", meta_batch: int = 25, steps: int = 1000,
                 seed: int = 0, eval_every: int = 0, val_tasks: int = 100,
                 test_tasks: int | None = None, eval_batch: int = 200,
                 eval_inner_steps: int | None = None, device: str | torch.device = "cpu",
                 callbacks: Sequence[Callback] = (), progress: bool | None = None,
                 run_info: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 log_every: int = 50, fast_path: bool = True, num_threads: int | None = 1) -> None:
        self.family, self.algorithm, self.aggregator = family, algorithm, aggregator
        self.beta, self.optimizer_name = beta, optimizer
        self.meta_batch, self.steps, self.seed = meta_batch, steps, seed
        self.eval_every, self.val_tasks, self.eval_batch = eval_every, val_tasks, eval_batch
        self.test_tasks = test_tasks or family.default_meta_test_tasks
        self.eval_inner_steps = eval_inner_steps
        self.device = torch.device(device)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.run_info = dict(run_info or {})
        self.config = dict(config or {})
        self.log_every = log_every
        self.num_threads = None if num_threads is None else check_int("num_threads", num_threads)
        self.outliers = isinstance(family, OutlierTasks) and family.fraction > 0
        self.model = family.make_model(init_generator(seed, family.name)).to(self.device)
        self.learner = Learner(self.model, family.loss, family.accuracy,
                               loss_kind=family_loss_kind(family), fast_path=fast_path)
        self.params = dict(self.model.named_parameters())
        # The parameters are views into one flat buffer, which the optimizer updates: the outer
        # step is one (fused) optimizer call on one tensor instead of a dozen small ops per
        # parameter. The model, its parameters and state_dict behave as before.
        self.flat_params = _share_flat_buffer(list(self.params.values()))
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.flat_params], lr=beta,
                                                                     fused=True)
        else:
            self.optimizer = torch.optim.SGD([self.flat_params], lr=beta)

    @classmethod
    def from_config(cls, config: RunConfig, callbacks: Sequence[Callback] = (),
                    progress: bool | None = None, *, fast_path: bool = True,
                    num_threads: int | None = 1) -> Trainer:
        """Validate ``config`` and build the trainer it describes (``fast_path``, ``num_threads``:
        see the class)."""
        config.validate()
        return cls(
            config.build_family(), config.build_algorithm(), config.build_aggregator(),
            beta=config.beta, optimizer=config.optimizer, meta_batch=config.meta_batch,
            steps=config.steps, seed=config.seed, eval_every=config.eval_every,
            val_tasks=config.val_tasks, test_tasks=config.test_tasks,
            eval_batch=config.eval_batch, eval_inner_steps=config.eval_inner_steps,
            device=resolve_device(config.device), callbacks=callbacks, progress=progress,
            run_info={
                "run": config.run_name, "family": config.family, "method": config.method,
                "algorithm": config.algorithm, "aggregator": config.aggregator,
                "first_order": config.first_order, "seed": config.seed,
                "outlier_fraction": config.outlier_fraction,
            },
            config=config.to_dict(), fast_path=fast_path, num_threads=num_threads,
        )

    # ------------------------------------------------------------------ evaluation
    def _eval_batches(self, split: str, n_tasks: int) -> list[TaskBatch]:
        rng = task_rng(self.seed, self.family.name, split)
        sizes = [min(self.eval_batch, n_tasks - i) for i in range(0, n_tasks, self.eval_batch)]
        return [self.family.sample(n, split, rng).to(self.device) for n in sizes]

    def evaluate(self, batches: list[TaskBatch]) -> dict[str, Summary]:
        """Adapt to every held-out task and summarise the query metrics over tasks."""
        per_task: dict[str, list[np.ndarray]] = {m: [] for m in EVAL_METRICS}
        for batch in batches:
            out = self.algorithm.evaluate(self.learner, self.params, batch, self.eval_inner_steps)
            for m in EVAL_METRICS:
                per_task[m].append(out[m].double().cpu().numpy())
        summary = {m: Summary.of(np.concatenate(v)) for m, v in per_task.items()}
        if self.family.task_type == "regression":
            summary = {m: s for m, s in summary.items() if not m.startswith("acc")}
        return summary

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
        """Meta-train for ``steps`` iterations, then meta-test; returns all result rows."""
        previous = torch.get_num_threads()
        if self.num_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        try:
            return self._fit()
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

        def validate(step: int) -> None:
            summary = self.evaluate(val_batches)
            rows.extend(self._rows(step, "val", summary))
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

        test = self.evaluate(self._eval_batches("test", self.test_tasks))
        rows.extend(self._rows(self.steps, "test", test))
        for cb in self.callbacks:
            cb.on_eval(self.steps, "test", test)
        rows.append(self._row(self.steps, "train", "wall_seconds", Summary(wall, np.nan, np.nan, 1)))
        result = RunResult(
            config=self.config, results=self._table(rows, train_log, stat_names),
            weights=self._weights_table(weight_log, corrupt_log), test=test, wall_seconds=wall,
        )
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    # ------------------------------------------------------------------ tables
    def _row(self, step: int, split: str, metric: str, s: Summary) -> dict[str, Any]:
        return {**self.run_info, "step": step, "split": split, "metric": metric,
                "value": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}

    def _rows(self, step: int, split: str, summary: dict[str, Summary]) -> list[dict[str, Any]]:
        return [self._row(step, split, m, s) for m, s in summary.items()]

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
