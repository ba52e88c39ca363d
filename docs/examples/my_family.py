"""A worked example of a task-family plug-in: few-shot regression of random lines.

This file is the code of the worked example in ``docs/extending.md``. It is not part of the
``gabench`` package: import it (or copy it into ``gabench/tasks/``) and register it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_int, check_positive
from gabench.models import MLP
from gabench.tasks import FAMILIES, TaskFamily
from gabench.tasks._base import check_shots


class Lines(TaskFamily):
    """Tasks ``y = a x + b`` with ``a ~ U[-slope, slope]``, ``b ~ U[-1, 1]``, ``x ~ U[-1, 1]``.

    Support and query points of a task are independent draws of ``x`` on the same line. Model:
    an MLP 1-``hidden``-1 with ReLU.

    Args:
        shots: Support points per task.
        query_shots: Query points per task.
        slope: Largest absolute slope, > 0.
        hidden: Width of the hidden layer.
    """

    name = "lines"
    description = "Regression of random lines y = a x + b, a~U[-slope,slope], b~U[-1,1]; MLP 1-h-1"
    task_type = "regression"
    default_alpha = 0.05
    param_help = {"slope": "largest absolute slope", "hidden": "hidden layer width"}

    def __init__(self, shots: int = 5, query_shots: int = 10, slope: float = 2.0,
                 hidden: int = 20) -> None:
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.slope = check_positive("slope", slope)
        if self.slope > 100:
            raise ConfigError("slope", slope, "a number in (0, 100]")
        self.hidden = check_int("hidden", hidden)
        self.ways = 1

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Arrays of a meta-batch.

        Returns:
            ``support_x`` of shape (n_tasks, shots, 1), ``support_y`` of shape (n_tasks, shots),
            and ``query_x``, ``query_y`` likewise with ``query_shots`` points.
        """
        a = rng.uniform(-self.slope, self.slope, size=(n_tasks, 1))
        b = rng.uniform(-1.0, 1.0, size=(n_tasks, 1))
        out = {}
        for part, k in (("support", self.shots), ("query", self.query_shots)):
            x = rng.uniform(-1.0, 1.0, size=(n_tasks, k))
            out[f"{part}_x"] = x[..., None]
            out[f"{part}_y"] = a * x + b
        return out

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return MLP(1, (self.hidden,), 1, generator)


def register() -> None:
    """Make ``lines`` selectable by name (``RunConfig(family="lines")``)."""
    FAMILIES[Lines.name] = Lines
