"""Few-shot classification on real images that ship with scikit-learn (8x8 handwritten digits)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from gabench._errors import ConfigError, check_choice, check_int
from gabench.models import MLP, ConvNet
from gabench.tasks._base import MAX_HIDDEN, SPLITS, TaskFamily, check_shots

#: Which digits each split draws its classes from: the splits share no digit.
SPLIT_DIGITS: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 3, 4, 5),
    "val": (6, 7),
    "test": (8, 9),
}


@cache
def _images() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


@cache
def _rotated_images() -> np.ndarray:
    """Every image at every rotation: array of shape (4, n_images, 64), rotation r at index r
    (``np.rot90`` by ``r`` quarter turns)."""
    images, _ = _images()
    return np.stack([np.rot90(images, k=r, axes=(1, 2)).reshape(len(images), 64)
                     for r in range(4)])


def sample_without_replacement(n_items: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per row, ``n`` distinct indices below ``n_items[row]`` in random order, all rows at once.

    Floyd's algorithm (a uniform random ``n``-subset in ``n`` vectorised steps, whatever the
    population), followed by a uniform random order: the result is distributed as
    ``rng.choice(n_items[row], n, replace=False)`` for every row, independently.

    Args:
        n_items: Integer array of shape (rows,), the population sizes (each ``>= n``).
        n: Sample size.

    Returns:
        Integer array of shape (rows, n).

    References:
        J. Bentley, R. Floyd, "Programming pearls: a sample of brilliance", CACM 30(9), 1987.
    """
    rows = n_items.shape[0]
    chosen = np.empty((rows, n), np.int64)
    for i in range(n):
        top = n_items - n + i  # draw t uniform in [0, top]; if already chosen, take top instead
        t = (rng.random(rows) * (top + 1)).astype(np.int64)
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, top, t)
    order = np.argsort(rng.random((rows, n)), axis=1)
    return np.take_along_axis(chosen, order, axis=1)


class Digits(TaskFamily):
    """N-way K-shot classification of scikit-learn's 1797 8x8 digit images (offline data).

    A class is a digit at one of four rotations (0, 90, 180, 270 degrees), the way Omniglot
    few-shot benchmarks multiply classes, giving 24 meta-train, 8 meta-val and 8 meta-test
    classes. Splits are by digit (train 0-5, val 6-7, test 8-9), so meta-train, meta-val and
    meta-test classes, and images, are disjoint. Each task draws ``ways`` classes of its split
    and ``shots + query_shots`` images of each class, and assigns labels 0..ways-1 at random.

    Args:
        ways: Classes per task; at most the classes of the smallest split (8, or 2 without
            rotations).
        shots: Support images per class.
        query_shots: Query images per class.
        rotations: Multiply classes by four rotations (False: a class is a digit).
        model: ``"mlp"`` (64-64-64-N) or ``"conv"`` (two 3x3 conv layers, 16 maps).
        hidden: Hidden width of the MLP.
    """

    chunk_tasks = 500  # tasks drawn per vectorised call (see TaskFamily.sample)

    name = "digits"
    description = ("N-way K-shot on sklearn's 8x8 digits; train/val/test classes disjoint "
                   "(digits 0-5/6-7/8-9 x 4 rotations)")
    task_type = "classification"
    default_alpha = 0.5
    param_help = {
        "ways": "classes per task (N-way)",
        "shots": "support images per class",
        "query_shots": "query images per class",
        "rotations": "classes are digit x rotation (4x more classes)",
        "model": "mlp or conv",
        "hidden": "hidden width of the MLP",
    }

    def __init__(self, ways: int = 5, shots: int = 1, query_shots: int = 15,
                 rotations: bool = True, model: str = "mlp", hidden: int = 64) -> None:
        if not isinstance(rotations, bool):
            raise ConfigError("rotations", rotations, "true or false")
        self.rotations = rotations
        n_rot = 4 if rotations else 1
        smallest = min(len(d) for d in SPLIT_DIGITS.values()) * n_rot
        try:
            self.ways = check_int("ways", ways, minimum=2, maximum=smallest)
        except ConfigError:
            raise ConfigError("ways", ways, f"an integer in [2, {smallest}] (the classes of the "
                              f"smallest split{'' if rotations else ' without rotations'})") from None
        _, labels = _images()
        per_class = int(np.bincount(labels).min())
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots, per_class,
                                                   per="class")
        self.model = check_choice("model", model, ("mlp", "conv"))
        self.hidden = check_int("hidden", hidden, maximum=MAX_HIDDEN)
        counts = np.bincount(labels, minlength=10)
        #: Row d: the image indices of digit d (padded with -1), for vectorised sampling.
        self._digit_images = np.full((10, int(counts.max())), -1, np.int64)
        for d in range(10):
            self._digit_images[d, : counts[d]] = np.flatnonzero(labels == d)
        self._digit_counts = counts
        self._classes = {
            split: np.array([d * 4 + r for d in SPLIT_DIGITS[split] for r in range(n_rot)])
            for split in SPLITS
        }

    def classes_of(self, split: str) -> np.ndarray:
        """Global class ids (digit * 4 + rotation) available to ``split``."""
        return self._classes[split]

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n, ways = self.shots + self.query_shots, self.ways
        pool = self._classes[split]
        classes = pool[np.argsort(rng.random((n_tasks, pool.size)), axis=1)[:, :ways]]
        digit, rot = np.divmod(classes, 4)
        pick = sample_without_replacement(self._digit_counts[digit.reshape(-1)], n, rng)
        index = self._digit_images[digit.reshape(-1, 1), pick].reshape(n_tasks, ways, n)
        bank, rot = _rotated_images(), rot[..., None]
        labels = np.arange(ways)
        return {  # images gathered straight into (n_tasks, ways * shots, 64), no copy after
            "support_x": bank[rot, index[..., : self.shots]].reshape(n_tasks, -1, 64),
            "support_y": np.tile(np.repeat(labels, self.shots), (n_tasks, 1)),
            "query_x": bank[rot, index[..., self.shots:]].reshape(n_tasks, -1, 64),
            "query_y": np.tile(np.repeat(labels, self.query_shots), (n_tasks, 1)),
            "classes": classes,
        }

    def make_model(self, generator: torch.Generator) -> nn.Module:
        if self.model == "conv":
            return ConvNet(8, self.n_outputs, generator)
        return MLP(64, (self.hidden, self.hidden), self.n_outputs, generator)
