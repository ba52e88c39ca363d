"""The algorithm plug-in kind: an inner loop and what each task contributes to the outer step.

All per-task work is batched over the tasks of a meta-batch with ``torch.func.vmap`` (one
vectorised call per inner step, no Python loop over tasks); second-order terms flow through
``torch.func.grad`` into ordinary autograd.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from gabench._errors import check_int, check_positive
from gabench.aggregators import Aggregator
from gabench.tasks import TaskBatch

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Learner:
    """A functional view of a model and its per-task loss.

    Args:
        model: The network; its parameters are only read for their names and shapes here.
        loss_fn: ``loss_fn(pred, y)`` for one task: pred of shape (K, out), y of shape (K,).
        accuracy_fn: Optional ``accuracy_fn(pred, y)`` for one task (classification).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 accuracy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.accuracy_fn = accuracy_fn

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Model output with ``params`` substituted for the model's parameters."""
        return functional_call(self.model, params, (x,))

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one task."""
        return self.loss_fn(self.forward(params, x), y)

    def task_loss_and_accuracy(self, params: Params, x: torch.Tensor,
                               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy of one task (accuracy is NaN without an accuracy function)."""
        pred = self.forward(params, x)
        acc = self.accuracy_fn(pred, y) if self.accuracy_fn is not None else None
        loss = self.loss_fn(pred, y)
        return loss, acc if acc is not None else torch.full_like(loss, float("nan"))


@dataclass
class StepResult:
    """What one meta-batch contributes to the outer step.

    Attributes:
        direction: Outer descent direction per parameter (what goes into ``param.grad``).
        weights: Tensor of shape (n_tasks,), the task weights used.
        support_loss: Tensor of shape (n_tasks,), support loss before adaptation.
        query_loss: Tensor of shape (n_tasks,), query loss after adaptation (detached).
    """

    direction: Params
    weights: torch.Tensor
    support_loss: torch.Tensor
    query_loss: torch.Tensor


def flatten_tasks(per_task: Params) -> torch.Tensor:
    """Concatenate batched parameters into a matrix of shape (n_tasks, n_params)."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in per_task.values()], dim=1)


class Algorithm(ABC):
    """A meta-learning algorithm: SGD inner loop (shared) plus an outer direction (per subclass).

    Args:
        alpha: Inner learning rate, > 0.
        inner_steps: SGD steps on the support set per task, >= 1.

    Attributes:
        name: Registry name.
        description: One line for ``gabench list``.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, alpha: float, inner_steps: int = 1) -> None:
        self.alpha = check_positive("alpha", alpha)
        self.inner_steps = check_int("inner_steps", inner_steps)

    @property
    @abstractmethod
    def differentiate_inner_loop(self) -> bool:
        """Whether the outer gradient goes through the inner loop (second-order MAML)."""

    @abstractmethod
    def outer_direction(self, learner: Learner, params: Params, adapted: Params,
                        batch: TaskBatch, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """The outer descent direction and the per-task query losses (detached).

        Args:
            learner: The model and loss.
            params: Meta-parameters theta.
            adapted: Adapted parameters, each of shape (n_tasks, *param_shape).
            batch: The meta-batch.
            weights: Tensor of shape (n_tasks,), constants.
        """

    def adapt(self, learner: Learner, params: Params, x: torch.Tensor, y: torch.Tensor,
              *, steps: int | None = None, create_graph: bool = False) -> tuple[Params, torch.Tensor]:
        """Run the inner loop on every task at once.

        Args:
            learner: The model and loss.
            params: Meta-parameters theta (shared by all tasks).
            x: Tensor of shape (n_tasks, K, *x_shape), support inputs.
            y: Tensor of shape (n_tasks, K), support targets.
            steps: Inner steps (default: ``self.inner_steps``).
            create_graph: Keep the inner gradients in the graph (second order); otherwise the
                inner gradients are constants and ``d theta'_i / d theta = I``.

        Returns:
            Adapted parameters, each of shape (n_tasks, *param_shape), and the support losses
            before adaptation, shape (n_tasks,).
        """
        n_steps = self.inner_steps if steps is None else steps
        alpha = self.alpha
        grad_fn = grad_and_value(learner.task_loss)

        def one_task(p: Params, xt: torch.Tensor, yt: torch.Tensor) -> tuple[Params, torch.Tensor]:
            first_loss = None
            for _ in range(n_steps):
                g, loss = grad_fn(p, xt, yt)
                if first_loss is None:
                    first_loss = loss
                if not create_graph:
                    g = {k: v.detach() for k, v in g.items()}
                p = {k: p[k] - alpha * g[k] for k in p}
            return p, first_loss.detach()

        return vmap(one_task, in_dims=(None, 0, 0))(params, x, y)

    def step(self, learner: Learner, params: Params, batch: TaskBatch,
             aggregator: Aggregator) -> StepResult:
        """Adapt to every task of ``batch``, weight the tasks and return the outer direction."""
        adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y,
                                           create_graph=self.differentiate_inner_loop)
        with torch.no_grad():
            G = flatten_tasks({k: params[k].unsqueeze(0) - adapted[k] for k in params})
            weights = aggregator.weights(G)
        direction, query_loss = self.outer_direction(learner, params, adapted, batch, weights)
        return StepResult(direction, weights, support_loss, query_loss)

    def evaluate(self, learner: Learner, params: Params, batch: TaskBatch,
                 steps: int | None = None) -> dict[str, torch.Tensor]:
        """Query loss (and accuracy) of every task before and after adaptation.

        Returns:
            ``loss_pre``, ``loss_post``, ``acc_pre``, ``acc_post``: tensors of shape (n_tasks,)
            (accuracies are NaN for regression).
        """
        fixed = {k: v.detach() for k, v in params.items()}
        metric = vmap(learner.task_loss_and_accuracy, in_dims=(None, 0, 0))
        metric_adapted = vmap(learner.task_loss_and_accuracy)
        adapted, _ = self.adapt(learner, fixed, batch.support_x, batch.support_y, steps=steps)
        with torch.no_grad():
            loss_pre, acc_pre = metric(fixed, batch.query_x, batch.query_y)
            loss_post, acc_post = metric_adapted(adapted, batch.query_x, batch.query_y)
        return {"loss_pre": loss_pre, "loss_post": loss_post,
                "acc_pre": acc_pre, "acc_post": acc_post}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, inner_steps={self.inner_steps})"
