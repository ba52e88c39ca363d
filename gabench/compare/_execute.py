"""One planned run: train, meta-test and write it, as ``gabench run`` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from gabench.compare._signals import exit_if_terminated_worker, run_active
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
        ``{"run_id", "ok", "seconds", "message"}``; ``ok`` is false when training diverged
        (nothing is written then).
    """
    import torch

    from gabench.results import write_run
    from gabench.trainer import DivergedError, Trainer

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with run_active():
            result = Trainer(run.config, callbacks_for(run, study), progress=False).fit()
    except BaseException as exc:
        if isinstance(exc, DivergedError):
            return {"run_id": run.run_id, "ok": False, "seconds": time.perf_counter() - start,
                    "message": str(exc)}
        exit_if_terminated_worker(exc)
        raise
    finally:
        torch.set_num_threads(previous)
    label_tables(result.results, result.weights, run, study)
    result.extra = {**result.extra, "study": {
        "name": study, "run_id": run.run_id, "family_label": run.family_label,
        "method_label": run.method_label, "setting": run.setting}}
    write_run(out_dir, result, overwrite=overwrite)
    post = result.test.get("loss_post")
    return {"run_id": run.run_id, "ok": True, "seconds": time.perf_counter() - start,
            "message": f"loss_post={post.mean:.4g}" if post is not None else ""}


def label_tables(results: pd.DataFrame, weights: pd.DataFrame, run: PlannedRun, study: str) -> None:
    """Give a run's tables the study's identity: unique run id, method label, setting (in place)."""
    results["run"] = run.run_id
    results["method"] = run.method_label
    results["study"] = study
    results["family_label"] = run.family_label
    results["setting"] = run.setting_label
    weights["run"] = run.run_id
