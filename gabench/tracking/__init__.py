"""Experiment tracking (MLflow), an optional integration behind a trainer callback."""

from gabench.tracking._mlflow import (
    MLflowTracker,
    family_params,
    git_commit,
    learning_curve_png,
    run_display_name,
    task_weights_png,
)
from gabench.tracking._store import (
    DEFAULT_DESCRIPTION,
    experiment_id,
    set_terminated,
    store_lock,
    tracking_client,
)
from gabench.tracking._uri import check_tracking_uri, default_tracking_uri

__all__ = ["DEFAULT_DESCRIPTION", "MLflowTracker", "check_tracking_uri", "default_tracking_uri",
           "experiment_id", "family_params", "git_commit", "learning_curve_png", "run_display_name",
           "set_terminated", "store_lock", "task_weights_png", "tracking_client"]
