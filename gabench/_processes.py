"""Worker processes that never outlive their parent, and SIGTERM handled like Ctrl-C.

Used by the commands that run work in a local process pool (``gabench tune --workers N``): a
worker gets SIGTERM when its parent dies, even by ``kill -9`` (Linux ``PR_SET_PDEATHSIG``; on
other systems the worker notices a changed parent id at its next check), and SIGTERM in the
parent stops the pool instead of orphaning it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so that a terminated process stops as an interrupted one:
    the work in flight is marked as failed or killed, and ``finally`` blocks run."""

    gabench_run_status = "KILLED"  # its MLflow run is KILLED (gabench.tracking._mlflow.run_status)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


@contextmanager
def sigterm_handled(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While the block runs in the main thread, ``handler`` handles SIGTERM, and the previous
    handler is put back after it. Elsewhere the block runs as it is (only the main thread may
    set signal handlers, and Python runs them there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_raises() -> AbstractContextManager[None]:
    """While the block runs in the main thread, SIGTERM raises :class:`Terminated`."""
    return sigterm_handled(_raise_terminated)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT held back while the block runs, and delivered (their handlers run)
    right after it: for a step that must not be cut in half, such as creating a record and
    keeping its id, so that the failure handling that the signal triggers can find the record.

    Python runs signal handlers in the main thread, whichever thread the kernel delivers the
    signal to, so the block swaps in a handler that only notes the signal, then puts the
    previous handlers back and raises what it noted. (Blocking with ``pthread_sigmask`` is not
    enough: it masks the calling thread only, and with other threads alive the kernel hands
    the signal to one of them while the main thread still runs the handler inside the block.)
    Outside the main thread a handler cannot interrupt the block, which then runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)

    held = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, note) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


class StopRequest:
    """A SIGTERM that is honoured at the next safe point instead of wherever it lands.

    Raising from a signal handler can interrupt a database write half-way (an SQLite
    transaction left open blocks every other process on the file). Inside :meth:`catching`,
    SIGTERM only sets a flag; the work checks :meth:`check` at points where stopping is safe
    (the trainer's callbacks, between trials) and raises :class:`Terminated` there.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def catching(self) -> Iterator[StopRequest]:
        def handler(signum: int, frame: Any) -> None:
            self.signum = signum

        with sigterm_handled(handler):
            yield self

    def check(self) -> None:
        """Raise :class:`Terminated` if a SIGTERM arrived."""
        if self.signum is not None:
            raise Terminated(f"signal {self.signum}")


def die_with_parent(parent_pid: int) -> None:
    """Make this process receive SIGTERM when its parent ``parent_pid`` exits.

    Call it first thing in a worker process (a pool initializer). If the parent is already
    gone (it died between spawning this process and this call), exit at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGTERM)


def parent_alive(parent_pid: int) -> bool:
    """Whether this process's parent is still ``parent_pid`` (the portable fallback check)."""
    return os.getppid() == parent_pid
