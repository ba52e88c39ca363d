"""A study's archive: compact summaries of its finished runs that let a study resume on another machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_STUDY, diverge_ga_seed_1, study_file

from gabench._errors import ConfigError
from gabench.commands import main
from gabench.commands.report import report_study
from gabench.compare import run_study
from gabench.reporting import _data as rd
from gabench.reporting import load_tables
from gabench.study import StudyError, load_study

ARCHIVED = TINY_STUDY.replace('seeds = 2\n', 'seeds = 2\narchive = "reports/tiny/data"\n')


def _compare(path, out, capsys=None, *extra):
    code = main(["compare", str(path), "--out-root", str(out), "--no-tracking", *extra])
    return code, (capsys.readouterr() if capsys is not None else None)


def _archived_runs(archive):
    return sorted(json.loads((archive / rd.RUN_CONFIGS).read_text()))


@pytest.mark.slow
def test_compare_keeps_every_finished_run_in_the_archive_and_a_new_machine_runs_nothing(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    code, out = _compare(path, tmp_path / "runs", capsys)
    assert code == 0 and f"archive: {archive}/" in out.out
    expected = sorted(f"sine__{m}__s{s}" for s in (0, 1) for m in ("maml", "maml+ga"))
    assert _archived_runs(archive) == expected
    configs = json.loads((archive / rd.RUN_CONFIGS).read_text())
    recorded = json.loads((tmp_path / "runs" / "tiny" / "sine__maml__s1" / "config.json").read_text())
    assert configs["sine__maml__s1"] == recorded["config"]
    from_runs = rd.summarise(rd.read_raw_tables(tmp_path / "runs" / "tiny"))
    from_archive = rd.read_report_data(archive)
    for name in rd._TABLES:  # the archive holds exactly the summaries of the runs
        a, b = getattr(from_archive, name), getattr(from_runs, name)[getattr(from_archive, name).columns]
        a, b = (t.sort_values(list(t.columns)).reset_index(drop=True) for t in (a, b))
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    report = report_study(path, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports")
    csv = (report.parent / "comparisons.csv").read_text()

    shutil.rmtree(tmp_path / "runs")  # a fresh machine: only what was committed
    code, out = _compare(path, tmp_path / "runs", capsys)
    assert code == 0
    assert "4 finished already (4 of them in the archive" in out.err and "0 to run" in out.err
    assert not any((tmp_path / "runs" / "tiny").glob("sine__*"))  # nothing ran again
    assert _archived_runs(archive) == expected
    assert main(["compare", str(path), "--out-root", str(tmp_path / "runs"), "--plan"]) == 0
    assert capsys.readouterr().out.count("finished (archive)") == 4
    again = report_study(path, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports")
    assert (again.parent / "comparisons.csv").read_text() == csv
    assert load_tables("tiny", runs_root=tmp_path / "runs").source == archive  # the study name too


def test_a_larger_plan_runs_only_what_the_archive_lacks(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    _compare(path, tmp_path / "runs_a", capsys)
    path.write_text(path.read_text().replace("seeds = 2", "seeds = 3"))
    code, out = _compare(path, tmp_path / "runs_b", capsys)  # another machine, another directory
    assert code == 0 and "6 runs planned, 4 finished already" in out.err and "2 to run" in out.err
    assert sorted(p.name for p in (tmp_path / "runs_b" / "tiny").iterdir() if p.is_dir()) == [
        "sine__maml+ga__s2", "sine__maml__s2"]
    assert len(_archived_runs(archive)) == 6
    data = load_tables(path)
    assert sorted(data.runs["seed"]) == [0, 0, 1, 1, 2, 2]
    assert set(data.meta["run_commits"]) == set(_archived_runs(archive))


def test_an_archived_run_with_another_configuration_is_refused_then_redone_and_replaced(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    _compare(path, tmp_path / "runs", capsys)
    shutil.rmtree(tmp_path / "runs")
    path.write_text(path.read_text().replace("steps = 3", "steps = 4"))
    code, out = _compare(path, tmp_path / "runs", capsys)
    assert code == 2
    line = out.err.strip().splitlines()[-1]
    assert "--redo-changed" in line and "in the archive" in line and "steps: 3 recorded, 4 planned" in line
    assert not (tmp_path / "runs" / "tiny" / "sine__maml__s0").exists()
    code, _ = _compare(path, tmp_path / "runs", capsys, "--redo-changed")
    assert code == 0
    configs = json.loads((archive / rd.RUN_CONFIGS).read_text())
    assert len(configs) == 4 and {c["steps"] for c in configs.values()} == {4}
    curves = rd.read_report_data(archive).curves
    assert curves.groupby("run")["step"].max().eq(4).all()  # the rows were replaced too


def test_a_write_cut_short_never_lists_a_run_whose_rows_changed(tmp_path, monkeypatch):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    data = rd.read_report_data(archive)
    changed = dict(data.configs)
    changed["sine__maml__s0"] = {**changed["sine__maml__s0"], "steps": 99}
    data.configs = changed
    data.curves = data.curves.assign(value=data.curves["value"] + 1.0)
    real = rd.write_parquet

    def write_parquet(target, frame):
        if target.name == "test.parquet":
            raise OSError(28, "No space left on device")
        real(target, frame)

    monkeypatch.setattr(rd, "write_parquet", write_parquet)
    with pytest.raises(OSError):
        data.write(archive)  # runs.parquet written, test.parquet not: cut short
    monkeypatch.setattr(rd, "write_parquet", real)
    after = rd.read_report_data(archive)
    assert "sine__maml__s0" not in after.configs  # its rows may be half replaced: not counted
    assert sorted(after.configs) == ["sine__maml+ga__s0", "sine__maml+ga__s1", "sine__maml__s1"]
    assert set(after.runs["run"]) == set(after.configs) and set(after.test["run"]) == set(after.configs)
    # and the next compare redoes exactly that run
    shutil.rmtree(tmp_path / "runs")
    result = run_study(load_study(path), tmp_path / "runs")
    assert result.ran == 1 and result.finished == 4 and len(_archived_runs(archive)) == 4


def test_rows_of_runs_the_archive_does_not_list_are_ignored(tmp_path):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    configs = json.loads((archive / rd.RUN_CONFIGS).read_text())
    del configs["sine__maml__s1"]
    (archive / rd.RUN_CONFIGS).write_text(json.dumps(configs))
    data = rd.read_report_data(archive)
    assert "sine__maml__s1" not in set(data.runs["run"]) | set(data.test["run"]) | set(data.curves["run"])


def test_a_report_from_another_source_is_not_written_over_the_archive(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    run_study(load_study(path), tmp_path / "runs")
    before = (tmp_path / "reports" / "tiny" / "data" / rd.RUN_CONFIGS).read_text()
    code = main(["report", str(tmp_path / "runs" / "tiny"), "--reports-root", str(tmp_path / "reports")])
    assert code == 0  # a study directory resolves to its archive
    plain = tmp_path / "other" / "tiny"
    shutil.copytree(tmp_path / "runs" / "tiny", plain)
    meta = json.loads((plain / "study.json").read_text())
    (plain / "study.json").write_text(json.dumps({**meta, "archive": None}))  # the same study, no archive
    capsys.readouterr()
    code = main(["report", str(plain), "--reports-root", str(tmp_path / "reports")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the archive" in err[0] and "--reports-root" in err[0]
    assert (tmp_path / "reports" / "tiny" / "data" / rd.RUN_CONFIGS).read_text() == before


def test_a_report_data_directory_without_run_configs_is_not_taken_as_an_archive(tmp_path, capsys):
    path = study_file(tmp_path, TINY_STUDY.replace('seeds = 2\n', 'seeds = 2\narchive = "old/data"\n'))
    run_study(load_study(study_file(tmp_path, TINY_STUDY, "plain.toml")), tmp_path / "runs")
    report_study(tmp_path / "runs" / "tiny", reports_root=tmp_path / "old")  # old/tiny/data: a report's data
    shutil.move(tmp_path / "old" / "tiny" / "data", tmp_path / "old" / "data")
    with pytest.raises(ConfigError, match="archive.*run_configs.json"):
        run_study(load_study(path), tmp_path / "runs2")


@pytest.mark.parametrize("value, match", [
    ("3", "archive: expected a directory path"),
    ('""', "archive: expected a directory path"),
    ('"tiny.toml"', "archive: expected a directory, got 'tiny.toml'"),
])
def test_a_bad_archive_key_is_a_one_line_error(tmp_path, value, match):
    path = study_file(tmp_path, TINY_STUDY.replace('seeds = 2\n', f'seeds = 2\narchive = {value}\n'))
    with pytest.raises(StudyError, match=match) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_the_archive_path_is_relative_to_the_study_file(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    text = TINY_STUDY.replace('seeds = 2\n', 'seeds = 2\narchive = "../reports/tiny/data"\n')
    path = study_file(tmp_path / "studies", text)
    monkeypatch.chdir(tmp_path)
    assert str(load_study("studies/tiny.toml").archive) == "reports/tiny/data"
    assert load_study(path).archive == tmp_path / "reports" / "tiny" / "data"


def test_a_compare_where_no_run_finishes_leaves_no_archive_and_ends_normally(tmp_path, monkeypatch, capsys):
    from gabench.trainer import Trainer

    def fit(self):
        raise RuntimeError("broken")

    monkeypatch.setattr(Trainer, "fit", fit)
    code, out = _compare(study_file(tmp_path, ARCHIVED), tmp_path / "runs", capsys)
    assert code == 1 and "4 run(s) failed" in out.err and "Traceback" not in out.err
    assert not (tmp_path / "reports" / "tiny" / "data" / "data.json").exists()


def test_a_redo_stopped_half_way_leaves_no_run_of_the_old_configuration(tmp_path, monkeypatch, capsys):
    from gabench.trainer import Trainer

    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    _compare(path, tmp_path / "runs", capsys)
    shutil.rmtree(tmp_path / "runs")
    path.write_text(path.read_text().replace("steps = 3", "steps = 4"))
    original = Trainer.fit

    def fit(self):
        if self.seed == 1:
            raise RuntimeError("stopped")
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    code, _ = _compare(path, tmp_path / "runs", capsys, "--redo-changed")
    assert code == 1
    data = rd.read_report_data(archive)
    assert sorted(data.configs) == ["sine__maml+ga__s0", "sine__maml__s0"]  # the steps=3 runs left
    assert {c["steps"] for c in data.configs.values()} == {4}
    assert sorted(data.failures) == ["sine__maml+ga__s1", "sine__maml__s1"]
    assert data.curves.groupby("run")["step"].max().eq(4).all()


def test_a_report_read_before_a_compare_added_runs_does_not_take_them_out(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    stale = load_tables(path)  # read, then another machine's compare adds a seed
    path.write_text(path.read_text().replace("seeds = 2", "seeds = 3"))
    run_study(load_study(path), tmp_path / "runs2")
    from gabench.reporting import build_report

    build_report(stale, tmp_path / "reports" / "tiny", "gabench report x")
    assert len(_archived_runs(archive)) == 6 and len(rd.read_report_data(archive).runs) == 6


def test_listed_runs_without_rows_do_not_count(tmp_path):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    configs = json.loads((archive / rd.RUN_CONFIGS).read_text())
    configs["sine__maml__s7"] = configs["sine__maml__s1"]  # e.g. a merge that kept the other side's tables
    (archive / rd.RUN_CONFIGS).write_text(json.dumps(configs))
    assert "sine__maml__s7" not in rd.read_report_data(archive).configs


def test_the_archive_records_paths_relative_to_the_study_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "studies").mkdir()
    text = TINY_STUDY.replace('seeds = 2\n', 'seeds = 2\narchive = "../reports/tiny/data"\n')
    study_file(tmp_path / "studies", text)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "studies/tiny.toml", "--no-tracking"]) == 0
    meta = json.loads((tmp_path / "reports" / "tiny" / "data" / "study.json").read_text())
    assert meta["archive"] == "../reports/tiny/data" and str(tmp_path) not in json.dumps(meta)
    # a study directory finds its archive; a finished run the archive lacks is reported on stderr
    configs = json.loads((tmp_path / "reports" / "tiny" / "data" / rd.RUN_CONFIGS).read_text())
    del configs["sine__maml__s1"]
    (tmp_path / "reports" / "tiny" / "data" / rd.RUN_CONFIGS).write_text(json.dumps(configs))
    capsys.readouterr()
    assert rd.resolve_source("tiny") == Path("reports/tiny/data")
    err = capsys.readouterr().err
    assert "1 finished run(s) in runs/tiny are not in its archive" in err and "sine__maml__s1" in err
    # a copy of the archive is read as it is, not redirected to the live one
    shutil.copytree(tmp_path / "reports" / "tiny" / "data", tmp_path / "copy")
    assert rd.resolve_source(tmp_path / "copy") == tmp_path / "copy"


def test_runs_added_or_redone_drop_the_tuning_tables_a_report_kept_and_nothing_else(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")

    def keep_extras():  # what a report of a tuned study leaves in data/ (trials of an earlier tuning)
        data = rd.read_report_data(archive)
        data.extra = {name: pd.DataFrame({"study": ["tiny__sine__maml"], "number": [0]})
                      for name in ("tuning_studies", "tuning_trials", "untuned_means")}
        data.write_extras(archive)

    def listed():
        return json.loads((archive / "data.json").read_text())["extra"]

    keep_extras()
    run_study(load_study(path), tmp_path / "runs")  # nothing new: the tables stay
    assert listed() == ["tuning_studies", "tuning_trials", "untuned_means"]
    path.write_text(path.read_text().replace("seeds = 2", "seeds = 3"))
    run_study(load_study(path), tmp_path / "runs")  # runs added
    assert listed() == ["untuned_means"]
    assert not any((archive / f"{name}.parquet").exists() for name in ("tuning_studies", "tuning_trials"))
    assert (archive / "untuned_means.parquet").is_file()
    assert set(rd.read_report_data(archive).extra) == {"untuned_means"}
    keep_extras()
    path.write_text(path.read_text().replace("steps = 3", "steps = 4"))
    code, _ = _compare(path, tmp_path / "runs", capsys, "--redo-changed")  # runs redone
    assert code == 0 and listed() == ["untuned_means"] and len(_archived_runs(archive)) == 6


def test_a_report_read_before_runs_were_added_does_not_write_its_tuning_tables_back(tmp_path):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    report = rd.read_report_data(archive)  # a report reads the archive ...
    report.extra = {name: pd.DataFrame({"study": ["tiny__sine__maml"], "number": [0]})
                    for name in ("tuning_studies", "tuning_trials", "untuned_means")}
    path.write_text(path.read_text().replace("seeds = 2", "seeds = 3"))
    run_study(load_study(path), tmp_path / "runs")  # ... a compare adds runs meanwhile ...
    report.write_extras(archive)  # ... and the report keeps its tables: not those bound to its runs
    assert json.loads((archive / "data.json").read_text())["extra"] == ["untuned_means"]
    assert not (archive / "tuning_trials.parquet").exists() and len(_archived_runs(archive)) == 6
    fresh = rd.read_report_data(archive)
    fresh.extra = dict(report.extra)
    fresh.write_extras(archive)  # read after the compare: written
    assert json.loads((archive / "data.json").read_text())["extra"] == [
        "tuning_studies", "tuning_trials", "untuned_means"]


def test_a_write_removes_only_plain_extra_tables_the_data_json_listed(tmp_path):
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    outside = tmp_path / "reports" / "tiny" / "keep.parquet"
    outside.write_bytes(b"not ours")
    info = json.loads((archive / "data.json").read_text())
    (archive / "data.json").write_text(json.dumps({**info, "extra": ["runs", "../keep", "gone"]}))
    (archive / "gone.parquet").write_bytes(b"x")
    old = rd.ReportData("tiny", archive, meta=json.loads((archive / "study.json").read_text()),
                        configs=json.loads((archive / rd.RUN_CONFIGS).read_text()),
                        **{name: pd.read_parquet(archive / f"{name}.parquet") for name in rd._TABLES})
    old.write(archive)
    assert (archive / "runs.parquet").is_file() and outside.read_bytes() == b"not ours"
    assert not (archive / "gone.parquet").exists()


@pytest.mark.parametrize("archived", ["yes", "no", "broken"])
def test_while_a_compare_runs_an_archive_is_refreshed_instead_of_the_study_table(tmp_path, monkeypatch,
                                                                                archived):
    import gabench.compare._schedule as schedule

    calls = []

    def broken(*args):
        raise RuntimeError("cannot write here")

    for name in ("rebuild_table", "update_archive"):
        real = broken if (archived, name) == ("broken", "update_archive") else getattr(schedule, name)
        monkeypatch.setattr(schedule, name,
                            lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    monkeypatch.setattr(schedule, "REBUILD_EVERY_S", -1.0)  # a refresh after every run
    path = study_file(tmp_path, TINY_STUDY if archived == "no" else ARCHIVED)
    result = run_study(load_study(path), tmp_path / "runs")
    assert result.finished == 4
    if archived == "yes":  # 4 refreshes of the archive and the final one; the study table once, at the end
        assert calls.count("update_archive") == 5 and calls.count("rebuild_table") == 1
        assert _archived_runs(tmp_path / "reports" / "tiny" / "data") == sorted(
            f"sine__{m}__s{s}" for s in (0, 1) for m in ("maml", "maml+ga"))
    elif archived == "no":
        assert calls.count("rebuild_table") == 5 and "update_archive" not in calls
    else:  # the archive cannot be updated: the study table is refreshed as without one
        assert calls.count("update_archive") == 5 and calls.count("rebuild_table") == 5
        assert any("archive not updated (RuntimeError: cannot write here)" in line
                   for line in result.storage_errors)
    assert len(pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")["run"].unique()) == 4


def test_a_study_still_running_is_reported_on_its_complete_seeds_without_touching_the_archive(tmp_path,
                                                                                              capsys):
    path = study_file(tmp_path, ARCHIVED.replace("seeds = 2", "seeds = 3"))
    archive = tmp_path / "reports" / "tiny" / "data"
    run_study(load_study(path), tmp_path / "runs")
    configs = json.loads((archive / rd.RUN_CONFIGS).read_text())
    del configs["sine__maml+ga__s2"]  # seed 2 is half done: its maml+ga run has not finished
    (archive / rd.RUN_CONFIGS).write_text(json.dumps(configs))
    before = {f.name: f.read_bytes() for f in archive.iterdir() if f.is_file()}
    capsys.readouterr()
    assert main(["report", str(path), "--reports-root", str(tmp_path / "reports")]) == 2
    assert "the same seeds for 'maml+ga' and its baseline 'maml'" in capsys.readouterr().err
    assert main(["report", str(path), "--reports-root", str(tmp_path / "reports"), "--complete-seeds"]) == 0
    text = (tmp_path / "reports" / "tiny" / "README.md").read_text()
    assert "- **Partial report** (`--complete-seeds`) seeds 0, 1 only (2 of 3 planned), those whose 4 " \
        "planned runs have all finished or failed; left out: 1 finished run of other seeds." in text
    assert "--complete-seeds" in text.split("```bash")[1].split("```")[0]  # the command that regenerates it
    assert "- Seeds: 2 (0, 1)." in text
    comparisons = pd.read_csv(tmp_path / "reports" / "tiny" / "comparisons.csv")
    assert set(comparisons["n_seeds"]) == {2}
    after = {f.name: f.read_bytes() for f in archive.iterdir() if f.is_file()}
    assert after == before  # the archive keeps every run (nothing to add to it here)
    (archive / "failed.json").write_text(json.dumps({"sine__maml+ga__s2": "diverged"}))
    assert main(["report", str(path), "--reports-root", str(tmp_path / "reports"), "--complete-seeds"]) == 0
    text = (tmp_path / "reports" / "tiny" / "README.md").read_text()  # a failed run completes its seed
    assert "Partial report" not in text and "- Seeds: 3 (0, 1, 2)." in text
    (archive / "failed.json").write_text("{}")
    configs = {k: v for k, v in configs.items() if k not in ("sine__maml__s0", "sine__maml__s1")}
    (archive / rd.RUN_CONFIGS).write_text(json.dumps(configs))  # no seed is complete
    capsys.readouterr()
    assert main(["report", str(path), "--reports-root", str(tmp_path / "reports"), "--complete-seeds"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--complete-seeds" in err[0]
    assert "none has yet; seed 0: 1 of 2, seed 1: 1 of 2, seed 2: 1 of 2" in err[0]


def test_a_report_is_not_written_where_the_compare_will_put_its_archive(tmp_path, capsys):
    path = study_file(tmp_path, ARCHIVED)
    run_study(load_study(path), tmp_path / "runs")
    archive = tmp_path / "reports" / "tiny" / "data"
    shutil.rmtree(archive)  # as in the first 10 minutes of a long compare: no archive yet
    capsys.readouterr()
    code = main(["report", str(tmp_path / "runs" / "tiny"), "--reports-root", str(tmp_path / "reports")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--reports-root" in err[0] and "before its compare" in err[0]
    assert not archive.exists()
    code, _ = _compare(path, tmp_path / "runs", capsys)  # the compare archives as usual
    assert code == 0 and len(_archived_runs(archive)) == 4
    assert main(["report", str(tmp_path / "runs" / "tiny"), "--reports-root", str(tmp_path / "other")]) == 0


def test_complete_seeds_counts_archived_runs_of_an_earlier_larger_plan_apart(tmp_path):
    path = study_file(tmp_path, ARCHIVED.replace("seeds = 2", "seeds = 3"))
    run_study(load_study(path), tmp_path / "runs")
    data = rd.read_report_data(tmp_path / "reports" / "tiny" / "data")
    data.meta = {**data.meta, "runs": [r for r in data.meta["runs"] if r["seed"] != 2]}  # a plan of 2 seeds
    data = rd.complete_seeds(data)
    assert sorted(data.runs["seed"].unique()) == [0, 1]
    assert "seeds 0, 1 only (2 of 2 planned)" in data.subset
    assert data.subset.endswith("left out: 2 finished runs outside the current plan. Verdicts can change as "
                                "more seeds finish.")


def test_a_divergence_is_kept_on_any_machine_through_the_archive(tmp_path, monkeypatch, capsys):
    from gabench.trainer import Trainer

    original = diverge_ga_seed_1(monkeypatch)
    path = study_file(tmp_path, ARCHIVED)
    archive = tmp_path / "reports" / "tiny" / "data"
    code, _ = _compare(path, tmp_path / "runs", capsys)
    assert code == 1
    reason = "training diverged: query_loss=inf at step 2; try a smaller alpha or beta"
    assert json.loads((archive / "failed.json").read_text()) == {"sine__maml+ga__s1": reason}
    assert list(json.loads((archive / "study.json").read_text())["diverged_configs"]) == ["sine__maml+ga__s1"]

    monkeypatch.setattr(Trainer, "fit", original)
    shutil.rmtree(tmp_path / "runs")  # a fresh machine, which might well finish it: it is not tried
    code, out = _compare(path, tmp_path / "runs", capsys)
    assert code == 1 and "1 diverged earlier (kept as failed" in out.err and "0 to run" in out.err
    assert not any((tmp_path / "runs" / "tiny").glob("sine__*"))
    assert json.loads((archive / "failed.json").read_text()) == {"sine__maml+ga__s1": reason}
    assert list(json.loads((archive / "study.json").read_text())["diverged_configs"]) == ["sine__maml+ga__s1"]
    report = report_study(path, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports")
    assert "sine__maml+ga__s1" in report.read_text()  # listed among the failed runs

    code, out = _compare(path, tmp_path / "runs", capsys, "--retry-diverged")
    assert code == 0 and "1 to run" in out.err
    assert _archived_runs(archive) == sorted(f"sine__{m}__s{s}" for s in (0, 1) for m in ("maml", "maml+ga"))
    assert json.loads((archive / "failed.json").read_text()) == {}
    assert json.loads((archive / "study.json").read_text())["diverged_configs"] == {}
