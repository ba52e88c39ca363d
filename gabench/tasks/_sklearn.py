"""Task families built on scikit-learn's synthetic dataset generators.

Each task is a fresh draw of a ``sklearn.datasets.make_*`` generator (its ``random_state`` taken
from the task stream, in a block of seeds reserved for the split) followed by a per-task random
transformation of the inputs: a rotation (Haar-random orthogonal matrix), a log-uniform scale
and a Gaussian shift. Classification tasks also get a random assignment of classes to labels,
so the model must adapt to each task from its support set. Tasks thus differ while sharing the
generator's structure.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from sklearn import datasets
from torch import nn

from gabench._errors import ConfigError, check_int, check_positive
from gabench.models import MLP
from gabench.tasks._base import TaskFamily, check_shots, sklearn_state


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix of shape (dim, dim)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


class SklearnFamily(TaskFamily):
    """Common machinery: per-task transformation, class splitting and the MLP model.

    Args:
        shots: Support examples per class (classification) or per task (regression).
        query_shots: Query examples per class or per task.
        noise: Noise level handed to the generator (its meaning is the generator's).
        rotate: Apply a random rotation to each task's inputs.
        scale_spread: Each task's inputs are scaled by ``exp(U[-log s, log s])`` (1 = off).
        shift_std: Standard deviation of each task's input shift (0 = off).
        hidden: Width of each of the model's two hidden layers.
    """

    param_help = {
        "ways": "classes per task (N-way)",
        "shots": "support examples per class (per task for regression)",
        "query_shots": "query examples per class (per task for regression)",
        "dim": "input dimension",
        "noise": "generator noise level",
        "rotate": "random rotation of each task's inputs",
        "scale_spread": "per-task input scale in [1/s, s], log-uniform",
        "shift_std": "std of the per-task input shift",
        "hidden": "hidden layer width of the MLP",
    }

    dim: int

    def _init_common(self, shots: int, query_shots: int, noise: float, rotate: bool,
                     scale_spread: float, shift_std: float, hidden: int) -> None:
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.noise = check_positive("noise", noise, allow_zero=True)
        if not isinstance(rotate, bool):
            raise ConfigError("rotate", rotate, "true or false")
        self.rotate = rotate
        self.scale_spread = check_positive("scale_spread", scale_spread)
        if self.scale_spread < 1:
            raise ConfigError("scale_spread", scale_spread, "a number >= 1")
        self.shift_std = check_positive("shift_std", shift_std, allow_zero=True)
        self.hidden = check_int("hidden", hidden)

    @abstractmethod
    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        """One task's raw data from the generator: X (n, dim) and y (n,)."""

    def _transform(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rotate:
            x = x @ random_rotation(x.shape[1], rng)
        log_s = np.log(self.scale_spread)
        x = x * np.exp(rng.uniform(-log_s, log_s))
        return x + self.shift_std * rng.standard_normal(x.shape[1])

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return MLP(self.dim, (self.hidden, self.hidden), self.n_outputs, generator)


class _ClassificationFamily(SklearnFamily):
    task_type = "classification"
    default_alpha = 0.5

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        per_class = self.shots + self.query_shots
        sx, sy, qx, qy = [], [], [], []
        for _ in range(n_tasks):
            x, y = self._draw(per_class, sklearn_state(rng, split))
            x = self._transform(x, rng)
            labels = rng.permutation(self.ways)
            s_idx, q_idx = [], []
            for c in range(self.ways):
                idx = np.flatnonzero(y == c)
                s_idx.append(idx[: self.shots])
                q_idx.append(idx[self.shots: per_class])
            s, q = np.concatenate(s_idx), np.concatenate(q_idx)
            sx.append(x[s]), sy.append(labels[y[s]]), qx.append(x[q]), qy.append(labels[y[q]])
        return {"support_x": np.stack(sx), "support_y": np.stack(sy),
                "query_x": np.stack(qx), "query_y": np.stack(qy)}


class Classification(_ClassificationFamily):
    """N-way tasks from ``make_classification`` (one Gaussian cluster per class on hypercube
    vertices, all features informative), rotated, scaled and shifted per task."""

    name = "classification"
    description = "N-way tasks from sklearn make_classification, per-task rotation/scale/shift"

    def __init__(self, ways: int = 5, shots: int = 5, query_shots: int = 15, dim: int = 5,
                 noise: float = 0.0, class_sep: float = 1.5, rotate: bool = True,
                 scale_spread: float = 1.5, shift_std: float = 0.5, hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.dim = check_int("dim", dim, minimum=1)
        self.ways = check_int("ways", ways, minimum=2, maximum=min(2**self.dim, 64))
        self.class_sep = check_positive("class_sep", class_sep)

    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = datasets.make_classification(
            n_samples=self.ways * n_per_class, n_features=self.dim, n_informative=self.dim,
            n_redundant=0, n_repeated=0, n_classes=self.ways, n_clusters_per_class=1,
            flip_y=0.0, class_sep=self.class_sep, random_state=random_state,
        )
        if self.noise:
            x = x + self.noise * np.random.default_rng(random_state).standard_normal(x.shape)
        return x, y


class Moons(_ClassificationFamily):
    """Two interleaving half circles (``make_moons``), rotated, scaled and shifted per task."""

    name = "moons"
    description = "2-way two-moons tasks (sklearn make_moons), per-task rotation/scale/shift"

    def __init__(self, shots: int = 5, query_shots: int = 15, noise: float = 0.1,
                 rotate: bool = True, scale_spread: float = 1.5, shift_std: float = 0.5,
                 hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.ways, self.dim = 2, 2

    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        return datasets.make_moons(n_samples=(n_per_class, n_per_class), noise=self.noise,
                                   random_state=random_state)


class Circles(_ClassificationFamily):
    """A small circle inside a large one (``make_circles``), scaled and shifted per task."""

    name = "circles"
    description = "2-way concentric-circles tasks (sklearn make_circles), per-task scale/shift"

    def __init__(self, shots: int = 5, query_shots: int = 15, noise: float = 0.05,
                 factor: float = 0.5, rotate: bool = True, scale_spread: float = 1.5,
                 shift_std: float = 0.5, hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.factor = check_positive("factor", factor)
        if self.factor >= 1:
            raise ConfigError("factor", factor, "a number in (0, 1)")
        self.ways, self.dim = 2, 2

    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        return datasets.make_circles(n_samples=(n_per_class, n_per_class), noise=self.noise,
                                     factor=self.factor, random_state=random_state)


class Blobs(_ClassificationFamily):
    """N isotropic Gaussian blobs with random centres (``make_blobs``), one per class."""

    name = "blobs"
    description = "N-way Gaussian-blob tasks (sklearn make_blobs), fresh centres per task"

    def __init__(self, ways: int = 5, shots: int = 5, query_shots: int = 15, dim: int = 2,
                 cluster_std: float = 1.5, rotate: bool = True, scale_spread: float = 1.5,
                 shift_std: float = 0.5, hidden: int = 40) -> None:
        self._init_common(shots, query_shots, 0.0, rotate, scale_spread, shift_std, hidden)
        self.dim = check_int("dim", dim)
        self.ways = check_int("ways", ways, minimum=2, maximum=64)
        self.cluster_std = check_positive("cluster_std", cluster_std)

    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = datasets.make_blobs(n_samples=[n_per_class] * self.ways, n_features=self.dim,
                                   cluster_std=self.cluster_std, center_box=(-5.0, 5.0),
                                   random_state=random_state)
        return x / 5.0, y


class Regression(SklearnFamily):
    """Friedman #1 regression (``make_friedman1``) with per-task input and output transforms.

    ``y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise`` on ``x ~ U[0,1]^dim``,
    standardised (mean 14.4, sd 5), then per task: the inputs are rotated/scaled/shifted and
    the target is mapped to ``a y + b`` with ``a ~ U[0.5, 1.5]``, ``b ~ N(0, 0.5^2)``.
    """

    name = "regression"
    description = "Friedman #1 regression tasks (sklearn make_friedman1), per-task transforms"
    task_type = "regression"
    default_alpha = 0.05

    def __init__(self, shots: int = 10, query_shots: int = 10, dim: int = 5, noise: float = 0.5,
                 rotate: bool = False, scale_spread: float = 1.5, shift_std: float = 0.2,
                 hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.dim = check_int("dim", dim, minimum=5)
        self.ways = 1

    def _draw(self, n_per_class: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = datasets.make_friedman1(n_samples=n_per_class, n_features=self.dim,
                                       noise=self.noise, random_state=random_state)
        return x, (y - 14.4) / 5.0

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = self.shots + self.query_shots
        xs, ys = [], []
        for _ in range(n_tasks):
            x, y = self._draw(n, sklearn_state(rng, split))
            xs.append(self._transform(x, rng))
            ys.append(rng.uniform(0.5, 1.5) * y + 0.5 * rng.standard_normal())
        x, y = np.stack(xs), np.stack(ys)
        k = self.shots
        return {"support_x": x[:, :k], "support_y": y[:, :k],
                "query_x": x[:, k:], "query_y": y[:, k:]}
