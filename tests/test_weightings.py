"""GA ablations and TorchJD's multi-task aggregators: hand-computed values, TorchJD called directly,
and whole meta-updates against a per-task autograd loop."""

from __future__ import annotations

import math
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torchjd.aggregation as jd
from test_fast_path import learners
from test_meta_gradients import closed_form, linear_problem

from gabench._errors import ConfigError
from gabench.aggregators import (
    AGGREGATORS,
    OUTER_GRADIENTS,
    UPDATES,
    CosineAgreement,
    GradientAgreement,
    Mean,
    PositiveAgreement,
    SoftmaxAgreement,
)
from gabench.algorithms import MAML, Learner, Reptile, flatten_tasks
from gabench.config import RunConfig
from gabench.models import Logistic
from gabench.trainer import Trainer


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


R2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- GA ablations by hand
def test_ga_pos_hand_computed():
    # sum_j g_j = (1, 1); s = (1, 2, -1) -> clipped (1, 2, 0), sum 3.
    G = t([[1, 0], [1, 1], [-1, 0]])
    torch.testing.assert_close(PositiveAgreement().weights(G), t([1 / 3, 2 / 3, 0.0]))
    # no disagreement: the same weights as GA
    agreeing = t([[1, 0], [1, 1], [0, 2]])
    torch.testing.assert_close(PositiveAgreement().weights(agreeing), GradientAgreement().weights(agreeing))


def test_ga_pos_uniform_when_nothing_agrees():
    # g1 + g2 = 0: s = (0, 0), the denominator is 0
    torch.testing.assert_close(PositiveAgreement().weights(t([[1, 0], [-1, 0]])), t([0.5, 0.5]))
    torch.testing.assert_close(PositiveAgreement().weights(torch.zeros(4, 3)), torch.full((4,), 0.25))


def test_ga_cos_hand_computed():
    # unit rows (1,0), (0,1), (1,1)/sqrt2: cos12 = 0, cos13 = cos23 = 1/sqrt2, cos_ii = 1
    G = t([[3, 0], [0, 2], [1, 1]])
    s = np.array([1 + 1 / R2, 1 + 1 / R2, 1 + R2])
    torch.testing.assert_close(CosineAgreement().weights(G), t(s / s.sum()))
    # a task against the others: s = (1 + 0 - 1, 1, -1 + 0 + 1) = (0, 1, 0)
    torch.testing.assert_close(CosineAgreement().weights(t([[1, 0], [0, 5], [-2, 0]])), t([0.0, 1.0, 0.0]))
    # negative weight: unit rows (1,0), (1,0), (-1,0): s = (1, 1, -1), ||s||_1 = 3
    torch.testing.assert_close(CosineAgreement().weights(t([[1, 0], [4, 0], [-2, 0]])),
                               t([1 / 3, 1 / 3, -1 / 3]))


def test_ga_cos_zero_row_and_degenerate():
    # the zero update has cos = 0 with everything: s = (1 + 1/sqrt2, 0, 1 + 1/sqrt2)
    torch.testing.assert_close(CosineAgreement().weights(t([[1, 0], [0, 0], [1, 1]])), t([0.5, 0.0, 0.5]))
    torch.testing.assert_close(CosineAgreement().weights(torch.zeros(2, 3)), torch.full((2,), 0.5))
    # (1,0), (-1,0): s = (0, 0), uniform
    torch.testing.assert_close(CosineAgreement().weights(t([[1, 0], [-1, 0]])), t([0.5, 0.5]))


def test_ga_cos_ignores_a_tasks_update_norm_where_ga_does_not():
    G = t([[1, 0.2], [0.5, 1], [0.3, -0.4]])
    big = G.clone()
    big[2] *= 10
    torch.testing.assert_close(CosineAgreement().weights(G), CosineAgreement().weights(big))
    assert not torch.allclose(GradientAgreement().weights(G), GradientAgreement().weights(big))


