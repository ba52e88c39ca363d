"""gabench compare: every planned run once, resumable after interruption, one rebuilt table."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_STUDY, alive, children, study_file

from gabench._errors import ConfigError
from gabench.commands import main
from gabench.compare import rebuild_table, run_study
from gabench.study import load_study
from gabench.trainer import Callback


def run_ids_in_table(study_dir: Path) -> pd.Series:
    res = pd.read_parquet(study_dir / "results.parquet")
    test = res[(res.split == "test") & (res.metric == "loss_post")]
    return test["run"]


def test_compare_runs_the_plan_and_builds_one_table(tmp_path, capsys):
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    study_dir = out / "tiny"
    expected = {f"sine__{m}__s{s}" for s in (0, 1) for m in ("maml", "maml+ga")}
    assert {p.name for p in study_dir.iterdir() if p.is_dir()} == expected
    for d in expected:
        assert sorted(p.name for p in (study_dir / d).iterdir()) == [
            "config.json", "results.parquet", "weights.parquet"]
    ids = run_ids_in_table(study_dir)
    assert sorted(ids) == sorted(expected)  # each run exactly once
    res = pd.read_parquet(study_dir / "results.parquet")
    assert {"study", "family_label", "setting"} <= set(res.columns)
    assert set(res["method"]) == {"maml", "maml+ga"} and set(res["study"]) == {"tiny"}
    w = pd.read_parquet(study_dir / "weights.parquet")
    assert set(w["run"]) == expected and len(w) == 4 * 3 * 2
    meta = json.loads((study_dir / "study.json").read_text())
    assert meta["pairs"] == {"maml+ga": "maml"} and len(meta["runs"]) == 4
    cfg = json.loads((study_dir / "sine__maml+ga__s1" / "config.json").read_text())
    assert cfg["study"]["run_id"] == "sine__maml+ga__s1" and cfg["config"]["seed"] == 1
    text = capsys.readouterr()
    assert "[4/4]" in text.err and "ETA" in text.err and "4/4 runs finished" in text.out
    # where each run computed: the numbers repeat on the same processor and torch build, not across
    import torch

    from gabench._provenance import machine

    assert cfg["machine"] == machine() and machine().endswith(f", torch {torch.__version__}")
    produced = f"gabench {meta['gabench_version']} {meta['git_commit'] or 'unknown'} on {machine()}"
    assert set(meta["run_commits"].values()) == {produced}


def test_the_processor_is_named_from_cpuinfo_or_what_platform_knows():
    from gabench._provenance import processor_name

    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu avx2\n"
    assert processor_name(cpuinfo, "x86_64", "") == "AMD EPYC 7B13 (x86_64)"
    assert processor_name("processor\t: 0\nmodel name\t: \n", "aarch64", "") == "aarch64"
    assert processor_name("", "arm64", "arm") == "arm"  # macOS: no /proc/cpuinfo
    assert processor_name("", "", "") == "unknown"


def test_rebuilding_the_table_reads_each_run_table_once_and_gives_the_same_table(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    path = study_file(tmp_path)
    study = load_study(path)
    run_study(study, tmp_path / "runs")
    study_dir = tmp_path / "runs" / "tiny"
    before = {name: pd.read_parquet(study_dir / name) for name in ("results.parquet", "weights.parquet")}
    (study_dir / "sine__maml__s1" / "weights.parquet").write_bytes(b"PAR1 cut short")  # not finished
    reads: list[str] = []
    read_table = pq.read_table

    def counting(source, *args, **kwargs):
        reads.append(str(Path(source).relative_to(study_dir)))
        return read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", counting)
    assert rebuild_table(study, study_dir) == 3
    finished = ["sine__maml__s0", "sine__maml+ga__s0", "sine__maml+ga__s1"]
    assert sorted(reads) == sorted([f"{r}/results.parquet" for r in [*finished, "sine__maml__s1"]]
                                   + [f"{r}/weights.parquet" for r in [*finished, "sine__maml__s1"]])
    monkeypatch.undo()
    for name, frame in before.items():
        after = pd.read_parquet(study_dir / name)
        expected = frame[frame["run"] != "sine__maml__s1"].reset_index(drop=True)
        pd.testing.assert_frame_equal(after, expected)
        # streamed one run at a time (memory holds one run's tables, not the study's)
        assert pq.ParquetFile(study_dir / name).metadata.num_row_groups == 3


def test_resume_after_interruption_counts_each_run_once(tmp_path):
    study = load_study(study_file(tmp_path))
    first = run_study(study, tmp_path / "runs")
    assert (first.ran, first.finished) == (4, 4)
    study_dir = first.study_dir
    before = pd.read_parquet(study_dir / "sine__maml__s1" / "results.parquet")
    # Simulate an interruption: one run never finished, one died while writing (a temp dir is
    # left), and the study table is stale or missing.
    import shutil

    shutil.rmtree(study_dir / "sine__maml+ga__s0")
    junk = study_dir / ".sine__maml+ga__s0.tmp-abc123"
    junk.mkdir()
    (junk / "results.parquet").write_text("half written")
    (study_dir / "results.parquet").unlink()
    again = run_study(study, tmp_path / "runs")
    assert (again.ran, again.finished, again.planned) == (1, 4, 4)
    assert not junk.exists()
    ids = run_ids_in_table(study_dir)
    assert ids.is_unique and len(ids) == 4
    pd.testing.assert_frame_equal(before, pd.read_parquet(study_dir / "sine__maml__s1" / "results.parquet"))
    # Nothing left to do: a third call runs nothing and rebuilds the same table.
    third = run_study(study, tmp_path / "runs")
    assert third.ran == 0 and run_ids_in_table(study_dir).is_unique


@pytest.mark.integration
def test_kill_9_then_resume(tmp_path):
    text = TINY_STUDY.replace("steps = 3", "steps = 150")
    path = study_file(tmp_path, text)
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gabench", "compare", str(path), "--out-root", str(out),
                             "--no-tracking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    study_dir = out / "tiny"
    deadline = time.time() + 120
    while time.time() < deadline:
        if study_dir.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in study_dir.iterdir()):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert 1 <= len(done_before) < 4
    result = run_study(load_study(path), out)
    assert result.ran == 4 - len(done_before) and result.finished == 4
    ids = run_ids_in_table(study_dir)
    assert ids.is_unique and len(ids) == 4
    assert not [p for p in study_dir.iterdir() if ".tmp-" in p.name]


def test_changed_configuration_is_an_error_unless_redone(tmp_path, capsys):
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    study_file(tmp_path, TINY_STUDY.replace("[methods.maml]\n", "[methods.maml]\nbeta = 0.01\n"))
    capsys.readouterr()
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--redo-changed" in err
    assert "beta: 0.001 recorded, 0.01 planned" in err
    assert main(["compare", str(path), "--out-root", str(out), "--redo-changed", "--no-tracking"]) == 0
    cfg = json.loads((out / "tiny" / "sine__maml__s0" / "config.json").read_text())
    assert cfg["config"]["beta"] == 0.01
    assert run_ids_in_table(out / "tiny").is_unique


def test_a_second_compare_on_the_same_study_is_refused(tmp_path):
    study = load_study(study_file(tmp_path))
    study_dir = tmp_path / "runs" / "tiny"
    study_dir.mkdir(parents=True)
    fd = os.open(study_dir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="no other gabench compare is running"):
            run_study(study, tmp_path / "runs")
    finally:
        os.close(fd)


class Recorder(Callback):
    ended: list[str] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def on_end(self, result) -> None:
        Recorder.ended.append(self.name)


def recorder_for(run, study):
    assert study == "tiny" and run.run_id.endswith(f"s{run.config.seed}")
    return [Recorder(run.config.run_name)]


def test_callbacks_for_hook_reaches_every_run(tmp_path):
    Recorder.ended = []
    run_study(load_study(study_file(tmp_path)), tmp_path / "runs", callbacks_for=recorder_for)
    assert sorted(Recorder.ended) == sorted(f"sine__maml__{a}__s{s}" for s in (0, 1) for a in ("mean", "ga"))


@pytest.mark.integration
def test_workers_run_in_separate_processes(tmp_path):
    study = load_study(study_file(tmp_path, TINY_STUDY.replace("seeds = 2", "seeds = 1")))
    result = run_study(study, tmp_path / "runs", workers=2)
    assert (result.ran, result.finished) == (2, 2)
    serial = run_study(study, tmp_path / "serial")
    a = pd.read_parquet(result.study_dir / "results.parquet")
    b = pd.read_parquet(serial.study_dir / "results.parquet")
    a = a[a.metric != "wall_seconds"].reset_index(drop=True)
    b = b[b.metric != "wall_seconds"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.integration
def test_compare_tracks_every_run_in_mlflow_from_two_workers(tmp_path, capsys):
    from mlflow import MlflowClient

    path = study_file(tmp_path, TINY_STUDY.replace("seeds = 2", "seeds = 1"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["compare", str(path), "--out-root", str(tmp_path / "runs"), "--workers", "2",
                 "--tracking-uri", uri]) == 0
    assert "experiment 'gabench-tiny'" in capsys.readouterr().out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gabench-tiny")
    runs = client.search_runs([exp.experiment_id])
    # the distinguishing part first (MLflow's run list cuts long names), no repeated study prefix
    assert sorted(r.info.run_name for r in runs) == ["maml · sine · s0", "maml+ga · sine · s0"]
    for r in runs:
        assert r.info.status == "FINISHED"
        method = r.info.run_name.split(" · ")[0]
        assert r.data.tags["study"] == "tiny" and r.data.tags["study_run"] == f"sine__{method}__s0"
        assert "test/loss_post" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "train/query_loss")) == 3


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_stops_the_workers_keeps_finished_runs_and_marks_the_others_killed(tmp_path):
    from gabench.tracking._store import tracking_client

    # runs that last seconds, so that some are in progress when SIGTERM comes (the resume
    # below reruns those: more steps would only make it longer)
    path = study_file(tmp_path, TINY_STUDY.replace("steps = 3", "steps = 1000"))
    out = tmp_path / "runs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gabench", "compare", str(path), "--out-root", str(out),
                             "--workers", "2", "--tracking-uri", uri],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # gabench's own client creates the store under the same lock as the compare: a bare
    # MlflowClient would migrate the new file concurrently with it (the very race the lock is for)
    client = tracking_client(uri)
    deadline = time.time() + 180
    while time.time() < deadline:  # wait until both workers have started a tracked run
        assert proc.poll() is None, f"compare exited early: {proc.communicate()[1]}"
        exp = client.get_experiment_by_name("gabench-tiny")
        if exp is not None and len(client.search_runs([exp.experiment_id])) >= 2:
            break
        time.sleep(0.2)
    workers = children(proc.pid)
    assert workers, "no worker processes found"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "terminated; finished runs are kept" in err
    deadline = time.time() + 30
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if alive(p)], "worker processes outlived the terminated compare"
    runs = client.search_runs([exp.experiment_id])
    statuses = sorted(r.info.status for r in runs)
    assert statuses.count("KILLED") >= 1 and "RUNNING" not in statuses, (statuses, err)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert all("Terminated" in r.data.tags.get("failure_reason", "") for r in killed)
    finished = {p.name for p in (out / "tiny").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert len(finished) < 4  # the study was stopped, and resuming finishes it:
    result = run_study(load_study(path), out)
    assert result.ran == 4 - len(finished) and result.finished == 4


def clock_past_the_deadline_once_a_run_finishes(monkeypatch, study_dir: Path) -> None:
    """``--timeout``'s clock reads 0 until a run of ``study_dir`` has finished, then 10^9 s."""
    import gabench.compare._schedule as schedule

    def now() -> float:
        return 1e9 if any((study_dir / d / "results.parquet").exists() for d in
                          (p.name for p in study_dir.iterdir() if p.is_dir()) if "__" in d) else 0.0

    monkeypatch.setattr(schedule, "_now", now)


