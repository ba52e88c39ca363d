"""The contract every aggregator passes."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from gabench.aggregators import Aggregator
from gabench.testing._rng import GlobalRNGGuard


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def _matrix(n_tasks: int, n_params: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n_tasks, n_params, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _degenerate_matrices() -> dict[str, torch.Tensor]:
    """Matrices of shape (n_tasks, n_params) where a normalisation can divide by zero."""
    g = _matrix(1, 5, seed=7)
    return {
        "all zero": torch.zeros(4, 5, dtype=torch.float64),
        "one zero row": torch.cat([_matrix(3, 5, seed=8), torch.zeros(1, 5, dtype=torch.float64)]),
        "two tasks that cancel": torch.cat([g, -g]),
        "identical rows": g.repeat(4, 1),
        "one task against three": torch.cat([g, g, g, -g]),
    }


def _assert_finite_or_undefined(w: torch.Tensor, what: object) -> None:
    """Finite weights, or NaN throughout (a method that defines no weights)."""
    assert torch.isfinite(w).all() or torch.isnan(w).all(), (what, w)


class AggregatorContract:
    """What every aggregator must do (see :class:`~gabench.aggregators.Aggregator`).

    Subclass it in a test module under a name starting with ``Test`` and implement
    :meth:`make_aggregator`; pytest then runs every ``test_*`` method below on that aggregator.

    Checked for every aggregator: the weights have shape (n_tasks,) and the dtype and device of
    ``G``, and are finite (or NaN throughout, for a method that defines no weights); a fresh
    instance gives the same weights for the same ``G``; ``G`` is not modified and no gradient
    flows out of the weights; malformed ``G`` is a ``ValueError``; the global random generators
    are left alone.

    Checked for a weighting of the update vectors (:attr:`weighting_of_updates`, every built-in
    weighting): the weights are finite on degenerate matrices too (all zero, cancelling tasks:
    a normalisation must not divide by zero); one task gets weight 1; reordering the tasks
    reorders the weights the same way (tasks in a meta-batch are exchangeable, so identical tasks
    get equal weights); calls keep no state; and, with :attr:`scale_invariant`, the weights ignore
    the scale of ``G``.

    Attributes:
        weighting_of_updates: Whether the aggregator is a deterministic weighting of the task
            update vectors ``g_i = theta - theta'_i`` in the sense above (True for every built-in
            weighting). Set it to False for an aggregator that is not, e.g. a randomised
            multi-task-learning method or one that gives a direction but no weights.
        scale_invariant: Whether ``weights(c * G) == weights(G)`` for every ``c > 0``, as for every
            built-in weighting. Set it to False for a weighting documented to depend on the scale
            of ``G``; the suite then checks that the weights stay finite across scales.
    """

    weighting_of_updates: ClassVar[bool] = True
    scale_invariant: ClassVar[bool] = True

    def make_aggregator(self) -> Aggregator:
        """The aggregator under test (a fresh instance)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_aggregator()")

    # ------------------------------------------------------------------ checks
    def test_is_a_named_aggregator(self) -> None:
        agg = self.make_aggregator()
        assert isinstance(agg, Aggregator)
        assert isinstance(agg.name, str) and agg.name and agg.name == agg.name.strip()
        assert isinstance(agg.description, str) and agg.description
        assert isinstance(repr(agg), str)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
    def test_weights_shape_dtype_device(self, dtype: torch.dtype) -> None:
        agg = self.make_aggregator()
        for device in _devices():
            for n_tasks in (1, 2, 6):
                G = _matrix(n_tasks, 9, seed=n_tasks, dtype=dtype).to(device)
                w = agg.weights(G)
                assert isinstance(w, torch.Tensor)
                assert w.shape == (n_tasks,) and w.dtype == dtype and w.device == G.device
                if self.weighting_of_updates:
                    assert torch.isfinite(w).all(), w
                else:
                    _assert_finite_or_undefined(w, n_tasks)

    def test_combine_gives_a_direction_and_its_weights(self) -> None:
        """``combine(M)`` (what the algorithms call) returns a finite direction of shape
        (n_params,) and weights of shape (n_tasks,); where the weights are defined, the
        direction is ``sum_i w_i m_i``; for one task it points along that task's row."""
        agg = self.make_aggregator()
        for device in _devices():
            M = _matrix(4, 3, seed=3, dtype=torch.float64).to(device)
            d, w = agg.combine(M)
            assert d.shape == (3,) and d.dtype == M.dtype and d.device == M.device
            assert w.shape == (4,) and torch.isfinite(d).all()
            if not torch.isnan(w).any():
                torch.testing.assert_close(d, w @ M)
            d0, _ = agg.combine(torch.zeros(4, 3, dtype=torch.float64, device=device))
            assert torch.isfinite(d0).all()
            one = torch.tensor([[3.0, -1.0]], dtype=torch.float64, device=device)
            d1, _ = agg.combine(one)
            norm = torch.linalg.vector_norm(d1) * torch.linalg.vector_norm(one[0])
            assert float(torch.linalg.vector_norm(d1)) > 0
            assert float(torch.dot(d1, one[0])) == pytest.approx(float(norm))

    def test_single_task_gets_weight_one(self) -> None:
        agg = self.make_aggregator()
        for row in ([3.0, -1.0], [1e-3, 0.0, 2.0]):
            w = agg.weights(torch.tensor([row], dtype=torch.float64))
            if self.weighting_of_updates:
                torch.testing.assert_close(w, torch.ones(1, dtype=torch.float64))
            else:
                _assert_finite_or_undefined(w, row)

    @pytest.mark.parametrize("case", list(_degenerate_matrices()))
    def test_degenerate_matrices(self, case: str) -> None:
        G = _degenerate_matrices()[case]
        w = self.make_aggregator().weights(G)
        assert w.shape == (G.shape[0],)
        if self.weighting_of_updates:
            assert torch.isfinite(w).all(), (case, w)
        else:
            _assert_finite_or_undefined(w, case)

    def test_permutation_equivariance(self) -> None:
        agg = self.make_aggregator()
        gen = torch.Generator().manual_seed(11)
        for G in (_matrix(7, 13, seed=3), _matrix(5, 2, seed=4), *_degenerate_matrices().values()):
            w = agg.weights(G)
            for _ in range(3):
                perm = torch.randperm(G.shape[0], generator=gen)
                permuted = agg.weights(G[perm])
                if self.weighting_of_updates:
                    torch.testing.assert_close(permuted, w[perm])
                else:
                    assert permuted.shape == w.shape
                    _assert_finite_or_undefined(permuted, "permuted")
        if self.weighting_of_updates:
            # consequence: identical tasks are interchangeable, so they get equal weights
            w = agg.weights(_matrix(1, 6, seed=5).repeat(5, 1))
            torch.testing.assert_close(w, w[:1].expand(5))

    @pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e3])
    def test_scale(self, scale: float) -> None:
        agg = self.make_aggregator()
        G = _matrix(6, 8, seed=6)
        w = agg.weights(scale * G)
        if self.weighting_of_updates:
            assert torch.isfinite(w).all(), w
        else:
            _assert_finite_or_undefined(w, scale)
        if self.weighting_of_updates and self.scale_invariant:
            torch.testing.assert_close(w, agg.weights(G))

    def test_deterministic_and_leaves_G_alone(self) -> None:
        G = _matrix(5, 7, seed=9)
        before = G.clone()
        agg = self.make_aggregator()
        w = agg.weights(G)
        assert torch.equal(G, before)  # not modified in place
        # a fresh instance gives the same weights (NaN compares equal to NaN here)
        torch.testing.assert_close(self.make_aggregator().weights(G), w, rtol=0, atol=0, equal_nan=True)
        if self.weighting_of_updates:  # and calls keep no state
            assert torch.equal(agg.weights(G), w)

    def test_no_gradient_flows_out_of_the_weights(self) -> None:
        """Algorithms treat the weights as constants: from a detached ``G`` they carry no graph
        (an aggregator with trainable parameters of its own would break that)."""
        agg = self.make_aggregator()
        G = _matrix(4, 3, seed=10)
        w = agg.weights(G)
        assert not w.requires_grad and w.grad_fn is None
        with torch.no_grad():
            w = agg.weights(G.clone().requires_grad_(True))
        assert not w.requires_grad

    @pytest.mark.parametrize("shape", [(3,), (0, 4), (2, 3, 4)], ids=["1d", "no-tasks", "3d"])
    def test_rejects_malformed_matrices(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError):
            self.make_aggregator().weights(torch.zeros(shape))

    def test_no_global_rng(self) -> None:
        guard = GlobalRNGGuard.seeded()
        agg = self.make_aggregator()
        agg.weights(_matrix(3, 2, seed=12))
        agg.weights(torch.zeros(3, 2))
        assert guard.unchanged()
