"""gabench compare under faults: an error in one run, errors crossing process boundaries,
workers whose parent is killed, runs finished meanwhile, and truncated run tables."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_STUDY, alive, children, diverge_ga_seed_1, study_file
from test_compare import run_ids_in_table

from gabench._errors import ConfigError
from gabench.commands import main
from gabench.compare import execute_run, run_state, run_study
from gabench.study import StudyError, load_study
from gabench.trainer import DivergedError, Trainer


@pytest.mark.parametrize("exc", [
    ConfigError("--alpha", 1e39, "a finite number <= 1000"),
    StudyError("s.toml", "methods.x.alpha", "a number"),
    DivergedError(7, "query_loss", float("nan")),
])
def test_errors_survive_pickling_across_processes(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)


def test_an_error_in_one_run_is_that_runs_failure_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    original = Trainer.fit

    def fit(self):
        if self.run_config.aggregator == "ga" and self.seed == 1:
            raise RuntimeError("value cannot be converted to type float without overflow")
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    out = tmp_path / "runs"
    code = main(["compare", str(study_file(tmp_path)), "--out-root", str(out), "--no-tracking"])
    assert code == 1
    study_dir = out / "tiny"
    failed = json.loads((study_dir / "failed.json").read_text())
    assert failed == {"sine__maml+ga__s1":
                      "RuntimeError: value cannot be converted to type float without overflow"}
    finished = {p.name for p in study_dir.iterdir() if p.is_dir() and (p / "config.json").exists()}
    assert finished == {"sine__maml__s0", "sine__maml__s1", "sine__maml+ga__s0"}
    err = capsys.readouterr().err
    assert "Traceback" not in err and "1 run(s) failed" in err


def test_a_run_finished_meanwhile_is_skipped_not_redone(tmp_path):
    study = load_study(study_file(tmp_path))
    run = study.runs[0]
    first = execute_run(run, "tiny", tmp_path / run.run_id)
    assert first["ok"] and first["message"].startswith("loss_post=")
    before = (tmp_path / run.run_id / "results.parquet").stat().st_mtime_ns
    again = execute_run(run, "tiny", tmp_path / run.run_id)
    assert again["ok"] and "skipped" in again["message"]
    assert (tmp_path / run.run_id / "results.parquet").stat().st_mtime_ns == before


@pytest.mark.parametrize("victim", ["results.parquet", "weights.parquet"])
def test_a_run_whose_tables_do_not_read_back_is_not_finished(tmp_path, victim, capsys):
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    run_dir = out / "tiny" / "sine__maml__s0"
    table = run_dir / victim
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # truncated
    study = load_study(path)
    planned = next(r for r in study.runs if r.run_id == "sine__maml__s0")
    assert run_state(run_dir, planned.config) == "missing"
    capsys.readouterr()
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--plan"]) == 0
    assert "sine__maml__s0\tmissing" in capsys.readouterr().out
    result = run_study(study, out)
    assert result.ran == 1 and result.finished == 4
    pd.read_parquet(table)  # rewritten whole


@pytest.mark.integration
def test_kill_9_of_compare_takes_its_workers_with_it(tmp_path):
    text = TINY_STUDY.replace("steps = 3", "steps = 3000").replace("seeds = 2", "seeds = 4")
    path = study_file(tmp_path, text)
    proc = subprocess.Popen([sys.executable, "-m", "gabench", "compare", str(path), "--workers", "2",
                             "--out-root", str(tmp_path / "runs"), "--no-tracking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = children(proc.pid)
        time.sleep(0.2)
    assert len(workers) >= 2, "the pool did not start"
    time.sleep(2)  # the workers are training
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)], "workers outlived their killed parent"
    # an immediate rerun finishes the study: nothing left half-written or held by an orphan
    short = text.replace("steps = 3000", "steps = 3")
    study_file(tmp_path, short)
    assert main(["compare", str(path), "--out-root", str(tmp_path / "runs"), "--no-tracking",
                 "--redo-changed"]) == 0


def test_device_override_applies_to_every_run_and_is_checked_first(tmp_path, capsys):
    path = study_file(tmp_path)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--device", "gpu0"]) == 2
    assert "device='gpu0'" in capsys.readouterr().err and not out.exists()
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--device", "cpu"]) == 0
    configs = [json.loads(p.read_text())["config"]["device"] for p in out.glob("tiny/*/config.json")]
    assert configs == ["cpu"] * 4


def _no_space(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.slow
def test_a_full_disk_while_writing_a_run_fails_that_run_in_one_line_and_a_rerun_resumes(
        tmp_path, monkeypatch, capsys):
    from gabench import results
    from gabench.tracking import tracking_client

    original = results.write_run

    def write_run(out, result, overwrite=False):
        if Path(out).name == "sine__maml+ga__s1":
            raise _no_space(out)
        return original(out, result, overwrite)

    monkeypatch.setattr(results, "write_run", write_run)
    path, out = study_file(tmp_path), tmp_path / "runs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["compare", str(path), "--out-root", str(out), "--tracking-uri", uri]) == 1
    study_dir = out / "tiny"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    victim = study_dir / "sine__maml+ga__s1"
    lines = [line for line in err.splitlines() if f"{victim}: no space left on device" in line]
    assert len(lines) == 2  # the progress line and the summary line of the failed run
    assert json.loads((study_dir / "failed.json").read_text()) == {
        "sine__maml+ga__s1": f"{victim}: no space left on device; nothing of this run was kept "
                             "(free space and rerun to resume)"}
    assert not victim.exists() and not [p for p in study_dir.iterdir() if ".tmp-" in p.name]
    assert set(run_ids_in_table(study_dir)) == {"sine__maml__s0", "sine__maml__s1", "sine__maml+ga__s0"}
    client = tracking_client(uri)
    runs = client.search_runs([client.get_experiment_by_name("gabench-tiny").experiment_id])
    status = {r.data.tags["study_run"]: r.info.status for r in runs}
    assert status == {"sine__maml__s0": "FINISHED", "sine__maml__s1": "FINISHED",
                      "sine__maml+ga__s0": "FINISHED", "sine__maml+ga__s1": "FAILED"}
    failed = next(r for r in runs if r.data.tags["study_run"] == "sine__maml+ga__s1")
    assert "no space left on device" in failed.data.tags["failure_reason"]

    monkeypatch.setattr(results, "write_run", original)  # space freed: the same command resumes
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    assert "3 finished already, 1 to run" in capsys.readouterr().err
    assert len(set(run_ids_in_table(study_dir))) == 4
    assert json.loads((study_dir / "failed.json").read_text()) == {}


def test_a_full_disk_while_writing_the_study_table_keeps_the_runs_and_a_rerun_rebuilds_it(
        tmp_path, monkeypatch, capsys):
    from gabench.compare import _state

    original = _state._Streamed.add

    def add(self, frame):  # the study table is streamed run by run into a temporary file
        self.tmp.write_bytes(b"PAR1 half")  # a partial file, then the disk is full
        raise _no_space(self.tmp)

    monkeypatch.setattr(_state._Streamed, "add", add)
    path, out = study_file(tmp_path), tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    study_dir = out / "tiny"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"gabench compare: error: {study_dir / 'results.parquet'}: no space left on device\n" in err
    assert "run the same command again" in err
    # every run is complete, no table half-written, no temporary file left holding space
    study = load_study(path)
    assert all(run_state(study_dir / r.run_id, r.config) == "finished" for r in study.runs)
    assert not (study_dir / "results.parquet").exists()
    assert not [p for p in study_dir.iterdir() if ".tmp-" in p.name]
    assert json.loads((study_dir / "failed.json").read_text()) == {}

    monkeypatch.setattr(_state._Streamed, "add", original)
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    assert "4 finished already, 0 to run" in capsys.readouterr().err
    assert len(set(run_ids_in_table(study_dir))) == 4


def test_a_full_disk_before_any_run_is_one_line(tmp_path, monkeypatch, capsys):
    from gabench.compare import _state

    def write_text(self, *args, **kwargs):
        raise _no_space(self)

    path, out = study_file(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(_state.Path, "write_text", write_text)
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"gabench compare: error: {out / 'tiny' / 'study.json'}: no space left on device; "
                   "free space and run the same command again")


@pytest.mark.slow
def test_a_real_file_size_limit_fails_each_run_in_one_line_and_a_rerun_resumes(tmp_path):
    # `ulimit -f 4`: any file over 4 KiB cannot be written (EFBIG; Python ignores SIGXFSZ), so
    # every run's tables fail as on a full disk, while study.json and failed.json fit
    path = study_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    command = f"ulimit -f 4; exec {sys.executable} -m gabench compare {path} --out-root runs --no-tracking"
    limited = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr
    study_dir = tmp_path / "runs" / "tiny"
    failed = json.loads((study_dir / "failed.json").read_text())
    assert set(failed) == {"sine__maml__s0", "sine__maml__s1", "sine__maml+ga__s0", "sine__maml+ga__s1"}
    for run_id, reason in failed.items():
        assert reason.startswith(f"runs/tiny/{run_id}: no space left on device"), reason
        assert f"  {run_id}: runs/tiny/{run_id}: no space left on device" in limited.stderr
    assert not [p for p in study_dir.iterdir() if p.name not in ("study.json", "failed.json", ".lock")]
    again = subprocess.run([sys.executable, "-m", "gabench", "compare", str(path), "--out-root", "runs",
                            "--no-tracking"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 finished already, 4 to run" in again.stderr
    assert len(set(run_ids_in_table(study_dir))) == 4


class SigtermInside:
    """Patches ``MlflowClient.<call>`` so that its first call sends this process a SIGTERM and
    waits briefly before doing its work: a handler that raises would raise inside the store call
    (noted in ``raised_inside``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
        from mlflow import MlflowClient

        self.sent = False
        self.raised_inside = False
        real = getattr(MlflowClient, call)

        def signal_inside(client, *args, **kwargs):
            if not self.sent:
                self.sent = True
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.05)
                except BaseException:
                    self.raised_inside = True
                    raise
            return real(client, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, call, signal_inside)


