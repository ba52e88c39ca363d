"""Aggregator weights against hand computations (the contract every aggregator passes is in
test_contracts.py)."""

from __future__ import annotations

import pytest
import torch

from gabench.aggregators import (
    GradientAgreement,
    GradientAgreementTextbook,
    Mean,
    weight_stats,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_ga_hand_computed_with_a_disagreeing_task():
    # sum_j g_j = (1, 1); s = G (1, 1) = (1, 2, -1); ||s||_1 = 4.
    G = t([[1, 0], [1, 1], [-1, 0]])
    w = GradientAgreement().weights(G)
    torch.testing.assert_close(w, t([0.25, 0.5, -0.25]))
    assert w[2] < 0 and w.abs().sum().item() == pytest.approx(1.0)


def test_ga_book_hand_computed():
    # Gram = [[1,1,-1],[1,2,-1],[-1,-1,1]]: row sums (1, 2, -1), sum of |entries| = 10.
    G = t([[1, 0], [1, 1], [-1, 0]])
    torch.testing.assert_close(GradientAgreementTextbook().weights(G), t([0.1, 0.2, -0.1]))


def test_ga_identical_tasks_get_uniform_weights():
    G = t([[1, 2], [1, 2], [1, 2], [1, 2]])
    for cls in (GradientAgreement, GradientAgreementTextbook):
        torch.testing.assert_close(cls().weights(G), torch.full((4,), 0.25, dtype=torch.float64))


def test_ga_degenerate_batch_falls_back_to_uniform():
    for cls in (GradientAgreement, GradientAgreementTextbook):
        w = cls().weights(torch.zeros(3, 5))
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w, torch.full((3,), 1.0 / 3))
    # Two tasks that cancel: s = G (g1 + g2) = 0, so the paper formula is degenerate too ...
    torch.testing.assert_close(GradientAgreement().weights(t([[1, 0], [-1, 0]])), t([0.5, 0.5]))
    # ... while the book's normaliser (sum of |Gram entries| = 4) is not: both weights are 0.
    torch.testing.assert_close(GradientAgreementTextbook().weights(t([[1, 0], [-1, 0]])), t([0.0, 0.0]))


def test_ga_and_book_agree_exactly_when_no_pair_disagrees():
    agreeing = t([[1, 0], [1, 1], [0, 2]])  # every inner product >= 0
    torch.testing.assert_close(GradientAgreement().weights(agreeing),
                               GradientAgreementTextbook().weights(agreeing))
    disagreeing = t([[1, 0], [1, 1], [0, 2], [-0.1, 1]])  # <g1, g4> < 0
    assert not torch.allclose(GradientAgreement().weights(disagreeing),
                              GradientAgreementTextbook().weights(disagreeing))


def test_ga_equals_gram_definition_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        G = torch.randn(7, 11, generator=g, dtype=torch.float64)
        gram = G @ G.T
        expected = gram.sum(1) / gram.sum(1).abs().sum()
        torch.testing.assert_close(GradientAgreement().weights(G), expected)
        torch.testing.assert_close(GradientAgreementTextbook().weights(G), gram.sum(1) / gram.abs().sum())


def test_weight_stats():
    w = t([0.25, 0.5, -0.25])
    s = weight_stats(w, torch.tensor([False, False, True]))
    assert s["w_min"] == -0.25 and s["w_max"] == 0.5
    assert s["w_frac_negative"].item() == pytest.approx(1 / 3)
    assert s["w_eff_n"].item() == pytest.approx(1.0 / (0.0625 + 0.25 + 0.0625))
    assert s["w_mean_corrupted"].item() == -0.25 and s["w_mean_clean"].item() == 0.375
    assert weight_stats(torch.full((4,), 0.25))["w_eff_n"].item() == pytest.approx(4.0)


def test_mean_is_uniform():
    torch.testing.assert_close(Mean().weights(t([[1, 0], [5, 5]])), t([0.5, 0.5]))
