"""Algorithms: a batched inner loop and each task's contribution to the outer step."""

from gabench.algorithms._base import Algorithm, Learner, StepResult, flatten_tasks
from gabench.algorithms._fast_path import LOSS_KINDS, FastMLP
from gabench.algorithms._maml import MAML
from gabench.algorithms._reptile import Reptile

#: The one map from registry names to algorithm classes.
ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (MAML, Reptile)}

__all__ = ["ALGORITHMS", "LOSS_KINDS", "MAML", "Algorithm", "FastMLP", "Learner", "Reptile",
           "StepResult", "flatten_tasks"]
