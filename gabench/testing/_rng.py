"""A check that code leaves the global random number generators alone."""

from __future__ import annotations

import random

import numpy as np
import torch


class GlobalRNGGuard:
    """Snapshots the global Python, NumPy and torch RNG states; :meth:`unchanged` compares.

    gabench takes its randomness from explicit generators only, so code under test must leave
    the global states exactly as it found them.

    Example::

        guard = GlobalRNGGuard.seeded()
        family.sample(2, "train", rng)
        assert guard.unchanged()
    """

    def __init__(self) -> None:
        self.py = random.getstate()
        self.np = np.random.get_state()  # noqa: NPY002 - the state being guarded
        self.torch = torch.random.get_rng_state().clone()

    @classmethod
    def seeded(cls, seed: int = 123) -> GlobalRNGGuard:
        """Seed the three global generators with ``seed``, then snapshot them."""
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - setting the state that is checked
        torch.manual_seed(seed)
        return cls()

    def unchanged(self) -> bool:
        """Whether all three global states equal the snapshot."""
        np_now = np.random.get_state()  # noqa: NPY002
        return (
            random.getstate() == self.py
            and all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
                    for a, b in zip(self.np, np_now, strict=True))
            and torch.equal(torch.random.get_rng_state(), self.torch)
        )
