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


@pytest.fixture(scope="session", autouse=True)
def image_datasets(tmp_path_factory):
    """Small synthetic Omniglot and Mini-ImageNet folders in their exact layouts, found through
    ``$GABENCH_DATA`` (cache in ``$GABENCH_CACHE``) for the whole session, so that the image
    families build with their default parameters like every other family, and the shipped
    study files load (20-way Omniglot needs 5 meta-val characters: 75 characters; 5-shot
    Mini-ImageNet with 15 query images needs 20 images per class)."""
    import os

    from gabench.datasets import CACHE_ENV, DATA_ENV, write_synthetic_mini_imagenet, write_synthetic_omniglot

    base = tmp_path_factory.mktemp("image-data")
    write_synthetic_omniglot(base / "data" / "omniglot", characters=75, images=16)
    write_synthetic_mini_imagenet(base / "data" / "mini-imagenet", classes=(8, 5, 5), images=20)
    saved = {k: os.environ.get(k) for k in (DATA_ENV, CACHE_ENV)}
    os.environ[DATA_ENV], os.environ[CACHE_ENV] = str(base / "data"), str(base / "cache")
    yield base / "data"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
