"""The textbook's gradient-agreement example, reproduced as published: a pure NumPy model.

:func:`textbook_run` is a NumPy re-implementation, written from the description in
docs/textbook.md, of the worked example of chapter 8 of "Hands-On Meta Learning with Python"
(first-order MAML with gradient-agreement weights on random binary tasks). It keeps that
example's **known defects on purpose**, to show what its printed output means; gabench's own
algorithms never copy them:

1. the weights are normalised by ``sum_i sum_j |<g_i, g_j>|`` instead of
   ``sum_k |sum_j <g_k, g_j>|``;
2. ``weighted_gradient += np.sum(w_i * meta_gradient)`` collapses each task's meta-gradient to
   one scalar that is added to every coordinate;
3. the weighted sum is divided by the number of tasks again;
4. the meta-gradient is divided by the support size instead of the query size (with the
   book's k = 10 for both this changes no number);
5. the printed loss is the last task's pre-adaptation *support* loss of the epoch.

(Defect 6, Python 2 code that fails on NumPy 2, is not reproduced; this code runs on NumPy 2.)

``gabench textbook`` runs it over many seeds (:func:`textbook_table`), writes
``<out-root>/<study>/textbook.parquet``, runs ``studies/textbook.toml`` (gabench's corrected runs
of the same example) with ``gabench compare`` and writes the report, whose first section is
:func:`gabench.reporting.textbook_section.textbook_section`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from gabench._errors import ConfigError, check_int, check_positive

LN2 = math.log(2)


@dataclass(frozen=True)
class TextbookSettings:
    """The example's settings (the published values are the defaults).

    Attributes:
        tasks: Tasks per meta-batch.
        shots: Support rows per task (``num_samples``).
        query_shots: Query rows per task.
        dim: Input dimension.
        epochs: Meta-iterations.
        alpha: Inner learning rate.
        beta: Outer learning rate.
        test_tasks: Held-out tasks on which the initial and final parameters are evaluated
            (not part of the published example, which evaluates nothing).
        fixed: Defects (numbers 1-4 of the module docstring) to correct, for ablations; empty
            reproduces the example as published.
    """

    tasks: int = 2
    shots: int = 10
    query_shots: int = 10
    dim: int = 50
    epochs: int = 100
    alpha: float = 1e-4
    beta: float = 1e-4
    test_tasks: int = 600
    fixed: tuple[int, ...] = ()

    def validate(self) -> TextbookSettings:
        for name in ("tasks", "shots", "query_shots", "dim", "epochs", "test_tasks"):
            check_int(name, getattr(self, name))
        check_positive("alpha", self.alpha)
        check_positive("beta", self.beta)
        for d in self.fixed:
            if d not in (1, 2, 3, 4):
                raise ConfigError("fixed", self.fixed, "defect numbers among 1, 2, 3, 4")
        return self


@dataclass(frozen=True)
class TextbookRun:
    """What one seed of the textbook example produced.

    Attributes:
        printed_loss: Array of shape (epochs,), the number the example prints each epoch.
        theta_init: Array of shape (dim, 1), the initial parameters.
        theta: Array of shape (dim, 1), the final parameters.
    """

    printed_loss: np.ndarray
    theta_init: np.ndarray
    theta: np.ndarray


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def sample_points(rng: np.random.Generator, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One set of the textbook's task: ``x ~ U[0,1)^dim``, ``y ~ Bernoulli(0.5)`` independent of x.

    Returns:
        ``(x, y)``: arrays of shape (k, dim) and (k, 1).
    """
    return rng.random((k, dim)), rng.integers(0, 2, size=(k, 1)).astype(np.float64)


def textbook_run(rng: np.random.Generator, settings: TextbookSettings | None = None) -> TextbookRun:
    """The chapter-8 gradient-agreement MAML example as published, defects 1-5 included.

    ``settings.fixed`` corrects chosen defects (1-4) for ablations; the published example has
    none corrected.

    Args:
        rng: The only source of randomness (initial parameters and every sampled task).
        settings: The example's settings (default: the published ones).

    Returns:
        The printed losses and the initial and final parameters.

    References:
        S. Ravichandiran, "Hands-On Meta Learning with Python", Packt 2018, chapter 8.
    """
    s = (settings or TextbookSettings()).validate()
    theta = rng.normal(size=(s.dim, 1))
    theta_init = theta.copy()
    printed = np.empty(s.epochs)
    for epoch in range(s.epochs):
        adapted, updates = [], []
        loss = float("nan")
        for _ in range(s.tasks):
            x, y = sample_points(rng, s.shots, s.dim)
            y_hat = _sigmoid(x @ theta)
            loss = float(((-y.T @ np.log(y_hat) - (1 - y).T @ np.log(1 - y_hat)) / s.shots)[0, 0])
            gradient = x.T @ (y_hat - y) / s.shots
            adapted.append(theta - s.alpha * gradient)
            updates.append(theta - adapted[-1])
        G = np.hstack(updates).T  # (tasks, dim)
        gram = G @ G.T
        agreement = gram.sum(axis=1)
        if 1 in s.fixed:
            normalisation = np.abs(agreement).sum()  # the paper: sum_k |sum_j <g_k, g_j>|
        else:
            normalisation = np.abs(gram).sum()  # defect 1: sum_i sum_j |<g_i, g_j>|
        w = agreement / normalisation
        weighted_gradient = np.zeros_like(theta)
        for i in range(s.tasks):
            xq, yq = sample_points(rng, s.query_shots, s.dim)
            y_pred = _sigmoid(xq @ adapted[i])
            size = s.query_shots if 4 in s.fixed else s.shots  # defect 4: support size
            meta_gradient = xq.T @ (y_pred - yq) / size
            if 2 in s.fixed:
                weighted_gradient += w[i] * meta_gradient
            else:
                weighted_gradient += np.sum(w[i] * meta_gradient)  # defect 2: one scalar for all coords
        divisor = 1 if 3 in s.fixed else s.tasks  # defect 3: divided by T again
        theta = theta - s.beta * weighted_gradient / divisor
        printed[epoch] = loss  # defect 5: last task's pre-adaptation support loss
    return TextbookRun(printed, theta_init, theta)