@pytest.mark.parametrize("workers", [1, 2])
def test_timeout_starts_no_run_after_it_and_the_same_command_runs_the_rest(tmp_path, monkeypatch,
                                                                          capsys, workers):
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    (out / "tiny").mkdir(parents=True)
    clock_past_the_deadline_once_a_run_finishes(monkeypatch, out / "tiny")
    args = ["compare", str(path), "--out-root", str(out), "--no-tracking", "--workers", str(workers)]
    assert main([*args, "--timeout", "3600"]) == 0
    # the runs started before the deadline finish (one per worker); no other run starts
    first = {p.name for p in (out / "tiny").iterdir() if p.is_dir()}
    assert len(first) == workers
    assert sorted(run_ids_in_table(out / "tiny")) == sorted(first)
    text = capsys.readouterr()
    assert f"{workers}/4 runs finished" in text.out
    assert (f"--timeout 3600 s reached: {4 - workers} run(s) not started; run the same command again"
            in text.err)
    monkeypatch.undo()
    assert main(args) == 0
    text = capsys.readouterr()
    assert f"{workers} finished already, {4 - workers} to run" in text.err
    assert "4/4 runs finished" in text.out and "not started" not in text.err
    assert len(run_ids_in_table(out / "tiny")) == 4


@pytest.mark.integration
def test_with_a_timeout_not_reached_the_pool_runs_the_whole_plan(tmp_path, capsys):
    # with a time limit the pool keeps only one run per worker in hand: it must still refill
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--workers", "2",
                 "--timeout", "3600"]) == 0
    text = capsys.readouterr()
    assert "4/4 runs finished" in text.out and "not started" not in text.err
    assert len(run_ids_in_table(out / "tiny")) == 4


