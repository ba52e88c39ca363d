"""Experiment tracking (MLflow), an optional integration behind a trainer callback."""

from gabench.tracking._mlflow import MLflowTracker, git_commit, learning_curve_png
from gabench.tracking._uri import check_tracking_uri, default_tracking_uri

__all__ = ["MLflowTracker", "check_tracking_uri", "default_tracking_uri", "git_commit",
           "learning_curve_png"]
