"""The contract every task family passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gabench._errors import ConfigError
from gabench.algorithms import Learner
from gabench.tasks import SPLITS, TaskBatch, TaskFamily, init_generator, task_rng
from gabench.testing._rng import GlobalRNGGuard


def _assert_same_batch(a: TaskBatch, b: TaskBatch) -> None:
    for field in ("support_x", "support_y", "query_x", "query_y", "corrupted"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.classes is None) == (b.classes is None)
    if a.classes is not None:
        assert torch.equal(a.classes, b.classes)


def _assert_same_model(m1: nn.Module, m2: nn.Module) -> None:
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


class TaskFamilyContract:
    """What every task family must do (see :class:`~gabench.tasks.TaskFamily`).

    Subclass it in a test module under a name starting with ``Test`` and implement
    :meth:`make_family`; pytest then runs every ``test_*`` method below on that family.

    Checked: the class attributes; a sampled :class:`~gabench.tasks.TaskBatch` has the documented
    shapes and dtypes (support and query sets of ``shots`` / ``query_shots`` examples, or that
    many per class), labels in ``range(ways)``; the same seed gives the same tasks and the same
    model, another seed or the next draw other tasks; the train, val and test splits share no
    class (families with classes) or no query example; the model maps a task's inputs to
    ``(K, n_outputs)``, its loss is a finite differentiable scalar and its accuracy a fraction
    (None for regression); the model works batched over tasks with ``torch.func`` (what the
    algorithms do), giving the per-task losses and gradients; ``config()`` rebuilds the same
    family and unknown or impossible parameters are a :class:`~gabench.ConfigError`; the global
    random generators are left alone.
    """

    def make_family(self) -> TaskFamily:
        """The family under test (a fresh instance)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_family()")

    # ------------------------------------------------------------------ helpers
    def _batch(self, fam: TaskFamily, n_tasks: int = 3, split: str = "train", seed: int = 0) -> TaskBatch:
        return fam.sample(n_tasks, split, task_rng(seed, fam.name, split))

    # ------------------------------------------------------------------ checks
    def test_class_attributes(self) -> None:
        fam = self.make_family()
        assert isinstance(fam, TaskFamily)
        assert isinstance(fam.name, str) and fam.name and fam.name == fam.name.strip()
        assert isinstance(fam.description, str) and fam.description
        assert fam.task_type in ("classification", "regression")
        assert isinstance(fam.default_alpha, int | float) and fam.default_alpha > 0
        assert isinstance(fam.default_meta_test_tasks, int) and fam.default_meta_test_tasks >= 1
        for attr in ("shots", "query_shots", "ways"):
            value = getattr(fam, attr)
            assert isinstance(value, int) and value >= 1, (attr, value)
        if fam.task_type == "regression":
            assert fam.n_outputs == 1
        else:
            assert fam.ways >= 2 and fam.n_outputs == (1 if fam.ways == 2 else fam.ways)

    def test_batch_shapes_and_dtypes(self) -> None:
        fam = self.make_family()
        for split in SPLITS:
            b = self._batch(fam, 3, split)
            assert isinstance(b, TaskBatch) and b.n_tasks == 3
            k_s, k_q = b.support_x.shape[1], b.query_x.shape[1]
            # K examples per task, or K per class for families that sample classes
            per = k_s // fam.shots
            assert per in (1, fam.ways) and k_s == per * fam.shots and k_q == per * fam.query_shots, \
                (k_s, k_q, fam.shots, fam.query_shots, fam.ways)
            assert b.support_x.shape[2:] == b.query_x.shape[2:]
            assert b.support_y.shape == (3, k_s) and b.query_y.shape == (3, k_q)
            assert b.support_x.dtype == b.query_x.dtype == torch.float32
            assert torch.isfinite(b.support_x).all() and torch.isfinite(b.query_x).all()
            assert b.corrupted.shape == (3,) and b.corrupted.dtype == torch.bool
            assert not b.corrupted.any()
            if fam.task_type == "classification":
                assert b.support_y.dtype == b.query_y.dtype == torch.long
                labels = set(b.support_y.unique().tolist()) | set(b.query_y.unique().tolist())
                assert labels <= set(range(fam.ways)), labels
            else:
                assert b.support_y.dtype == b.query_y.dtype == torch.float32
                assert torch.isfinite(b.support_y).all() and torch.isfinite(b.query_y).all()
            if b.classes is not None:
                assert b.classes.shape == (3, fam.ways) and b.classes.dtype == torch.long

    def test_same_seed_same_tasks_and_model(self) -> None:
        fam = self.make_family()
        a, b, c = self._batch(fam, 2, seed=5), self._batch(fam, 2, seed=5), self._batch(fam, 2, seed=6)
        _assert_same_batch(a, b)
        assert not torch.equal(a.support_x, c.support_x)
        # a stream goes on: its next batch holds other tasks
        rng = task_rng(5, fam.name, "train")
        first, second = fam.sample(2, "train", rng), fam.sample(2, "train", rng)
        _assert_same_batch(first, a)
        assert not torch.equal(first.support_x, second.support_x)
        _assert_same_model(fam.make_model(init_generator(5, fam.name)),
                           fam.make_model(init_generator(5, fam.name)))
        other = fam.make_model(init_generator(6, fam.name)).state_dict()
        assert any(not torch.equal(v, other[k])
                   for k, v in fam.make_model(init_generator(5, fam.name)).state_dict().items())

    def test_splits_are_disjoint(self) -> None:
        fam = self.make_family()
        batches = {s: self._batch(fam, 20, s) for s in SPLITS}
        if batches["train"].classes is not None:
            seen = {s: set(b.classes.flatten().tolist()) for s, b in batches.items()}
        else:
            seen = {s: {tuple(r) for r in b.query_x.reshape(b.query_x.shape[0] * b.query_x.shape[1], -1)
                        .tolist()} for s, b in batches.items()}
        assert not seen["train"] & seen["val"]
        assert not seen["train"] & seen["test"]
        assert not seen["val"] & seen["test"]

    def test_model_loss_and_accuracy_on_a_task(self) -> None:
        fam = self.make_family()
        b = self._batch(fam)
        model = fam.make_model(init_generator(0, fam.name))
        assert isinstance(model, nn.Module)
        params = list(model.parameters())
        assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
        for x, y in ((b.support_x[0], b.support_y[0]), (b.query_x[0], b.query_y[0])):
            out = model(x)
            assert out.shape == (x.shape[0], fam.n_outputs) and torch.isfinite(out).all()
            loss = fam.loss(out, y)
            assert loss.shape == () and torch.isfinite(loss)
            grads = torch.autograd.grad(loss, params)
            assert all(torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)  # the loss depends on the parameters
            acc = fam.accuracy(out.detach(), y)
            if fam.task_type == "regression":
                assert acc is None
            else:
                assert acc.shape == () and 0.0 <= float(acc) <= 1.0

    def test_model_works_batched_over_tasks(self) -> None:
        """The algorithms evaluate the model for all tasks at once (``torch.func.vmap``); that must
        give each task's own loss and gradient (compared in float64, where the two orders of
        summation agree to rounding)."""
        fam = self.make_family()
        b = self._batch(fam, 4)
        sx, qx = b.support_x.double(), b.query_x.double()
        sy, qy = (b.support_y, b.query_y) if fam.task_type == "classification" else \
            (b.support_y.double(), b.query_y.double())
        model = fam.make_model(init_generator(0, fam.name)).double()
        learner = Learner(model, fam.loss, fam.accuracy, fast_path=False)
        params = dict(model.named_parameters())
        grads, losses = learner.batch_grad(params, sx, sy, per_task=False, create_graph=False)
        loss_post, acc = learner.batch_metrics(params, qx, qy, per_task=False)
        for i in range(b.n_tasks):
            loss = fam.loss(model(sx[i]), sy[i])
            expected = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
            torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-9, atol=1e-12)
            for k in params:
                torch.testing.assert_close(grads[k][i], expected[k], rtol=1e-7, atol=1e-10,
                                           msg=lambda m, k=k: f"{k}: {m}")
            with torch.no_grad():
                out = model(qx[i])
                torch.testing.assert_close(loss_post[i], fam.loss(out, qy[i]), rtol=1e-9, atol=1e-12)
                if fam.task_type == "classification":
                    torch.testing.assert_close(acc[i], fam.accuracy(out, qy[i]))
                else:
                    assert torch.isnan(acc[i])

    def test_config_rebuilds_the_same_family(self) -> None:
        fam = self.make_family()
        cls = type(fam)
        again = cls.from_params(fam.config())
        assert again.config() == fam.config() and repr(again) == repr(fam)
        _assert_same_batch(self._batch(again), self._batch(fam))
        _assert_same_model(again.make_model(init_generator(0, fam.name)),
                           fam.make_model(init_generator(0, fam.name)))
        defaults = cls.from_params({})  # every parameter has a default
        assert isinstance(defaults, cls)

    def test_unknown_and_impossible_parameters_are_config_errors(self) -> None:
        cls = type(self.make_family())
        with pytest.raises(ConfigError, match=f"{cls.name}.bogus"):
            cls.from_params({"bogus": 1})
        for bad in ({"shots": 0}, {"query_shots": 0}):
            with pytest.raises(ConfigError, match=next(iter(bad))):
                cls.from_params(bad)

    def test_no_global_rng(self) -> None:
        guard = GlobalRNGGuard.seeded()
        fam = self.make_family()
        b = self._batch(fam)
        model = fam.make_model(init_generator(0, fam.name))
        fam.loss(model(b.support_x[0]), b.support_y[0])
        assert guard.unchanged()
