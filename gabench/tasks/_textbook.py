"""The textbook's random binary classification tasks (Hands-On Meta Learning, chapter 8)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gabench._errors import check_int
from gabench.models import Logistic
from gabench.tasks._base import MAX_DIM, TaskFamily, check_shots, split_seed, uniform_float32


class TextbookBinary(TaskFamily):
    """The textbook's task distribution: ``x ~ U[0,1)^dim``, ``y ~ Bernoulli(0.5)`` independent
    of x (the inputs drawn in float32, the model's dtype, and tasks drawn in chunks: see
    :func:`~gabench.tasks._base.uniform_float32`).

    Labels carry no signal, so no model can beat the cross-entropy ``ln 2 = 0.693`` on query
    data in expectation: the family is unlearnable by design. Support and query sets are
    independent draws. The model is the textbook's single-layer logistic model without bias,
    ``theta ~ N(0, 1)``.

    Args:
        shots: Support rows per task (10 in the book).
        query_shots: Query rows per task (10 in the book).
        dim: Input dimension (50 in the book).

    References:
        S. Ravichandiran, "Hands-On Meta Learning with Python", Packt 2018, chapter 8.
    """

    chunk_tasks = 500  # tasks drawn per vectorised call (see TaskFamily.sample)

    name = "textbook-binary"
    description = ("Textbook ch.8 sampler: x~U[0,1)^50, y~Bernoulli(0.5) independent of x "
                   "(unlearnable, best loss ln 2)")
    task_type = "classification"
    default_alpha = 0.01
    param_help = {
        "shots": "support rows per task",
        "query_shots": "query rows per task",
        "dim": "input dimension",
    }

    def __init__(self, shots: int = 10, query_shots: int = 10, dim: int = 50) -> None:
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.dim = check_int("dim", dim, maximum=MAX_DIM)
        self.ways = 2

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        gen = np.random.Generator(np.random.SFC64(split_seed(rng, split)))
        return {
            "support_x": uniform_float32(gen, (n_tasks, self.shots, self.dim), 0.0),  # U[0, 1)
            "support_y": gen.integers(0, 2, size=(n_tasks, self.shots)),
            "query_x": uniform_float32(gen, (n_tasks, self.query_shots, self.dim), 0.0),
            "query_y": gen.integers(0, 2, size=(n_tasks, self.query_shots)),
        }

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return Logistic(self.dim, generator, init_std=1.0)
