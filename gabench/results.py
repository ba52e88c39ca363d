"""Result tables: the long-format rows a run produces, their summaries, and writing them safely."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from gabench._errors import ConfigError

#: Columns of ``results.parquet`` in order (one row per run x step x split x metric).
RESULT_COLUMNS: tuple[str, ...] = (
    "run", "family", "method", "algorithm", "aggregator", "first_order", "seed",
    "outlier_fraction", "step", "split", "metric", "value", "ci_low", "ci_high", "n", "select",
)
#: ``select`` on meta-test rows: the final iterate, or the parameters at the step with the lowest
#: meta-validation query loss (``step`` is then that step); empty on other rows.
SELECTIONS: tuple[str, ...] = ("final", "best_val")
#: Columns of ``weights.parquet``.
WEIGHT_COLUMNS: tuple[str, ...] = ("run", "step", "task", "corrupted", "weight")


@dataclass(frozen=True)
class Summary:
    """Mean of per-task values with a 95% Student-t confidence interval over tasks."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, level: float = 0.95) -> Summary:
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        n = int(v.size)
        if n == 0:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        mean = float(v.mean())
        if n == 1:
            return cls(mean, float("nan"), float("nan"), 1)
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
        return cls(mean, mean - half, mean + half, n)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}]"


@dataclass
class RunResult:
    """Everything a run produced.

    Attributes:
        config: The run configuration as a dict (what ``config.json`` holds).
        results: Long table with :data:`RESULT_COLUMNS`.
        weights: Long table with :data:`WEIGHT_COLUMNS`.
        test: Meta-test summaries of the final iterate by metric name (empty when the trainer
            ran without meta-test).
        test_best_val: Meta-test summaries of the parameters at the best meta-validation step
            (None without meta-validation or meta-test).
        best_val_step: That step (None without meta-validation).
        wall_seconds: Wall-clock time of meta-training (including meta-validation).
    """

    config: dict[str, Any]
    results: pd.DataFrame
    weights: pd.DataFrame
    test: dict[str, Summary]
    wall_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    test_best_val: dict[str, Summary] | None = None
    best_val_step: int | None = None


def prepare_out_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that run outputs can be written to ``out`` before any work starts.

    Returns the path. Raises :class:`ConfigError` naming ``--out`` when ``out`` holds results
    already (and ``overwrite`` is false), is a file, or cannot be written.
    """
    path = Path(out)
    check_path_names("--out", path)
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", str(out), "a directory path (this is an existing file)")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError("--out", str(out),
                          "an empty or new directory (this one is not empty; pass --overwrite "
                          "to replace it)")
    parent = _existing_ancestor(path.absolute())
    try:
        probe = tempfile.mkdtemp(prefix=".gabench-probe-", dir=parent)
    except OSError as exc:
        raise ConfigError("--out", str(out),
                          f"a writable location ({parent}: {exc.strerror})") from None
    os.rmdir(probe)
    return path


def check_path_names(param: str, path: Path) -> None:
    """Raise :class:`ConfigError` naming ``param`` when a name in ``path`` is longer than the
    file system allows (255 bytes on common Linux file systems) or the path as a whole is."""
    name_max, path_max = 255, 4096
    try:
        anchor = _existing_ancestor(path.absolute())
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        pass
    # a run directory is written through a temporary sibling ``.<name>.tmp-XXXXXXXX`` (+14 bytes)
    long = [part for part in path.parts if len(os.fsencode(part)) + 14 > name_max]
    if long:
        raise ConfigError(param, f"{str(path)[:60]}...", f"a path whose names have at most "
                          f"{name_max - 14} bytes (one has {len(os.fsencode(long[0]))})")
    if len(os.fsencode(str(path.absolute()))) > path_max - 64:
        raise ConfigError(param, f"{str(path)[:60]}...", f"a path shorter than {path_max - 64} bytes")


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def run_json(result: RunResult) -> str:
    """``config.json`` of a run: configuration, meta-test summaries (final iterate and, when
    there was meta-validation, the best-validation parameters), wall-clock; strict JSON."""
    data: dict[str, Any] = {
        "config": result.config, "test": {k: vars(v) for k, v in result.test.items()},
        "wall_seconds": result.wall_seconds, **result.extra}
    if result.test_best_val is not None:
        data["test_best_val"] = {k: vars(v) for k, v in result.test_best_val.items()}
        data["best_val_step"] = result.best_val_step
    return json.dumps(_json_safe(data), indent=2, default=str, allow_nan=False)


def write_run(out: str | os.PathLike, result: RunResult, overwrite: bool = False) -> Path:
    """Write ``results.parquet``, ``weights.parquet`` and ``config.json`` to ``out`` atomically.

    Files are written into a temporary sibling directory that replaces ``out`` in one rename,
    so an interrupted write leaves either the old directory or the new one, never a mix.
    """
    path = prepare_out_dir(out, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        result.results.to_parquet(tmp / "results.parquet", index=False)
        result.weights.to_parquet(tmp / "weights.parquet", index=False)
        (tmp / "config.json").write_text(run_json(result) + "\n")
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
