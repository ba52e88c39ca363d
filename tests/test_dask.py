"""gabench compare on a Dask cluster: a real ``dask scheduler`` and two ``dask worker`` processes.

The cluster (on 127.0.0.1, started once for this module) runs small studies through
:func:`gabench._dask.execute_on_dask` with the client writing each run directory; the tables must
equal those of the same runs executed locally, every run must be collected once, also when a
worker is SIGKILLed mid-run, and stopping the client must stop the runs on the workers.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from distributed import Client
from helpers import study_file

from gabench._dask import (
    RunPayload,
    check_cluster,
    check_dask_tracking,
    check_scheduler,
    close_lost_attempts,
    connect,
    execute_on_dask,
    train_on_worker,
)
from gabench._errors import ConfigError
from gabench.compare import execute_run
from gabench.results import RunResult, write_run
from gabench.study import PlannedRun, Study, load_study
from gabench.trainer import Callback

# every test here starts processes or servers (real Dask/MLflow/SQLite peers)
pytestmark = pytest.mark.integration

STUDY = """
name = "tiny"
seeds = 2
[defaults]
steps = 30
meta_batch = 4
eval_every = 10
val_tasks = 8
test_tasks = 10
[families.sine]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
baseline = "maml"
[methods.diverging]
algorithm = "maml"
alpha = 50.0
beta = 10.0
optimizer = "sgd"
"""

DASK = Path(sys.executable).with_name("dask")
# The helpers below run on the workers (Client.run), which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def load(tmp_path: Path, text: str = STUDY) -> Study:
    return load_study(study_file(tmp_path, text, "study.toml"))


def longer(study: Study, steps: int) -> list[PlannedRun]:
    """The study's non-diverging runs with ``steps`` meta-iterations (seconds each)."""
    return [dataclasses.replace(r, config=dataclasses.replace(r.config, steps=steps, eval_every=0))
            for r in study.runs if r.method_label != "diverging"]


def writer(study_dir: Path):
    written: list[str] = []

    def write(run: PlannedRun, result: RunResult) -> None:
        written.append(run.run_id)
        write_run(study_dir / run.run_id, result)

    write.written = written  # type: ignore[attr-defined]
    return write


