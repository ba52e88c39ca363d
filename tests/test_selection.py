"""Model selection on meta-validation, non-finite held-out results, and tuning without meta-test."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from gabench.commands import main
from gabench.config import RunConfig
from gabench.trainer import DivergedError, Trainer
from gabench.tuning import TuneConfig, make_storage, tune

SMALL = dict(family="sine", meta_batch=4, val_tasks=10, test_tasks=20, eval_batch=10)


def test_best_val_parameters_are_meta_tested_beside_the_final_iterate():
    trainer = Trainer(RunConfig(**SMALL, steps=40, eval_every=10, beta=0.05))
    snapshots: dict[int, torch.Tensor] = {}

    class Snap:  # records the parameters at each validation
        def on_eval(self, step, split, summary):
            if split == "val":
                snapshots[step] = trainer.flat_params.detach().clone()

    from gabench.trainer import Callback

    trainer.callbacks.append(type("S", (Callback,), {"on_eval": Snap.on_eval})())
    result = trainer.fit()
    table = result.results
    val = table[(table["split"] == "val") & (table["metric"] == "loss_post")].set_index("step")["value"]
    best_step = int(val.idxmin())
    assert result.best_val_step == best_step
    test = table[table["split"] == "test"]
    assert set(test["select"]) == {"final", "best_val"}
    best_rows = test[test["select"] == "best_val"]
    assert set(best_rows["step"]) == {best_step}
    # independent check: load the snapshot into a fresh trainer and meta-test it
    fresh = Trainer(RunConfig(**SMALL, steps=40, eval_every=10, beta=0.05))
    with torch.no_grad():
        fresh.flat_params.copy_(snapshots[best_step])
    ref = fresh.evaluate(fresh._eval_batches("test", 20), "test", best_step)
    got = best_rows.set_index("metric")["value"]
    for metric, s in ref.items():
        assert got[metric] == pytest.approx(s.mean, rel=1e-12)
    # the final iterate's parameters were restored after the best-val evaluation
    np.testing.assert_array_equal(trainer.flat_params.detach().numpy(), snapshots[40].numpy())
    assert result.test_best_val["loss_post"].mean == pytest.approx(got["loss_post"])


def test_without_validation_there_is_only_the_final_selection():
    result = Trainer(RunConfig(**SMALL, steps=5)).fit()
    test = result.results[result.results["split"] == "test"]
    assert set(test["select"]) == {"final"}
    assert result.test_best_val is None and result.best_val_step is None


def test_a_non_finite_held_out_loss_is_a_divergence_not_a_shorter_average(tmp_path, capsys):
    # a large inner learning rate with many evaluation steps blows up on some tasks only
    config = RunConfig(**SMALL, steps=3, alpha=1.0, eval_inner_steps=30)
    with pytest.raises(DivergedError, match=r"test loss_post \(\d+ of 20 tasks\)"):
        Trainer(config).fit()
    out = tmp_path / "run"
    code = main(["run", "--family", "sine", "--steps", "3", "--alpha", "1.0", "--eval-inner-steps", "30",
                 "--test-tasks", "20", "--no-tracking", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_config_json_is_strict_json(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "--family", "sine", "--steps", "3", "--test-tasks", "1", "--no-tracking",
                 "--out", str(out)]) == 0
    text = (out / "config.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["test"]["loss_post"]["ci_low"] is None  # one task: no interval, not NaN
    assert pd.read_parquet(out / "results.parquet")["select"].dropna().unique().tolist() == ["final"]


def test_tuning_trials_do_not_meta_test(tmp_path, monkeypatch):
    calls = []
    original = Trainer._eval_batches

    def spy(self, split, n):
        calls.append(split)
        return original(self, split, n)

    monkeypatch.setattr(Trainer, "_eval_batches", spy)
    tc = TuneConfig(base=RunConfig(**SMALL, steps=8, eval_every=4), study_name="t", trials=2,
                    storage=f"sqlite:///{tmp_path / 's.db'}")
    tune(tc)
    assert calls and set(calls) == {"val"}
    study = optuna.load_study(study_name="t", storage=make_storage(tc.storage))
    assert not any(k.startswith("test_") for t in study.trials for k in t.user_attrs)
