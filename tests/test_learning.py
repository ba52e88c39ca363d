"""Learning happens where it can, and does not where it cannot (meta-test metrics, CPU)."""

from __future__ import annotations

import math

import pytest

from gabench.config import RunConfig
from gabench.trainer import Trainer

pytestmark = pytest.mark.slow


def meta_test(**kw):
    return Trainer(RunConfig(**kw), progress=False).fit().test


def test_sine_maml_from_scratch_reaches_mse_below_one():
    # The MAML paper's setting: T=25, K=10, one inner step (alpha=0.01), Adam (beta=0.001).
    test = meta_test(family="sine", algorithm="maml", meta_batch=25, steps=2000, alpha=0.01,
                     beta=0.001, inner_steps=1, family_params={"shots": 10})
    assert test["loss_post"].mean < 1.0
    assert test["loss_post"].ci_high < test["loss_pre"].ci_low  # adaptation helps


@pytest.mark.parametrize("aggregator", ["mean", "ga"])
def test_linear_binary_accuracy_well_above_chance(aggregator):
    test = meta_test(family="linear-binary", aggregator=aggregator, steps=300, meta_batch=10)
    assert test["acc_post"].ci_low > 0.7  # chance is 0.5


def test_digits_accuracy_well_above_chance():
    test = meta_test(family="digits", steps=500, meta_batch=10)  # 5-way 1-shot: chance 0.2
    assert test["acc_post"].ci_low > 0.35
    assert test["acc_post"].mean > test["acc_pre"].mean + 0.1


@pytest.mark.parametrize("algorithm,aggregator", [("maml", "mean"), ("maml", "ga"),
                                                  ("reptile", "ga")])
def test_textbook_binary_never_beats_ln2_by_more_than_noise(algorithm, aggregator):
    test = meta_test(family="textbook-binary", algorithm=algorithm, aggregator=aggregator,
                     alpha=0.1, beta=0.01, steps=300, meta_batch=10,
                     inner_steps=1 if algorithm == "maml" else 5)
    for when in ("pre", "post"):
        assert test[f"loss_{when}"].ci_high > math.log(2)  # not significantly below ln 2
        assert test[f"acc_{when}"].ci_low < 0.5  # not significantly above chance
