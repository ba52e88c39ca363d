"""Task families: distributions over tasks that sample whole meta-batches as stacked tensors."""

from __future__ import annotations

from typing import Any

from gabench._errors import check_choice
from gabench.tasks._base import (
    SPLITS,
    TaskBatch,
    TaskFamily,
    TaskStream,
    init_generator,
    task_rng,
)
from gabench.tasks._digits import Digits
from gabench.tasks._images import ImageFamily, MiniImageNet, Omniglot
from gabench.tasks._linear import LinearBinary
from gabench.tasks._outliers import OutlierTasks
from gabench.tasks._sine import Sine
from gabench.tasks._sklearn import Blobs, Circles, Classification, Moons, Regression
from gabench.tasks._textbook import TextbookBinary

#: The one map from registry names to family classes.
FAMILIES: dict[str, type[TaskFamily]] = {
    cls.name: cls
    for cls in (TextbookBinary, LinearBinary, Sine, Classification, Moons, Circles, Blobs,
                Regression, Digits, Omniglot, MiniImageNet)
}


def make_family(name: str, params: dict[str, Any] | None = None) -> TaskFamily:
    """Build the family ``name`` from a parameter mapping (values may be strings).

    Raises:
        ConfigError: unknown family, unknown parameter or invalid value.
    """
    check_choice("family", name, FAMILIES)
    return FAMILIES[name].from_params(params or {})


__all__ = [
    "FAMILIES", "SPLITS", "Blobs", "Circles", "Classification", "Digits", "ImageFamily",
    "LinearBinary", "MiniImageNet", "Moons", "Omniglot", "OutlierTasks", "Regression", "Sine",
    "TaskBatch", "TaskFamily", "TaskStream", "TextbookBinary",
    "init_generator", "make_family", "task_rng",
]
