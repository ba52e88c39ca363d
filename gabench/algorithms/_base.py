"""The algorithm plug-in kind: an inner loop and what each task contributes to the outer step.

All per-task work is batched over the tasks of a meta-batch (no Python loop over tasks): one
call of :meth:`Learner.batch_grad` per inner step. The general implementation is
``torch.func.vmap`` of ``grad_and_value``, whose second-order terms flow into ordinary autograd;
fully connected models take the fast path of :mod:`gabench.algorithms._fast_path` (batched matrix
products, same numbers). The per-task outer gradients that the ``"outer_gradients"`` aggregators
combine (:meth:`Algorithm.outer_gradients`) come from the same batched computations.
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
from gabench.aggregators import OUTER_GRADIENTS, Aggregator
from gabench.algorithms._fast_path import FastMLP
from gabench.tasks import TaskBatch

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Learner:
    """A functional view of a model and its per-task loss, evaluated for all tasks at once.

    The batched methods (:meth:`batch_grad`, :meth:`batch_loss`, :meth:`batch_weighted_grad`,
    :meth:`batch_metrics`) are what the algorithms call. Their general implementation is
    ``torch.func.vmap`` over the one-task functions (:meth:`task_loss`); for the fully connected
    models with a known loss (``loss_kind``) they use :class:`~gabench.algorithms.FastMLP`
    instead, which gives the same numbers with batched matrix products.

    Args:
        model: The network; its parameters are only read for their names and shapes here.
        loss_fn: ``loss_fn(pred, y)`` for one task: pred of shape (K, out), y of shape (K,).
        accuracy_fn: Optional ``accuracy_fn(pred, y)`` for one task (classification).
        loss_kind: Which standard loss ``loss_fn`` is (``"mse"``, ``"bce"``, ``"ce"``, see
            :data:`~gabench.algorithms.LOSS_KINDS`), or None. Declaring it lets the fast path
            compute loss gradients in closed form; the fast path is used only with it.
        fast_path: Use the fast path where the model and loss support it (False: always the
            general vmap path).

    Attributes:
        fast: The :class:`~gabench.algorithms.FastMLP` in use, or None (general path).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 accuracy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
                 *, loss_kind: str | None = None, fast_path: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.accuracy_fn = accuracy_fn
        self.loss_kind = loss_kind
        self.fast = FastMLP.of(model, loss_kind) if fast_path else None

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Model output with ``params`` substituted for the model's parameters."""
        return functional_call(self.model, params, (x,))

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one task."""
        return self.loss_fn(self.forward(params, x), y)

    def task_loss_and_accuracy(self, params: Params, x: torch.Tensor,
                               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy of one task (accuracy is NaN without an accuracy function)."""
        return self._metrics_of_pred(self.forward(params, x), y)

    def _metrics_of_pred(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = self.accuracy_fn(pred, y) if self.accuracy_fn is not None else None
        loss = self.loss_fn(pred, y)
        return loss, acc if acc is not None else torch.full_like(loss, float("nan"))

    # ------------------------------------------------------------------ batched over tasks
    def batch_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor, *, per_task: bool,
                   create_graph: bool, tape: list | None = None) -> tuple[Params, torch.Tensor]:
        """Every task's loss gradient with respect to its parameters.

        Args:
            params: Parameters shared by all tasks (``per_task=False``) or with a leading task
                dimension (``per_task=True``).
            x: Tensor of shape (n_tasks, K, *x_shape).
            y: Tensor of shape (n_tasks, K).
            per_task: Whether ``params`` have the leading task dimension.
            create_graph: Keep the gradients differentiable (second order); otherwise they are
                constants.
            tape: Fast path only: a list that receives what
                :meth:`FastMLP.maml_grad <gabench.algorithms.FastMLP.maml_grad>` needs.

        Returns:
            Gradients, each of shape (n_tasks, *param_shape), and the losses (detached), shape
            (n_tasks,).
        """
        if self.fast is not None:
            return self.fast.grad_and_loss(params, x, y, per_task=per_task, create_graph=create_graph,
                                           tape=tape)
        if tape is not None:
            raise ValueError("tape is only recorded on the fast path (Learner.fast is None)")
        grad_fn = vmap(grad_and_value(self.task_loss), in_dims=(0 if per_task else None, 0, 0))
        grads, loss = grad_fn(params, x, y)
        if not create_graph:
            grads = {k: v.detach() for k, v in grads.items()}
        return grads, loss.detach()

    def batch_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, *,
                   per_task: bool = True) -> torch.Tensor:
        """Every task's loss, shape (n_tasks,), differentiable with respect to ``params``."""
        if self.fast is not None:
            return self.fast.loss(params, x, y, per_task=per_task)
        return vmap(self.task_loss, in_dims=(0 if per_task else None, 0, 0))(params, x, y)

    def batch_weighted_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                            weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """``sum_i w_i grad L_i(params_i)`` for per-task ``params`` (constants), and the losses.

        Returns:
            The weighted gradient, each of shape param_shape, and the per-task losses (detached),
            shape (n_tasks,).
        """
        if self.fast is not None:
            return self.fast.weighted_grad_and_loss(params, x, y, weights)
        grads, loss = self.batch_grad(params, x, y, per_task=True, create_graph=False)
        return {k: torch.tensordot(weights, g, dims=1) for k, g in grads.items()}, loss

    def batch_metrics(self, params: Params, x: torch.Tensor, y: torch.Tensor, *,
                      per_task: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every task's loss and accuracy (NaN without an accuracy function), shapes (n_tasks,)."""
        if self.fast is not None:
            pred = self.fast.predict(params, x, per_task=per_task)
            return vmap(self._metrics_of_pred)(pred, y)
        return vmap(self.task_loss_and_accuracy, in_dims=(0 if per_task else None, 0, 0))(params, x, y)

    def __repr__(self) -> str:
        path = "fast" if self.fast is not None else "vmap"
        return f"Learner({type(self.model).__name__}, loss_kind={self.loss_kind!r}, path={path!r})"


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
        return self._inner_loop(learner, params, x, y, steps=steps, create_graph=create_graph)

    def _inner_loop(self, learner: Learner, params: Params, x: torch.Tensor, y: torch.Tensor, *,
                    steps: int | None, create_graph: bool,
                    tape: list | None = None) -> tuple[Params, torch.Tensor]:
        """:meth:`adapt`; ``tape`` (fast path) records each step for a hand-written backward."""
        n_steps = self.inner_steps if steps is None else steps
        p, per_task, first_loss = params, False, None
        for _ in range(n_steps):
            g, loss = learner.batch_grad(p, x, y, per_task=per_task, create_graph=create_graph,
                                         tape=tape)
            if first_loss is None:
                first_loss = loss
            # theta - alpha * g; on step 1 the shared (P) and per-task (T, P) broadcast
            p = {k: torch.add(p[k], g[k], alpha=-self.alpha) for k in p}
            per_task = True
        return p, first_loss

    @abstractmethod
    def outer_gradients(self, learner: Learner, params: Params,
                        batch: TaskBatch) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's own outer gradient, batched over tasks (the rows the mean would average).

        Args:
            learner: The model and loss.
            params: Meta-parameters theta.
            batch: The meta-batch.

        Returns:
            The per-task outer gradients, each of shape (n_tasks, *param_shape) (constants),
            the support losses before adaptation and the query losses after it, shapes (n_tasks,).
        """

    def step(self, learner: Learner, params: Params, batch: TaskBatch,
             aggregator: Aggregator) -> StepResult:
        """Adapt to every task of ``batch``, weight the tasks and return the outer direction.

        An aggregator of the ``"updates"`` kind weights the inner updates and the algorithm forms
        the weighted direction (:meth:`outer_direction`); one of the ``"outer_gradients"`` kind
        combines the per-task outer gradients (:meth:`outer_gradients`) itself (see
        :mod:`gabench.aggregators._base`).
        """
        if aggregator.matrix == OUTER_GRADIENTS:
            return self.combine_outer_gradients(learner, params, batch, aggregator)
        second_order = self.differentiate_inner_loop
        with torch.set_grad_enabled(second_order and torch.is_grad_enabled()):
            adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y,
                                               create_graph=second_order)
        weights = self.task_weights(params, adapted, aggregator)
        direction, query_loss = self.outer_direction(learner, params, adapted, batch, weights)
        return StepResult(direction, weights, support_loss, query_loss)

    def combine_outer_gradients(self, learner: Learner, params: Params, batch: TaskBatch,
                                aggregator: Aggregator) -> StepResult:
        """The step of an ``"outer_gradients"`` aggregator: it combines the matrix of per-task
        outer gradients into the direction (and gives the task weights, NaN where it has none)."""
        grads, support_loss, query_loss = self.outer_gradients(learner, params, batch)
        with torch.no_grad():
            d, weights = aggregator.combine(flatten_tasks({k: grads[k] for k in params}))
            direction, offset = {}, 0
            for k, v in params.items():
                direction[k] = d[offset:offset + v.numel()].view_as(v)
                offset += v.numel()
        return StepResult(direction, weights, support_loss, query_loss)

    @staticmethod
    def update_matrix(params: Params, adapted: Params) -> torch.Tensor:
        """The update vectors ``g_i = theta - theta'_i`` as rows of a (n_tasks, n_params) matrix
        (constants)."""
        with torch.no_grad():
            theta = torch.cat([v.reshape(-1) for v in params.values()])
            return theta - flatten_tasks(adapted)

    @staticmethod
    def task_weights(params: Params, adapted: Params, aggregator: Aggregator) -> torch.Tensor:
        """The aggregator's weights of the update vectors ``g_i = theta - theta'_i`` (constants)."""
        with torch.no_grad():
            return aggregator.weights(Algorithm.update_matrix(params, adapted))

    def evaluate(self, learner: Learner, params: Params, batch: TaskBatch,
                 steps: int | None = None) -> dict[str, torch.Tensor]:
        """Query loss (and accuracy) of every task before and after adaptation.

        Returns:
            ``loss_pre``, ``loss_post``, ``acc_pre``, ``acc_post``: tensors of shape (n_tasks,)
            (accuracies are NaN for regression).
        """
        fixed = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            adapted, _ = self.adapt(learner, fixed, batch.support_x, batch.support_y, steps=steps)
            loss_pre, acc_pre = learner.batch_metrics(fixed, batch.query_x, batch.query_y, per_task=False)
            loss_post, acc_post = learner.batch_metrics(adapted, batch.query_x, batch.query_y,
                                                        per_task=True)
        return {"loss_pre": loss_pre, "loss_post": loss_post,
                "acc_pre": acc_pre, "acc_post": acc_post}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, inner_steps={self.inner_steps})"
