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

#: Optuna parameter names that are run settings (an aggregator parameter cannot take them).
RUN_PARAMS = ("alpha", "beta", "inner_steps", "meta_batch")


def check_param_ranges(aggregator: str, ranges: dict[str, tuple[float, float]], param: str) -> None:
    """For tuning: every name is a floating-point parameter of ``aggregator`` and every range
    ``0 < LOW < HIGH`` (finite; sampled log-uniform).

    Raises:
        ConfigError: one line naming ``param``, the value and what is allowed.
    """
    import math

    from gabench._errors import ConfigError

    specs = AGGREGATORS[aggregator].param_specs()
    floats = [s.name for s in specs if s.type is float and s.name not in RUN_PARAMS]
    for name, rng in ranges.items():
        if name not in floats:
            allowed = (f"a floating-point parameter of aggregator {aggregator!r} ({', '.join(floats)})"
                       if floats else
                       f"nothing: aggregator {aggregator!r} has no floating-point parameter to tune")
            raise ConfigError(param, name, allowed)
        lo, hi = rng
        ok = all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                 for x in (lo, hi))
        if not (ok and 0 < lo < hi):
            raise ConfigError(param, f"{name} [{lo}, {hi}]", "LOW < HIGH with 0 < LOW (log-uniform)")


__all__ = ["AGGREGATORS", "OUTER_GRADIENTS", "RUN_PARAMS", "UPDATES", "Aggregator", "AlignedMTLAggregator",
           "CAGradAggregator", "ConFIGAggregator", "CosineAgreement", "DualProjAggregator",
           "GradientAgreement", "GradientAgreementTextbook", "IMTLGAggregator", "MGDAAggregator", "Mean",
           "PCGradAggregator", "PositiveAgreement", "SoftmaxAgreement", "TORCHJD_AGGREGATORS",
           "TorchJDAggregator",
           "UPGradAggregator", "check_param_ranges", "weight_stats"]