def same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same numbers (the measured wall time aside)."""
    ra, rb = (pd.read_parquet(p / "results.parquet") for p in (a, b))
    keep_a, keep_b = ra.metric != "wall_seconds", rb.metric != "wall_seconds"
    pd.testing.assert_frame_equal(ra[keep_a].reset_index(drop=True), rb[keep_b].reset_index(drop=True))
    assert (ra.metric == "wall_seconds").sum() == (rb.metric == "wall_seconds").sum() == 1
    wa, wb = (pd.read_parquet(p / "weights.parquet") for p in (a, b))
    pd.testing.assert_frame_equal(wa, wb)
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    ca.pop("wall_seconds"), cb.pop("wall_seconds")
    assert ca == cb


# --------------------------------------------------------------------------- the cluster
def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen([str(DASK), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # own process group: teardown kills all


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the nanny and its worker process
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    """A scheduler and two single-threaded workers on 127.0.0.1; yields the scheduler address."""
    tmp = tmp_path_factory.mktemp("dask")
    file = tmp / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                     "--scheduler-file", str(file)], tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
            try:
                address = json.loads(file.read_text())["address"]
            except (OSError, ValueError, KeyError):  # not written yet, or half written
                time.sleep(0.1)
        assert address is not None, (tmp / "scheduler.log").read_text()
        for i in range(2):
            procs.append(_start(["worker", address, "--nworkers", "1", "--nthreads", "1",
                                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                                tmp / f"worker{i}.log"))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        _stop(procs)


# --------------------------------------------------------------------------- tests
def test_study_on_dask_equals_local_compare(cluster, tmp_path):
    study = load(tmp_path)
    dask_dir, local_dir = tmp_path / "dask", tmp_path / "local"
    write = writer(dask_dir)
    log = io.StringIO()
    outcomes = list(execute_on_dask(study.runs, study.name, cluster, write=write, log=log))
    assert "2 worker(s), 2 thread(s)" in log.getvalue()
    ids = [o["run_id"] for o in outcomes]
    assert sorted(ids) == sorted(r.run_id for r in study.runs)  # every run once
    assert sorted(write.written) == sorted(r.run_id for r in study.runs if r.method_label != "diverging")
    for o in outcomes:
        assert set(o) == {"run_id", "ok", "seconds", "message", "diverged", "machine"}
        if "diverging" in o["run_id"]:  # a failure record, not a crash of the whole compare
            assert not o["ok"] and "diverged" in o["message"] and not (dask_dir / o["run_id"]).exists()
            assert o["diverged"]  # kept as failed by the next compare, as a local divergence is
        else:
            assert o["ok"] and o["message"].startswith("loss_post=") and o["seconds"] > 0
            assert not o["diverged"]
    for run in study.runs:  # the same runs, locally, as `gabench compare` executes them
        local = execute_run(run, study.name, local_dir / run.run_id)
        dask_out = next(o for o in outcomes if o["run_id"] == run.run_id)
        assert (local["ok"], local["message"], local["diverged"], local["machine"]) == (
            dask_out["ok"], dask_out["message"], dask_out["diverged"], dask_out["machine"])
        assert bool(local["machine"]) == local["ok"]  # where the run computed, when it finished
        if local["ok"]:
            same_run(dask_dir / run.run_id, local_dir / run.run_id)
    cfg = json.loads((dask_dir / "sine__maml+ga__s1" / "config.json").read_text())
    assert cfg["study"] == {"name": "tiny", "run_id": "sine__maml+ga__s1", "family_label": "sine",
                            "method_label": "maml+ga", "setting": {}}
    res = pd.read_parquet(dask_dir / "sine__maml+ga__s1" / "results.parquet")
    assert set(res["run"]) == {"sine__maml+ga__s1"} and set(res["study"]) == {"tiny"}


def _worker_state(dask_worker) -> tuple[int, list[str]]:
    """(process id, keys of the tasks executing) of a worker, run there by ``Client.run``."""
    return os.getpid(), [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"]


def _times_processing(key: str, dask_scheduler=None) -> list[str]:
    """One entry per time the scheduler gave task ``key`` to a worker (its transition log)."""
    return [rec[2] for rec in dask_scheduler.story(key) if rec[0] == key and rec[2] == "processing"]


def kill_a_worker_mid_run(cluster: str, runs: list[PlannedRun], write) -> tuple[str, list[dict]]:
    """Run ``runs`` on the cluster, SIGKILL the first worker seen training one, collect all.

    Returns:
        The key of the task whose worker was killed, and the outcomes.
    """
    killed: str | None = None
    with ThreadPoolExecutor(1) as pool, Client(cluster, timeout=30) as watcher:
        job = pool.submit(lambda: list(execute_on_dask(runs, "tiny", cluster, write=write,
                                                       log=io.StringIO())))
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and not job.done():
            for pid, keys in watcher.run(_worker_state).values():
                if any(k.startswith("gabench-tiny-") for k in keys):
                    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-run (its nanny stays)
                    killed = keys[0]
                    break
            time.sleep(0.05)
        got = job.result(timeout=300)
        assert killed is not None, "no run was seen training on a worker"
        assert len(watcher.run_on_scheduler(_times_processing, killed)) >= 1
    return killed, got


def test_a_worker_killed_mid_run_has_its_run_redone_once(cluster, tmp_path):
    runs = longer(load(tmp_path), steps=800)
    study_dir = tmp_path / "dask"
    write = writer(study_dir)
    killed, got = kill_a_worker_mid_run(cluster, runs, write)
    with Client(cluster, timeout=30) as watcher:  # started, lost with its worker, started again
        assert len(watcher.run_on_scheduler(_times_processing, killed)) == 2
    ids = [o["run_id"] for o in got]
    assert sorted(ids) == sorted(r.run_id for r in runs) and all(o["ok"] for o in got)
    assert sorted(write.written) == sorted(ids)  # written once each
    killed_run = next(r for r in runs if f"-{r.run_id}-" in killed)
    local = train_on_worker(killed_run, "tiny")  # the redone run has the numbers of a local one
    write_run(tmp_path / "local" / killed_run.run_id, local.result)
    same_run(study_dir / killed_run.run_id, tmp_path / "local" / killed_run.run_id)


def _set_allowed_failures(n: int, dask_scheduler=None) -> int:
    previous = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = n
    return previous


def test_a_run_that_kills_too_many_workers_is_a_failure_record(cluster, tmp_path):
    runs = longer(load(tmp_path), steps=800)[:2]
    write = writer(tmp_path / "dask")
    with Client(cluster, timeout=30) as client:  # as `distributed.scheduler.allowed-failures: 0`
        previous = client.run_on_scheduler(_set_allowed_failures, 0)
    try:
        killed, got = kill_a_worker_mid_run(cluster, runs, write)
    finally:
        with Client(cluster, timeout=30) as client:
            client.run_on_scheduler(_set_allowed_failures, previous)
    assert sorted(o["run_id"] for o in got) == sorted(r.run_id for r in runs)
    bad = [o for o in got if not o["ok"]]
    assert len(bad) == 1 and f"-{bad[0]['run_id']}-" in killed
    assert bad[0]["message"].startswith("KilledWorker: ") and "\n" not in bad[0]["message"]
    assert write.written == [o["run_id"] for o in got if o["ok"]]  # the other run went on


def _busy(dask_worker=None) -> int:
    """Tasks a worker still holds (a cancelled run keeps its slot until it stops)."""
    return len(dask_worker.state.tasks)


def _busy(dask_worker=None) -> int:
    """Tasks a worker holds (a cancelled run keeps its task until it stops training)."""
    return len(dask_worker.state.tasks)


def test_ctrl_c_in_the_client_stops_the_runs_on_the_workers(cluster, tmp_path):
    runs = longer(load(tmp_path), steps=100_000)  # minutes each: only a stop ends them soon
    write = writer(tmp_path / "dask")
    seen: list[str] = []
    done = threading.Event()  # the loop below has ended: no Ctrl-C after that

    def press_ctrl_c_when_both_workers_train() -> None:
        with Client(cluster, timeout=30) as watcher:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(seen) < 2 and not done.is_set():
                seen[:] = [k for _, keys in watcher.run(_worker_state).values() for k in keys]
                time.sleep(0.05)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread, as Ctrl-C

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
    presser = threading.Thread(target=press_ctrl_c_when_both_workers_train)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in execute_on_dask(runs, "tiny", cluster, write=write, log=io.StringIO()):
                pass
    finally:
        done.set()
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert len(seen) == 2 and write.written == []
    stopped = time.monotonic()
    with Client(cluster, timeout=30) as watcher:
        while time.monotonic() - stopped < 60 and sum(watcher.run(_busy).values()):
            time.sleep(0.1)
        assert sum(watcher.run(_busy).values()) == 0, "the runs went on after the client stopped"


# --------------------------------------------------------------------------- errors
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "file:///tmp/mlruns"])
def test_a_sqlite_tracking_store_is_refused_before_anything_starts(tmp_path, uri):
    with pytest.raises(ConfigError) as err:
        check_dask_tracking(uri)
    msg = str(err.value)
    assert msg.startswith(f"--tracking-uri={uri!r}") and "\n" not in msg
    assert "mlflow server" in msg and "--no-tracking" in msg
    for ok in (None, "http://10.0.0.1:5000", "https://mlflow.example.org", "postgresql://u@db/mlflow",
               "postgresql+psycopg://u@db/mlflow", "mysql://u@db/mlflow"):
        check_dask_tracking(ok)
    runs = load(tmp_path).runs
    with pytest.raises(ConfigError, match="--tracking-uri"):  # before connecting to anything
        list(execute_on_dask(runs, "tiny", "tcp://192.0.2.1:8786", write=writer(tmp_path / "d"),
                             tracking_uri=uri))
    assert not (tmp_path / "d").exists()


def test_no_scheduler_at_the_address_is_a_one_line_config_error(cluster):
    assert check_scheduler(cluster) == 2
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_scheduler(address, timeout=2)
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert msg.startswith(f"--scheduler={address!r}") and "\n" not in msg and "dask scheduler" in msg.lower()
    with pytest.raises(ConfigError, match="--scheduler"):
        connect("nonsense://where", timeout=2)


def test_workers_that_cannot_reach_the_tracking_server_fail_the_check(cluster):
    uri = f"http://127.0.0.1:{free_port()}"
    with Client(cluster, timeout=30) as client, pytest.raises(ConfigError) as err:
        check_cluster(client, cluster, uri)
    msg = str(err.value)
    assert msg.startswith(f"--tracking-uri={uri!r}") and "worker tcp://127.0.0.1:" in msg and "\n" not in msg
    with Client(cluster, timeout=30) as client:
        assert len(check_cluster(client, cluster, None)) == 2


class Explodes(Callback):
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def on_train_log(self, steps, metrics) -> None:
        raise ValueError("boom\n  on two lines")

    def on_fail(self, exc: BaseException) -> None:
        self.failed.append((type(exc).__name__, str(exc)))


def test_a_run_that_raises_comes_back_as_a_failure_record(tmp_path):
    run = load(tmp_path).runs[0]
    cb = Explodes()
    payload = train_on_worker(run, "tiny", lambda r, s: [cb])
    assert isinstance(payload, RunPayload) and not payload.ok and payload.result is None
    assert (payload.run_id, payload.error) == (run.run_id, "ValueError")
    assert payload.message == payload.reason == "ValueError: boom on two lines"
    assert cb.failed == [("ValueError", "boom\n  on two lines")]  # recorded once, by the trainer
    diverged = train_on_worker(next(r for r in load(tmp_path).runs if r.method_label == "diverging"), "tiny")
    assert diverged.error == "DivergedError" and diverged.message.startswith("training diverged")


# --------------------------------------------------------------------------- tracking
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (SQLite behind it, on the server's machine); yields its URI."""
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (tmp / "server.log").open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"],
                                cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield uri
    finally:
        _stop([proc])


