"""Sine-wave regression, the standard few-shot regression benchmark of the MAML paper."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_int, check_positive
from gabench.models import MLP
from gabench.tasks._base import MAX_HIDDEN, TaskFamily, check_shots


class Sine(TaskFamily):
    """Tasks ``y = A sin(x - phi)`` with ``A ~ U[amp_min, amp_max]``, ``phi ~ U[0, pi]``.

    Inputs ``x ~ U[-5, 5]``; model: MLP 1-40-40-1 with ReLU.

    Args:
        shots: Support points per task (K).
        query_shots: Query points per task.
        amp_min: Smallest amplitude.
        amp_max: Largest amplitude.
        hidden: Width of each of the two hidden layers.

    References:
        C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017, section 5.1.
    """

    chunk_tasks = 500  # tasks drawn per vectorised call (see TaskFamily.sample)

    name = "sine"
    description = "Sine regression: A~U[0.1,5], phase~U[0,pi], x~U[-5,5]; MLP 1-40-40-1"
    task_type = "regression"
    param_help = {"amp_min": "smallest amplitude", "amp_max": "largest amplitude",
                  "hidden": "hidden layer width"}

    def __init__(self, shots: int = 10, query_shots: int = 10, amp_min: float = 0.1,
                 amp_max: float = 5.0, hidden: int = 40) -> None:
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.amp_min = check_positive("amp_min", amp_min, allow_zero=True)
        self.amp_max = check_positive("amp_max", amp_max)
        if self.amp_max < self.amp_min:
            raise ConfigError("amp_max", amp_max, f"a number >= amp_min={self.amp_min}")
        self.hidden = check_int("hidden", hidden, maximum=MAX_HIDDEN)
        self.ways = 1

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        amp = rng.uniform(self.amp_min, self.amp_max, size=(n_tasks, 1))
        phase = rng.uniform(0.0, math.pi, size=(n_tasks, 1))
        out = {}
        for part, k in (("support", self.shots), ("query", self.query_shots)):
            x = rng.uniform(-5.0, 5.0, size=(n_tasks, k))
            out[f"{part}_x"] = x[..., None]
            out[f"{part}_y"] = amp * np.sin(x - phase)
        return out

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return MLP(1, (self.hidden, self.hidden), 1, generator)
