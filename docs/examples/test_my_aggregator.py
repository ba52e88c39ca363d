"""Tests of the example aggregator: gabench's aggregator contract plus its own formula.

Run with ``pytest docs/examples``.
"""

from __future__ import annotations

import math

import pytest
import torch
from my_aggregator import SoftAgreement

from gabench import ConfigError
from gabench.aggregators import Aggregator
from gabench.testing import AggregatorContract


class TestSoftAgreement(AggregatorContract):
    """Every check that gabench runs on its own aggregators, run on this one."""

    def make_aggregator(self) -> Aggregator:
        return SoftAgreement(temperature=0.5)


def test_hand_computed_weights():
    # sum_j g_j = (1, 0), so s = (1, 1, -1), ||s||_1 = 3 and the relative GA weights are (1, 1, -1)
    G = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    e, f = math.exp(1.0), math.exp(-1.0)
    expected = torch.tensor([e, e, f], dtype=torch.float64) / (2 * e + f)
    torch.testing.assert_close(SoftAgreement(temperature=1.0).weights(G), expected)


def test_temperature_must_be_positive():
    with pytest.raises(ConfigError, match="temperature"):
        SoftAgreement(temperature=0.0)