def test_ga_softmax_hand_computed():
    # sum = (1, 1), |sum| = sqrt2: cosines (1/sqrt2, 1, -1/sqrt2)
    G = t([[1, 0], [1, 1], [-1, 0]])
    for tau in (0.5, 1.0, 3.0):
        e = np.exp(np.array([1 / R2, 1.0, -1 / R2]) / tau)
        torch.testing.assert_close(SoftmaxAgreement(temperature=tau).weights(G), t(e / e.sum()))
    torch.testing.assert_close(SoftmaxAgreement(temperature=1e9).weights(G), torch.full((3,), 1 / 3,
                                                                                        dtype=torch.float64))
    torch.testing.assert_close(SoftmaxAgreement(temperature=1e-3).weights(G), t([0.0, 1.0, 0.0]))
    # a zero update has cosine 0: e = (e^1, e^0, e^1) for rows (1,0), 0, (1,0)
    e = np.exp([1.0, 0.0, 1.0])
    torch.testing.assert_close(SoftmaxAgreement().weights(t([[1, 0], [0, 0], [2, 0]])), t(e / e.sum()))


def test_aggregator_params_from_strings_and_errors():
    agg = AGGREGATORS["ga-softmax"].from_params({"temperature": "0.25"})
    assert agg.temperature == 0.25 and agg.config() == {"temperature": 0.25}
    assert repr(agg) == "SoftmaxAgreement(temperature=0.25)"
    assert [p.name for p in AGGREGATORS["ga-softmax"].param_specs()] == ["temperature"]
    assert AGGREGATORS["mean"].param_specs() == []
    with pytest.raises(ConfigError, match="temperature"):
        AGGREGATORS["ga-softmax"].from_params({"temperature": "0"})
    with pytest.raises(ConfigError, match="ga-softmax.tau"):
        AGGREGATORS["ga-softmax"].from_params({"tau": 1})
    with pytest.raises(ConfigError, match="no parameters"):
        AGGREGATORS["ga"].from_params({"x": 1})
    assert AGGREGATORS["cagrad"].from_params({"c": "0.2"}).c == 0.2
    assert AGGREGATORS["mgda"].from_params({"max_iters": "7"}).max_iters == 7
    with pytest.raises(ConfigError, match="scale_mode"):
        AGGREGATORS["aligned-mtl"](scale_mode="max")
    with pytest.raises(ConfigError, match="c="):
        AGGREGATORS["cagrad"](c=-1)


def test_every_aggregator_declares_its_matrix():
    kinds = {name: cls.matrix for name, cls in AGGREGATORS.items()}
    assert {k for k, v in kinds.items() if v == UPDATES} == {"mean", "ga", "ga-textbook", "ga-pos", "ga-cos",
                                                            "ga-softmax"}
    assert {k for k, v in kinds.items() if v == OUTER_GRADIENTS} == {
        "upgrad", "pcgrad", "mgda", "cagrad", "imtl-g", "aligned-mtl", "dualproj", "config"}


# --------------------------------------------------------------------------- TorchJD, by hand
# J = (1, 0), (-1, 1) conflict (<g1, g2> = -1); (1, 0), (0, 2) do not.
CONFLICT, ORTHOGONAL = [[1, 0], [-1, 1]], [[1, 0], [0, 2]]


@pytest.mark.parametrize("name,J,direction", [
    # PCGrad: g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5), g2 - <g2,g1>/|g1|^2 g1 = (0, 1); summed
    ("pcgrad", CONFLICT, [0.5, 1.5]),
    # UPGrad: the same two projections (each already in the dual cone), averaged
    ("upgrad", CONFLICT, [0.25, 0.75]),
    ("upgrad", [[1, 0], [1, 1]], [1.0, 0.5]),  # no conflict: the mean
    # DualProj: the mean (0, 0.5) has <., g1> = 0 and <., g2> = 0.5: already in the cone
    ("dualproj", CONFLICT, [0.0, 0.5]),
    # MGDA: min over gamma of |gamma g1 + (1-gamma) g2|^2 = (2g-1)^2 + (1-g)^2: gamma = 0.6
    ("mgda", CONFLICT, [0.2, 0.4]),
    # IMTL-G: d = w1 g1 + w2 g2 with <d, u1> = <d, u2>, w1 + w2 = 1: w = (2/3, 1/3)
    ("imtl-g", ORTHOGONAL, [2 / 3, 2 / 3]),
    # Aligned-MTL: Gramian diag(1, 4): rows rescaled to norm sqrt(lambda_min) = 1, averaged
    ("aligned-mtl", ORTHOGONAL, [0.5, 0.5]),
    # ConFIG: unit sum (1,1)/sqrt2 scaled by sum_i <g_i, (1,1)/sqrt2> = 3/sqrt2
    ("config", ORTHOGONAL, [1.5, 1.5]),
])
def test_torchjd_aggregators_hand_computed(name, J, direction):
    d, _ = AGGREGATORS[name]().combine(t(J))
    torch.testing.assert_close(d, t(direction), atol=2e-4, rtol=0)  # UPGrad's QP adds reg_eps=1e-4


