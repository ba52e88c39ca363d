"""gabench: a benchmark suite for task weighting in meta-learning.

gabench runs MAML and Reptile with uniform task weights (the baselines) and with gradient
agreement (GA) weights through one trainer, on a registry of task families, and writes results
as long-format tables.
"""

from gabench._errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__"]
