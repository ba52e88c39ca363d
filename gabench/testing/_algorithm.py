"""The contract every algorithm passes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call

from gabench.aggregators import Aggregator, GradientAgreement, Mean
from gabench.algorithms import Algorithm, Learner
from gabench.models import MLP
from gabench.tasks import TaskBatch
from gabench.testing._rng import GlobalRNGGuard

Params = dict[str, torch.Tensor]

N_TASKS = 4


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.squeeze(-1), y)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (pred.argmax(-1) == y).to(pred.dtype).mean()


def _problems(dtype: torch.dtype = torch.float64) -> Iterator[tuple[str, Learner, Params, TaskBatch]]:
    """Small regression (MSE) and 3-way classification (cross-entropy) meta-batches of
    ``N_TASKS`` tasks, each on the general (``torch.func``) path and on the fast path.

    Yields:
        A label, a learner, its parameters and a batch (support 6, query 7 examples per task).
    """
    for kind in ("mse", "ce"):
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(N_TASKS, k, 3, generator=g, dtype=dtype) for k in (6, 7)]
        if kind == "mse":
            ys = [torch.randn(N_TASKS, k, generator=g, dtype=dtype) for k in (6, 7)]
            loss_fn, accuracy_fn, n_out = _mse, None, 1
        else:
            ys = [torch.randint(0, 3, (N_TASKS, k), generator=g) for k in (6, 7)]
            loss_fn, accuracy_fn, n_out = F.cross_entropy, _accuracy, 3
        batch = TaskBatch(xs[0], ys[0], xs[1], ys[1], torch.zeros(N_TASKS, dtype=torch.bool))
        for fast in (False, True):
            model = MLP(3, (5,), n_out, torch.Generator().manual_seed(1)).to(dtype)
            learner = Learner(model, loss_fn, accuracy_fn, loss_kind=kind if fast else None,
                              fast_path=fast)
            assert (learner.fast is not None) == fast
            yield f"{kind}-{'fast' if fast else 'general'}", learner, dict(model.named_parameters()), batch


def _task_loss(learner: Learner, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return learner.loss_fn(functional_call(learner.model, params, (x,)), y)


def _sgd_by_loop(learner: Learner, params: Params, batch: TaskBatch, alpha: float,
                 steps: int) -> tuple[list[Params], torch.Tensor]:
    """The inner loop task by task with plain autograd: ``steps`` SGD steps of size ``alpha`` on
    each task's support loss. Returns the adapted parameters of each task and the support losses
    before adaptation, shape (n_tasks,)."""
    adapted, first = [], []
    for i in range(batch.n_tasks):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        for s in range(steps):
            loss = _task_loss(learner, p, batch.support_x[i], batch.support_y[i])
            if s == 0:
                first.append(loss.detach())
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - alpha * g).detach().requires_grad_(True) for (k, v), g in zip(p.items(), grads,
                                                                                       strict=True)}
        adapted.append({k: v.detach() for k, v in p.items()})
    return adapted, torch.stack(first)


def _query_losses(learner: Learner, per_task: list[Params], batch: TaskBatch) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([_task_loss(learner, p, batch.query_x[i], batch.query_y[i])
                            for i, p in enumerate(per_task)])


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")


class AlgorithmContract:
    """What every algorithm must do (see :class:`~gabench.algorithms.Algorithm`).

    Subclass it in a test module under a name starting with ``Test`` and implement
    :meth:`make_algorithm`; pytest then runs every ``test_*`` method below on that algorithm.
    The checks use small float64 regression and classification meta-batches of fully connected
    models, on the general (``torch.func``) path and on the fast path.

    Checked: :meth:`~gabench.algorithms.Algorithm.step` returns one finite direction per
    parameter with that parameter's shape and dtype, weights and losses of shape (n_tasks,), all
    constants, and leaves the parameters unchanged; the inner loop equals plain SGD on each
    task's support loss run task by task with autograd; the reported support and query losses
    are those of the parameters before and after adaptation; the weights are the aggregator's
    weights of the update vectors ``theta - theta'_i``; the direction of a batch equals the
    weighted sum of the directions of its tasks stepped one at a time (for the mean and for
    gradient agreement), so batching never mixes tasks; evaluation reports the losses before and
    after adaptation; the same input gives the same output; the global random generators are
    left alone.
    """

    def make_algorithm(self) -> Algorithm:
        """The algorithm under test (a fresh instance)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_algorithm()")

    # ------------------------------------------------------------------ checks
    def test_is_a_named_algorithm(self) -> None:
        alg = self.make_algorithm()
        assert isinstance(alg, Algorithm)
        assert isinstance(alg.name, str) and alg.name and alg.name == alg.name.strip()
        assert isinstance(alg.description, str) and alg.description
        assert alg.alpha > 0 and isinstance(alg.inner_steps, int) and alg.inner_steps >= 1
        assert isinstance(alg.differentiate_inner_loop, bool)
        assert isinstance(repr(alg), str)

    def test_step_shapes_and_constants(self) -> None:
        alg = self.make_algorithm()
        for dtype in (torch.float32, torch.float64):
            for label, learner, params, batch in _problems(dtype):
                before = {k: v.detach().clone() for k, v in params.items()}
                res = alg.step(learner, params, batch, GradientAgreement())
                assert set(res.direction) == set(params), label
                for k, p in params.items():
                    d = res.direction[k]
                    assert d.shape == p.shape and d.dtype == p.dtype, (label, k)
                    assert torch.isfinite(d).all() and not d.requires_grad, (label, k)
                    assert torch.equal(p.detach(), before[k]) and p.grad is None, (label, k)
                for name in ("weights", "support_loss", "query_loss"):
                    v = getattr(res, name)
                    assert v.shape == (N_TASKS,) and torch.isfinite(v).all(), (label, name)
                    assert not v.requires_grad, (label, name)

    def test_inner_loop_is_sgd_on_each_task(self) -> None:
        alg = self.make_algorithm()
        for label, learner, params, batch in _problems():
            for steps in (None, 1, 3):
                adapted, support_loss = alg.adapt(learner, params, batch.support_x, batch.support_y,
                                                  steps=steps)
                expected, first = _sgd_by_loop(learner, params, batch, alg.alpha,
                                               alg.inner_steps if steps is None else steps)
                _close(support_loss, first, f"{label} support loss")
                for i, p in enumerate(expected):
                    for k in params:
                        assert adapted[k].shape == (N_TASKS, *params[k].shape)
                        _close(adapted[k][i], p[k], f"{label} task {i} {k} after {steps} steps")

    def test_losses_and_weights_are_what_they_claim(self) -> None:
        alg = self.make_algorithm()
        agg = GradientAgreement()
        for label, learner, params, batch in _problems():
            res = alg.step(learner, params, batch, agg)
            adapted, first = _sgd_by_loop(learner, params, batch, alg.alpha, alg.inner_steps)
            _close(res.support_loss, first, f"{label} support_loss")
            _close(res.query_loss, _query_losses(learner, adapted, batch), f"{label} query_loss")
            theta = torch.cat([v.detach().reshape(-1) for v in params.values()])
            G = torch.stack([theta - torch.cat([p[k].reshape(-1) for k in params]) for p in adapted])
            _close(res.weights, agg.weights(G), f"{label} weights of theta - theta'_i")

    def test_direction_is_the_weighted_sum_over_tasks_stepped_one_by_one(self) -> None:
        alg = self.make_algorithm()
        aggregators: list[Aggregator] = [Mean(), GradientAgreement()]
        for label, learner, params, batch in _problems():
            singles = [alg.step(learner, params, batch.select(slice(i, i + 1)), Mean())
                       for i in range(batch.n_tasks)]
            for s in singles:
                _close(s.weights, torch.ones(1, dtype=s.weights.dtype), f"{label} one task's weight")
            for agg in aggregators:
                res = alg.step(learner, params, batch, agg)
                for k in params:
                    expected = sum(w * s.direction[k] for w, s in zip(res.weights, singles, strict=True))
                    _close(res.direction[k], expected, f"{label} {agg.name} direction {k}")
                _close(res.query_loss, torch.cat([s.query_loss for s in singles]), f"{label} query_loss")

    def test_evaluate_reports_losses_before_and_after_adaptation(self) -> None:
        alg = self.make_algorithm()
        for label, learner, params, batch in _problems():
            for steps in (None, 2):
                out = alg.evaluate(learner, params, batch, steps=steps)
                assert set(out) == {"loss_pre", "loss_post", "acc_pre", "acc_post"}
                for k, v in out.items():
                    assert v.shape == (N_TASKS,) and not v.requires_grad, (label, k)
                n = alg.inner_steps if steps is None else steps
                adapted, _ = _sgd_by_loop(learner, params, batch, alg.alpha, n)
                _close(out["loss_post"], _query_losses(learner, adapted, batch), f"{label} loss_post")
                _close(out["loss_pre"], _query_losses(learner, [params] * N_TASKS, batch),
                       f"{label} loss_pre")
                if learner.accuracy_fn is None:
                    assert torch.isnan(out["acc_pre"]).all() and torch.isnan(out["acc_post"]).all()
                else:
                    assert ((out["acc_post"] >= 0) & (out["acc_post"] <= 1)).all()

    def test_deterministic(self) -> None:
        for label, learner, params, batch in _problems():
            a = self.make_algorithm().step(learner, params, batch, GradientAgreement())
            b = self.make_algorithm().step(learner, params, batch, GradientAgreement())
            for k in params:
                assert torch.equal(a.direction[k], b.direction[k]), (label, k)
            for name in ("weights", "support_loss", "query_loss"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (label, name)

    def test_no_global_rng(self) -> None:
        guard = GlobalRNGGuard.seeded()
        alg = self.make_algorithm()
        for _, learner, params, batch in _problems():
            alg.step(learner, params, batch, GradientAgreement())
            alg.evaluate(learner, params, batch)
        assert guard.unchanged()
