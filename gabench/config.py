"""Run configuration: one dataclass that names every knob, validated, and its construction.

This module and :mod:`gabench.cli` are the edge where names map to classes; the library
below it receives plug-in instances.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from gabench._errors import (
    ConfigError,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
)
from gabench.aggregators import AGGREGATORS, Aggregator
from gabench.algorithms import ALGORITHMS, MAML, Algorithm
from gabench.tasks import FAMILIES, OutlierTasks, TaskFamily, make_family

OPTIMIZERS = ("adam", "sgd")


@dataclass
class RunConfig:
    """Everything that defines one run; ``config.json`` is this, as a dict."""

    family: str = "sine"
    """Registry name of the task family (``gabench list``)."""
    family_params: dict[str, Any] = field(default_factory=dict)
    """Family constructor arguments (shots, ways, noise, ...); unset ones take the defaults."""
    algorithm: str = "maml"
    """``maml`` or ``reptile``."""
    aggregator: str = "mean"
    """``mean`` (baseline), ``ga`` (gradient agreement) or ``ga-book``."""
    first_order: bool = False
    """MAML only: drop the second-order term (FOMAML)."""
    alpha: float | None = None
    """Inner learning rate (None: the family's default_alpha, see ``gabench list``)."""
    beta: float = 0.001
    """Outer learning rate."""
    inner_steps: int = 1
    """Inner SGD steps per task during meta-training."""
    eval_inner_steps: int | None = None
    """Inner steps at meta-validation and meta-test (default: ``inner_steps``)."""
    meta_batch: int = 25
    """Tasks per meta-batch T."""
    steps: int = 1000
    """Meta-iterations (outer steps)."""
    optimizer: str = "adam"
    """Outer optimizer: ``adam`` or ``sgd`` (plain ``theta <- theta - beta * direction``)."""
    seed: int = 0
    """Base seed: fixes the task streams and the model initialisation."""
    outlier_fraction: float = 0.0
    """Fraction of each meta-training batch replaced by corrupted tasks, in [0, 1]."""
    outlier_mode: str = "shuffle"
    """How outlier tasks are corrupted: ``shuffle``, ``flip`` (classification), ``negate``
    (regression)."""
    eval_every: int = 0
    """Meta-validate every N steps (0: no meta-validation, final meta-test only)."""
    val_tasks: int = 100
    """Held-out meta-validation tasks (a fixed set, the same at each validation)."""
    test_tasks: int | None = None
    """Held-out meta-test tasks (default: the family's, 600)."""
    eval_batch: int = 200
    """Tasks adapted at once during evaluation (bounds memory)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""

    def validate(self) -> RunConfig:
        """Check every field; raise :class:`ConfigError` on the first bad one."""
        check_choice("family", self.family, FAMILIES)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_choice("aggregator", self.aggregator, AGGREGATORS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.first_order and self.algorithm != "maml":
            raise ConfigError("first_order", self.first_order,
                              "false unless algorithm is maml (Reptile is first order already)")
        if self.alpha is not None:
            check_positive("alpha", self.alpha)
        check_positive("beta", self.beta)
        check_int("inner_steps", self.inner_steps)
        if self.eval_inner_steps is not None:
            check_int("eval_inner_steps", self.eval_inner_steps)
        check_int("meta_batch", self.meta_batch)
        check_int("steps", self.steps, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_fraction("outlier_fraction", self.outlier_fraction)
        check_int("eval_every", self.eval_every, minimum=0)
        check_int("val_tasks", self.val_tasks)
        if self.test_tasks is not None:
            check_int("test_tasks", self.test_tasks)
        check_int("eval_batch", self.eval_batch)
        resolve_device(self.device)
        self.build_family()
        return self

    def build_family(self) -> TaskFamily:
        """The task family, wrapped with outlier tasks when ``outlier_fraction`` > 0."""
        family = make_family(self.family, self.family_params)
        if self.outlier_fraction > 0 or self.outlier_mode != "shuffle":
            family = OutlierTasks(family, self.outlier_fraction, self.outlier_mode)
        return family

    @property
    def effective_alpha(self) -> float:
        """``alpha``, or the family's default when it is unset."""
        if self.alpha is not None:
            return float(self.alpha)
        return FAMILIES[self.family].default_alpha

    def build_algorithm(self) -> Algorithm:
        cls = ALGORITHMS[self.algorithm]
        if cls is MAML:
            return MAML(self.effective_alpha, self.inner_steps, first_order=self.first_order)
        return cls(self.effective_alpha, self.inner_steps)

    def build_aggregator(self) -> Aggregator:
        return AGGREGATORS[self.aggregator]()

    @property
    def method(self) -> str:
        """Short method label: ``maml``, ``fomaml`` or ``reptile``, plus ``+ga`` etc."""
        algo = "fomaml" if (self.algorithm == "maml" and self.first_order) else self.algorithm
        return algo if self.aggregator == "mean" else f"{algo}+{self.aggregator}"

    @property
    def run_name(self) -> str:
        """``family__algorithm__aggregator__s<seed>`` (``fomaml`` for first-order MAML)."""
        algo = "fomaml" if (self.algorithm == "maml" and self.first_order) else self.algorithm
        return f"{self.family}__{algo}__{self.aggregator}__s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """All fields, with ``alpha`` resolved to the value actually used."""
        data = dataclasses.asdict(self)
        data["alpha"] = self.effective_alpha
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a mapping; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(key, data[key], "one of the run settings " + ", ".join(sorted(names)))
        return cls(**data)


def parse_method(method: str, param: str = "method") -> dict[str, Any]:
    """``maml``, ``fomaml`` or ``reptile``, optionally ``+AGGREGATOR`` -> RunConfig fields.

    >>> parse_method("fomaml+ga")
    {'algorithm': 'maml', 'first_order': True, 'aggregator': 'ga'}
    """
    algo, _, aggregator = method.strip().partition("+")
    aggregator = aggregator or "mean"
    allowed = "maml, fomaml or reptile, optionally +" + "/+".join(AGGREGATORS)
    if algo not in (*ALGORITHMS, "fomaml") or aggregator not in AGGREGATORS:
        raise ConfigError(param, method, allowed)
    return {"algorithm": "maml" if algo == "fomaml" else algo, "first_order": algo == "fomaml",
            "aggregator": aggregator}


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``device``; an error naming it when it is unknown or unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device", device, "cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", device, "cpu (no CUDA device is available here)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", device,
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev
