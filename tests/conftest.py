"""Shared fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gabench.testing._rng import GlobalRNGGuard


@pytest.fixture
def rng_guard() -> GlobalRNGGuard:
    """Seeds the global RNGs, then snapshots them: the code under test must not touch them."""
    return GlobalRNGGuard.seeded(123)


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group the tests for pytest-xdist (``-n auto --dist loadgroup``, as tox runs).

    The tests that start processes or servers (``integration``) each keep two or more processes
    busy already, so two of them side by side only contend for the cores: they form one group
    that runs on one worker, one after the other, while the other workers take the rest. They
    run first, then the learning tests (``slow``), then the rest, each in its usual order.
    """
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("integration"):
            return 0
        if item.get_closest_marker("slow"):
            return 1
        return 2

    items.sort(key=rank)
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.xdist_group("processes"))
