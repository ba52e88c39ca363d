"""The fast path (FastMLP: batched matmuls, hand-written backward and second-order reverse pass)
gives the same numbers as the general vmap path, and passes the same closed-form checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import central_differences
from test_meta_gradients import closed_form, linear_problem, mse, reptile_ga_by_hand
from torch import nn

from gabench.aggregators import AGGREGATORS, GradientAgreement, Mean, weight_stats
from gabench.algorithms import MAML, FastMLP, Learner, Reptile
from gabench.config import RunConfig
from gabench.models import MLP, ConvNet, Logistic
from gabench.tasks import FAMILIES, TaskBatch, init_generator, make_family, task_rng
from gabench.trainer import Callback, Trainer, family_loss_kind

#: Families with their loss kind: every model type and loss the fast path supports.
FAST_FAMILIES = {
    "sine": "mse", "regression": "mse", "linear-binary": "bce", "textbook-binary": "bce",
    "moons": "bce", "classification": "ce", "digits": "ce",
}
ALGORITHMS = {
    "maml": lambda a, k: MAML(a, k),
    "fomaml": lambda a, k: MAML(a, k, first_order=True),
    "reptile": lambda a, k: Reptile(a, k),
}


def double_batch(batch: TaskBatch) -> TaskBatch:
    def d(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    return TaskBatch(d(batch.support_x), d(batch.support_y), d(batch.query_x), d(batch.query_y),
                     batch.corrupted)


def learners(family: str, seed: int = 0) -> tuple[Learner, Learner, dict, TaskBatch]:
    """A fast and a general learner on the same float64 model, and a float64 batch of 4 tasks."""
    fam = make_family(family, {})
    model = fam.make_model(init_generator(seed, family)).double()
    kind = family_loss_kind(fam)
    fast = Learner(model, fam.loss, fam.accuracy, loss_kind=kind)
    general = Learner(model, fam.loss, fam.accuracy, loss_kind=kind, fast_path=False)
    batch = double_batch(fam.sample(4, "train", task_rng(seed, family, "train")))
    return fast, general, dict(model.named_parameters()), batch


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-9, atol=1e-12,
                               err_msg=what)


@pytest.mark.parametrize("family,kind", list(FAST_FAMILIES.items()))
def test_fast_path_applies_with_the_family_loss(family, kind):
    fast, general, params, batch = learners(family)
    assert fast.fast is not None and fast.fast.loss_kind == kind
    assert general.fast is None
    # the closed-form loss is the family's own loss, task by task
    assert_same(fast.batch_loss(params, batch.query_x, batch.query_y, per_task=False),
                general.batch_loss(params, batch.query_x, batch.query_y, per_task=False), "loss")


def test_fast_path_does_not_apply_elsewhere():
    g = torch.Generator().manual_seed(0)
    assert FastMLP.of(ConvNet(8, 5, g), "ce") is None  # conv: general path
    assert FastMLP.of(MLP(2, (3,), 1, g), None) is None  # unknown loss: general path
    assert FastMLP.of(nn.Sequential(nn.Linear(2, 1)), "mse") is None  # not a gabench model
    assert FastMLP.of(MLP(2, (3,), 1, g), "mse") is not None
    assert FastMLP.of(Logistic(3, g), "bce") is not None
    digits_conv = make_family("digits", {"model": "conv"})
    tr = Trainer(RunConfig(beta=1e-3, steps=1, test_tasks=1), family=digits_conv, algorithm=MAML(0.5),
                 aggregator=Mean())
    assert tr.learner.fast is None


@pytest.mark.parametrize("family", list(FAST_FAMILIES))
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("aggregator", ["mean", "ga"])
def test_step_equals_general_path(family, algorithm, steps, aggregator):
    fast, general, params, batch = learners(family)
    alg = ALGORITHMS[algorithm](make_family(family, {}).default_alpha, steps)
    agg = AGGREGATORS[aggregator]()
    a = alg.step(fast, params, batch, agg)
    b = alg.step(general, params, batch, agg)
    for k in params:
        assert a.direction[k].shape == params[k].shape
        assert_same(a.direction[k], b.direction[k], f"direction {k}")
    for name in ("weights", "support_loss", "query_loss"):
        assert_same(getattr(a, name), getattr(b, name), name)


@pytest.mark.parametrize("family", ["sine", "linear-binary", "classification"])
def test_evaluate_equals_general_path(family):
    fast, general, params, batch = learners(family)
    alg = MAML(make_family(family, {}).default_alpha, 2)
    a, b = alg.evaluate(fast, params, batch), alg.evaluate(general, params, batch)
    for m in a:
        np.testing.assert_allclose(a[m].numpy(), b[m].numpy(), rtol=1e-9, atol=1e-12, err_msg=m)


@pytest.mark.parametrize("family", ["sine", "classification"])
def test_public_adapt_stays_differentiable_on_the_fast_path(family):
    """adapt(create_graph=True) keeps its meaning: autograd through the fast inner loop."""
    fast, general, params, batch = learners(family)
    alg = MAML(0.1, 2)
    grads = []
    for learner in (fast, general):
        adapted, _ = alg.adapt(learner, params, batch.support_x, batch.support_y, create_graph=True)
        loss = learner.batch_loss(adapted, batch.query_x, batch.query_y).sum()
        grads.append(torch.autograd.grad(loss, list(params.values())))
    for ga, gb in zip(*grads, strict=True):
        assert_same(ga, gb, "grad through adapt")


def logistic_learner(theta: np.ndarray) -> tuple[Learner, dict]:
    """The closed-form tests' linear model ``x @ theta``, as gabench's Logistic (fast path)."""
    model = Logistic(theta.shape[0], torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        model.theta.copy_(torch.tensor(theta))
    learner = Learner(model, mse, loss_kind="mse")
    assert learner.fast is not None
    return learner, dict(model.named_parameters())


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("aggregator", [Mean(), GradientAgreement()])
def test_fast_second_order_maml_equals_closed_form(steps, aggregator):
    theta, batch, data = linear_problem()
    learner, params = logistic_learner(theta)
    res = MAML(alpha=0.05, inner_steps=steps).step(learner, params, batch, aggregator)
    expected, _ = closed_form(theta, data, 0.05, steps, res.weights.numpy(), second_order=True)
    np.testing.assert_allclose(res.direction["theta"].numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_fast_first_order_maml_equals_closed_form(steps):
    theta, batch, data = linear_problem(seed=1)
    learner, params = logistic_learner(theta)
    res = MAML(alpha=0.05, inner_steps=steps, first_order=True).step(learner, params, batch,
                                                                     GradientAgreement())
    expected, _ = closed_form(theta, data, 0.05, steps, res.weights.numpy(), second_order=False)
    np.testing.assert_allclose(res.direction["theta"].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_fast_reptile_equals_hand_computation():
    theta, batch, data = linear_problem(T=3, seed=2)
    learner, params = logistic_learner(theta)
    res = Reptile(alpha=0.1, inner_steps=5).step(learner, params, batch, GradientAgreement())
    w, direction, _ = reptile_ga_by_hand(theta, data, 0.1, 5)
    np.testing.assert_allclose(res.weights.numpy(), w, rtol=1e-10)
    np.testing.assert_allclose(res.direction["theta"].numpy().ravel(), direction, rtol=1e-10)


@pytest.mark.parametrize("kind", ["mse", "bce", "ce"])
@pytest.mark.parametrize("steps", [1, 2])
def test_hand_written_second_order_equals_finite_differences(kind, steps):
    """The reverse pass of FastMLP.maml_grad against central differences of the meta-objective."""
    rng = np.random.default_rng(5)
    T, out = 3, (3 if kind == "ce" else 1)
    model = MLP(2, (4, 3), out, torch.Generator().manual_seed(6)).double()
    fam_loss = {
        "mse": lambda p, y: nn.functional.mse_loss(p.squeeze(-1), y),
        "bce": lambda p, y: nn.functional.binary_cross_entropy_with_logits(p.squeeze(-1), y),
        "ce": lambda p, y: nn.functional.cross_entropy(p, y),
    }[kind]

    def targets(k):
        if kind == "ce":
            return torch.tensor(rng.integers(0, out, size=(T, k)))
        if kind == "bce":
            return torch.tensor(rng.integers(0, 2, size=(T, k)).astype(float))
        return torch.tensor(rng.standard_normal((T, k)))

    batch = TaskBatch(torch.tensor(rng.standard_normal((T, 5, 2))), targets(5),
                      torch.tensor(rng.standard_normal((T, 6, 2))), targets(6),
                      torch.zeros(T, dtype=torch.bool))
    learner = Learner(model, fam_loss, loss_kind=kind)
    params = dict(model.named_parameters())
    alpha = 0.4
    res = MAML(alpha, steps).step(learner, params, batch, GradientAgreement())
    w = res.weights

    def objective() -> float:
        with torch.no_grad():
            adapted, _ = MAML(alpha, steps).adapt(learner, params, batch.support_x, batch.support_y)
            return float(w @ learner.batch_loss(adapted, batch.query_x, batch.query_y))

    for name, p in params.items():
        fd = central_differences(p, objective)
        np.testing.assert_allclose(res.direction[name].numpy(), fd.numpy(), rtol=1e-5, atol=1e-8,
                                   err_msg=name)


@pytest.mark.parametrize("family,algorithm,first_order,aggregator,outliers", [
    ("sine", "maml", False, "ga", 0.0),
    ("linear-binary", "maml", True, "mean", 0.0),
    ("classification", "reptile", False, "ga", 0.5),
])
def test_whole_run_equals_general_path(family, algorithm, first_order, aggregator, outliers):
    cfg = RunConfig(family=family, algorithm=algorithm, first_order=first_order, aggregator=aggregator,
                    inner_steps=2, outlier_fraction=outliers, steps=8, meta_batch=5, eval_every=4,
                    val_tasks=6, test_tasks=7)
    fast = Trainer(cfg, progress=False)
    general = Trainer(cfg, progress=False, fast_path=False)
    assert fast.learner.fast is not None and general.learner.fast is None
    a, b = fast.fit(), general.fit()
    drop = lambda df: df[df.metric != "wall_seconds"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(drop(a.results), drop(b.results), rtol=1e-4, atol=1e-6)
    pd.testing.assert_frame_equal(a.weights, b.weights, rtol=1e-4, atol=1e-6)
    for k, p in fast.params.items():
        np.testing.assert_allclose(p.detach().numpy(), general.params[k].detach().numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_trainer_parameters_share_the_optimizer_buffer():
    tr = Trainer(RunConfig(family="sine", steps=3, meta_batch=3, test_tasks=2), progress=False)
    before = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    flat = torch.cat([p.detach().reshape(-1) for p in tr.params.values()])
    assert torch.equal(flat, tr.flat_params.detach())
    assert all(p.is_leaf and p.requires_grad for p in tr.model.parameters())
    tr.fit()
    after = tr.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # the optimizer moved them
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in tr.params.values()]),
                       tr.flat_params.detach())


def test_weight_stats_of_a_block_equal_row_by_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    c = torch.rand(6, 5, generator=g) < 0.4
    block = weight_stats(w, c)
    for i in range(6):
        row = weight_stats(w[i], c[i])
        for k, v in row.items():
            torch.testing.assert_close(block[k][i], v, equal_nan=True)


def test_family_loss_kind_covers_every_family():
    for name in FAMILIES:
        fam = make_family(name, {})
        assert family_loss_kind(fam) in ("mse", "bce", "ce")


def test_fit_runs_with_its_thread_setting_and_restores_torchs():
    seen = []

    class Record(Callback):
        def on_start(self, trainer):
            seen.append(torch.get_num_threads())

    previous = torch.get_num_threads()
    cfg = RunConfig(family="sine", steps=2, meta_batch=3, test_tasks=2)
    Trainer(cfg, callbacks=[Record()], progress=False).fit()
    Trainer(cfg, callbacks=[Record()], progress=False, num_threads=None).fit()
    assert seen == [1, previous]
    assert torch.get_num_threads() == previous
    with pytest.raises(ValueError, match="num_threads"):
        Trainer(cfg, progress=False, num_threads=0)
