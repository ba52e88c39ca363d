"""Provenance of results: which gabench source tree produced them."""

from __future__ import annotations

import functools
import hashlib
import platform
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


@functools.cache
def machine() -> str:
    """The processor and torch build a run computed on, e.g. ``"AMD EPYC (x86_64), torch 2.13.0+cpu"``.

    Recorded with each run: the same configuration and seed give the same numbers on the same
    machine, but not across processors (floating-point rounding differs with the instruction set
    the kernels use), which decides, e.g., whether a run near the edge of stability diverges.
    """
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    return f"{processor_name(cpuinfo, platform.machine(), platform.processor())}, torch {torch.__version__}"


def processor_name(cpuinfo: str, arch: str, processor: str) -> str:
    """The processor's model from ``/proc/cpuinfo`` text with the architecture, e.g. ``"AMD EPYC
    (x86_64)"``; else ``processor`` (``platform.processor()``), else ``arch``, else ``"unknown"``."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return f"{value.strip()} ({arch or 'unknown'})"
    return processor or arch or "unknown"
