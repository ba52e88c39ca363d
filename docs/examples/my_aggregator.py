"""A worked example of an aggregator plug-in: softmax of gradient agreement.

This file is the code of the worked example in ``docs/extending.md``. It is not part of the
``gabench`` package: import it (or copy it into ``gabench/aggregators/``) and register it.
"""

from __future__ import annotations

import torch

from gabench._errors import check_positive
from gabench.aggregators import AGGREGATORS, Aggregator, GradientAgreement


class SoftAgreement(Aggregator):
    """Positive task weights that favour agreeing tasks: a softmax of the relative GA weights.

    With ``G`` the update matrix (row ``i`` is task ``i``'s update ``g_i``) and ``a = T * w_ga``
    the gradient-agreement weights relative to uniform (``a_i = 1`` for every task of a batch in
    which all tasks agree equally), the weights are

        ``w_i = exp(a_i / temperature) / sum_k exp(a_k / temperature)``.

    Unlike GA, no weight is negative and the weights sum to 1. Like GA, they do not depend on the
    scale of ``G``, and a degenerate batch (GA's uniform fallback) gets uniform weights. A large
    temperature tends to the mean; a small one gives all the weight to the most agreeing task.

    Args:
        temperature: Softmax temperature, > 0.

    References:
        A. E. Eshratifar, D. Eigen, M. Pedram, "Gradient Agreement as an Optimization Objective
        for Meta-Learning", arXiv:1810.08178, 2018 (the agreement scores).
    """

    name = "soft-agreement"
    description = "Softmax of the relative GA weights T*w_ga / temperature: positive, sums to 1"
    param_help = {"temperature": "softmax temperature > 0 (large: the mean; small: the most agreeing task)"}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_positive("temperature", temperature)
        self._ga = GradientAgreement()

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        """Task weights.

        Args:
            G: Tensor of shape (n_tasks, n_params), row i the update vector of task i.

        Returns:
            Tensor of shape (n_tasks,), positive, summing to 1, same dtype and device as ``G``.
        """
        relative = G.shape[0] * self._ga.weights(G)  # checks the shape of G
        return torch.softmax(relative / self.temperature, dim=0)

    def __repr__(self) -> str:
        return f"SoftAgreement(temperature={self.temperature})"


def register() -> None:
    """Make ``soft-agreement`` selectable by name (``RunConfig(aggregator="soft-agreement")``)."""
    AGGREGATORS[SoftAgreement.name] = SoftAgreement
