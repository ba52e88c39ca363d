"""Model-Agnostic Meta-Learning, second order or first order (FOMAML)."""

from __future__ import annotations

import torch

from gabench.aggregators import OUTER_GRADIENTS, Aggregator
from gabench.algorithms._base import Algorithm, Learner, Params, StepResult
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

    def step(self, learner: Learner, params: Params, batch: TaskBatch,
             aggregator: Aggregator) -> StepResult:
        """As :meth:`Algorithm.step`; on the fast path, second order is differentiated by hand.

        With :class:`~gabench.algorithms.FastMLP` the inner loop runs without autograd and records
        its activations; :meth:`FastMLP.maml_grad <gabench.algorithms.FastMLP.maml_grad>` then
        applies ``(I - alpha H)`` step by step in reverse: the same gradient as the autograd
        route of :meth:`outer_direction`, without building a graph.
        """
        if self.first_order or learner.fast is None or aggregator.matrix == OUTER_GRADIENTS:
            return super().step(learner, params, batch, aggregator)
        tape: list = []
        with torch.no_grad():
            adapted, support_loss = self._inner_loop(learner, params, batch.support_x, batch.support_y,
                                                     steps=None, create_graph=False, tape=tape)
        weights = self.task_weights(params, adapted, aggregator)
        direction, query_loss = learner.fast.maml_grad(tape, adapted, batch.query_x, batch.query_y,
                                                       weights, self.alpha)
        return StepResult(direction, weights, support_loss, query_loss)

    def outer_gradients(self, learner: Learner, params: Params,
                        batch: TaskBatch) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's ``grad_theta L_query_i(theta'_i(theta))``, batched over tasks.

        Second order: on the fast path by the hand-written reverse pass without the task sum, on
        the general path by one backward pass with the identity as batched seed
        (``is_grads_batched``, i.e. vmap over the backward). First order: the query-loss
        gradients at the adapted parameters.
        """
        if self.first_order:
            with torch.no_grad():
                adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y)
            grads, query_loss = learner.batch_grad(adapted, batch.query_x, batch.query_y,
                                                   per_task=True, create_graph=False)
            return grads, support_loss, query_loss
        if learner.fast is not None:
            tape: list = []
            with torch.no_grad():
                adapted, support_loss = self._inner_loop(learner, params, batch.support_x,
                                                         batch.support_y, steps=None,
                                                         create_graph=False, tape=tape)
            grads, query_loss = learner.fast.maml_grad(tape, adapted, batch.query_x, batch.query_y,
                                                       None, self.alpha)
            return grads, support_loss, query_loss
        adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y,
                                           create_graph=True)
        query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        names = list(params)
        seeds = torch.eye(query_loss.shape[0], dtype=query_loss.dtype, device=query_loss.device)
        grads = torch.autograd.grad(query_loss, [params[k] for k in names], grad_outputs=seeds,
                                    is_grads_batched=True)
        return dict(zip(names, grads, strict=True)), support_loss, query_loss.detach()

    def outer_direction(self, learner: Learner, params: Params, adapted: Params,
                        batch: TaskBatch, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        if self.first_order:  # the adapted parameters are constants: sum_i w_i grad L_i(theta'_i)
            return learner.batch_weighted_grad(adapted, batch.query_x, batch.query_y, weights.detach())
        query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        names = list(params)
        # grad of sum_i w_i L_i: backward from the per-task losses with the weights as seed
        grads = torch.autograd.grad(query_loss, [params[k] for k in names], grad_outputs=weights.detach())
        return dict(zip(names, grads, strict=True)), query_loss.detach()

    def __repr__(self) -> str:
        return (f"MAML(alpha={self.alpha}, inner_steps={self.inner_steps}, "
                f"first_order={self.first_order})")
