"""The tracking hook of a compare: which callbacks each planned run gets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gabench.study import PlannedRun
from gabench.trainer import Callback

CallbacksFor = Callable[[PlannedRun, str], list[Callback]]


def no_callbacks(run: PlannedRun, study: str) -> list[Callback]:
    """The default tracking hook: no callbacks."""
    return []


@dataclass(frozen=True)
class TrackRuns:
    """Tracking hook of ``gabench compare``: one MLflow run per planned run.

    The MLflow run is named ``<study>__<run id>`` and tagged with the study, the run id, the
    family and method labels of the study file and the setting, on top of what
    :class:`~gabench.tracking.MLflowTracker` logs for every run.

    Attributes:
        tracking_uri: MLflow tracking URI (checked beforehand).
        experiment: Experiment name; None: ``gabench-<study>``.
        plots: Each run's learning-curve and weight PNGs (``--no-plots``: left out; the metrics
            stay, and the study's report draws its own figures).
    """

    tracking_uri: str
    experiment: str | None = None
    plots: bool = True

    def prepare(self, study: str) -> str:
        """Create (or find) the experiment in this process, before any worker starts: a new
        SQLite store gets its tables here, not from two workers racing to migrate it."""
        from gabench.tracking import experiment_id, tracking_client

        name = self.experiment or f"gabench-{study}"
        experiment_id(tracking_client(self.tracking_uri), self.tracking_uri, name,
                      self.description(study))
        return name

    @staticmethod
    def description(study: str) -> str:
        """The experiment's description (MLflow's ``mlflow.note.content``)."""
        return (f"Runs of the gabench study `{study}` (`gabench compare`): one MLflow run per planned "
                "run, named `method · family · seed`. The result tables and the report are the record; "
                "MLflow mirrors them for browsing.")

    def __call__(self, run: PlannedRun, study: str) -> list[Callback]:
        from gabench.tracking import MLflowTracker
        from gabench.tracking._mlflow import run_display_name

        tags = {"study": study, "study_run": run.run_id, "family_label": run.family_label,
                "method_label": run.method_label}
        if run.setting:
            tags["setting"] = run.setting_label
        return [MLflowTracker(self.tracking_uri, self.experiment or f"gabench-{study}",
                              run_name=run_display_name(run.method_label, run.family_label, run.config.seed,
                                                        run.setting_label),
                              tags=tags, description=self.description(study), plots=self.plots)]
