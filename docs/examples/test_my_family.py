"""Tests of the example family: gabench's task-family contract plus its own distribution.

Run with ``pytest docs/examples``.
"""

from __future__ import annotations

import numpy as np
import torch
from my_family import Lines

from gabench.tasks import TaskFamily, task_rng
from gabench.testing import TaskFamilyContract


class TestLines(TaskFamilyContract):
    """Every check that gabench runs on its own families, run on this one."""

    def make_family(self) -> TaskFamily:
        return Lines(shots=5, query_shots=10)


def test_support_and_query_lie_on_one_line():
    batch = Lines().sample(4, "train", task_rng(0, "lines", "train"))
    x = torch.cat([batch.support_x[..., 0], batch.query_x[..., 0]], dim=1).double()
    y = torch.cat([batch.support_y, batch.query_y], dim=1).double()
    for i in range(4):
        slope, intercept = np.polyfit(x[i].numpy(), y[i].numpy(), 1)
        assert abs(slope) <= 2.0 and abs(intercept) <= 1.0
        np.testing.assert_allclose(slope * x[i].numpy() + intercept, y[i].numpy(), atol=1e-5)
