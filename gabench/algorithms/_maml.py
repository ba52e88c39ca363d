"""Model-Agnostic Meta-Learning, second order or first order (FOMAML)."""

from __future__ import annotations

import torch
from torch.func import vmap

from gabench.algorithms._base import Algorithm, Learner, Params
from gabench.tasks import TaskBatch


class MAML(Algorithm):
    """MAML: the outer gradient is that of ``sum_i w_i L_query_i(theta'_i(theta))``.

    With the weights held constant this is one backward pass through the (vectorised) inner
    loops, whatever the aggregator. Second order by default; ``first_order=True`` treats the
    inner gradients as constants, so the direction is ``sum_i w_i grad L_query_i(theta'_i)``.

    Args:
        alpha: Inner learning rate, > 0.
        inner_steps: Inner SGD steps, >= 1.
        first_order: Drop the second-order term (FOMAML).

    References:
        C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017.
    """

    name = "maml"
    description = "MAML, second order through the inner loop (first_order=True: FOMAML)"

    def __init__(self, alpha: float, inner_steps: int = 1, first_order: bool = False) -> None:
        super().__init__(alpha, inner_steps)
        self.first_order = bool(first_order)

    @property
    def differentiate_inner_loop(self) -> bool:
        return not self.first_order

    def outer_direction(self, learner: Learner, params: Params, adapted: Params,
                        batch: TaskBatch, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        query_loss = vmap(learner.task_loss)(adapted, batch.query_x, batch.query_y)
        objective = (weights.detach() * query_loss).sum()
        names = list(params)
        grads = torch.autograd.grad(objective, [params[k] for k in names])
        return dict(zip(names, grads, strict=True)), query_loss.detach()

    def __repr__(self) -> str:
        return (f"MAML(alpha={self.alpha}, inner_steps={self.inner_steps}, "
                f"first_order={self.first_order})")
