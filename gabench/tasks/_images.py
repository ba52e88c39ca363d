"""Few-shot image classification on datasets read from disk: Omniglot and Mini-ImageNet.

The images are decoded once into a cached uint8 array (:mod:`gabench.datasets`); sampling a
meta-batch draws classes and images with a few vectorised generator calls and gathers them by
array indexing.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from gabench._errors import ConfigError, check_int
from gabench.datasets import CHANNELS, SIDES, ImageSet, check_ways, load_dataset
from gabench.models import Conv4
from gabench.tasks._base import MAX_FILTERS, SPLITS, TaskFamily, check_shots


def _choose(rng: np.random.Generator, rows: int, n_items: np.ndarray | int, k: int) -> np.ndarray:
    """For each of ``rows`` rows, ``k`` distinct indices of ``range(n_items[row])`` in random order.

    Every subset is equally likely and its order is uniformly random (the ``k`` smallest of
    i.i.d. uniform keys, sorted by key).

    Args:
        rng: The generator.
        rows: Number of rows.
        n_items: Items available per row: an int, or an int array of shape (rows,); >= k.
        k: Indices per row.

    Returns:
        int64 array of shape (rows, k).
    """
    width = int(np.max(n_items))
    keys = rng.random((rows, width))
    if not np.isscalar(n_items):
        keys[np.arange(width) >= np.asarray(n_items)[:, None]] = 2.0  # never among the k smallest
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < width else np.tile(np.arange(width), (rows, 1))
    order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)


class ImageFamily(TaskFamily):
    """N-way K-shot classification of the images of a dataset on disk.

    Each task draws ``ways`` classes of its split (uniformly, without replacement), assigns them
    the labels 0..ways-1 in random order, and draws ``shots + query_shots`` distinct images of
    each class: the first ``shots`` are the support set, the rest the query set. Inputs are
    float32 tensors of shape (ways * shots, channels, side, side) per task, in [0, 1].

    Subclasses set :attr:`dataset`, :attr:`rotations` and :attr:`default_filters`.
    """

    task_type = "classification"
    dataset: ClassVar[str]
    #: Task classes per stored class (4: each rotation by 90 degrees is its own class).
    rotations: ClassVar[int] = 1
    #: Whether pixel values are inverted (Omniglot: strokes 1 on a background 0).
    invert: ClassVar[bool] = False
    param_help: ClassVar[dict[str, str]] = {
        "root": "dataset folder (default: $GABENCH_DATA/<dataset>; -P root wins)",
        "ways": "classes per task (N-way)",
        "shots": "support images per class (K-shot)",
        "query_shots": "query images per class",
        "filters": "feature maps of each Conv-4 layer",
    }

    def _setup(self, root: str, ways: int, shots: int, query_shots: int, filters: int) -> None:
        if not isinstance(root, str):
            raise ConfigError("root", root, "a folder path (a string)")
        self.ways = check_int("ways", ways, minimum=2)
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots)
        self.filters = check_int("filters", filters, maximum=MAX_FILTERS)
        self.root = root
        self.data: ImageSet = load_dataset(self.dataset, root)
        check_ways(self.data, self.ways, self.rotations)
        self.shots, self.query_shots = check_shots(self.name, shots, query_shots,
                                                   int(self.data.counts.min()), per="class")
        R = self.rotations
        self._classes = {s: (self.data.splits[s][:, None] * R + np.arange(R)).reshape(-1) for s in SPLITS}

    def classes_of(self, split: str) -> np.ndarray:
        """Global class ids of ``split`` (stored class * rotations + rotation)."""
        return self._classes[split]

    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        pool = self._classes[split]
        T, N, K, Q = n_tasks, self.ways, self.shots, self.query_shots
        chosen = pool[_choose(rng, T, len(pool), N)]  # (T, N) global class ids
        stored, rot = np.divmod(chosen.reshape(-1), self.rotations)
        picks = _choose(rng, T * N, self.data.counts[stored], K + Q)  # (T*N, K+Q), distinct images
        index = self.data.offsets[stored][:, None] + picks
        labels = np.arange(N)
        out: dict[str, np.ndarray] = {"classes": chosen}
        for part, cols, n in (("support", slice(0, K), K), ("query", slice(K, K + Q), Q)):
            # gathered in task order: (T*N*n, C, H, W), the n images of a class one after another
            u8 = self.data.images[index[:, cols].reshape(-1)]
            rots = np.repeat(rot, n)
            for r in range(1, self.rotations):
                mask = rots == r
                if mask.any():
                    u8[mask] = np.rot90(u8[mask], r, axes=(-2, -1))
            # to float32 in [0, 1] (Omniglot inverted: strokes 1), one vectorised pass (+1 to invert)
            x = np.multiply(u8, np.float32(-1 / 255 if self.invert else 1 / 255), dtype=np.float32)
            if self.invert:
                x += np.float32(1.0)
            out[f"{part}_x"] = x.reshape(T, N * n, *u8.shape[1:])
            out[f"{part}_y"] = np.tile(np.repeat(labels, n), (T, 1))
        return out

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return Conv4(CHANNELS[self.dataset], SIDES[self.dataset], self.n_outputs, generator, self.filters)


class Omniglot(ImageFamily):
    """N-way K-shot Omniglot (Lake et al. 2015) with the standard protocol of MAML.

    Images are resized to 28x28 and inverted (strokes 1, background 0, as in MAML's code); each
    character at each rotation by 0, 90, 180 and 270 degrees is its own class (Santoro et al.
    2016, Vinyals et al. 2016). Characters are assigned to meta-train (1200), meta-val (100) and
    meta-test (the other 323) by a fixed seeded shuffle (:func:`gabench.datasets.omniglot_split`;
    a smaller folder is split in the same proportions). Model: :class:`~gabench.models.Conv4`.

    Args:
        root: The folder with ``images_background/`` and/or ``images_evaluation/`` (empty:
            ``$GABENCH_DATA/omniglot``).
        ways: Classes per task.
        shots: Support images per class.
        query_shots: Query images per class (shots + query_shots <= 20 on the release).
        filters: Feature maps of each Conv-4 layer (64 in MAML).
    """

    name = "omniglot"
    description = ("N-way K-shot Omniglot from disk (-P root=PATH or $GABENCH_DATA/omniglot), 28x28, "
                   "4 rotations per character, Conv-4")
    dataset = "omniglot"
    rotations = 4
    invert = True
    default_alpha = 0.4  # MAML, Appendix A.1 (5-way)

    def __init__(self, root: str = "", ways: int = 5, shots: int = 1, query_shots: int = 15,
                 filters: int = 64) -> None:
        self._setup(root, ways, shots, query_shots, filters)


class MiniImageNet(ImageFamily):
    """N-way K-shot Mini-ImageNet (Vinyals et al. 2016) with Ravi and Larochelle's split.

    64 meta-train, 16 meta-val and 20 meta-test classes of 600 images each, as listed in the
    split files; images resized to 84x84 RGB, values in [0, 1]. Model:
    :class:`~gabench.models.Conv4` with 32 filters, as in MAML.

    Args:
        root: The folder with ``images/`` and ``train.csv``, ``val.csv``, ``test.csv`` (empty:
            ``$GABENCH_DATA/mini-imagenet``).
        ways: Classes per task.
        shots: Support images per class.
        query_shots: Query images per class (15 in Ravi and Larochelle and MAML).
        filters: Feature maps of each Conv-4 layer (32 in MAML).
    """

    name = "mini-imagenet"
    description = ("N-way K-shot Mini-ImageNet from disk (-P root=PATH or $GABENCH_DATA/mini-imagenet), "
                   "84x84 RGB, Ravi-Larochelle split, Conv-4")
    dataset = "mini-imagenet"
    default_alpha = 0.01  # MAML, Appendix A.1

    def __init__(self, root: str = "", ways: int = 5, shots: int = 1, query_shots: int = 15,
                 filters: int = 32) -> None:
        self._setup(root, ways, shots, query_shots, filters)
