"""Ablations of gradient agreement: which of its two traits (negative weights, weights that grow
with a task's update norm) matters.

The paper's GA weight is ``w_i = s_i / sum_k |s_k|`` with ``s = G G^T 1``, i.e.
``s_i = <g_i, sum_j g_j> = |g_i| |sum_j g_j| cos(g_i, sum_j g_j)``: negative for a task that points
against the batch, and proportional to the task's own update norm. ``ga-pos`` removes the first
trait, ``ga-cos`` the second, ``ga-softmax`` both (and interpolates to the mean).
"""

from __future__ import annotations

import torch

from gabench._errors import check_positive
from gabench.aggregators._base import Aggregator, _check_matrix
from gabench.aggregators._ga import _normalise


def _unit_rows(G: torch.Tensor) -> torch.Tensor:
    """``G`` with each row divided by its norm; rows of norm 0 stay 0."""
    norms = torch.linalg.vector_norm(G, dim=1, keepdim=True)
    return torch.where(norms > 0, G / norms.clamp_min(torch.finfo(G.dtype).tiny), 0.0)


class PositiveAgreement(Aggregator):
    """Gradient agreement with negative weights clipped to zero.

    ``s = G G^T 1`` (``s_i = sum_j <g_i, g_j>``), ``w_i = max(s_i, 0) / sum_k max(s_k, 0)``;
    uniform weights when the denominator is 0 (no task agrees with the batch). The weights are
    >= 0, sum to 1 and do not depend on the scale of ``G``; a task against the batch gets 0
    instead of a negative weight (no gradient ascent on it). O(T * P).
    """

    name = "ga-pos"
    description = "GA with negative weights clipped: w_i ~ max(sum_j <g_i,g_j>, 0), sum to 1"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        s = torch.mv(G, G.sum(dim=0)).clamp_min_(0.0)
        return _normalise(s, s.sum(), G)


class CosineAgreement(Aggregator):
    """Scale-free gradient agreement: inner products replaced by cosines.

    ``s_i = sum_j cos(g_i, g_j)`` (``cos = 0`` where a norm is 0, so a zero update has ``s_i = 0``
    and adds nothing to the others), ``w_i = s_i / sum_k |s_k|``; uniform weights when the
    denominator is 0. Like GA the weights can be negative and ``sum_i |w_i| = 1``, but a task's
    weight no longer grows with its update norm. Computed as ``U (U^T 1)`` with ``U`` the
    row-normalised ``G``: O(T * P).
    """

    name = "ga-cos"
    description = "GA on cosines: w_i ~ sum_j cos(g_i,g_j), L1-normalised (no update-norm effect)"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        U = _unit_rows(G)
        s = torch.mv(U, U.sum(dim=0))
        return _normalise(s, torch.linalg.vector_norm(s, ord=1), G)


class SoftmaxAgreement(Aggregator):
    """A softmax of each task's cosine with the batch direction.

    ``c_i = cos(g_i, sum_j g_j)`` (0 where a norm is 0), ``w = softmax(c / temperature)``. The
    weights are > 0, sum to 1, do not depend on the scale of ``G`` and keep GA's ordering by
    agreement; ``temperature -> infinity`` gives the mean, ``temperature -> 0`` puts all weight on
    the most agreeing task. Since ``c_i`` lies in [-1, 1], the largest and smallest weights
    differ by at most a factor ``exp(2 / temperature)``. O(T * P).

    Args:
        temperature: > 0.
    """

    name = "ga-softmax"
    description = ("Softmax of cos(g_i, sum_j g_j) / temperature (default 1): positive, "
                   "scale-free, mean as temperature -> inf")
    param_help = {"temperature": "softmax temperature > 0 (large: mean; small: most agreeing task)"}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_positive("temperature", temperature)

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        total = G.sum(dim=0)
        norms = torch.linalg.vector_norm(G, dim=1) * torch.linalg.vector_norm(total)
        dots = torch.mv(G, total)
        c = torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(G.dtype).tiny), 0.0)
        return torch.softmax(c / self.temperature, dim=0)
