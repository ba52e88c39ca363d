"""Running a study's plan on an existing Dask distributed cluster (``gabench compare --scheduler``).

The client (the machine where ``gabench compare`` runs) connects to a running ``dask scheduler``,
submits one task per unfinished planned run and collects the tasks as they finish. Each task,
:func:`train_on_worker`, trains the run exactly as ``gabench run`` would (the same
:class:`~gabench.trainer.Trainer`, the same labelling of the tables as a local
compare) and returns its tables to the client; workers write nothing, so they need no shared
filesystem. The client writes each run directory atomically with the same writer as a local
compare, one progress line per finished run, so resuming, the study table and ``failed.json``
behave as without Dask. Same config and seed give the same numbers as a local compare.

Failures: a run that diverges, or raises anything else, comes back as a failure record (run id,
error type, one-line reason) and the other runs go on. A worker that dies mid-run (killed, out of
memory, its node lost) has its run started again on another worker by the scheduler; a run that
loses ``distributed.scheduler.allowed-failures`` + 1 workers (a scheduler setting, default 3) is
reported as failed (``KilledWorker``) rather than retried forever. Each run is collected once, by
its task's key, so no run is written or counted twice. Exceptions raised by a run are not
retried (training is deterministic: a retry would fail the same way).

Stopping: Ctrl-C or SIGTERM in the client cancels every submitted task (so does the client
dying: the scheduler then releases its tasks). Runs not started never start; a run already
training stops at its next training-log flush (every 50 steps) because it sees that its task was
cancelled, and its MLflow run is marked KILLED. Finished runs are on disk, so the same command
resumes. Workers are best started with ``--nthreads 1`` (several runs in one process would share
torch's process-wide thread setting); use ``--nworkers N`` for N runs at once per machine.

Tracking (MLflow), decided as follows. The workers log each run themselves, as ``gabench run``
does, so the tracking store must be one they can reach over the network: an MLflow tracking
server (``--tracking-uri http://HOST:5000``, from ``mlflow server``) or a database server
(``postgresql://...``, ``mysql://...``). A SQLite URI, which is also the default when neither
``--tracking-uri`` nor ``MLFLOW_TRACKING_URI`` is given, names a file on the client machine that
workers elsewhere cannot write (and SQLite over a network filesystem is not safe), so it is
refused before anything starts with a one-line :class:`~gabench._errors.ConfigError` that
suggests ``mlflow server`` or ``--no-tracking``. The result tables on disk are complete either way;
tracking is a mirror. Before submitting, every worker checks that it can reach the tracking
server and that it runs the client's gabench version. Each MLflow run is tagged with its task's
key (``dask_key``); when a worker died mid-run, its attempt stays RUNNING in MLflow until the run
is collected, then the client marks it KILLED (``failure_reason`` says it was redone), so the
experiment shows one FINISHED run per planned run.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from gabench import __version__
from gabench._errors import ConfigError
from gabench.compare import TrackRuns, one_line, train_planned
from gabench.results import RunResult
from gabench.study import PlannedRun
from gabench.trainer import Callback

if TYPE_CHECKING:
    from distributed import Client, Future

    from gabench.trainer import Trainer

#: Seconds :func:`connect` waits for the scheduler to answer.
CONNECT_TIMEOUT_S = 10.0
#: Tracking URI schemes that workers on other machines can reach.
NETWORK_SCHEMES: tuple[str, ...] = ("http", "https", "postgresql", "mysql", "mssql")

CallbacksFor = Callable[[PlannedRun, str], list[Callback]]
Writer = Callable[[PlannedRun, RunResult], object]


@dataclass
class RunPayload:
    """What one task sends back to the client: the run's result, or why it failed.

    Attributes:
        run_id: The planned run's id.
        seconds: Wall-clock seconds of the task on the worker (building, training, meta-testing).
        result: The run's tables, labelled as a local compare labels them; None when it failed.
        error: Exception type of a failed run (``""`` when it finished).
        reason: One-line reason of a failed run.
        mlflow_run_id: The MLflow run the worker logged to (None without tracking).
        worker: Address of the worker that ran it.
    """

    run_id: str
    seconds: float
    result: RunResult | None = None
    error: str = ""
    reason: str = ""
    mlflow_run_id: str | None = None
    worker: str = ""

    @property
    def ok(self) -> bool:
        """True when the run finished and ``result`` holds its tables."""
        return self.result is not None

    @property
    def message(self) -> str:
        """The progress line's status, as a local compare words it."""
        if self.result is None:
            return self.reason
        post = self.result.test.get("loss_post")
        return f"loss_post={post.mean:.4g}" if post is not None else ""


