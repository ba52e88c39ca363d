"""Meta-gradients against independent references: closed forms and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import central_differences
from torch import nn

from gabench.aggregators import GradientAgreement, Mean
from gabench.algorithms import MAML, Learner, Reptile
from gabench.tasks import TaskBatch


class Linear(nn.Module):
    def __init__(self, theta: np.ndarray) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((pred.squeeze(-1) - y) ** 2).mean()


def linear_problem(T: int = 4, d: int = 3, k: int = 5, q: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((d, 1))
    sx, sy = rng.standard_normal((T, k, d)), rng.standard_normal((T, k))
    qx, qy = rng.standard_normal((T, q, d)), rng.standard_normal((T, q))
    batch = TaskBatch(torch.tensor(sx), torch.tensor(sy), torch.tensor(qx), torch.tensor(qy),
                      torch.zeros(T, dtype=torch.bool))
    return theta, batch, (sx, sy, qx, qy)


def closed_form(theta, data, alpha, steps, weights, second_order):
    """sum_i w_i J_i^T grad L_q,i(theta_i'), J_i = (I - alpha A_i)^steps, A_i = 2/n X^T X."""
    sx, sy, qx, qy = data
    d = theta.shape[0]
    total = np.zeros_like(theta)
    adapted = []
    for i in range(sx.shape[0]):
        X, y = sx[i], sy[i][:, None]
        A = 2.0 / X.shape[0] * X.T @ X
        b = 2.0 / X.shape[0] * X.T @ y
        th = theta.copy()
        for _ in range(steps):
            th = th - alpha * (A @ th - b)
        adapted.append(th)
        Xq, yq = qx[i], qy[i][:, None]
        g_query = 2.0 / Xq.shape[0] * Xq.T @ (Xq @ th - yq)
        J = np.linalg.matrix_power(np.eye(d) - alpha * A, steps) if second_order else np.eye(d)
        total += weights[i] * J.T @ g_query
    return total, adapted


def reptile_ga_by_hand(theta, data, alpha, steps):
    """Reptile with GA weights by hand: ``(w, sum_i w_i g_i, adapted)`` for ``g_i = theta - theta'_i``."""
    _, adapted = closed_form(theta, data, alpha, steps, np.ones(data[0].shape[0]), second_order=False)
    G = np.stack([(theta - a).ravel() for a in adapted])
    s = G @ G.sum(axis=0)
    w = s / np.abs(s).sum()
    return w, w @ G, adapted


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("aggregator", [Mean(), GradientAgreement()])
def test_second_order_maml_equals_closed_form(steps, aggregator):
    theta, batch, data = linear_problem()
    model = Linear(theta)
    learner = Learner(model, mse)
    res = MAML(alpha=0.05, inner_steps=steps).step(learner, dict(model.named_parameters()),
                                                   batch, aggregator)
    expected, _ = closed_form(theta, data, 0.05, steps, res.weights.numpy(), second_order=True)
    np.testing.assert_allclose(res.direction["theta"].numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_maml_equals_its_closed_form(steps):
    theta, batch, data = linear_problem(seed=1)
    model = Linear(theta)
    res = MAML(alpha=0.05, inner_steps=steps, first_order=True).step(
        Learner(model, mse), dict(model.named_parameters()), batch, GradientAgreement())
    expected, _ = closed_form(theta, data, 0.05, steps, res.weights.numpy(), second_order=False)
    np.testing.assert_allclose(res.direction["theta"].numpy(), expected, rtol=1e-10, atol=1e-12)
    so, _ = closed_form(theta, data, 0.05, steps, res.weights.numpy(), second_order=True)
    assert not np.allclose(expected, so)  # the two really differ on this problem


def test_reptile_update_equals_hand_computation():
    theta, batch, data = linear_problem(T=3, seed=2)
    model = Linear(theta)
    learner = Learner(model, mse)
    params = dict(model.named_parameters())
    res = Reptile(alpha=0.1, inner_steps=5).step(learner, params, batch, GradientAgreement())
    w, direction, adapted = reptile_ga_by_hand(theta, data, 0.1, 5)
    np.testing.assert_allclose(res.weights.numpy(), w, rtol=1e-10)
    np.testing.assert_allclose(res.direction["theta"].numpy().ravel(), direction, rtol=1e-10)
    # An SGD outer step of size beta moves theta to theta + beta * sum_i w_i (theta'_i - theta).
    beta = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=beta)
    model.theta.grad = res.direction["theta"]
    opt.step()
    expected = theta + beta * sum(wi * (a - theta) for wi, a in zip(w, adapted, strict=True))
    np.testing.assert_allclose(model.theta.detach().numpy(), expected, rtol=1e-10)


class TanhMLP(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(2, 6)
        self.l2 = nn.Linear(6, 1)
        self.double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


NAMES = ["l1.weight", "l1.bias", "l2.weight", "l2.bias"]


def meta_objective_by_loops(model, batch, alpha, steps, weights):
    """sum_i w_i L_query_i(theta'_i), with a plain Python loop and autograd (no torch.func)."""
    base = [p.detach().clone() for p in model.parameters()]
    total = 0.0
    for i in range(batch.n_tasks):
        ps = [b.clone().requires_grad_(True) for b in base]
        for _ in range(steps):
            out = torch.func.functional_call(model, dict(zip(NAMES, ps, strict=True)), (batch.support_x[i],))
            loss = mse(out, batch.support_y[i])
            grads = torch.autograd.grad(loss, ps)
            ps = [(p - alpha * g).detach().requires_grad_(True) for p, g in zip(ps, grads, strict=True)]
        out = torch.func.functional_call(model, dict(zip(NAMES, ps, strict=True)), (batch.query_x[i],))
        total += float(weights[i]) * float(mse(out, batch.query_y[i]).detach())
    return total


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_maml_equals_finite_differences_on_mlp(steps):
    rng = np.random.default_rng(3)
    T = 3
    batch = TaskBatch(*(torch.tensor(a) for a in (
        rng.standard_normal((T, 5, 2)), rng.standard_normal((T, 5)),
        rng.standard_normal((T, 7, 2)), rng.standard_normal((T, 7)))),
        torch.zeros(T, dtype=torch.bool))
    model = TanhMLP(seed=4)
    alpha = 0.3
    res = MAML(alpha=alpha, inner_steps=steps).step(
        Learner(model, mse), dict(model.named_parameters()), batch, GradientAgreement())
    w = res.weights.detach()
    for name, p in model.named_parameters():
        fd = central_differences(p, lambda: meta_objective_by_loops(model, batch, alpha, steps, w))
        np.testing.assert_allclose(res.direction[name].numpy(), fd.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