def test_cagrad_with_radius_zero_is_the_mean():
    torch.testing.assert_close(AGGREGATORS["cagrad"](c=0.0).combine(t(ORTHOGONAL))[0], t([0.5, 1.0]),
                               atol=1e-6, rtol=0)


# TorchJD called directly on a hand-built J: gabench's adapter returns the same direction, and
# TorchJD's weighting of J J^T as the weights.
DIRECT = {
    "upgrad": (jd.UPGrad, jd.UPGradWeighting, {}),
    "pcgrad": (jd.PCGrad, jd.PCGradWeighting, {}),
    "mgda": (jd.MGDA, jd.MGDAWeighting, {"epsilon": 1e-4, "max_iters": 50}),
    "cagrad": (jd.CAGrad, jd.CAGradWeighting, {"c": 0.3}),
    "imtl-g": (jd.IMTLG, jd.IMTLGWeighting, {}),
    "aligned-mtl": (jd.AlignedMTL, jd.AlignedMTLWeighting, {"scale_mode": "median"}),
    "dualproj": (jd.DualProj, jd.DualProjWeighting, {}),
    "config": (jd.ConFIG, None, {}),
}


def hand_jacobian() -> torch.Tensor:
    """Five tasks in R^4, two of them conflicting with the rest."""
    return t([[1.0, 0.5, 0.0, -0.2], [0.8, 0.9, 0.1, 0.0], [-1.2, 0.1, 0.4, 0.3],
              [0.3, -0.7, 1.0, 0.2], [0.9, 0.4, -0.1, 0.1]])


