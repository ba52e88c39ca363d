"""Files replaced atomically (a temporary file renamed into place), with one line on a full disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from gabench._errors import StorageFullError, storage_full

__all__ = ["read_json", "write_json", "write_parquet"]


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a partial file would hold on to the space that ran out
        _raise_if_full(exc, path)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_full(exc, path)
        raise


def _raise_if_full(exc: BaseException, path: Path) -> None:
    """Raise :class:`~gabench._errors.StorageFullError` (one line naming ``path``) when ``exc``
    is a full disk; the file at ``path`` is unchanged (written atomically)."""
    full = storage_full(exc) if isinstance(exc, Exception) else None
    if full:
        raise StorageFullError(str(path), full) from None
