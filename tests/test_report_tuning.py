"""The report of a tuned study: its Tuning section (protocol, budget, edges, importance, figures)
read from the Optuna storage, its rebuild from ``data/`` alone, and the tuned-vs-untuned verdicts."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import TUNED_STUDY, study_file

from gabench.commands import main
from gabench.reporting.tuning_section import (
    edge_flags,
    edge_position,
    importances,
    read_tuning_storage,
    rebuild_study,
    tuned_vs_untuned,
)
from gabench.tuning import make_storage

TUNED = TUNED_STUDY
#: The same comparison without tuning (alpha and beta: the defaults).
UNTUNED = TUNED.replace('name = "tt"', 'name = "tt-untuned"').split("[tuning]")[0] + "[defaults]" + \
    TUNED.split("[defaults]")[1].replace("tuning = { alpha_range = [0.001, 0.1] }\n", "")
STRIP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC|Source: `[^`]*`|```bash\n[^`]*```")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny tuned study, tuned and compared; its untuned counterpart compared and reported."""
    root = tmp_path_factory.mktemp("tuned")
    study_file(root, TUNED, "tt.toml")
    study_file(root, UNTUNED, "tt-untuned.toml")
    runs, reports = root / "runs", root / "reports"
    assert main(["tune", "--study", str(root / "tt.toml"), "--no-tracking",
                 "--out", str(root / "tuning")]) == 0
    for name in ("tt", "tt-untuned"):
        assert main(["compare", str(root / f"{name}.toml"), "--out-root", str(runs), "--no-tracking"]) == 0
    assert main(["report", "tt-untuned", "--runs-root", str(runs), "--reports-root", str(reports)]) == 0
    return root


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


@pytest.mark.slow
def test_tuned_report_has_the_protocol_budget_importance_and_figures(tuned, tmp_path):
    root = tuned
    reports = tmp_path / "reports"
    assert main(["report", "tt", "--runs-root", str(root / "runs"), "--reports-root", str(reports),
                 "--untuned", "none"]) == 0
    out = reports / "tt"
    text = (out / "README.md").read_text()
    sec = _section(text, "Tuning")
    assert "2 trials per study" in sec and "TPE sampler with seed 0" in sec and "task seed 1000" in sec
    assert "median pruning after 2 validations" in sec and "`val loss_post`" in sec
    ranges = _section(text, "Tuning").split("### Protocol per family")[1].split("###")[0]
    assert "| sine | [0.001, 0.1] | [0.0001, 0.01] | 6 | 2 | 1000 |" in ranges
    assert "| linear-binary | [0.01, 1] | [0.0001, 0.01] | 6 | 2 | 1000 |" in ranges
    assert "every cell holds 2 finished trials" in sec and "**short**" not in sec
    assert "did not use the best trial" not in sec  # the compared runs took each cell's best trial
    journal = optuna.load_study(study_name="tt__sine__maml+ga", storage=make_storage(
        f"journal:{root / 'tt.journal'}", create=False))
    states = [t.state.name for t in journal.trials]
    row = next(line for line in sec.splitlines() if line.startswith("| sine | `maml+ga` |"))
    counts = f"{states.count('COMPLETE')} / {states.count('PRUNED')} / {states.count('FAIL')}"
    assert f"| {counts} | 2 |" in row
    assert f"{journal.best_params['alpha']:.3g}" in row and f"(#{journal.best_trial.number})" in row
    imp = sec.split("### Parameter importance")[1].split("###")[0]
    assert "| family | method | alpha | beta | completed trials |" in imp
    assert len(re.findall(r"^\| (sine|linear-binary) \| `maml(\+ga)?` \|", imp, re.M)) == 4
    for family in ("sine", "linear-binary"):
        assert (out / f"tuning_{family}.png").stat().st_size > 10_000
        assert f"](tuning_{family}.png)" in sec
    assert "No untuned report" in _section(text, "Tuned vs untuned")
    trials = pd.read_parquet(out / "data" / "tuning_trials.parquet")
    assert len(trials) == 8 and set(trials["study"]) == {
        "tt__sine__maml", "tt__sine__maml+ga", "tt__linear-binary__maml", "tt__linear-binary__maml+ga"}
    assert "alpha and beta of every family x method are the best trial" in text.lower()


