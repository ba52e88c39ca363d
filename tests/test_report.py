"""Reports: bootstrap statistics against known cases, and a report generated from a tiny study."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
from scipy import stats

from gabench.commands import main
from gabench.commands.report import report_study
from gabench.compare import run_study
from gabench.reporting import (
    Interval,
    bootstrap_ci,
    bootstrap_ci_columns,
    fmt_interval,
    paired_difference,
    roc_auc_rows,
)
from gabench.study import load_study


# --------------------------------------------------------------------------- statistics
def test_bootstrap_of_two_points_is_their_range():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% percentiles are exactly 0 and 1.
    iv = bootstrap_ci(np.array([0.0, 1.0]))
    assert (iv.mean, iv.low, iv.high, iv.n) == (0.5, 0.0, 1.0, 2)


def test_bootstrap_degenerate_and_small_cases():
    iv = bootstrap_ci(np.full(7, 3.25))
    assert (iv.mean, iv.low, iv.high) == (3.25, 3.25, 3.25)
    one = bootstrap_ci(np.array([2.0, np.nan]))
    assert one.n == 1 and one.mean == 2.0 and np.isnan(one.low)
    assert bootstrap_ci(np.array([])).n == 0


def test_bootstrap_matches_scipy_and_the_t_interval_for_a_large_sample():
    x = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    iv = bootstrap_ci(x, rng=3)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=10_000,
                          random_state=np.random.default_rng(4)).confidence_interval
    assert iv.low == pytest.approx(ref.low, abs=0.03) and iv.high == pytest.approx(ref.high, abs=0.03)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    assert iv.low == pytest.approx(x.mean() - half, abs=0.03)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.03)
    assert bootstrap_ci(x, rng=3) == iv  # seeded: deterministic


def test_bootstrap_columns_share_resamples_across_points():
    curves = np.array([[0.0, 1.0], [1.0, 2.0]])  # column 2 = column 1 + 1 on every seed
    low, high = bootstrap_ci_columns(curves)
    np.testing.assert_allclose(high - low, [1.0, 1.0])
    np.testing.assert_allclose([low[1], high[1]], [low[0] + 1, high[0] + 1])


def test_paired_difference_and_probability_of_improvement():
    ga = np.array([0.9, 1.0, 1.2, 0.8])
    base = np.array([1.0, 1.0, 1.1, 1.0])
    d = paired_difference(ga, base, lower_is_better=True)
    assert d.n == 4 and d.diff.mean == pytest.approx(-0.05)
    assert d.p_improve == pytest.approx((2 + 0.5) / 4)  # two better, one tie, one worse
    acc = paired_difference(ga, base, lower_is_better=False)
    assert acc.p_improve == pytest.approx((1 + 0.5) / 4)
    with_nan = paired_difference(np.array([1.0, np.nan]), np.array([2.0, 1.0]), lower_is_better=True)
    assert with_nan.n == 1 and with_nan.p_improve == 1.0


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 12)).round(1)  # rounding makes ties
    labels = np.zeros((5, 12), dtype=bool)
    labels[:, :4] = True
    scores[:, :4] += 0.7
    got = roc_auc_rows(scores, labels)
    want = [roc_auc_score(labels[i], scores[i]) for i in range(5)]
    np.testing.assert_allclose(got, want)
    assert roc_auc_rows(np.ones((1, 4)), np.array([[True, False, False, False]]))[0] == 0.5
    assert np.isnan(roc_auc_rows(np.ones((1, 3)), np.zeros((1, 3), dtype=bool))[0])


def test_interval_formatting():
    assert fmt_interval(Interval(0.51234, 0.498, 0.5301, 5)) == "0.512 [0.498, 0.530]"
    assert fmt_interval(Interval(2.0, float("nan"), float("nan"), 1)) == "2 (n=1)"
    assert fmt_interval(Interval(float("nan"), float("nan"), float("nan"), 0)) == "–"


# --------------------------------------------------------------------------- a report
TINY = """
name = "tiny-report"
seeds = 2
[defaults]
steps = 8
meta_batch = 4
eval_every = 1
val_tasks = 8
test_tasks = 16
[settings]
outlier_fraction = [0.0, 0.5]
[families.linear-binary]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = root / "tiny.toml"
    path.write_text(textwrap.dedent(TINY))
    run_study(load_study(path), root / "runs")
    return root


def test_report_has_ci_tables_paired_differences_and_figures(tiny_runs, capsys):
    root = tiny_runs
    code = main(["report", "tiny-report", "--runs-root", str(root / "runs"),
                 "--reports-root", str(root / "reports")])
    assert code == 0
    out = root / "reports" / "tiny-report"
    text = (out / "README.md").read_text()
    assert "gabench report tiny-report --runs-root" in text  # the command that regenerates it
    assert re.search(r"git commit `[^`]+`", text) and "gabench 0." in text
    for section in ("## Findings (as measured)", "## Meta-test results", "### `loss_post`",
                    "### `acc_post`", "## Does GA help? Paired differences GA minus its baseline",
                    "## Learning curves", "## Task weights", "## Outlier tasks", "## Wall-clock"):
        assert section in text, section
    table = text.split("### `loss_post`")[1].split("###")[0]
    assert "| `maml` |" in table and "| `maml+ga` |" in table
    assert "linear-binary<br>outlier_fraction=0.5" in table
    assert len(re.findall(r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]", table)) == 2 * 2  # mean [CI] cells
    diff = text.split("## Does GA help?")[1]
    assert "`maml+ga` - `maml`" in diff and "P=" in diff
    assert "too few to resolve" in text  # 2 seeds: no difference is called resolved
    flat = text.split("### Have the curves flattened?")[1].split("\n## ")[0]
    assert "| `maml` |" in flat and re.search(r"-?\d+%", flat)
    outliers = text.split("## Outlier tasks")[1].split("\n## ")[0]
    assert "| corrupted tasks per meta-training batch | 2 of 4 |" in outliers  # round(0.5 * 4)
    for png in ("curves_loss_post.png", "paired_loss_post.png", "weights_hist.png", "outlier_weights.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text
    assert main(["report", "tiny-report", "--runs-root", str(root / "runs"),
                 "--reports-root", str(root / "reports2")]) == 0
    again = root / "reports2" / "tiny-report" / "README.md"
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC|reports2?")
    assert strip.sub("", again.read_text()) == strip.sub("", text)  # deterministic


def test_report_of_a_directory_of_plain_runs(tmp_path):
    fast = ["--steps", "3", "--meta-batch", "3", "--test-tasks", "8", "--no-progress", "--no-tracking"]
    for agg in ("mean", "ga"):
        for seed in ("0", "1"):
            assert main(["run", "--family", "sine", "--aggregator", agg, "--seed", seed,
                         "--out", str(tmp_path / "runs" / f"{agg}{seed}"), *fast]) == 0
    path = report_study(tmp_path / "runs", reports_root=tmp_path / "reports")
    text = path.read_text()
    assert path.parent.name == "runs" and "`maml+ga` - `maml`" in text


def test_report_of_nothing_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "absent", "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source='absent'" in err
