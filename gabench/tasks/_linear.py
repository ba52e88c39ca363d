"""A learnable version of the textbook's binary tasks: random hyperplanes near a shared one."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_fraction, check_int, check_positive
from gabench.models import Logistic
from gabench.tasks._base import MAX_DIM, TaskFamily, check_shots, split_seed, torch_generator, uniform_float32


class LinearBinary(TaskFamily):
    """Binary tasks ``y = 1[x . w_t > 0]`` with ``w_t`` a random perturbation of a shared ``w``.

    ``x ~ U[-1,1)^dim``; the shared unit normal ``w`` is fixed by ``structure_seed`` (the same in
    every split), ``w_t = w + task_spread * z / sqrt(dim)`` with ``z ~ N(0, I)``, and each label
    is flipped with probability ``label_noise``. Same model as ``textbook-binary`` (logistic, no
    bias), so an initialisation near ``w`` plus a few steps solves every task.

    Args:
        shots: Support examples per task.
        query_shots: Query examples per task.
        dim: Input dimension.
        task_spread: How far task hyperplanes scatter around the shared one (0 = one task).
        label_noise: Probability that a label is flipped, in [0, 0.5).
        structure_seed: Seed of the shared hyperplane.
    """

    chunk_tasks = 500  # tasks drawn per vectorised call (see TaskFamily.sample)

    name = "linear-binary"
    description = "Learnable binary tasks of the book's shape: random hyperplanes near a shared one"
    task_type = "classification"
    default_alpha = 0.5
    param_help = {
        "task_spread": "spread of task hyperplanes around the shared one",
        "label_noise": "probability of flipping each label, [0, 0.5)",
        "structure_seed": "seed of the shared hyperplane",
    }

    def __init__(self, shots: int = 10, query_shots: int = 10, dim: int = 50,
                 task_spread: float = 0.5, label_noise: float = 0.05,
                 structure_seed: int = 0) -> None:
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.dim = check_int("dim", dim, maximum=MAX_DIM)
        self.task_spread = check_positive("task_spread", task_spread, allow_zero=True)
        self.label_noise = check_fraction("label_noise", label_noise)
        if self.label_noise >= 0.5:
            raise ConfigError("label_noise", label_noise, "a number in [0, 0.5)")
        self.structure_seed = check_int("structure_seed", structure_seed, minimum=0)
        self.ways = 2
        w = np.random.default_rng(self.structure_seed).standard_normal(self.dim)
        self._w = w / np.linalg.norm(w)

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        gen = np.random.Generator(np.random.SFC64(split_seed(rng, split)))
        z = torch.randn((n_tasks, self.dim), generator=torch_generator(gen)).numpy()  # float32
        w = (self._w + self.task_spread * z / np.sqrt(self.dim)).astype(np.float32)[:, :, None]
        out = {}
        for part, k in (("support", self.shots), ("query", self.query_shots)):
            x = uniform_float32(gen, (n_tasks, k, self.dim), -1.0, 1)  # U[-1, 1)
            y = (x @ w)[..., 0] > 0  # labels from exactly these (float32) inputs
            flip = gen.random((n_tasks, k)) < self.label_noise
            out[f"{part}_x"], out[f"{part}_y"] = x, (y != flip).astype(np.int64)
        return out

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return Logistic(self.dim, generator, init_std=1.0 / np.sqrt(self.dim))