@pytest.mark.parametrize("name", list(DIRECT))
def test_torchjd_adapter_equals_torchjd_called_directly(name):
    jd_aggregator, jd_weighting, kwargs = DIRECT[name]
    J = hand_jacobian()
    if name == "pcgrad":  # random projection order: compare on 2 tasks, where the order is moot
        J = J[:2]
    ours = AGGREGATORS[name](**kwargs)
    d, w = ours.combine(J)
    torch.testing.assert_close(d, jd_aggregator(**kwargs)(J), rtol=1e-7, atol=1e-9)
    if jd_weighting is None:
        assert torch.isnan(w).all()
    else:
        torch.testing.assert_close(w, jd_weighting(**kwargs)(J @ J.T), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(d, w @ J)


@pytest.mark.parametrize("name", list(DIRECT))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_torchjd_adapter_on_a_non_finite_matrix_gives_nan_without_calling_torchjd(name, bad,
                                                                                  monkeypatch):
    ours = AGGREGATORS[name]()

    def fail(*args, **kwargs):
        raise AssertionError("TorchJD called on a non-finite matrix")

    monkeypatch.setattr(ours, "_jd", fail)
    J = hand_jacobian()
    J[2, 1] = bad
    d, w = ours.combine(J)
    assert d.shape == (4,) and w.shape == (5,)
    assert torch.isnan(d).all() and torch.isnan(w).all()


@pytest.mark.parametrize("name", [n for n, (_, weighting, _) in DIRECT.items() if weighting is not None])
def test_torchjd_gramian_method_on_a_finite_j_whose_gramian_overflows_gives_nan(name, monkeypatch):
    # float32 entries of 1e20 are finite, their products are not: J J^T is inf
    ours = AGGREGATORS[name]()
    J = (hand_jacobian() * 1e20).float()
    assert torch.isfinite(J).all() and not torch.isfinite(J @ J.T).all()

    def fail(*args, **kwargs):
        raise AssertionError("TorchJD called on a non-finite Gramian")

    monkeypatch.setattr(ours, "_jd", types.SimpleNamespace(gramian_weighting=fail))
    d, w = ours.combine(J)
    assert torch.isnan(d).all() and torch.isnan(w).all()


@pytest.mark.parametrize("name", [n for n, (_, weighting, _) in DIRECT.items() if weighting is None])
def test_torchjd_direction_method_on_a_finite_j_whose_row_norms_overflow_gives_nan(name, monkeypatch):
    # ConFIG divides the rows by their norms: with float32 entries of 1e20 the norms are inf and
    # TorchJD returns a zero direction, a finite step the trainer would take as a result
    ours = AGGREGATORS[name]()
    J = (hand_jacobian() * 1e20).float()
    assert torch.isfinite(J).all() and not torch.isfinite((J * J).sum(dim=1)).all()
    assert (DIRECT[name][0]()(J) == 0).all()  # what TorchJD itself gives

    def fail(*args, **kwargs):
        raise AssertionError("TorchJD called on rows whose norms overflow")

    monkeypatch.setattr(ours, "_jd", fail)
    d, w = ours.combine(J)
    assert torch.isnan(d).all() and torch.isnan(w).all()


def test_pcgrad_is_seeded_and_leaves_the_global_rng_alone(rng_guard):
    J = hand_jacobian()
    a, b, c = (AGGREGATORS["pcgrad"](seed=s) for s in (0, 0, 1))
    first = [a.combine(J)[0] for _ in range(6)]
    for x, y in zip(first, (b.combine(J)[0] for _ in range(6)), strict=True):
        torch.testing.assert_close(x, y)
    others = [c.combine(J)[0] for _ in range(6)]
    assert any(not torch.allclose(x, y) for x, y in zip(first, others, strict=True))
    assert rng_guard.unchanged()
    # with T = 5 the orders matter: the direction differs between some calls of one instance
    assert any(not torch.allclose(first[0], x) for x in first[1:])


# --------------------------------------------------------------------------- per-task autograd loop
def loop_reference(learner: Learner, params: dict, batch, alpha: float, steps: int,
                   kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task outer gradients and inner updates with a Python loop over tasks and plain autograd.

    Returns:
        J (T, P): MAML ``grad_theta L_q,i(theta'_i(theta))`` (second order through the loop),
        FOMAML ``grad L_q,i`` at ``theta'_i``, Reptile ``g_i``; and G (T, P), rows ``g_i``.
    """
    names = list(params)
    rows, updates = [], []
    for i in range(batch.n_tasks):
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        p = theta
        for _ in range(steps):
            loss = learner.task_loss(p, batch.support_x[i], batch.support_y[i])
            grads = torch.autograd.grad(loss, [p[k] for k in names], create_graph=kind == "maml")
            p = {k: p[k] - alpha * g for k, g in zip(names, grads, strict=True)}
            if kind != "maml":
                p = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        g_i = torch.cat([(theta[k] - p[k]).detach().reshape(-1) for k in names])
        if kind == "reptile":
            row = g_i
        else:
            q = learner.task_loss(p, batch.query_x[i], batch.query_y[i])
            wrt = [(theta if kind == "maml" else p)[k] for k in names]
            row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(q, wrt)])
        rows.append(row)
        updates.append(g_i)
    return torch.stack(rows), torch.stack(updates)


def ga_pos_by_hand(G: np.ndarray) -> np.ndarray:
    s = np.maximum(G @ G.sum(axis=0), 0.0)
    return s / s.sum() if s.sum() > 0 else np.full(len(G), 1 / len(G))


ALGOS = {
    "maml": lambda a, k: MAML(a, k),
    "fomaml": lambda a, k: MAML(a, k, first_order=True),
    "reptile": lambda a, k: Reptile(a, k),
}


@pytest.mark.parametrize("family", ["sine", "digits"])
@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("kind", list(ALGOS))
@pytest.mark.parametrize("aggregator", ["ga-pos", "upgrad"])
def test_meta_update_equals_per_task_loop(family, path, kind, aggregator):
    fast, general, params, batch = learners(family)
    learner = fast if path == "fast" else general
    alpha, steps = 0.3, 2
    res = ALGOS[kind](alpha, steps).step(learner, params, batch, AGGREGATORS[aggregator]())
    J, G = loop_reference(general, params, batch, alpha, steps, kind)
    if aggregator == "ga-pos":  # weights of the inner updates, by hand; the algorithm's own rows
        w = torch.from_numpy(ga_pos_by_hand(G.numpy()))
        expected = w @ J
    else:  # TorchJD on the per-task outer gradients
        expected = jd.UPGrad()(J)
        w = jd.UPGradWeighting()(J @ J.T)
    got = torch.cat([res.direction[k].reshape(-1) for k in params])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(res.weights.numpy(), w.numpy(), rtol=1e-7, atol=1e-10)
    assert all(res.direction[k].shape == params[k].shape for k in params)


@pytest.mark.parametrize("second_order", [True, False])
def test_outer_gradients_equal_closed_form_on_a_linear_model(second_order):
    """Rows of MAML's per-task outer gradients against the closed form (I - alpha A_i)^s grad."""
    theta, batch, data = linear_problem(T=4)
    model = Logistic(3, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        model.theta.copy_(torch.tensor(theta))
    for fast_path in (True, False):
        learner = Learner(model, lambda p, y: ((p.squeeze(-1) - y) ** 2).mean(), loss_kind="mse",
                          fast_path=fast_path)
        grads, _, _ = MAML(0.05, 3, first_order=not second_order).outer_gradients(
            learner, dict(model.named_parameters()), batch)
        for i in range(4):
            e = np.eye(4)[i]
            row, _ = closed_form(theta, data, 0.05, 3, e, second_order=second_order)
            np.testing.assert_allclose(grads["theta"][i].numpy(), row, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- whole runs
def test_runs_with_outer_gradient_aggregators_and_nan_weights():
    cfg = dict(family="sine", algorithm="maml", inner_steps=1, steps=6, meta_batch=4, eval_every=3,
               val_tasks=4, test_tasks=4)
    res = Trainer(RunConfig(aggregator="config", **cfg), progress=False).fit()
    assert res.weights.weight.isna().all()
    train = res.results[res.results.split == "train"]
    assert train[train.metric == "w_eff_n"].value.isna().all()
    assert np.isfinite(train[train.metric == "query_loss"].value).all()
    assert np.isfinite(res.test["loss_post"].mean)
    a = Trainer(RunConfig(aggregator="pcgrad", **cfg), progress=False).fit()
    b = Trainer(RunConfig(aggregator="pcgrad", **cfg), progress=False).fit()
    drop = lambda df: df[df.metric != "wall_seconds"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(drop(a.results), drop(b.results))
    pd.testing.assert_frame_equal(a.weights, b.weights)
    assert not a.weights.weight.isna().any()


def test_mean_of_outer_gradients_equals_the_mean_aggregator():
    """The two routes (weighted backward vs. per-task rows) agree for the plain mean."""
    fast, general, params, batch = learners("digits")
    for learner in (fast, general):
        for kind in ALGOS:
            alg = ALGOS[kind](0.3, 2)
            grads, support, query = alg.outer_gradients(learner, params, batch)
            res = alg.step(learner, params, batch, Mean())
            np.testing.assert_allclose(flatten_tasks({k: grads[k] for k in params}).mean(0).numpy(),
                                       torch.cat([res.direction[k].reshape(-1) for k in params]).numpy(),
                                       rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(query.numpy(), res.query_loss.numpy(), rtol=1e-12)
            np.testing.assert_allclose(support.numpy(), res.support_loss.numpy(), rtol=1e-12)