class RunCancelled(RuntimeError):
    """The run's task was cancelled (the client stopped or went away) while it trained."""

    gabench_run_status = "KILLED"  # stopped, not broken: MLflow KILLED (tracking._mlflow.run_status)


class _StopWhenCancelled(Callback):
    """Stops a run whose Dask task the scheduler has released, at the next training-log flush."""

    def __init__(self, worker: Any, key: Any) -> None:
        self.worker = worker
        self.key = key

    def _check(self) -> None:
        ts = self.worker.state.tasks.get(self.key)
        if ts is None or ts.state == "cancelled":
            raise RunCancelled(f"task {self.key} was cancelled")

    def on_start(self, trainer: Trainer) -> None:
        self._check()

    def on_train_log(self, steps: Any, metrics: Any) -> None:
        self._check()


# --------------------------------------------------------------------------- on the worker
def train_on_worker(run: PlannedRun, study: str, callbacks_for: CallbacksFor | None = None) -> RunPayload:
    """Train and meta-test one planned run, as ``gabench run`` does, and return its tables.

    Runs anywhere (in a Dask task, or in-process for tests); writes nothing to disk. Inside a
    Dask task the run also stops when its task is cancelled, and its MLflow run (if any) is
    tagged ``dask_key`` with the task's key.

    Args:
        run: The planned run.
        study: Study name (recorded in every row, as a local compare does).
        callbacks_for: Tracking hook ``(run, study) -> callbacks`` (e.g. a
            :class:`~gabench.compare.TrackRuns`); None: no tracking.

    Returns:
        A :class:`RunPayload`: the labelled :class:`~gabench.results.RunResult`, or the error
        type and a one-line reason when the run raised (divergence or anything else).
    """
    start = time.perf_counter()
    worker = _current_worker()
    where = worker.address if worker is not None else ""
    callbacks: list[Callback] = []
    try:
        callbacks = list(callbacks_for(run, study)) if callbacks_for is not None else []
        if worker is not None:
            key = worker.get_current_task()
            for cb in callbacks:
                tags = getattr(cb, "extra_tags", None)
                if isinstance(tags, dict):
                    tags["dask_key"] = str(key)
            callbacks.append(_StopWhenCancelled(worker, key))
        # a failure is recorded by the callbacks' on_fail (the MLflow run: FAILED, or KILLED
        # when the task was cancelled)
        result = train_planned(run, study, callbacks)
    except Exception as exc:  # every failure becomes a record; the other runs go on
        return RunPayload(run.run_id, time.perf_counter() - start, error=type(exc).__name__,
                          reason=one_line(exc), mlflow_run_id=_mlflow_run_id(callbacks), worker=where)
    return RunPayload(run.run_id, time.perf_counter() - start, result=result,
                      mlflow_run_id=_mlflow_run_id(callbacks), worker=where)


