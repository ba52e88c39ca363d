"""The plug-in contracts (gabench.testing) over every registered family, algorithm and aggregator.

A new registration in FAMILIES, ALGORITHMS or AGGREGATORS is covered here with nothing more to
write. The last class is the worked example of a user's own plug-in passing its contract.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import family_params

from gabench.aggregators import AGGREGATORS, Aggregator
from gabench.algorithms import ALGORITHMS, Algorithm
from gabench.tasks import FAMILIES, TaskFamily
from gabench.testing import AggregatorContract, AlgorithmContract, TaskFamilyContract


def _algorithm_variants() -> dict[str, tuple[type[Algorithm], dict]]:
    """Every registered algorithm with 2 inner steps, and its first-order variant where the
    constructor has a ``first_order`` switch (first-order MAML)."""
    variants = {}
    for name, cls in ALGORITHMS.items():
        variants[name] = (cls, {})
        if "first_order" in inspect.signature(cls).parameters:
            variants[f"{name}-first-order"] = (cls, {"first_order": True})
    return variants


ALGORITHM_VARIANTS = _algorithm_variants()


@pytest.mark.parametrize("family_name", family_params(FAMILIES))
class TestRegisteredFamily(TaskFamilyContract):
    @pytest.fixture(autouse=True)
    def _select(self, family_name: str) -> None:
        self.family_name = family_name

    def make_family(self) -> TaskFamily:
        return FAMILIES[self.family_name]()


@pytest.mark.parametrize("algorithm_name", list(ALGORITHM_VARIANTS))
class TestRegisteredAlgorithm(AlgorithmContract):
    @pytest.fixture(autouse=True)
    def _select(self, algorithm_name: str) -> None:
        self.algorithm_name = algorithm_name

    def make_algorithm(self) -> Algorithm:
        cls, kwargs = ALGORITHM_VARIANTS[self.algorithm_name]
        return cls(0.3, 2, **kwargs)


@pytest.mark.parametrize("aggregator_name", list(AGGREGATORS))
class TestRegisteredAggregator(AggregatorContract):
    @pytest.fixture(autouse=True)
    def _select(self, aggregator_name: str) -> None:
        self.aggregator_name = aggregator_name
        # An aggregator of another matrix than the task updates (Aggregator.matrix, where the
        # class has it) is no weighting of updates: it gets the kind-independent checks.
        cls = AGGREGATORS[aggregator_name]
        self.weighting_of_updates = getattr(cls, "matrix", "updates") == "updates"

    def make_aggregator(self) -> Aggregator:
        return AGGREGATORS[self.aggregator_name]()


def test_every_registration_is_covered():
    assert set(FAMILIES) and set(ALGORITHMS) and set(AGGREGATORS)
    assert {cls for cls, _ in ALGORITHM_VARIANTS.values()} == set(ALGORITHMS.values())
    assert "maml-first-order" in ALGORITHM_VARIANTS
    cls, kwargs = ALGORITHM_VARIANTS["maml-first-order"]
    assert cls(0.1, 1, **kwargs).differentiate_inner_loop is False


# ---------------------------------------------------------------------- worked example
class NormWeights(Aggregator):
    """A user's weighting: each task in proportion to the length of its update,
    ``w_i = ||g_i|| / sum_j ||g_j||``, uniform when every update is zero."""

    name = "norm"
    description = "Weights proportional to the norm of each task's update"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        if G.dim() != 2 or G.shape[0] == 0:
            raise ValueError(f"G must have shape (n_tasks >= 1, n_params), got {tuple(G.shape)}")
        norms = torch.linalg.vector_norm(G, dim=1)
        total = norms.sum()
        if float(total) == 0:
            return torch.full_like(norms, 1.0 / G.shape[0])
        return norms / total


class TestNormWeights(AggregatorContract):
    """All a user writes to run the aggregator contract on their own weighting."""

    def make_aggregator(self) -> Aggregator:
        return NormWeights()


def test_norm_weights_by_hand():
    G = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(NormWeights().weights(G), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))


class FirstTaskOnly(Aggregator):
    """A weighting that depends on the order of the tasks: all weight on the first one."""

    name = "first"
    description = "All weight on the first task of the batch"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        if G.dim() != 2 or G.shape[0] == 0:
            raise ValueError(f"G must have shape (n_tasks >= 1, n_params), got {tuple(G.shape)}")
        w = torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
        w[0] = 1.0
        return w


def test_the_contract_catches_an_order_dependent_weighting():
    class Check(AggregatorContract):
        def make_aggregator(self) -> Aggregator:
            return FirstTaskOnly()

    check = Check()
    check.test_single_task_gets_weight_one()  # passes what it can ...
    with pytest.raises(AssertionError):  # ... but tasks are exchangeable
        check.test_permutation_equivariance()


def test_the_contract_catches_a_scale_dependent_weighting():
    class Softmax(NormWeights):
        def weights(self, G: torch.Tensor) -> torch.Tensor:
            return torch.softmax(torch.linalg.vector_norm(G, dim=1), dim=0)

    class Check(AggregatorContract):
        def make_aggregator(self) -> Aggregator:
            return Softmax()

    with pytest.raises(AssertionError):
        Check().test_scale(7.0)
    Check.scale_invariant = False  # documented as scale dependent: only finiteness is required
    Check().test_scale(7.0)
