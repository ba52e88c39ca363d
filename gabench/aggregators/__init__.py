"""Aggregators: a matrix of per-task vectors (n_tasks, n_params) -> task weights and an outer direction.

See :mod:`gabench.aggregators._base` for which matrix each kind sees.
"""

from gabench.aggregators._base import OUTER_GRADIENTS, UPDATES, Aggregator, weight_stats
from gabench.aggregators._ga import GradientAgreement, GradientAgreementTextbook
from gabench.aggregators._ga_ablations import CosineAgreement, PositiveAgreement, SoftmaxAgreement
from gabench.aggregators._mean import Mean
from gabench.aggregators._torchjd import (
    TORCHJD_AGGREGATORS,
    AlignedMTLAggregator,
    CAGradAggregator,
    ConFIGAggregator,
    DualProjAggregator,
    IMTLGAggregator,
    MGDAAggregator,
    PCGradAggregator,
    TorchJDAggregator,
    UPGradAggregator,
)

#: The one map from registry names to aggregator classes.
AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (
        Mean, GradientAgreement, GradientAgreementTextbook, PositiveAgreement, CosineAgreement,
        SoftmaxAgreement,
        # TorchJD's (TORCHJD_AGGREGATORS), written out so that `gabench list` can read this
        # registry without importing it
        UPGradAggregator, PCGradAggregator, MGDAAggregator, CAGradAggregator, IMTLGAggregator,
        AlignedMTLAggregator, DualProjAggregator, ConFIGAggregator,
    )
}

__all__ = ["AGGREGATORS", "OUTER_GRADIENTS", "UPDATES", "Aggregator", "AlignedMTLAggregator",
           "CAGradAggregator", "ConFIGAggregator", "CosineAgreement", "DualProjAggregator",
           "GradientAgreement", "GradientAgreementTextbook", "IMTLGAggregator", "MGDAAggregator", "Mean",
           "PCGradAggregator", "PositiveAgreement", "SoftmaxAgreement", "TORCHJD_AGGREGATORS",
           "TorchJDAggregator",
           "UPGradAggregator", "weight_stats"]
