"""Provenance of results: which gabench source tree produced them."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def source_hash() -> str:
    """First 8 hex digits of a SHA-256 over the package's ``.py`` files (paths and contents).

    Tells apart two uncommitted states of the code that the git commit alone cannot.
    """
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:8]


@functools.cache
def git_commit() -> str:
    """The git commit of the gabench source tree, or ``""`` outside a git checkout.

    With uncommitted changes to the tracked source (the package and pyproject.toml; reports and
    other outputs do not count) the result is ``<commit>+dirty.<source hash>``
    (:func:`source_hash`), so runs made from different uncommitted states are told apart.
    Computed once per process (the code a process runs does not change under it).
    """
    root = _PACKAGE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                _PACKAGE.name, "pyproject.toml"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + (f"+dirty.{source_hash()}" if dirty else "")
