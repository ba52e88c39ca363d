"""Aggregators: per-task update vectors (n_tasks, n_params) -> task weights (n_tasks,)."""

from gabench.aggregators._base import Aggregator, weight_stats
from gabench.aggregators._ga import GradientAgreement, GradientAgreementBook
from gabench.aggregators._mean import Mean

#: The one map from registry names to aggregator classes.
AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (Mean, GradientAgreement, GradientAgreementBook)
}

__all__ = ["AGGREGATORS", "Aggregator", "GradientAgreement", "GradientAgreementBook", "Mean",
           "weight_stats"]
