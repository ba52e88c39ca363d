"""A worked example of an algorithm plug-in: the multi-task pretraining baseline.

This file is the code of the worked example in ``docs/extending.md``. It is not part of the
``gabench`` package: import it (or copy it into ``gabench/algorithms/``) and register it.
"""

from __future__ import annotations

import torch

from gabench.algorithms import ALGORITHMS, Algorithm, Learner
from gabench.tasks import TaskBatch

Params = dict[str, torch.Tensor]


class Pretrain(Algorithm):
    """Pretraining on all tasks: the outer direction ignores adaptation.

    The direction is ``sum_i w_i grad L_query_i(theta)``, the gradient of the weighted query loss
    at the shared parameters ``theta`` rather than at the adapted ``theta'_i`` (MAML). At
    meta-validation and meta-test the model is still fine-tuned on each task's support set with
    the inner loop, so the comparison with MAML isolates what learning *for* adaptation brings.

    Args:
        alpha: Inner learning rate used when fine-tuning, > 0.
        inner_steps: Inner SGD steps, >= 1.

    References:
        C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017 (the "pretrained" baseline of its experiments).
    """

    name = "pretrain"
    description = "Multi-task pretraining baseline: direction sum_i w_i grad L_query_i(theta)"

    @property
    def differentiate_inner_loop(self) -> bool:
        return False

    def outer_direction(self, learner: Learner, params: Params, adapted: Params,
                        batch: TaskBatch, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """The weighted outer direction and the per-task query losses after adaptation.

        Args:
            learner: The model and loss.
            params: Meta-parameters theta.
            adapted: Adapted parameters, each of shape (n_tasks, *param_shape) (only used for the
                logged query loss).
            batch: The meta-batch.
            weights: Tensor of shape (n_tasks,), constants.

        Returns:
            The direction per parameter (each of the parameter's shape) and the query losses
            (detached), shape (n_tasks,).
        """
        grads, _ = learner.batch_grad(params, batch.query_x, batch.query_y, per_task=False,
                                      create_graph=False)
        direction = {k: torch.tensordot(weights.detach(), g, dims=1) for k, g in grads.items()}
        with torch.no_grad():
            query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        return direction, query_loss

    def outer_gradients(self, learner: Learner, params: Params,
                        batch: TaskBatch) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's own outer gradient ``grad L_query_i(theta)``, batched over tasks.

        The rows that aggregators combining per-task outer gradients (rather than weighting the
        inner updates) receive.

        Args:
            learner: The model and loss.
            params: Meta-parameters theta.
            batch: The meta-batch.

        Returns:
            The per-task gradients, each of shape (n_tasks, *param_shape) (constants), the
            support losses before adaptation and the query losses after it, shapes (n_tasks,).
        """
        with torch.no_grad():
            adapted, support_loss = self.adapt(learner, params, batch.support_x, batch.support_y)
            query_loss = learner.batch_loss(adapted, batch.query_x, batch.query_y)
        grads, _ = learner.batch_grad(params, batch.query_x, batch.query_y, per_task=False,
                                      create_graph=False)
        return grads, support_loss, query_loss


def register() -> None:
    """Make ``pretrain`` selectable by name (``RunConfig(algorithm="pretrain")``)."""
    ALGORITHMS[Pretrain.name] = Pretrain