def _current_worker() -> Any:
    """The Dask worker running this code, or None outside a Dask task."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # "No worker found": not inside a task
        return None


def _mlflow_run_id(callbacks: list[Callback]) -> str | None:
    for cb in callbacks:
        run_id = getattr(cb, "run_id", None)
        if isinstance(run_id, str):
            return run_id
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] if text else type(exc).__name__


def _worker_check(tracking_uri: str | None) -> dict[str, str]:
    """Run on every worker before submitting: its gabench version and whether it can track."""
    from gabench.tracking import check_tracking_uri

    problem = ""
    if tracking_uri is not None:
        try:
            check_tracking_uri(tracking_uri)
        except ConfigError as exc:
            problem = exc.allowed
    return {"gabench": __version__, "tracking": problem}


# --------------------------------------------------------------------------- on the client
def check_dask_tracking(tracking_uri: str | None) -> None:
    """Refuse a tracking URI that workers on other machines cannot reach (a SQLite file).

    Args:
        tracking_uri: The resolved tracking URI (None: ``--no-tracking``).

    Raises:
        ConfigError: naming ``--tracking-uri`` for a ``sqlite:`` (or other local) URI.
    """
    if tracking_uri is None:
        return
    scheme = tracking_uri.split(":", 1)[0].split("+")[0].lower()
    if scheme not in NETWORK_SCHEMES:
        raise ConfigError("--tracking-uri", tracking_uri,
                          "with --scheduler, a tracking server the Dask workers can reach (start "
                          "`mlflow server --host 0.0.0.0 --port 5000` and pass http://HOST:5000, "
                          "or a postgresql:// database), or --no-tracking (a SQLite file is on "
                          "this machine only)")


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A :class:`distributed.Client` of the running scheduler at ``address``.

    Raises:
        ConfigError: naming ``--scheduler`` when dask is not installed or no scheduler answers
            at ``address`` within ``timeout`` seconds.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--scheduler", address,
                          "dask[distributed] installed (pip install -e .[dask])") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
        raise ConfigError("--scheduler", address,
                          f"the address of a running Dask scheduler, e.g. tcp://HOST:8786 (no "
                          f"connection within {timeout:g} s: {_one_line(exc)})") from None


def check_cluster(client: Client, address: str, tracking_uri: str | None) -> dict[str, Any]:
    """Check the workers now connected: same gabench version, tracking reachable from each.

    Workers that join later are not checked (a run on one that cannot track comes back failed).

    Returns:
        The scheduler's worker table (``client.scheduler_info()["workers"]``).

    Raises:
        ConfigError: naming ``--scheduler`` (a worker cannot import gabench or runs another
            version) or ``--tracking-uri`` (a worker cannot reach the tracking server).
    """
    check_dask_tracking(tracking_uri)
    try:
        answers = client.run(_worker_check, tracking_uri)
    except Exception as exc:  # e.g. ModuleNotFoundError: gabench is not installed on a worker
        raise ConfigError("--scheduler", address,
                          f"a cluster whose workers can import gabench {__version__} "
                          f"({type(exc).__name__}: {_one_line(exc)})") from None
    for worker, info in sorted(answers.items()):
        if info["gabench"] != __version__:
            raise ConfigError("--scheduler", address,
                              f"workers running gabench {__version__} like this client (worker "
                              f"{worker} runs {info['gabench']})")
        if info["tracking"]:
            raise ConfigError("--tracking-uri", tracking_uri,
                              f"a tracking server that the Dask workers reach (worker {worker}: "
                              f"{info['tracking']})")
    return client.scheduler_info()["workers"]


def check_scheduler(address: str, tracking_uri: str | None = None,
                    timeout: float = CONNECT_TIMEOUT_S) -> int:
    """Everything :func:`execute_on_dask` checks, before anything is written: call it first.

    Connects to the scheduler, runs :func:`check_cluster` and disconnects.

    Args:
        address: Scheduler address, e.g. ``tcp://HOST:8786``.
        tracking_uri: The resolved tracking URI (None: no tracking).
        timeout: Seconds to wait for the scheduler.

    Returns:
        The number of workers connected now (0 is allowed: runs wait until workers join, e.g.
        on an adaptive dask-jobqueue cluster).

    Raises:
        ConfigError: as :func:`connect`, :func:`check_dask_tracking` and :func:`check_cluster`.
    """
    check_dask_tracking(tracking_uri)
    client = connect(address, timeout)
    try:
        return len(check_cluster(client, address, tracking_uri))
    finally:
        client.close()


def execute_on_dask(todo: list[PlannedRun], study: str, address: str, *, write: Writer,
                    tracking_uri: str | None = None, experiment: str | None = None,
                    log: TextIO | None = None,
                    timeout: float = CONNECT_TIMEOUT_S) -> Iterator[dict[str, Any]]:
    """Run ``todo`` on the Dask cluster at ``address``, writing each finished run in this process.

    Every run is submitted at once (the scheduler queues them on the workers); outcomes come in
    the order runs finish. For each finished run ``write(run, result)`` is called here before
    its outcome is yielded, so a run is on disk when it is counted. Each task is collected once.
    Closing the iterator early, or an exception (Ctrl-C, SIGTERM turned into an exception),
    cancels the unfinished tasks.

    Args:
        todo: The planned runs to execute.
        study: Study name.
        address: Scheduler address, e.g. ``tcp://HOST:8786``.
        write: Writes one finished run (e.g. :func:`~gabench.results.write_run` into
            ``<study dir>/<run id>``, replacing a changed run).
        tracking_uri: MLflow tracking server the workers log to (checked with
            :func:`check_dask_tracking`); None: no tracking.
        experiment: MLflow experiment; None: ``gabench-<study>`` (as a local compare).
        log: Where the connection line goes (default stderr).
        timeout: Seconds to wait for the scheduler.

    Yields:
        ``{"run_id", "ok", "seconds", "message", "diverged", "machine"}`` per run (``machine``:
        the worker's, for a run that finished), as a local compare's runs report.

    Raises:
        ConfigError: the scheduler cannot be reached, a worker cannot run gabench or reach the
            tracking server, or ``tracking_uri`` is a SQLite file.
    """
    log = log or sys.stderr
    check_dask_tracking(tracking_uri)
    if not todo:
        return
    client = connect(address, timeout)
    futures: dict[Future, PlannedRun] = {}
    try:
        workers = check_cluster(client, address, tracking_uri)
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        dashboard = "dashboard" in client.scheduler_info().get("services", {})
        print(f"dask: {address}, {len(workers)} worker(s), {threads} thread(s)"
              + ("" if workers else "; runs wait until a worker joins")
              + (f"; dashboard {client.dashboard_link}" if dashboard else ""), file=log, flush=True)
        tracker = None
        experiment_id = None
        if tracking_uri is not None:
            tracker = TrackRuns(tracking_uri, experiment)
            experiment_id = _experiment_id(tracking_uri, tracker.prepare(study))
        token = uuid.uuid4().hex[:8]  # one per call: a rerun of the same plan never shares a key
        submitted = time.perf_counter()
        for run in todo:
            fut = client.submit(train_on_worker, run, study, tracker, pure=False, retries=0,
                                key=f"gabench-{study}-{run.run_id}-{token}")
            futures[fut] = run
        yield from _collect(client, futures, write, tracking_uri, experiment_id, submitted)
    except BaseException:  # Ctrl-C, SIGTERM, a failed write, the iterator closed early
        if futures:
            client.cancel(list(futures), force=True)
        raise
    finally:
        client.close()


def _collect(client: Client, futures: dict[Future, PlannedRun], write: Writer, tracking_uri: str | None,
             experiment_id: str | None, submitted: float) -> Iterator[dict[str, Any]]:
    from distributed import as_completed

    seen: set[str] = set()
    for fut in as_completed(list(futures), loop=client.loop):
        run = futures.pop(fut)
        if run.run_id in seen:  # as_completed yields each future once; a plan's ids are unique
            raise RuntimeError(f"run {run.run_id} was collected twice")
        seen.add(run.run_id)
        if fut.status == "finished":
            payload: RunPayload = fut.result()
        else:  # e.g. KilledWorker after allowed-failures worker deaths, or cancelled elsewhere
            exc = fut.exception() if fut.status == "error" else None
            payload = RunPayload(run.run_id, time.perf_counter() - submitted,
                                 error=type(exc).__name__ if exc else fut.status,
                                 reason=one_line(exc) if exc else f"task {fut.status}")
        fut.release()
        if payload.result is not None:
            write(run, payload.result)
        if tracking_uri is not None and experiment_id is not None:
            close_lost_attempts(tracking_uri, experiment_id, str(fut.key), payload.mlflow_run_id)
        yield {"run_id": run.run_id, "ok": payload.ok, "seconds": payload.seconds,
               "message": payload.message, "diverged": payload.error == "DivergedError",
               "machine": payload.result.extra.get("machine", "") if payload.result is not None else ""}


def _experiment_id(tracking_uri: str, name: str) -> str:
    from gabench.tracking import tracking_client

    exp = tracking_client(tracking_uri).get_experiment_by_name(name)
    if exp is None:  # prepare() just created it
        raise RuntimeError(f"MLflow experiment {name!r} not found at {tracking_uri}")
    return exp.experiment_id


def close_lost_attempts(tracking_uri: str, experiment_id: str, key: str, keep: str | None) -> int:
    """Mark KILLED the MLflow runs of task ``key`` still RUNNING (their worker died mid-run).

    Args:
        tracking_uri: The tracking store.
        experiment_id: The study's experiment.
        key: The Dask task key (tag ``dask_key`` of every attempt).
        keep: The MLflow run of the attempt that was collected (left alone).

    Returns:
        The number of runs marked KILLED.
    """
    from gabench.tracking import tracking_client

    client = tracking_client(tracking_uri)
    lost = client.search_runs([experiment_id], filter_string=f"tags.dask_key = '{key}' and "
                                                            "attributes.status = 'RUNNING'")
    reason = (f"its Dask worker was lost mid-run; redone as MLflow run {keep}" if keep
              else "its Dask worker was lost mid-run")
    n = 0
    for r in lost:
        if r.info.run_id == keep:
            continue
        client.set_tag(r.info.run_id, "failure_reason", reason)
        client.set_terminated(r.info.run_id, "KILLED")
        n += 1
    return n
