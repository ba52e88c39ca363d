"""Gradient agreement weights (Eshratifar, Eigen and Pedram, 2018)."""

from __future__ import annotations

import torch

from gabench.aggregators._base import Aggregator, _check_matrix, uniform


def _normalise(s: torch.Tensor, norm: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``s / norm``, or uniform weights where ``norm`` is 0 (never a division by zero).

    On the CPU the test is a Python branch (reading a CPU scalar costs nothing, and two small
    ops instead of five matter for small meta-batches); elsewhere it is a ``where``, so that no
    device synchronisation is forced.
    """
    if norm.device.type == "cpu":
        return s / norm if float(norm) > 0 else uniform(G)
    safe = norm.clamp_min(torch.finfo(s.dtype).tiny)
    return torch.where(norm > 0, s / safe, uniform(G))


class GradientAgreement(Aggregator):
    """Weights each task by how much its update agrees with the whole batch.

    ``w_i = sum_j <g_i, g_j> / sum_k |sum_j <g_k, g_j>|``, computed as ``s = G (G^T 1)``,
    ``w = s / ||s||_1`` in O(T * P) without forming the Gram matrix. A task pointing against the
    batch average gets a negative weight; ``sum_i |w_i| = 1``. A degenerate batch
    (``||s||_1 = 0``, e.g. all ``g_i = 0``) gets uniform weights. The weights do not depend on
    the scale of ``G``.

    References:
        A. E. Eshratifar, D. Eigen, M. Pedram, "Gradient Agreement as an Optimization Objective
        for Meta-Learning", arXiv:1810.08178, 2018.
    """

    name = "ga"
    description = "Gradient agreement (paper formula): w_i ~ sum_j <g_i,g_j>, L1-normalised, may be negative"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        s = torch.mv(G, G.sum(dim=0))
        return _normalise(s, torch.linalg.vector_norm(s, ord=1), G)


class GradientAgreementTextbook(Aggregator):
    """Gradient agreement with the textbook's normalisation, kept for the record.

    ``w_i = sum_j <g_i, g_j> / sum_i sum_j |<g_i, g_j>|``: equal to the paper's weights when no
    pair of tasks disagrees (all inner products >= 0) and smaller in magnitude otherwise, so
    ``sum_i |w_i| < 1`` then. Needs the full T x T Gram matrix.

    References:
        S. Ravichandiran, "Hands-On Meta Learning with Python", Packt 2018, chapter 8 (known
        defect 1 in docs/textbook.md).
    """

    name = "ga-textbook"
    description = "Gradient agreement with the textbook's normalisation sum_ij |<g_i,g_j>| (for the record)"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        gram = G @ G.T
        return _normalise(gram.sum(dim=1), gram.abs().sum(), G)