@pytest.mark.slow
def test_regenerated_from_data_alone_without_the_journal_or_the_untuned_report(tuned, tmp_path):
    first = tmp_path / "reports"
    shutil.copytree(tuned / "reports" / "tt-untuned", first / "tt-untuned")
    assert main(["report", "tt", "--runs-root", str(tuned / "runs"), "--reports-root", str(first)]) == 0
    text = (first / "tt" / "README.md").read_text()
    assert "The untuned comparison is the report `tt-untuned`" in text  # found beside it by its plan
    shutil.rmtree(first / "tt-untuned")
    journal = tuned / "tt.journal"
    journal.rename(tuned / "hidden.journal")
    try:
        assert main(["report", str(first / "tt" / "data"), "--reports-root", str(tmp_path / "again")]) == 0
        again = (tmp_path / "again" / "tt" / "README.md").read_text()
        assert STRIP.sub("", again) == STRIP.sub("", text)
        for name in ("tuning_trials", "tuning_studies", "untuned_comparisons", "untuned_means"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(tmp_path / "again" / "tt" / "data" / f"{name}.parquet"),
                pd.read_parquet(first / "tt" / "data" / f"{name}.parquet"))
        # without the journal and without saved trials, the storage is a one-line error
        data = tmp_path / "again" / "tt" / "data"
        info = json.loads((data / "data.json").read_text())
        info["extra"] = [e for e in info["extra"] if not e.startswith("tuning_")]
        (data / "data.json").write_text(json.dumps(info))
        assert main(["report", str(data), "--reports-root", str(tmp_path / "third")]) == 2
        assert not (tmp_path / "third").exists()
    finally:
        (tuned / "hidden.journal").rename(journal)


def _journal(path, cells: dict[str, list[tuple[str, float, float, float | None]]]) -> str:
    """A journal with one study per name holding the given trials (state, alpha, beta, value); sine's
    alpha range is [0.001, 0.1], the others' [0.01, 1]; beta [1e-4, 1e-2]."""
    url = f"journal:{path}"
    storage = make_storage(url)
    for name, trials in cells.items():
        alpha = (0.001, 0.1) if "__sine__" in name else (0.01, 1.0)
        dists = {"alpha": optuna.distributions.FloatDistribution(*alpha, log=True),
                 "beta": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
        study = optuna.create_study(study_name=name, storage=storage)
        study.set_metric_names(["val loss_post"])
        study.add_trials([optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], value=v, params={"alpha": a, "beta": b},
            distributions=dists)
            for state, a, b, v in trials])
    return url


@pytest.mark.slow
def test_edge_flags_and_budget_counts_from_a_hand_made_journal(tuned, tmp_path):
    root = tuned
    mid = [("COMPLETE", 0.1, 1e-3, 0.5), ("COMPLETE", 0.05, 3e-4, 0.6), ("PRUNED", 0.5, 5e-3, 0.9)]
    url = _journal(tmp_path / "hand.journal", {
        # best alpha 0.0011 on sine's [0.001, 0.1]: 2% of the log-width from the low end
        "tt__sine__maml": [("COMPLETE", 0.0011, 1e-3, 0.2), ("COMPLETE", 0.01, 1e-3, 0.4)],
        # best beta 0.0095 on [1e-4, 1e-2]: 99% of the way up; the best is trial 1
        "tt__sine__maml+ga": [("COMPLETE", 0.01, 2e-4, 0.3), ("COMPLETE", 0.01, 0.0095, 0.1),
                              ("FAIL", 0.02, 1e-3, None)],
        "tt__linear-binary__maml": mid,
        # one trial short of the budget of 2
        "tt__linear-binary__maml+ga": [("COMPLETE", 0.1, 1e-3, 0.5)],
    })
    reports = tmp_path / "reports"
    assert main(["report", "tt", "--runs-root", str(root / "runs"), "--reports-root", str(reports),
                 "--tuning-storage", url, "--untuned", "none"]) == 0
    sec = _section((reports / "tt" / "README.md").read_text(), "Tuning")
    per_cell = sec.split("### Tuned alpha and beta per cell")[1].split("###")[0]
    table = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in per_cell.splitlines()
             if line.startswith("| sine |") or line.startswith("| linear-binary |")}
    assert len(table) == 4
    assert "**EDGE** alpha low" in table[("sine", "`maml`")] and "beta" not in \
        table[("sine", "`maml`")].split("**EDGE**", 1)[1]
    assert "**EDGE** beta high" in table[("sine", "`maml+ga`")] and "(#1)" in table[("sine", "`maml+ga`")]
    assert "| 2 / 0 / 1 | 2 |" in table[("sine", "`maml+ga`")]  # the failed trial spends no budget
    assert "EDGE" not in table[("linear-binary", "`maml`")] and "| 2 / 1 / 0 | 3 |" in \
        table[("linear-binary", "`maml`")]
    assert "| 1 / 0 / 0 | 1 **short** |" in table[("linear-binary", "`maml+ga`")]
    assert "2 of 4 cells have a best value at an edge" in sec and "should be widened" in sec
    assert "**Budget not met:** 1 cell(s)" in sec and "linear-binary `maml+ga` (1)" in sec
    assert "**The compared runs did not use the best trial** of 4 cell(s)" in sec


