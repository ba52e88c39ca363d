"""Task families built on scikit-learn's synthetic dataset generators, vectorised over tasks.

Each task is a fresh draw from the distribution of a ``sklearn.datasets.make_*`` generator
followed by a per-task random transformation of the inputs: a rotation (Haar-random orthogonal
matrix), a log-uniform scale and a Gaussian shift. Classification tasks also get a random
assignment of classes to labels, so the model must adapt to each task from its support set.
Tasks thus differ while sharing the generator's structure.

The generators are re-implemented here in NumPy for many tasks at once (one call per chunk of
tasks instead of one scikit-learn call per task, whose parameter validation alone cost more
than a meta-iteration). They draw from the same distributions as scikit-learn's, which
``tests/test_sampling.py`` checks against scikit-learn itself (moments, two-sample
Kolmogorov-Smirnov tests, shapes and label balance on many draws). Each chunk is drawn from
a generator seeded in the block of seeds reserved for its split (:func:`split_seed`).
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_int, check_positive
from gabench.models import MLP
from gabench.tasks._base import (
    MAX_HIDDEN,
    MAX_SKLEARN_DIM,
    TaskFamily,
    check_shots,
    split_seed,
    torch_generator,
)


def random_rotations(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent Haar-distributed orthogonal matrices, an array of shape (n, dim, dim).

    The Q factor, with a positive diagonal of R, of the QR decomposition of a standard Gaussian
    matrix (F. Mezzadri, "How to generate random matrices from the classical compact groups",
    Notices of the AMS 54, 2007): computed for all ``n`` matrices at once by Gram-Schmidt on the
    columns, each orthogonalised twice (so orthogonal to rounding error), which gives exactly
    that factor, several times faster than ``np.linalg.qr`` on a stack of small matrices.
    """
    cols = rng.standard_normal((dim, n, dim))  # cols[j, t]: column j of matrix t
    q = np.empty_like(cols)
    for j in range(dim):
        v = cols[j]
        for _ in range(2 if j else 0):
            v = v - np.einsum("jt,jti->ti", np.einsum("jti,ti->jt", q[:j], v), q[:j])
        q[j] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return q.transpose(1, 2, 0)


