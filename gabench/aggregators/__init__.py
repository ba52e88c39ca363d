"""Aggregators: per-task update vectors (n_tasks, n_params) -> task weights (n_tasks,)."""

from gabench.aggregators._base import Aggregator, weight_stats
from gabench.aggregators._ga import GradientAgreement, GradientAgreementTextbook
from gabench.aggregators._mean import Mean

#: The one map from registry names to aggregator classes.
AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (Mean, GradientAgreement, GradientAgreementTextbook)
}

__all__ = ["AGGREGATORS", "Aggregator", "GradientAgreement", "GradientAgreementTextbook", "Mean",
           "weight_stats"]