@pytest.mark.parametrize("call", ["create_run", "log_batch"])
def test_a_worker_sigterm_inside_a_tracking_write_stops_the_run_at_the_next_hook(tmp_path, monkeypatch, call):
    """In a pool worker, a SIGTERM that lands inside a tracking-store call does not raise there
    (a store transaction cut in half can keep the run's failure handling from ending its MLflow
    run, which then stays RUNNING); the run stops at the trainer's next hook and ends KILLED."""
    from gabench._processes import Terminated
    from gabench.compare import _signals
    from gabench.compare._tracking import TrackRuns
    from gabench.tracking import tracking_client

    run = load_study(study_file(tmp_path, TINY_STUDY.replace("steps = 3", "steps = 50"))).runs[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    track = TrackRuns(uri, plots=False)
    track.prepare("tiny")
    inside = SigtermInside(monkeypatch, call)
    monkeypatch.setattr(_signals.STOP, "signum", None)  # put back after the test
    previous = signal.signal(signal.SIGTERM, _signals._worker_sigterm)
    try:
        with pytest.raises(Terminated):
            execute_run(run, "tiny", tmp_path / "out" / run.run_id, callbacks_for=track)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert inside.sent and not inside.raised_inside
    client = tracking_client(uri)
    (tracked,) = client.search_runs([client.get_experiment_by_name("gabench-tiny").experiment_id])
    assert tracked.info.status == "KILLED"
    assert "Terminated" in tracked.data.tags["failure_reason"]
    assert run_state(tmp_path / "out" / run.run_id, run.config) != "finished"


def test_sigterm_inside_a_tracking_write_of_an_in_process_compare_ends_the_run_killed(tmp_path, monkeypatch):
    """``--workers 1`` trains in the compare's own process: a SIGTERM there stops the run at its
    next hook too (not inside the store call), the run ends KILLED and the compare exits 143."""
    from gabench.tracking import tracking_client

    path = study_file(tmp_path, TINY_STUDY.replace("steps = 3", "steps = 50"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    inside = SigtermInside(monkeypatch, "log_batch")
    code = main(["compare", str(path), "--out-root", str(tmp_path / "runs"), "--workers", "1",
                 "--tracking-uri", uri, "--no-plots"])
    assert code == 143 and not inside.raised_inside
    client = tracking_client(uri)
    (tracked,) = client.search_runs([client.get_experiment_by_name("gabench-tiny").experiment_id])
    assert tracked.info.status == "KILLED"


def test_a_divergence_is_kept_as_that_configurations_result_not_rerun_until_it_finishes(
        tmp_path, monkeypatch, capsys):
    original = diverge_ga_seed_1(monkeypatch)
    path, out = study_file(tmp_path), tmp_path / "runs"
    study_dir = out / "tiny"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    reason = "training diverged: query_loss=inf at step 2; try a smaller alpha or beta"
    assert json.loads((study_dir / "failed.json").read_text()) == {"sine__maml+ga__s1": reason}
    recorded = json.loads((study_dir / "study.json").read_text())["diverged_configs"]
    assert list(recorded) == ["sine__maml+ga__s1"] and recorded["sine__maml+ga__s1"]["aggregator"] == "ga"
    capsys.readouterr()

    # another machine would round differently and might finish it: a resume does not try
    monkeypatch.setattr(Trainer, "fit", original)
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert ("3 finished already, 1 diverged earlier (kept as failed; --retry-diverged reruns them), "
            "0 to run") in err
    assert "1 run(s) diverged in an earlier compare and are kept as failed" in err
    assert not (study_dir / "sine__maml+ga__s1").exists()
    assert json.loads((study_dir / "failed.json").read_text()) == {"sine__maml+ga__s1": reason}
    assert json.loads((study_dir / "study.json").read_text())["diverged_configs"] == recorded
    assert main(["compare", str(path), "--out-root", str(out), "--plan"]) == 0
    assert "sine__maml+ga__s1\tdiverged (kept as failed)" in capsys.readouterr().out

    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--retry-diverged"]) == 0
    assert "3 finished already, 1 to run" in capsys.readouterr().err
    assert run_state(study_dir / "sine__maml+ga__s1", load_study(path).runs[3].config) == "finished"
    assert json.loads((study_dir / "failed.json").read_text()) == {}
    assert json.loads((study_dir / "study.json").read_text())["diverged_configs"] == {}


def test_a_divergence_with_another_configuration_and_other_failures_are_rerun(tmp_path, monkeypatch, capsys):
    original = diverge_ga_seed_1(monkeypatch)
    path, out = study_file(tmp_path), tmp_path / "runs"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    monkeypatch.setattr(Trainer, "fit", original)
    # a smaller beta, as the divergence message advises: the recorded divergence is not this run's
    path = study_file(tmp_path, TINY_STUDY.replace('aggregator = "ga"', 'aggregator = "ga"\nbeta = 0.0005'))
    assert main(["compare", str(path), "--out-root", str(out), "--plan"]) == 0
    assert "sine__maml+ga__s1\tdiverged with another configuration (runs again)" in capsys.readouterr().out
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking", "--redo-changed"]) == 0
    assert "kept as failed" not in capsys.readouterr().err
    assert json.loads((out / "tiny" / "failed.json").read_text()) == {}

    def fit(self):  # a failure that is not a divergence (a fault of the machine or the code)
        if self.seed == 0 and self.run_config.aggregator == "ga":
            raise MemoryError("out of memory")
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    out = tmp_path / "elsewhere"
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 1
    assert json.loads((out / "tiny" / "failed.json").read_text()) == {
        "sine__maml+ga__s0": "MemoryError: out of memory"}
    assert json.loads((out / "tiny" / "study.json").read_text())["diverged_configs"] == {}
    monkeypatch.setattr(Trainer, "fit", original)
    capsys.readouterr()
    assert main(["compare", str(path), "--out-root", str(out), "--no-tracking"]) == 0
    assert "3 finished already, 1 to run" in capsys.readouterr().err
