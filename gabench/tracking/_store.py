"""The one way to an MLflow client: a SQLite store is created or migrated under a file lock.

MLflow creates the tables of a new SQLite store (and migrates an old one) the first time a
process opens it. Several processes doing that at once race inside Alembic (``table
_alembic_tmp_experiments already exists``, ``duplicate column name``, ``Online migration
expected to match one row``), lose, and may leave a half-migrated file behind. Every gabench
code path that talks to MLflow therefore gets its client from :func:`tracking_client`, which
opens a ``sqlite:///`` store while holding an exclusive ``fcntl`` lock on the sibling file
``<database>.lock``; experiments are looked up or created the same way
(:func:`experiment_id`), so two processes creating the same experiment get the same id.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gabench._errors import ConfigError
from gabench._redact import redact, scrub
from gabench.tracking._uri import sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Experiment description (the ``mlflow.note.content`` tag, shown on the experiment page) used
#: when a caller gives none.
DEFAULT_DESCRIPTION = (
    "gabench runs: one MLflow run per meta-training run, named `method · family · seed`. "
    "Parameters are the run configuration (`family_params.*` with the resolved family "
    "parameters); metrics `train/*` (means over windows of steps, see the `train_log_stride` "
    "param), `val/*` and `test/*` (95% confidence intervals over tasks in the `test_ci95.*` tags "
    "and config.json); artifacts: results.parquet (every step), weights.parquet, config.json, "
    "learning_curve.png, task_weights.png."
)
LOCK_TIMEOUT_S = 600.0
_ready: set[str] = set()  # SQLite URIs opened (created/migrated) by this process
_ready_guard = threading.Lock()


@contextlib.contextmanager
def store_lock(db: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` (created next to the database) while inside.

    Args:
        db: The SQLite database file (it need not exist yet).
        timeout: Seconds to wait for another process holding the lock.

    Raises:
        ConfigError: the lock was not obtained within ``timeout`` seconds.
    """
    db = Path(db).absolute()
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db.with_name(db.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError("--tracking-uri", f"sqlite:///{db}",
                                      f"a store not locked by another process for {timeout:.0f} s "
                                      f"({lock_path})") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _drop_alembic_leftovers(db: Path) -> list[str]:
    """Drop Alembic's scratch tables (``_alembic_tmp_*``) that an interrupted migration left in
    ``db``; a migration never leaves them behind when it completes, and with them in place
    every later migration fails. Called only under :func:`store_lock`. Returns their names."""
    if not db.exists() or db.stat().st_size == 0:
        return []
    con = sqlite3.connect(db, timeout=60)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' "
            "ESCAPE '\\'")]
        for name in names:
            con.execute(f'DROP TABLE "{name}"')
        con.commit()
        return names
    finally:
        con.close()


def tracking_client(uri: str, param: str = "--tracking-uri") -> MlflowClient:
    """An :class:`mlflow.MlflowClient` for ``uri``; a SQLite store is created or migrated first,
    under :func:`store_lock`, once per process.

    Every place in gabench that talks to MLflow gets its client here (the tracker, Optuna's
    parent runs, ``gabench compare``'s experiment), so concurrent first use of one new
    SQLite file by several processes is safe, and a file left half-migrated by an interrupted
    migration is repaired.

    Args:
        uri: A tracking URI (checked beforehand by :func:`~gabench.tracking.check_tracking_uri`).
        param: The option named in errors.

    Raises:
        ConfigError: the SQLite store could not be opened or migrated (one line; the password
            of ``uri``, if any, is not shown).
    """
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(uri)
    with _ready_guard:
        if uri in _ready:
            return MlflowClient(uri)
        with store_lock(db):
            _drop_alembic_leftovers(db.absolute())
            try:
                # Building the client builds (and caches, per process) MLflow's store for this
                # URI: this is where the tables are created or migrated.
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(param, redact(uri), "an MLflow SQLite store that can be opened "
                                                      f"({scrub(first, uri)[:300]})") from None
            _ready.add(uri)
        return client


def experiment_id(client: MlflowClient, tracking_uri: str, name: str,
                  description: str | None = None) -> str:
    """Id of experiment ``name``, created if needed (for SQLite stores with its artifacts in
    ``mlartifacts/`` next to the database, and under the store's lock, so that processes
    creating it at once get one experiment). A new experiment, or one without a description,
    gets ``description`` (default :data:`DEFAULT_DESCRIPTION`) as its ``mlflow.note.content``
    tag.

    Args:
        client: From :func:`tracking_client`.
        tracking_uri: The URI of ``client``.
        name: Experiment name.
        description: Markdown shown on the experiment's page in the MLflow UI.
    """
    description = description or DEFAULT_DESCRIPTION
    db = sqlite_path(tracking_uri)
    lock = store_lock(db) if db is not None else contextlib.nullcontext()
    with lock:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if "mlflow.note.content" not in (exp.tags or {}):
                with contextlib.suppress(Exception):  # e.g. no permission to edit it: not needed
                    client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", description)
            return exp.experiment_id
        location = None
        if db is not None:
            location = (db.absolute().parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={"mlflow.note.content": description})
        except Exception:  # a server: another process created it between our two calls
            for delay in (0.2, 0.5, 1.0, 2.0):
                exp = client.get_experiment_by_name(name)
                if exp is not None:
                    return exp.experiment_id
                time.sleep(delay)
            raise


def set_terminated(client: MlflowClient, run_id: str, status: str, tracking_uri: str) -> None:
    """End run ``run_id`` with ``status`` (FINISHED, FAILED or KILLED).

    MLflow prints links to the run for a tracking server (``View run ... at: URL``), built from
    the URI *with* its credentials; they are printed here with the password masked instead.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            client.set_terminated(run_id, status)
    finally:
        text = captured.getvalue()
        if text:
            sys.stdout.write(scrub(text, tracking_uri))
            sys.stdout.flush()