def test_timeout_counts_from_the_start_of_the_command(tmp_path, monkeypatch):
    import gabench.compare
    import gabench.study

    load = gabench.study.load_study

    def slow_load(*args, **kwargs):
        time.sleep(0.3)  # what loading and checking a large study file takes before any run
        return load(*args, **kwargs)

    given = []

    def record(*args, **kwargs):
        given.append(kwargs["timeout"])
        raise KeyboardInterrupt  # stop before any run

    monkeypatch.setattr(gabench.study, "load_study", slow_load)
    monkeypatch.setattr(gabench.compare, "run_study", record)
    assert main(["compare", str(study_file(tmp_path)), "--out-root", str(tmp_path / "runs"), "--no-tracking",
                 "--timeout", "100"]) == 130
    assert len(given) == 1 and 0 < given[0] <= 100 - 0.3


def test_timeout_in_the_library_counts_the_runs_not_started(tmp_path, monkeypatch):
    study = load_study(study_file(tmp_path))
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    clock_past_the_deadline_once_a_run_finishes(monkeypatch, tmp_path / "runs" / "tiny")
    result = run_study(study, tmp_path / "runs", timeout=60.0)
    assert (result.ran, result.finished, result.not_started) == (1, 1, 3)
    assert run_study(study, tmp_path / "runs").not_started == 0  # no limit: not counted


@pytest.mark.parametrize(("extra", "allowed"), [
    (["--timeout", "0"], "a finite number > 0"),
    (["--timeout", "inf"], "a finite number > 0"),
    (["--timeout", "10", "--scheduler", "tcp://127.0.0.1:1"], "no --timeout with --scheduler"),
])
def test_a_bad_timeout_is_one_line_before_anything_is_created(tmp_path, monkeypatch, capsys, extra,
                                                              allowed):
    monkeypatch.chdir(tmp_path)  # where the default tracking store would be created
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--timeout=" in err[0] and allowed in err[0]
    assert not out.exists() and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