def random_order(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Independent uniform random permutations of ``range(shape[-1])``, an array of ``shape``."""
    return np.argsort(rng.random(shape), axis=-1)


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

    chunk_tasks = 500  # tasks drawn per vectorised call (see TaskFamily.sample)

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
        self.hidden = check_int("hidden", hidden, maximum=MAX_HIDDEN)

    @abstractmethod
    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        """Raw data of ``n_tasks`` tasks from the generator's distribution.

        Returns:
            Classification: inputs of shape (n_tasks, ways, n_per_class, dim), grouped by class
            (generator class c at index c), rows in random order within a class.
            Regression: an array of shape (n_tasks, n_per_class, dim + 1), the target last.
        """

    def _affine(self, n_tasks: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Each task's input transformation ``x -> x @ m + b``: a Haar rotation (when
        ``rotate``) times the log-uniform scale, then the Gaussian shift.

        Returns:
            ``m`` of shape (n_tasks, dim, dim) and ``b`` of shape (n_tasks, 1, dim).
        """
        log_s = np.log(self.scale_spread)
        scale = np.exp(rng.uniform(-log_s, log_s, size=(n_tasks, 1, 1)))
        m = random_rotations(n_tasks, self.dim, rng) if self.rotate else np.eye(self.dim)
        b = self.shift_std * rng.standard_normal((n_tasks, 1, self.dim))
        return m * scale, b

    def _draw_affine(self, n_tasks: int, n_per_class: int, m: np.ndarray, b: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        """:meth:`_draw` with each task's inputs mapped by ``x @ m + b`` (see :meth:`_affine`).

        Subclasses may fold the map into the generator (same draws, same numbers up to
        rounding, fewer passes over the data).
        """
        x = self._draw(n_tasks, n_per_class, rng)
        return x @ m[:, None] + b[:, None]

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return MLP(self.dim, (self.hidden, self.hidden), self.n_outputs, generator)


class _ClassificationFamily(SklearnFamily):
    task_type = "classification"
    default_alpha = 0.5

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        gen = np.random.default_rng(split_seed(rng, split))
        per_class, k = self.shots + self.query_shots, self.shots
        m, b = self._affine(n_tasks, gen)
        x = self._draw_affine(n_tasks, per_class, m, b, gen).astype(np.float32, copy=False)
        labels = random_order((n_tasks, self.ways), gen)  # label of generator class c: labels[:, c]
        return {
            "support_x": x[:, :, :k].reshape(n_tasks, -1, self.dim),
            "support_y": np.repeat(labels, k, axis=1),
            "query_x": x[:, :, k:].reshape(n_tasks, -1, self.dim),
            "query_y": np.repeat(labels, self.query_shots, axis=1),
        }


class Classification(_ClassificationFamily):
    """N-way tasks from ``make_classification``'s distribution (one Gaussian cluster per class on
    hypercube vertices, all features informative), rotated, scaled and shifted per task.

    Per task, as ``make_classification(n_informative=dim, n_redundant=0, n_repeated=0,
    n_clusters_per_class=1, flip_y=0, hypercube=True)``: ``ways`` distinct vertices of
    ``{-class_sep, class_sep}^dim``; class c's points ``z A_c + v_c`` with ``z ~ N(0, I)`` and
    ``A_c`` uniform on ``[-1, 1]^(dim x dim)`` (then ``noise`` times ``N(0, I)`` when
    ``noise > 0``). scikit-learn also permutes the features at random; that leaves this
    distribution unchanged (vertices and ``A_c`` are exchangeable across coordinates), so it is
    not done here.
    """

    name = "classification"
    description = "N-way tasks from sklearn make_classification, per-task rotation/scale/shift"

    def __init__(self, ways: int = 5, shots: int = 5, query_shots: int = 15, dim: int = 5,
                 noise: float = 0.0, class_sep: float = 1.5, rotate: bool = True,
                 scale_spread: float = 1.5, shift_std: float = 0.5, hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.dim = check_int("dim", dim, maximum=MAX_SKLEARN_DIM)
        self.ways = check_int("ways", ways, minimum=2, maximum=min(2**self.dim, 64))
        self.class_sep = check_positive("class_sep", class_sep)

    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        z, a, centroids = self._cluster_draws(n_tasks, n_per_class, rng)
        x = z @ a + centroids[:, :, None, :]
        if self.noise:
            x = x + self.noise * rng.standard_normal(x.shape, dtype=np.float32)
        return x

    def _draw_affine(self, n_tasks: int, n_per_class: int, m: np.ndarray, b: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        # (z a + c) m + b = z (a m) + (c m + b): one pass over the points instead of three,
        # in float32 (the inputs' dtype) from the float32 normals on
        z, a, centroids = self._cluster_draws(n_tasks, n_per_class, rng)
        m = m[:, None]
        x = z @ (a @ m).astype(np.float32)
        x += (centroids[:, :, None, :] @ m + b[:, None]).astype(np.float32)
        if self.noise:
            x += (self.noise * rng.standard_normal(x.shape, dtype=np.float32)) @ m.astype(np.float32)
        return x

    def _cluster_draws(self, n_tasks: int, n_per_class: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Standard normal points (n_tasks, ways, n, dim) in float32, covariance factors
        (n_tasks, ways, dim, dim) and centroids (n_tasks, ways, dim)."""
        sep, dim = self.class_sep, self.dim
        centroids = hypercube_vertices(n_tasks, self.ways, dim, rng) * (2 * sep) - sep
        g = torch_generator(rng)  # torch's Gaussians: three times as fast as NumPy's here
        z = torch.randn((n_tasks, self.ways, n_per_class, dim), generator=g).numpy()
        a = 2 * rng.uniform(size=(n_tasks, self.ways, dim, dim)) - 1
        return z, a, centroids


def hypercube_vertices(n_tasks: int, n_vertices: int, dim: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Per task, ``n_vertices`` vertices of ``{0, 1}^dim`` in random order, as scikit-learn's
    ``make_classification`` picks its centroids: distinct in the last ``min(dim, 30)``
    coordinates, the others (when ``dim > 30``) independent fair bits.

    Returns:
        Array of shape (n_tasks, n_vertices, dim) of 0.0 and 1.0.
    """
    tail = min(dim, 30)
    if 2**tail <= 4096:
        index = random_order((n_tasks, 2**tail), rng)[:, :n_vertices]
    else:  # uniform distinct draws: redraw the tasks whose draws collide (rare here)
        index = rng.integers(2**tail, size=(n_tasks, n_vertices))
        while True:
            ordered = np.sort(index, axis=1)
            again = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
            if not again.any():
                break
            index[again] = rng.integers(2**tail, size=(int(again.sum()), n_vertices))
    bits = (index[..., None] >> np.arange(tail - 1, -1, -1)) & 1
    if dim > tail:
        bits = np.concatenate([rng.integers(2, size=(n_tasks, n_vertices, dim - tail)), bits], -1)
    return bits.astype(np.float64)


def _curves(first: np.ndarray, second: np.ndarray, n_tasks: int, noise: float,
            rng: np.random.Generator) -> np.ndarray:
    """Points of two fixed curves (arrays of shape (n, 2)) in random order per task and class,
    plus Gaussian noise: an array of shape (n_tasks, 2, n, 2)."""
    base = np.stack([first, second])
    order = random_order((n_tasks, 2, first.shape[0]), rng)
    x = base[np.arange(2)[:, None], order]
    if noise:
        x = x + noise * rng.standard_normal(x.shape)
    return x


class Moons(_ClassificationFamily):
    """Two interleaving half circles (``make_moons``), rotated, scaled and shifted per task.

    Per class, ``n`` points evenly spaced on a half circle (outer: angle 0..pi on the unit
    circle; inner: the same shifted by (1, -0.5) and flipped) plus ``N(0, noise^2)`` noise.
    """

    name = "moons"
    description = "2-way two-moons tasks (sklearn make_moons), per-task rotation/scale/shift"

    def __init__(self, shots: int = 5, query_shots: int = 15, noise: float = 0.1,
                 rotate: bool = True, scale_spread: float = 1.5, shift_std: float = 0.5,
                 hidden: int = 40) -> None:
        self._init_common(shots, query_shots, noise, rotate, scale_spread, shift_std, hidden)
        self.ways, self.dim = 2, 2

    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        angle = np.linspace(0, np.pi, n_per_class)
        outer = np.stack([np.cos(angle), np.sin(angle)], -1)
        inner = np.stack([1 - np.cos(angle), 1 - np.sin(angle) - 0.5], -1)
        return _curves(outer, inner, n_tasks, self.noise, rng)


class Circles(_ClassificationFamily):
    """A small circle inside a large one (``make_circles``), scaled and shifted per task.

    Per class, ``n`` points evenly spaced on a circle (radius 1, and ``factor`` for the inner
    class; angles ``2 pi i / n``) plus ``N(0, noise^2)`` noise.
    """

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

    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        angle = np.linspace(0, 2 * np.pi, n_per_class, endpoint=False)
        outer = np.stack([np.cos(angle), np.sin(angle)], -1)
        return _curves(outer, self.factor * outer, n_tasks, self.noise, rng)


class Blobs(_ClassificationFamily):
    """N isotropic Gaussian blobs with random centres (``make_blobs``), one per class.

    Per task, centres ``U[-5, 5]^dim`` and points ``N(centre, cluster_std^2 I)``, all divided
    by 5.
    """

    name = "blobs"
    description = "N-way Gaussian-blob tasks (sklearn make_blobs), fresh centres per task"

    def __init__(self, ways: int = 5, shots: int = 5, query_shots: int = 15, dim: int = 2,
                 cluster_std: float = 1.5, rotate: bool = True, scale_spread: float = 1.5,
                 shift_std: float = 0.5, hidden: int = 40) -> None:
        self._init_common(shots, query_shots, 0.0, rotate, scale_spread, shift_std, hidden)
        self.dim = check_int("dim", dim, maximum=MAX_SKLEARN_DIM)
        self.ways = check_int("ways", ways, minimum=2, maximum=64)
        self.cluster_std = check_positive("cluster_std", cluster_std)

    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        centres, z = self._blob_draws(n_tasks, n_per_class, rng)
        return (centres + self.cluster_std * z) / 5.0

    def _draw_affine(self, n_tasks: int, n_per_class: int, m: np.ndarray, b: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        # ((c + s z) / 5) m + b = z (s m / 5) + (c m / 5 + b): one pass over the points
        centres, z = self._blob_draws(n_tasks, n_per_class, rng)
        m = m[:, None] / 5.0
        return z @ (self.cluster_std * m) + (centres @ m + b[:, None])

    def _blob_draws(self, n_tasks: int, n_per_class: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Centres (n_tasks, ways, 1, dim) and standard normal points (n_tasks, ways, n, dim)."""
        centres = rng.uniform(-5.0, 5.0, size=(n_tasks, self.ways, 1, self.dim))
        return centres, rng.standard_normal((n_tasks, self.ways, n_per_class, self.dim))


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
        self.dim = check_int("dim", dim, minimum=5, maximum=MAX_SKLEARN_DIM)
        self.ways = 1

    def _draw(self, n_tasks: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.uniform(size=(n_tasks, n_per_class, self.dim))
        y = (10 * np.sin(np.pi * x[..., 0] * x[..., 1]) + 20 * (x[..., 2] - 0.5) ** 2
             + 10 * x[..., 3] + 5 * x[..., 4]
             + self.noise * rng.standard_normal((n_tasks, n_per_class)))
        return np.concatenate([x, ((y - 14.4) / 5.0)[..., None]], axis=-1)

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        gen = np.random.default_rng(split_seed(rng, split))
        m, b = self._affine(n_tasks, gen)
        data = self._draw(n_tasks, self.shots + self.query_shots, gen)
        x = data[..., :-1] @ m + b
        y = gen.uniform(0.5, 1.5, size=(n_tasks, 1)) * data[..., -1] \
            + 0.5 * gen.standard_normal((n_tasks, 1))
        k = self.shots
        return {"support_x": x[:, :k], "support_y": y[:, :k],
                "query_x": x[:, k:], "query_y": y[:, k:]}