def test_workers_track_to_the_server_and_lost_attempts_are_closed(cluster, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    study = load(tmp_path)
    runs = [r for r in study.runs if r.config.seed == 0]  # maml, maml+ga, diverging
    write = writer(tmp_path / "dask")
    got = list(execute_on_dask(runs, study.name, cluster, write=write, tracking_uri=mlflow_server,
                               experiment="dask-test", log=io.StringIO()))
    assert sorted(o["run_id"] for o in got) == sorted(r.run_id for r in runs)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("dask-test")
    tracked = client.search_runs([exp.experiment_id])
    by_run = {r.data.tags["study_run"]: r for r in tracked}
    assert len(tracked) == len(by_run) == 3  # one MLflow run per planned run
    for run in runs:
        r = by_run[run.run_id]
        assert r.info.run_name == f"{run.method_label} · {run.family_label} · s{run.config.seed}"
        assert r.data.tags["dask_key"].startswith(f"gabench-tiny-{run.run_id}-")
        if run.method_label == "diverging":
            assert r.info.status == "FAILED" and "diverged" in r.data.tags["failure_reason"]
        else:
            assert r.info.status == "FINISHED"
            local = pd.read_parquet(tmp_path / "dask" / run.run_id / "results.parquet")
            test = local[(local.split == "test") & (local.metric == "loss_post")]
            assert r.data.metrics["test/loss_post"] == pytest.approx(float(test.value.iloc[0]))
            artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}  # via the server
            assert {"results.parquet", "weights.parquet", "config.json"} <= artifacts
    # A worker that died mid-run leaves its attempt RUNNING; collecting the task closes it.
    key = by_run[runs[0].run_id].data.tags["dask_key"]
    lost = client.create_run(exp.experiment_id, tags={"dask_key": key}).info.run_id
    other = client.create_run(exp.experiment_id, tags={"dask_key": key + "x"}).info.run_id
    keep = by_run[runs[0].run_id].info.run_id
    assert close_lost_attempts(mlflow_server, exp.experiment_id, key, keep) == 1
    assert client.get_run(lost).info.status == "KILLED"
    assert keep in client.get_run(lost).data.tags["failure_reason"]
    assert client.get_run(other).info.status == "RUNNING" and client.get_run(keep).info.status == "FINISHED"
