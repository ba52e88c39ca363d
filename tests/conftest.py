"""Shared fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


class GlobalRNGGuard:
    """Snapshots the global Python, NumPy and torch RNG states; ``unchanged()`` compares."""

    def __init__(self) -> None:
        self.py = random.getstate()
        self.np = np.random.get_state()  # noqa: NPY002 - the state being guarded
        self.torch = torch.random.get_rng_state().clone()

    def unchanged(self) -> bool:
        np_now = np.random.get_state()  # noqa: NPY002
        return (
            random.getstate() == self.py
            and all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
                    for a, b in zip(self.np, np_now, strict=True))
            and torch.equal(torch.random.get_rng_state(), self.torch)
        )


@pytest.fixture
def rng_guard() -> GlobalRNGGuard:
    """Seeds the global RNGs, then snapshots them: the code under test must not touch them."""
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002 - setting the state we check is left alone
    torch.manual_seed(123)
    return GlobalRNGGuard()


def central_differences(p: torch.Tensor, objective, h: float = 1e-6) -> torch.Tensor:
    """d objective / d p by central differences, perturbing ``p`` in place (restored after).

    Args:
        p: A parameter tensor that ``objective`` reads.
        objective: A function of no arguments returning a float.
        h: The step.
    """
    fd = torch.zeros_like(p)
    for idx in np.ndindex(*p.shape):
        old = p[idx].item()
        values = []
        for shifted in (old + h, old - h):
            with torch.no_grad():
                p[idx] = shifted
            values.append(objective())
        with torch.no_grad():
            p[idx] = old
        fd[idx] = (values[0] - values[1]) / (2 * h)
    return fd
