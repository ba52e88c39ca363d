"""Signals of a compare: SIGTERM stops the parent like Ctrl-C; in a worker it stops the run at
its next safe point (the trainer's next hook), then the worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gabench._processes import StopRequest, Terminated, die_with_parent, sigterm_handled

__all__ = ["STATE", "STOP", "Terminated", "exit_if_terminated_worker", "run_active", "sigterm_stops",
           "worker_init"]


@dataclass
class _ProcessState:
    """What the signal handlers need to know about this process."""

    in_worker: bool = False  # a worker process of a pool
    run_active: bool = False  # a run is training in this process


STATE = _ProcessState()

#: A SIGTERM received by a pool worker while its run trains: the run's
#: :class:`~gabench.trainer.StopAtSafePoint` callback raises it at the trainer's next hook.
STOP = StopRequest()


def _stop_the_active_run(signum: int) -> bool:
    """Note ``signum`` in :data:`STOP` if a run trains in this process (True), for the run to
    stop at its next safe point; False: no run trains."""
    if STATE.run_active:
        STOP.signum = signum
    return STATE.run_active


def _worker_sigterm(signum: int, frame: Any) -> None:
    """A pool worker being stopped: outside a run it exits at once; during a run the run stops at
    its next safe point, marks itself KILLED and the worker exits
    (:func:`exit_if_terminated_worker`).

    The handler never raises: raised here, :class:`Terminated` could cut a tracking-store write
    in half (an SQLite transaction left open), after which the run's failure handling could not
    end its MLflow run, left RUNNING. A worker that finishes its run before the next hook
    stops the next run at its start."""
    if not _stop_the_active_run(signum):
        os._exit(128 + signum)


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM stops the compare: a run training in
    this process (``--workers 1``) stops at its next safe point, as a worker's does (see
    :func:`_worker_sigterm`), and :class:`Terminated` rises from there; otherwise it is raised
    at once."""
    def handler(signum: int, frame: Any) -> None:
        if not _stop_the_active_run(signum):
            raise Terminated(f"signal {signum}")

    STOP.signum = None
    try:
        with sigterm_handled(handler):
            yield
    finally:
        STOP.signum = None


def worker_init(parent_pid: int) -> None:
    """Initializer of pool workers: the parent handles Ctrl-C and stops the pool; its
    ``terminate()`` (SIGTERM) lets an active run mark itself KILLED; the worker gets the same
    SIGTERM when the parent dies, even by ``kill -9``, so no worker outlives it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    STATE.in_worker = True
    die_with_parent(parent_pid)


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
