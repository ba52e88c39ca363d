"""Signals of a compare: SIGTERM stops the parent like Ctrl-C, and a worker only after its run."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so that a terminated compare stops like an interrupted one."""


@dataclass
class _ProcessState:
    """What the signal handlers need to know about this process."""

    in_worker: bool = False  # a worker process of a pool
    run_active: bool = False  # a run is training in this process


STATE = _ProcessState()


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def _worker_sigterm(signum: int, frame: Any) -> None:
    """A pool worker being stopped: let the active run mark itself KILLED, then exit."""
    if STATE.run_active:
        raise Terminated(f"signal {signum}")
    os._exit(128 + signum)


def worker_init() -> None:
    """Initializer of pool workers: the parent handles Ctrl-C and stops the pool; its
    ``terminate()`` (SIGTERM) lets an active run mark itself KILLED."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    STATE.in_worker = True


@contextmanager
def run_active() -> Iterator[None]:
    """Marks the body as a training run (a SIGTERM in a worker then stops the run, not the process)."""
    STATE.run_active = True
    try:
        yield
    finally:
        STATE.run_active = False


def exit_if_terminated_worker(exc: BaseException) -> None:
    """In a pool worker, a terminated run ends the process: never go on to another queued run."""
    if STATE.in_worker and isinstance(exc, Terminated):
        os._exit(143)


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """While a study runs in the main thread, SIGTERM raises :class:`Terminated` (so the worker
    processes are stopped, not orphaned, and the study table is rebuilt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
