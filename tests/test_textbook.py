"""The textbook replica keeps the published example's defects on purpose; gabench textbook wires it up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gabench.textbook import LN2, TextbookSettings, heldout_loss, textbook_run, textbook_table


def test_textbook_run_is_seeded_and_has_the_published_shape():
    a = textbook_run(np.random.default_rng(0))
    b = textbook_run(np.random.default_rng(0))
    np.testing.assert_array_equal(a.printed_loss, b.printed_loss)
    assert a.printed_loss.shape == (100,) and a.theta.shape == (50, 1)
    assert np.isfinite(a.printed_loss).all()


def test_defect_2_moves_every_coordinate_by_the_same_amount():
    run = textbook_run(np.random.default_rng(3), TextbookSettings(epochs=30, alpha=0.1, beta=0.05))
    shift = (run.theta - run.theta_init).ravel()
    assert np.abs(shift).max() > 0
    np.testing.assert_allclose(shift, shift[0], rtol=1e-10, atol=1e-15)


def test_heldout_loss_of_zero_parameters_is_ln2():
    s = TextbookSettings(test_tasks=50)
    zero = np.zeros((50, 1))
    assert heldout_loss(zero, np.random.default_rng(0), s, adapt=False) == pytest.approx(math.log(2))
    assert heldout_loss(zero, np.random.default_rng(0), s, adapt=True) >= LN2 - 0.05


def test_textbook_table_is_long_format():
    t = textbook_table(3, TextbookSettings(epochs=5, test_tasks=10))
    assert set(t.columns) == {"run", "method", "seed", "step", "split", "metric", "value"}
    assert set(t.method) == {"textbook (as published)", "textbook (defect 2 fixed)",
                             "textbook (defects 1-4 fixed)"}
    assert len(t[t.metric == "printed_loss"]) == 3 * 3 * 5
    assert set(t[t.split == "test"].metric) == {"loss_init", "loss_pre", "loss_post", "theta_change"}


@pytest.mark.slow
def test_gabench_textbook_writes_the_replica_runs_the_study_and_reports(tmp_path, capsys):
    from gabench.commands import main

    study = tmp_path / "textbook.toml"
    study.write_text(
        'name = "textbook"\nseeds = 2\n[defaults]\ntest_tasks = 8\nval_tasks = 8\n'
        '[families.textbook-as-published]\nfamily = "textbook-binary"\nmeta_batch = 2\nsteps = 4\n'
        'alpha = 1e-4\nbeta = 1e-4\noptimizer = "sgd"\neval_every = 2\n'
        '[methods.fomaml]\nalgorithm = "maml"\nfirst_order = true\n'
        '[methods."fomaml+ga"]\nalgorithm = "maml"\nfirst_order = true\naggregator = "ga"\n')
    code = main(["textbook", "--study", str(study), "--seeds", "3", "--out-root", str(tmp_path / "runs"),
                 "--reports-root", str(tmp_path / "reports")])
    assert code == 0
    assert (tmp_path / "runs" / "textbook" / "textbook.parquet").is_file()
    text = (tmp_path / "reports" / "textbook" / "README.md").read_text()
    assert "## The textbook's example as published" in text and "defects 1-5 kept on purpose" in text
    assert "| textbook (as published) |" in text and "![textbook printed loss](textbook.png)" in text
    assert "`fomaml+ga` - `fomaml`" in text and "gabench report textbook --runs-root" in text
    assert (tmp_path / "reports" / "textbook" / "textbook.png").stat().st_size > 1000
