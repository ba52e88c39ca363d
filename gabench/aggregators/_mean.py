"""Uniform task weights: the aggregation of baseline MAML and Reptile."""

from __future__ import annotations

import torch

from gabench.aggregators._base import Aggregator, _check_matrix, uniform


class Mean(Aggregator):
    """Every task weighs ``1/T``: the outer direction is the mean of the task vectors."""

    name = "mean"
    description = "Uniform weights 1/T (baseline MAML and Reptile)"

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        _check_matrix(G)
        return uniform(G)
