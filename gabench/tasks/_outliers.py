"""Outlier tasks: a fraction of each meta-training batch replaced by corrupted tasks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_choice, check_fraction
from gabench.tasks._base import TaskBatch, TaskFamily

#: Corruption modes and the task types they apply to.
MODES: dict[str, tuple[str, ...]] = {
    "shuffle": ("classification", "regression"),
    "flip": ("classification",),
    "negate": ("regression",),
}


class OutlierTasks(TaskFamily):
    """Wraps a family so that ``round(fraction * T)`` tasks of each meta-train batch are corrupted
    (Python's rounding, half to even: 0.1 of 25 tasks is 2).

    Corruption modes:
        - ``shuffle``: targets are permuted across examples (support and query separately),
          destroying the input-target relation (any family).
        - ``flip``: class ``c`` is relabelled ``(c + 1) mod ways`` in support and query alike, a
          consistently wrong task (classification). Families that already draw a random label
          assignment per task (the scikit-learn classification families, digits) make such a
          task look like any other, so use ``shuffle`` there.
        - ``negate``: targets are negated in support and query alike (regression).

    Only the ``train`` split is corrupted: meta-validation and meta-test measure clean tasks.
    The clean tasks are exactly those of the unwrapped family (corruption draws from a child
    stream of the generator), so runs with different fractions see paired task streams. The
    batch's ``corrupted`` flags record which tasks were corrupted.

    Args:
        family: The family to wrap.
        fraction: Fraction p of each meta-batch to corrupt, in [0, 1].
        mode: ``shuffle``, ``flip`` or ``negate``.
    """

    def __init__(self, family: TaskFamily, fraction: float = 0.0, mode: str = "shuffle") -> None:
        self.base = family
        self.fraction = check_fraction("outlier_fraction", fraction)
        self.mode = check_choice("outlier_mode", mode, MODES)
        if family.task_type not in MODES[mode]:
            allowed = [m for m, kinds in MODES.items() if family.task_type in kinds]
            raise ConfigError("outlier_mode", mode,
                              f"one of {', '.join(allowed)} for {family.task_type} family "
                              f"{family.name!r}")
        self.name = family.name
        self.description = family.description
        self.task_type = family.task_type
        self.default_meta_test_tasks = family.default_meta_test_tasks
        self.default_alpha = family.default_alpha
        self.shots, self.query_shots, self.ways = family.shots, family.query_shots, family.ways

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError  # sample() is overridden

    def sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> TaskBatch:
        corruption_rng = rng.spawn(1)[0]  # a child stream: the parent's draws are unchanged
        batch = self.base.sample(n_tasks, split, rng)
        n_bad = int(round(self.fraction * n_tasks))
        if split != "train" or n_bad == 0:
            return batch
        bad = np.sort(corruption_rng.choice(n_tasks, size=n_bad, replace=False))
        sy, qy = batch.support_y.clone(), batch.query_y.clone()
        for t in bad:
            sy[t], qy[t] = self._corrupt(sy[t], corruption_rng), self._corrupt(qy[t], corruption_rng)
        corrupted = torch.zeros(n_tasks, dtype=torch.bool)
        corrupted[torch.as_tensor(bad)] = True
        return replace(batch, support_y=sy, query_y=qy, corrupted=corrupted)

    def _corrupt(self, y: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.mode == "shuffle":
            return y[torch.as_tensor(rng.permutation(y.shape[0]))]
        if self.mode == "flip":
            return (y + 1) % max(self.ways, 2)
        return -y

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return self.base.make_model(generator)

    @property
    def n_outputs(self) -> int:
        return self.base.n_outputs

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.loss(pred, y)

    def accuracy(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return self.base.accuracy(pred, y)

    def config(self) -> dict[str, Any]:
        return self.base.config()

    def __repr__(self) -> str:
        return f"OutlierTasks({self.base!r}, fraction={self.fraction}, mode={self.mode!r})"
