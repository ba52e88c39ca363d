"""The trainer and the algorithm contract: shapes, determinism, result tables, RNG hygiene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gabench.aggregators import AGGREGATORS
from gabench.algorithms import ALGORITHMS, MAML, Learner
from gabench.config import RunConfig
from gabench.results import RESULT_COLUMNS, WEIGHT_COLUMNS
from gabench.tasks import Sine, init_generator, task_rng
from gabench.trainer import Callback, DivergedError, Trainer

SMALL = {"steps": 6, "meta_batch": 4, "test_tasks": 10, "val_tasks": 5, "eval_every": 3}


@pytest.mark.parametrize("algorithm,first_order", [("maml", False), ("maml", True),
                                                   ("reptile", False)])
@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
class TestAlgorithmContract:
    """Every algorithm x aggregator pair."""

    def test_step(self, algorithm, first_order, aggregator, rng_guard):
        fam = Sine()
        model = fam.make_model(init_generator(0, "sine"))
        params = dict(model.named_parameters())
        alg = MAML(0.01, 2, first_order) if algorithm == "maml" else ALGORITHMS[algorithm](0.01, 2)
        batch = fam.sample(5, "train", task_rng(0, "sine", "train"))
        res = alg.step(Learner(model, fam.loss), params, batch, AGGREGATORS[aggregator]())
        assert set(res.direction) == set(params)
        for k, p in params.items():
            assert res.direction[k].shape == p.shape and torch.isfinite(res.direction[k]).all()
        assert res.weights.shape == res.support_loss.shape == res.query_loss.shape == (5,)
        assert not res.query_loss.requires_grad
        assert rng_guard.unchanged()

    def test_run_is_deterministic(self, algorithm, first_order, aggregator):
        cfg = RunConfig(family="linear-binary", algorithm=algorithm, first_order=first_order,
                        aggregator=aggregator, **SMALL)
        a = Trainer(cfg, progress=False).fit()
        b = Trainer(cfg, progress=False).fit()
        drop = lambda df: df[df.metric != "wall_seconds"].reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(drop(a.results), drop(b.results))
        pd.testing.assert_frame_equal(a.weights, b.weights)


def test_result_tables():
    cfg = RunConfig(family="digits", aggregator="ga", outlier_fraction=0.5, **SMALL)
    seen = []

    class Record(Callback):
        def on_eval(self, step, split, summary):
            seen.append((step, split, sorted(summary)))

    r = Trainer(cfg, callbacks=[Record()], progress=False).fit()
    assert list(r.results.columns) == list(RESULT_COLUMNS)
    assert list(r.weights.columns) == list(WEIGHT_COLUMNS)
    res = r.results
    assert set(res.split) == {"train", "val", "test"}
    assert (res.run == "digits__maml__ga__s0").all() and (res.method == "maml+ga").all()
    train = res[res.split == "train"]
    for m in ("query_loss", "support_loss", "w_min", "w_max", "w_frac_negative", "w_eff_n",
              "w_mean_corrupted", "w_mean_clean"):
        assert sorted(train[train.metric == m].step) == list(range(1, 7)), m
    assert sorted(res[res.split == "val"].step.unique()) == [0, 3, 6]
    test = res[(res["split"] == "test") & (res["select"] == "final")].set_index("metric")
    assert set(test.index) == {"loss_pre", "loss_post", "acc_pre", "acc_post"}
    assert (test.n == 10).all() and (test.ci_low <= test.value).all()
    best = res[(res["split"] == "test") & (res["select"] == "best_val")]
    assert set(best["metric"]) == set(test.index) and best["step"].nunique() == 1
    assert [s for s in seen if s[1].startswith("test")] == [
        (6, "test", sorted(test.index)), (int(best["step"].iloc[0]), "test_best_val", sorted(test.index))]
    # weights: T per step, 2 of 4 tasks corrupted in every batch, L1 norm 1 (ga)
    w = r.weights
    assert len(w) == 6 * 4
    assert (w.groupby("step").corrupted.sum() == 2).all()
    np.testing.assert_allclose(w.groupby("step").weight.apply(lambda v: v.abs().sum()), 1.0)


def test_regression_has_no_accuracy_and_test_set_is_paired():
    a = Trainer(RunConfig(family="sine", **SMALL), progress=False)
    b = Trainer(RunConfig(family="sine", algorithm="reptile", aggregator="ga",
                                      **SMALL), progress=False)
    ta, tb = a._eval_batches("test", 10), b._eval_batches("test", 10)
    assert torch.equal(ta[0].support_x, tb[0].support_x)  # same held-out tasks for both methods
    r = a.fit()
    assert not r.results.metric.str.startswith("acc").any()


def test_meta_test_tasks_default_to_600():
    tr = Trainer(RunConfig(family="linear-binary", steps=0), progress=False)
    assert tr.test_tasks == 600
    r = tr.fit()
    assert r.test["acc_post"].n == 600


# CAGrad, IMTL-G and Aligned-MTL end in a TorchJD linear-algebra error when handed non-finite
# gradients, or finite ones whose Gramian overflows (the slower divergences at alpha 0.5 to 5):
# the divergence must still be reported as one.
@pytest.mark.parametrize(("aggregator", "algorithm", "alpha", "beta"), [
    *[(agg, alg, 50.0, 10.0) for agg in ("mean", "cagrad", "imtl-g", "aligned-mtl")
      for alg in ("maml", "reptile")],
    ("cagrad", "reptile", 0.5, 3.0), ("imtl-g", "reptile", 5.0, 2.0), ("aligned-mtl", "reptile", 5.0, 2.0),
])
def test_divergence_is_reported(aggregator, algorithm, alpha, beta):
    cfg = RunConfig(family="sine", algorithm=algorithm, aggregator=aggregator, alpha=alpha,
                    beta=beta, optimizer="sgd", steps=60, meta_batch=4, test_tasks=5)
    with pytest.raises(DivergedError, match="diverged"):
        Trainer(cfg, progress=False).fit()


def test_train_metrics_reach_callbacks_in_blocks():
    blocks = []

    class Record(Callback):
        def on_train_log(self, steps, metrics):
            blocks.append((steps.tolist(), len(metrics["query_loss"])))

    cfg = RunConfig(family="sine", steps=7, meta_batch=3, test_tasks=4)
    tr = Trainer(cfg, callbacks=[Record()], progress=False)
    tr.log_every = 3
    tr.fit()
    assert [b[0] for b in blocks] == [[1, 2, 3], [4, 5, 6], [7]]


class RecordFail(Callback):
    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self.ended = False

    def on_fail(self, exc):
        self.failed.append(exc)

    def on_end(self, result):
        self.ended = True


def test_on_fail_gets_divergence_and_the_error_is_reraised():
    cfg = RunConfig(family="sine", alpha=50.0, beta=10.0, optimizer="sgd", steps=60,
                    meta_batch=4, test_tasks=5)
    record = RecordFail()
    with pytest.raises(DivergedError) as info:
        Trainer(cfg, [record], progress=False).fit()
    assert record.failed == [info.value] and not record.ended


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_on_fail_gets_what_a_callback_raised_and_a_broken_on_fail_changes_nothing(error):
    class Stop(Callback):
        def on_eval(self, step, split, summary):
            raise error("stop")

    class Broken(Callback):
        def on_fail(self, exc):
            raise ValueError("a failing failure hook")

    record = RecordFail()
    cfg = RunConfig(family="sine", steps=4, meta_batch=3, eval_every=2, val_tasks=3, test_tasks=3)
    with pytest.raises(error, match="stop"), pytest.warns(RuntimeWarning, match="Broken.on_fail failed"):
        Trainer(cfg, [Broken(), Stop(), record], progress=False).fit()
    assert len(record.failed) == 1 and isinstance(record.failed[0], error)


def test_success_calls_no_on_fail():
    record = RecordFail()
    Trainer(RunConfig(family="sine", steps=2, meta_batch=3, test_tasks=3), [record], progress=False).fit()
    assert record.ended and record.failed == []


def test_plug_in_instances_replace_the_registry_names():
    """A family, algorithm and aggregator given as instances run exactly as the registry's would."""
    from gabench.aggregators import GradientAgreement
    from gabench.algorithms import Reptile

    cfg = RunConfig(family="sine", algorithm="reptile", aggregator="ga", alpha=0.02, inner_steps=2,
                    outlier_fraction=0.34, **SMALL)
    by_name = Trainer(cfg, progress=False)
    given = Trainer(RunConfig(alpha=0.02, inner_steps=2, outlier_fraction=0.34, **SMALL), progress=False,
                    family=Sine(), algorithm=Reptile(0.02, 2), aggregator=GradientAgreement())
    assert given.run_info == by_name.run_info and given.config == by_name.config
    a, b = by_name.fit(), given.fit()
    drop = lambda df: df[df.metric != "wall_seconds"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(drop(a.results), drop(b.results))
    pd.testing.assert_frame_equal(a.weights, b.weights)


def test_a_plug_in_family_need_not_be_registered():
    class MySine(Sine):
        name = "my-sine"
        default_alpha = 0.03

    tr = Trainer(RunConfig(steps=2, meta_batch=3, test_tasks=3), family=MySine(), progress=False)
    assert tr.run_info["family"] == "my-sine" and tr.config["family"] == "my-sine"
    assert tr.config["alpha"] == 0.03 == tr.algorithm.alpha
    assert tr.fit().test["loss_post"].n == 3


@pytest.mark.slow
def test_the_mlflow_tracker_records_a_failure_through_on_fail(tmp_path):
    """One place records a failed run: the trainer calls on_fail, the tracker marks its MLflow run."""
    from mlflow import MlflowClient

    from gabench.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    diverging = RunConfig(family="sine", alpha=50.0, beta=10.0, optimizer="sgd", steps=60, meta_batch=4,
                          test_tasks=5)
    failed = MLflowTracker(uri, "t")
    with pytest.raises(DivergedError):
        Trainer(diverging, [failed], progress=False).fit()

    class Interrupt(Callback):
        def on_train_log(self, steps, metrics):
            raise KeyboardInterrupt

    killed = MLflowTracker(uri, "t")
    with pytest.raises(KeyboardInterrupt):
        Trainer(RunConfig(family="sine", steps=3, meta_batch=3, test_tasks=3), [killed, Interrupt()],
                progress=False).fit()
    client = MlflowClient(uri)
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])}
    assert runs[failed.run_id].info.status == "FAILED"
    assert runs[failed.run_id].data.tags["failure_reason"].startswith("DivergedError: training diverged")
    assert runs[killed.run_id].info.status == "KILLED"
