"""Family-specific checks (the contract every family passes is in test_contracts.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gabench import ConfigError
from gabench.tasks import (
    FAMILIES,
    Digits,
    OutlierTasks,
    Sine,
    TextbookBinary,
    init_generator,
    make_family,
    task_rng,
)


def test_book_binary_is_the_textbook_sampler():
    fam = TextbookBinary()
    b = fam.sample(400, "train", task_rng(0, "textbook-binary", "train"))
    assert b.support_x.shape == (400, 10, 50)
    assert b.support_x.min() >= 0 and b.support_x.max() < 1
    y = b.support_y.double()
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert abs(y.mean().item() - 0.5) < 0.02
    # labels independent of x: correlation of every feature with the label is ~0
    x = b.support_x.reshape(-1, 50).double()
    yc = y.reshape(-1) - y.mean()
    corr = (x - x.mean(0)).T @ yc / (x.std(0) * yc.std() * yc.numel())
    assert corr.abs().max() < 4 / math.sqrt(yc.numel())
    model = fam.make_model(init_generator(0, "textbook-binary"))
    assert [p.shape for p in model.parameters()] == [torch.Size([50, 1])]  # no bias
    assert 0.5 < model.theta.std().item() < 1.5  # N(0, 1)


def test_sine_ranges():
    b = Sine().sample(500, "train", task_rng(0, "sine", "train"))
    assert b.support_x.min() >= -5 and b.support_x.max() <= 5
    assert b.support_y.abs().max() <= 5


def test_digits_classes_and_shot_limit():
    fam = Digits(ways=5, shots=1)
    assert set(fam.classes_of("train")) & set(fam.classes_of("test")) == set()
    with pytest.raises(ConfigError, match="ways=9"):
        Digits(ways=9)
    with pytest.raises(ConfigError, match="ways=3"):
        Digits(ways=3, rotations=False)
    with pytest.raises(ConfigError, match="shots=170"):
        Digits(shots=170)


@pytest.mark.parametrize("name,mode", [("sine", "shuffle"), ("sine", "negate"),
                                       ("linear-binary", "flip"), ("digits", "shuffle")])
def test_outlier_tasks(name, mode):
    base = FAMILIES[name]()
    fam = OutlierTasks(base, 0.25, mode)
    clean = base.sample(8, "train", task_rng(0, name, "train"))
    dirty = fam.sample(8, "train", task_rng(0, name, "train"))
    assert dirty.corrupted.sum().item() == 2
    assert torch.equal(clean.support_x, dirty.support_x)  # same tasks, only targets change
    changed = (clean.support_y != dirty.support_y).any(1) | (clean.query_y != dirty.query_y).any(1)
    assert not changed[~dirty.corrupted].any()
    assert changed[dirty.corrupted].all()
    # the stream after the batch is the clean stream: later batches are paired too
    r1, r2 = task_rng(0, name, "train"), task_rng(0, name, "train")
    base.sample(8, "train", r1)
    fam.sample(8, "train", r2)
    assert torch.equal(base.sample(4, "train", r1).support_x, fam.sample(4, "train", r2).support_x)
    # evaluation splits are never corrupted
    assert not fam.sample(8, "test", task_rng(0, name, "test")).corrupted.any()


def test_outlier_mode_must_fit_the_family():
    with pytest.raises(ConfigError, match="outlier_mode='negate'"):
        OutlierTasks(Digits(), 0.1, "negate")
    with pytest.raises(ConfigError, match="outlier_fraction"):
        OutlierTasks(Sine(), 1.5)


def test_unknown_family():
    with pytest.raises(ConfigError, match="family='nope'.*sine"):
        make_family("nope")


def test_string_parameters_are_converted():
    fam = make_family("digits", {"rotations": "false", "ways": "2", "model": "conv"})
    assert fam.rotations is False and fam.ways == 2 and fam.model == "conv"
    with pytest.raises(ConfigError, match="digits.ways"):
        make_family("digits", {"ways": "five"})
    assert np.isclose(make_family("sine", {"amp_max": "2.5"}).amp_max, 2.5)
