"""The aggregator plug-in kind: per-task vectors -> task weights -> one outer direction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class Aggregator(ABC):
    """Turns the matrix of per-task update vectors into task weights.

    An aggregator is a *weighting* of tasks computed from ``G``, the matrix whose row ``i`` is
    task ``i``'s update vector ``g_i = theta - theta'_i``. The weights are constants for the outer
    update: callers pass a detached ``G`` and no gradient flows through the result.

    Attributes:
        name: Registry name.
        description: One line for ``gabench list``.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def weights(self, G: torch.Tensor) -> torch.Tensor:
        """Task weights.

        Args:
            G: Tensor of shape (n_tasks, n_params), row i the update vector of task i.

        Returns:
            Tensor of shape (n_tasks,), same dtype and device as ``G``.
        """

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        """The weighted direction ``sum_i w_i g_i``, a tensor of shape (n_params,)."""
        return self.weights(G) @ G

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_matrix(G: torch.Tensor) -> None:
    if G.dim() != 2 or G.shape[0] == 0:
        raise ValueError(f"G must have shape (n_tasks >= 1, n_params), got {tuple(G.shape)}")


def uniform(G: torch.Tensor) -> torch.Tensor:
    """Weights ``1/T`` of shape (T,) for the T rows of ``G``."""
    return torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=G.dtype, device=G.device)


def weight_stats(w: torch.Tensor, corrupted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Summary statistics of weight vectors (tensors, so no device sync is forced).

    Args:
        w: Tensor of shape (n_tasks,), or (n_steps, n_tasks) for one vector per row (the
            trainer summarises a block of steps at once).
        corrupted: Optional bool tensor of the shape of ``w`` marking outlier tasks.

    Returns:
        ``w_min``, ``w_max``, ``w_frac_negative``, ``w_eff_n`` (effective number of tasks,
        ``(sum |w|)^2 / sum w^2``: T for uniform weights, 1 when one task takes all), and when
        ``corrupted`` is given, ``w_mean_corrupted`` and ``w_mean_clean`` (NaN for an empty group);
        each of shape ``w.shape[:-1]`` (a scalar for one vector).
    """
    stats = {
        "w_min": w.amin(-1),
        "w_max": w.amax(-1),
        "w_frac_negative": (w < 0).to(w.dtype).mean(-1),
        "w_eff_n": w.abs().sum(-1) ** 2 / (w * w).sum(-1).clamp_min(torch.finfo(w.dtype).tiny),
    }
    if corrupted is not None:
        c = corrupted.to(w.dtype)
        stats["w_mean_corrupted"] = (w * c).sum(-1) / c.sum(-1)
        stats["w_mean_clean"] = (w * (1 - c)).sum(-1) / (1 - c).sum(-1)
    return stats
