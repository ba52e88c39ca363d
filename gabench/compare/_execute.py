"""One planned run: train, meta-test and write it, as ``gabench run`` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from gabench._errors import storage_full
from gabench.compare._signals import STOP, exit_if_terminated_worker, run_active
from gabench.compare._tracking import CallbacksFor, no_callbacks
from gabench.study import PlannedRun


def execute_run(run: PlannedRun, study: str, out_dir: Path, overwrite: bool = False,
                callbacks_for: CallbacksFor = no_callbacks,
                threads: int | None = None) -> dict[str, Any]:
    """Train, meta-test and write one planned run, as ``gabench run`` does.

    A run that stops without a result is recorded by its callbacks (the trainer calls their
    :meth:`~gabench.trainer.Callback.on_fail`).

    Args:
        run: The planned run.
        study: Study name (recorded in every row).
        out_dir: The run's directory (written atomically).
        overwrite: Replace an existing directory (a run whose configuration changed).
        callbacks_for: The tracking hook.
        threads: Torch threads while this run trains (None: leave the setting alone); the
            previous setting is restored afterwards.

    Returns:
        ``{"run_id", "ok", "seconds", "message", "diverged", "machine"}``; ``ok`` is false when the run
        failed (diverged, or raised any other error: the message keeps the reason; nothing is
        written then); ``diverged`` is true when it failed by diverging (a non-finite loss: an
        outcome of its configuration, which a resumed compare keeps rather than reruns);
        ``machine`` names where a finished run trained (:func:`gabench._provenance.machine`;
        ``""`` otherwise). A run found finished on disk (by another process meanwhile) is skipped.
    """
    import torch

    from gabench.compare._state import run_state
    from gabench.results import write_run
    from gabench.trainer import DivergedError, StopAtSafePoint

    start = time.perf_counter()

    def outcome(ok: bool, message: str, diverged: bool = False, machine: str = "") -> dict[str, Any]:
        return {"run_id": run.run_id, "ok": ok, "seconds": time.perf_counter() - start, "message": message,
                "diverged": diverged, "machine": machine}

    if not overwrite and run_state(out_dir, run.config) == "finished":
        # finished meanwhile (e.g. by a process that had it queued): skipped, not redone
        return outcome(True, "finished meanwhile; skipped")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    callbacks: list[Any] = []
    trained = False
    try:
        # the stop check first: it raises before the other callbacks of a hook write anything
        callbacks = [StopAtSafePoint(STOP), *callbacks_for(run, study)]
        with run_active():
            result = train_planned(run, study, callbacks)
        trained = True
        write_run(out_dir, result, overwrite=overwrite)
    except Exception as exc:  # any error is this run's failure (reason kept); the others go on
        finished = not overwrite and run_state(out_dir, run.config) == "finished"
        if finished and not isinstance(exc, DivergedError):  # written by another process meanwhile
            return outcome(True, "finished meanwhile; skipped")
        full = storage_full(exc)
        message = (f"{out_dir}: {full}; nothing of this run was kept (free space and rerun to resume)"
                   if full else one_line(exc))
        if trained:  # tracked as FINISHED by now, but its results are not on disk: a failed run
            _mark_failed(callbacks, message)
        return outcome(False, message, diverged=isinstance(exc, DivergedError))
    except BaseException as exc:
        exit_if_terminated_worker(exc)
        raise
    finally:
        torch.set_num_threads(previous)
    post = result.test.get("loss_post")
    return outcome(True, f"loss_post={post.mean:.4g}" if post is not None else "",
                   machine=result.extra.get("machine", ""))


def _mark_failed(callbacks: list[Any], reason: str) -> None:
    """Mark the tracked run of a run whose results could not be written as FAILED, where the
    tracking store still takes a write (on the same full disk it may not)."""
    for cb in callbacks:
        fail = getattr(cb, "fail", None)
        if callable(fail):
            try:
                fail(f"results not written: {reason}")
            except Exception:  # the run's own failure is what is reported
                pass


def one_line(exc: BaseException) -> str:
    """``exc`` as one line (its message with line breaks folded, at most 500 characters),
    prefixed by its type unless it is a divergence (whose message says what happened)."""
    from gabench.trainer import DivergedError

    text = " ".join(str(exc).split())[:500]
    if isinstance(exc, DivergedError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def train_planned(run: PlannedRun, study: str, callbacks: list[Any]) -> Any:
    """Train and meta-test one planned run as ``gabench run`` does and label its tables with the
    study's identity; returns the :class:`~gabench.results.RunResult` (nothing is written).

    A run that stops without a result is recorded by its callbacks (the trainer calls their
    :meth:`~gabench.trainer.Callback.on_fail`) and raises.
    """
    from gabench.trainer import Trainer

    result = Trainer(run.config, callbacks, progress=False).fit()
    label_tables(result.results, result.weights, run, study)
    result.extra = {**result.extra, "study": {
        "name": study, "run_id": run.run_id, "family_label": run.family_label,
        "method_label": run.method_label, "setting": run.setting}}
    return result


def label_tables(results: pd.DataFrame, weights: pd.DataFrame, run: PlannedRun, study: str) -> None:
    """Give a run's tables the study's identity: unique run id, method label, setting (in place)."""
    results["run"] = run.run_id
    results["method"] = run.method_label
    results["study"] = study
    results["family_label"] = run.family_label
    results["setting"] = run.setting_label
    weights["run"] = run.run_id
