"""A study directory on disk: which runs are finished, the lock, leftovers, the study table."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from gabench._atomic import _raise_if_full
from gabench._errors import ConfigError, StorageFullError
from gabench.config import RunConfig
from gabench.results import RESULT_COLUMNS, WEIGHT_COLUMNS
from gabench.study import Study

#: Columns the study table adds to :data:`~gabench.results.RESULT_COLUMNS`.
STUDY_COLUMNS: tuple[str, ...] = ("study", "family_label", "setting")
#: Config fields that may differ between a finished run and the plan without making it stale.
IGNORED_FIELDS: tuple[str, ...] = ("device", "eval_batch")


RUN_FILES = ("config.json", "results.parquet", "weights.parquet")
#: The run's tables, in the order :func:`_check_run` returns them.
RUN_TABLES = ("results.parquet", "weights.parquet")


def run_state(path: Path, config: RunConfig) -> str:
    """``"missing"``, ``"finished"`` or ``"changed"`` (finished with another configuration).

    A run is finished only when all its files read back: a truncated or corrupt table (a disk
    that filled up, a copy cut short) makes it ``"missing"``, so it is redone, never counted.
    """
    import pyarrow.parquet as pq

    return _check_run(path, config, pq.read_table)[0]


def _read_tables(path: Path, read: Callable[[Path], Any]) -> tuple[Any, ...] | None:
    """The run's tables (:data:`RUN_TABLES`) as ``read`` returns them, or None when one does not
    read back completely (every row group must decode)."""
    try:
        return tuple(read(path / name) for name in RUN_TABLES)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError; ArrowIOError an OSError
        return None


def _check_run(path: Path, config: RunConfig,
               read: Callable[[Path], Any]) -> tuple[str, tuple[Any, ...] | None]:
    """:func:`run_state` of the run in ``path``, and its tables read by ``read`` (None unless the
    run is finished or changed), so that a caller who needs the tables reads each file once."""
    if not all((path / name).is_file() for name in RUN_FILES):
        return "missing", None
    tables = _read_tables(path, read)
    if tables is None:
        return "missing", None
    try:
        recorded = read_config(path)
    except (OSError, ValueError, KeyError, TypeError):
        return "missing", None
    return ("finished" if not config_diff(recorded, config) else "changed"), tables


def read_config(path: Path) -> dict[str, Any]:
    """The configuration a finished run recorded in its ``config.json``."""
    return json.loads((path / "config.json").read_text())["config"]


def recorded_form(config: RunConfig) -> dict[str, Any]:
    """``config`` as a run's ``config.json`` records it (plain JSON values)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def config_diff(recorded: dict[str, Any], config: RunConfig) -> str:
    """The first field where ``recorded`` differs from ``config`` (``""`` when none does)."""
    planned = recorded_form(config)
    defaults = json.loads(json.dumps(dataclasses.asdict(RunConfig()), default=str))
    for key in sorted(set(recorded) | set(planned)):
        if key in IGNORED_FIELDS:
            continue
        if key not in recorded and planned.get(key) == defaults.get(key):
            continue  # a setting added to gabench after the run, at its default: same run
        if recorded.get(key) != planned.get(key):
            return f"{key}: {recorded.get(key)!r} recorded, {planned.get(key)!r} planned"
    return ""


def remove_leftovers(study_dir: Path) -> None:
    """Temporary directories of runs that were interrupted while writing."""
    for entry in study_dir.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """One compare per study directory at a time (the kernel releases it if we are killed)."""
    fd = os.open(study_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("--out-root", str(study_dir.parent),
                              f"a directory where no other gabench compare is running on "
                              f"{study_dir.name} (one holds {study_dir}/.lock)") from None
        yield
    finally:
        os.close(fd)


def rebuild_table(study: Study, study_dir: Path) -> int:
    """Concatenate the finished runs of the plan into ``results.parquet`` and ``weights.parquet``.

    Returns the number of finished runs. The tables are streamed to disk one run at a time (one
    row group per run), so memory holds one run's tables, not the study's (the weights of a
    large study run to tens of GB in memory). Files are replaced atomically.
    """
    columns = [*RESULT_COLUMNS, *STUDY_COLUMNS]
    finished = 0
    # results.parquet is completed first (the inner block): on a full disk neither table is replaced
    with _Streamed(study_dir / "weights.parquet", list(WEIGHT_COLUMNS)) as wts, \
            _Streamed(study_dir / "results.parquet", columns) as res:
        for run in study.runs:
            state, tables = _check_run(study_dir / run.run_id, run.config, pd.read_parquet)
            if state != "finished" or tables is None:
                continue
            # runs written before a column existed (e.g. ``select``) get it empty
            res.add(tables[0].reindex(columns=columns))
            wts.add(tables[1][list(WEIGHT_COLUMNS)])
            finished += 1
    return finished


class _Streamed:
    """A parquet file written one frame at a time into a temporary file, renamed into place on
    success (removed on failure; a full disk becomes :class:`~gabench._errors.StorageFullError`).
    The schema is the first frame's (columns of unknown type taken as strings)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer: Any = None
        self.schema: Any = None

    def __enter__(self) -> _Streamed:
        return self

    def add(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            schema = pa.Schema.from_pandas(frame, preserve_index=False)
            self.schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                     for f in schema])
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.writer.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
            if exc is None:
                if self.writer is None:
                    pd.DataFrame(columns=self.columns).to_parquet(self.tmp, index=False)
                os.replace(self.tmp, self.path)
                return
        except Exception as err:
            self.tmp.unlink(missing_ok=True)  # a partial file would hold on to the space that ran out
            _raise_if_full(err, self.path)
            raise
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, StorageFullError):
            _raise_if_full(exc, self.path)  # a full disk while adding a run: one line naming this file
