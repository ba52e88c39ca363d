"""Tests of the example algorithm: gabench's algorithm contract plus its own direction.

Run with ``pytest docs/examples``.
"""

from __future__ import annotations

import torch
from my_algorithm import Pretrain

from gabench.aggregators import GradientAgreement
from gabench.algorithms import Algorithm, Learner
from gabench.tasks import Sine, init_generator, task_rng
from gabench.testing import AlgorithmContract


class TestPretrain(AlgorithmContract):
    """Every check that gabench runs on its own algorithms, run on this one."""

    def make_algorithm(self) -> Algorithm:
        return Pretrain(alpha=0.01, inner_steps=2)


def test_direction_equals_a_per_task_loop():
    family = Sine(shots=5, query_shots=5, hidden=8)
    model = family.make_model(init_generator(0, "sine"))
    params = dict(model.named_parameters())
    batch = family.sample(4, "train", task_rng(0, "sine", "train"))
    learner = Learner(model, family.loss, loss_kind="mse")
    res = Pretrain(alpha=0.01).step(learner, params, batch, GradientAgreement())
    # reference: one autograd call per task at the shared parameters, weighted by hand
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(4):
        loss = family.loss(model(batch.query_x[i]), batch.query_y[i])
        for (k, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())),
                             strict=True):
            expected[k] += res.weights[i] * g
    for k in params:
        torch.testing.assert_close(res.direction[k], expected[k], rtol=1e-5, atol=1e-6)


def test_outer_gradients_are_the_per_task_gradients():
    family = Sine(shots=5, query_shots=5, hidden=8)
    model = family.make_model(init_generator(0, "sine"))
    params = dict(model.named_parameters())
    batch = family.sample(3, "train", task_rng(1, "sine", "train"))
    learner = Learner(model, family.loss, loss_kind="mse")
    grads, support_loss, query_loss = Pretrain(alpha=0.01).outer_gradients(learner, params, batch)
    for i in range(3):
        loss = family.loss(model(batch.query_x[i]), batch.query_y[i])
        for (k, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())),
                             strict=True):
            torch.testing.assert_close(grads[k][i], g, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(support_loss[i], family.loss(model(batch.support_x[i]),
                                                                    batch.support_y[i]))
    assert query_loss.shape == (3,)