def test_edge_position_is_on_the_log_scale():
    assert edge_position(0.01, 0.001, 0.1) == pytest.approx(0.5)
    assert edge_flags(edge_position(0.00158, 0.001, 0.1)) == "low"  # 9.9% of the log-width
    assert edge_flags(edge_position(0.0016, 0.001, 0.1)) == ""      # 10.2%
    assert edge_flags(edge_position(0.064, 0.001, 0.1)) == "high"  # 90.3%
    assert edge_flags(edge_position(0.062, 0.001, 0.1)) == ""      # 89.6%


def test_importance_from_the_table_sees_the_parameter_the_value_depends_on(tmp_path):
    g = np.random.default_rng(0)
    alpha = np.exp(g.uniform(np.log(0.01), np.log(1.0), 20))
    beta = np.exp(g.uniform(np.log(1e-4), np.log(1e-2), 20))
    value = (np.log10(beta) + 3) ** 2  # depends on beta only
    url = _journal(tmp_path / "imp.journal",
                   {"tt__linear-binary__maml": [("COMPLETE", a, b, v) for a, b, v in zip(alpha, beta, value,
                                                                                          strict=True)]})
    meta = {"name": "tt", "tuning": {"storage": url},
            "runs": [{"run_id": "linear-binary__maml__s0", "family_label": "linear-binary",
                      "method_label": "maml", "setting": "", "seed": 0}]}
    studies, trials = read_tuning_storage(meta)
    imp = importances(studies, trials).set_index("param")["importance"]
    assert imp["beta"] > 0.9 and imp["alpha"] < 0.1
    # the table round-trips through parquet and rebuilds the same study (deterministic importance)
    trials.to_parquet(tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(importances(studies, back), importances(studies, trials))
    original = optuna.load_study(study_name="tt__linear-binary__maml",
                                 storage=make_storage(url, create=False))
    rebuilt = rebuild_study(back, "minimize")
    assert rebuilt.best_params == original.best_params and rebuilt.best_value == original.best_value
    assert [t.state for t in rebuilt.trials] == [t.state for t in original.trials]


def _comp(rows):
    cols = ["metric", "cell", "method", "baseline", "n_seeds", "diff_mean", "ci_low", "ci_high", "p_holm",
            "verdict"]
    return pd.DataFrame([(m, c, a, b, 5, d, d - 0.1, d + 0.1, p, v) for m, c, a, b, d, p, v in rows],
                        columns=cols)


def test_tuned_vs_untuned_marks_the_changed_cells():
    untuned = _comp([("loss_post", "sine", "maml+ga", "maml", 0.2, 0.001, "worse"),
                     ("loss_post", "moons", "maml+ga", "maml", 0.0, 0.9, "unresolved"),
                     ("loss_post", "digits", "reptile+ga", "reptile", -0.1, 0.01, "better"),
                     ("acc_post", "moons", "maml+ga", "maml", 0.01, 0.04, "better"),
                     ("loss_post", "blobs", "maml+ga", "maml", 0.01, 0.5, "unresolved")])
    tuned = _comp([("loss_post", "sine", "maml+ga", "maml", 0.01, 0.6, "unresolved"),
                   ("loss_post", "moons", "maml+ga", "maml", 0.0, 0.8, "unresolved"),
                   ("loss_post", "digits", "reptile+ga", "reptile", 0.1, 0.02, "worse"),
                   ("acc_post", "moons", "maml+ga", "maml", 0.02, 0.01, "better"),
                   ("loss_post", "circles", "maml+ga", "maml", 0.01, 0.5, "unresolved")])
    t = tuned_vs_untuned(tuned, untuned)
    changed = t[t["changed"]]
    assert list(zip(changed["cell"], changed["change"], strict=True)) == [
        ("sine", "worse -> unresolved"), ("digits", "better -> worse")]
    assert len(t) == 6  # circles only tuned, blobs only untuned: listed, never "changed"
    only = t[(t["verdict_tuned"] == "") | (t["verdict_untuned"] == "")]
    assert set(only["cell"]) == {"circles", "blobs"} and not only["changed"].any()
    assert t.loc[t["cell"] == "sine", "p_holm_untuned"].item() == 0.001


@pytest.mark.slow
def test_the_section_says_where_the_conclusion_changed(tuned, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(tuned / "reports" / "tt-untuned", reports / "tt-untuned")
    args = ["report", "tt", "--runs-root", str(tuned / "runs"), "--reports-root", str(reports),
            "--untuned", str(reports / "tt-untuned")]
    assert main(args) == 0  # the tuned report's own verdicts (2 seeds: a paired t may still call)
    mine = pd.read_csv(reports / "tt" / "comparisons.csv")
    key = ["metric", "cell", "method"]
    mine = mine[(mine["select"] == "best_val") & mine["metric"].isin(["loss_post", "acc_post"])]
    csv = reports / "tt-untuned" / "comparisons.csv"
    comp = pd.read_csv(csv)
    primary = comp[(comp["select"] == "best_val") & comp["metric"].isin(["loss_post", "acc_post"])]
    # hand-made: the untuned report agrees with the tuned one everywhere but in its first cell
    verdicts = primary[key].merge(mine[key + ["verdict"]], on=key, how="left")["verdict"]
    assert verdicts.notna().all()
    comp.loc[primary.index, "verdict"] = verdicts.to_numpy()
    first = primary.index[0]
    was = comp.loc[first, "verdict"]
    comp.loc[first, "verdict"] = "unresolved" if was != "unresolved" else "worse"
    comp["n_seeds"] = 5  # ... with more seeds
    comp.to_csv(csv, index=False)
    assert main(args) == 0
    sec = _section((reports / "tt" / "README.md").read_text(), "Tuned vs untuned")
    row = comp.loc[first]
    n = len(primary)
    change = f"{row['verdict']} -> {was}"
    assert f"The conclusion changed in 1 of {n} comparisons" in sec
    assert "The untuned report paired 5 seeds per cell, this one 2" in sec
    assert f"{change} in 1 (`{row['method']}` on {row['cell']}, `{row['metric']}`)" in sec
    assert sec.count(f"**{change}**") == 1
    means = sec.split("### Each method's meta-test mean")[1]
    assert len(re.findall(r"^\| (sine|linear-binary) \| `maml(\+ga)?` \|", means, re.M)) == 4
    assert " -> " in means


@pytest.mark.slow
def test_tuning_options_need_a_tuned_study(tuned, tmp_path, capsys):
    assert main(["report", "tt-untuned", "--runs-root", str(tuned / "runs"), "--reports-root",
                 str(tmp_path / "r"), "--untuned", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--untuned" in err[0] and "[tuning]" in err[0]
    assert main(["report", "tt", "--runs-root", str(tuned / "runs"), "--reports-root", str(tmp_path / "r"),
                 "--untuned", str(tmp_path / "nowhere")]) == 2
    assert "--untuned" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
