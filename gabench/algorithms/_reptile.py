"""Reptile: move the initialisation towards the adapted parameters."""

from __future__ import annotations

import torch

from gabench.algorithms._base import Algorithm, Learner, Params
from gabench.tasks import TaskBatch


class Reptile(Algorithm):
    """Reptile: the outer direction is ``sum_i w_i g_i`` with ``g_i = theta - theta'_i``.

    Taking an SGD step of size beta on it gives ``theta + beta sum_i w_i (theta'_i - theta)``.
    The inner loop runs on the support set; the query set is only used to log the
    post-adaptation query loss. No gradient flows through the inner loop.

    Args:
        alpha: Inner learning rate, > 0.
        inner_steps: Inner SGD steps k, >= 1 (Reptile needs k > 1 to differ from joint
            training).

    References:
        A. Nichol, J. Achiam, J. Schulman, "On First-Order Meta-Learning Algorithms",
        arXiv:1803.02999, 2018.
    """

    name = "reptile"
    description = "Reptile: outer direction sum_i w_i (theta - theta'_i), first order by nature"

    @property
    def differentiate_inner_loop(self) -> bool:
        return False

    def outer_gradients(self, learner: Learner, params: Params,
                        batch: TaskBatch) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's update ``g_i = theta - theta'_i`` (Reptile's per-task outer direction)."""
        with torch.no_grad():
            adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y)
            grads = {k: params[k].unsqueeze(0) - adapted[k] for k in params}
            query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        return grads, support_loss, query_loss

    def outer_direction(self, learner: Learner, params: Params, adapted: Params,
                        batch: TaskBatch, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        with torch.no_grad():
            direction = {
                k: torch.tensordot(weights, params[k].unsqueeze(0) - adapted[k], dims=1)
                for k in params
            }
            query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        return direction, query_loss