def heldout_loss(theta: np.ndarray, rng: np.random.Generator, settings: TextbookSettings,
                 adapt: bool) -> float:
    """Mean query cross-entropy of ``theta`` on fresh tasks, optionally after one inner step.

    Args:
        theta: Array of shape (dim, 1).
        rng: Generator of the held-out tasks.
        settings: Shapes, ``alpha`` and the number of tasks.
        adapt: Take one SGD step of size ``alpha`` on each task's support set first.
    """
    n, k, q, d = settings.test_tasks, settings.shots, settings.query_shots, settings.dim
    xs, ys = rng.random((n, k, d)), rng.integers(0, 2, size=(n, k, 1)).astype(np.float64)
    xq, yq = rng.random((n, q, d)), rng.integers(0, 2, size=(n, q, 1)).astype(np.float64)
    th = np.broadcast_to(theta, (n, d, 1))
    if adapt:
        grad = np.swapaxes(xs, 1, 2) @ (_sigmoid(xs @ th) - ys) / k
        th = th - settings.alpha * grad
    z = xq @ th
    ce = np.logaddexp(0.0, z) - yq * z  # stable binary cross-entropy with logits
    return float(ce.mean())


#: Textbook variants in the table: the example as published, and two ablations that correct
#: defects (same seeds, so the same initial parameters and the same task draws).
VARIANTS: dict[str, tuple[int, ...]] = {
    "as published": (),
    "defect 2 fixed": (2,),
    "defects 1-4 fixed": (1, 2, 3, 4),
}


def textbook_table(seeds: int, settings: TextbookSettings | None = None,
                   variants: dict[str, tuple[int, ...]] | None = None) -> pd.DataFrame:
    """The textbook example over seeds ``0..seeds-1`` as a long table, one block per variant.

    Rows (``method`` = ``textbook (<variant>)``): ``split=train``, ``metric=printed_loss`` for
    every epoch; ``split=test`` (step = epochs): ``loss_init`` (held-out query loss of the initial
    parameters), ``loss_pre`` and ``loss_post`` (final parameters, before / after one inner step)
    and ``theta_change`` (``||theta - theta_0||``).

    Args:
        seeds: Number of seeds.
        settings: The example's settings (default: the published ones); ``fixed`` is set per variant.
        variants: Label -> defects corrected (default :data:`VARIANTS`).
    """
    base = (settings or TextbookSettings()).validate()
    seeds = check_int("seeds", seeds)
    frames = []
    for label, fixed in (variants or VARIANTS).items():
        s = replace(base, fixed=tuple(fixed)).validate()
        for seed in range(seeds):
            run = textbook_run(np.random.default_rng([seed, 8]), s)
            test_seed = [seed, 8, 1]  # the same held-out tasks for both parameter vectors
            tests = {
                "loss_init": heldout_loss(run.theta_init, np.random.default_rng(test_seed), s, adapt=False),
                "loss_pre": heldout_loss(run.theta, np.random.default_rng(test_seed), s, adapt=False),
                "loss_post": heldout_loss(run.theta, np.random.default_rng(test_seed), s, adapt=True),
                "theta_change": float(np.linalg.norm(run.theta - run.theta_init)),
            }
            frames.append(pd.DataFrame({
                "run": f"textbook-{label.replace(' ', '-')}__s{seed}", "method": f"textbook ({label})",
                "seed": seed,
                "step": np.r_[np.arange(1, s.epochs + 1), np.full(len(tests), s.epochs)],
                "split": ["train"] * s.epochs + ["test"] * len(tests),
                "metric": ["printed_loss"] * s.epochs + list(tests),
                "value": np.r_[run.printed_loss, list(tests.values())],
            }))
    return pd.concat(frames, ignore_index=True)
