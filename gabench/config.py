"""Run configuration: every run setting declared once, validated, and turned into plug-ins.

Each field of :class:`RunConfig` carries a :class:`Setting` (its type, bounds, help text,
command-line flag and where a study file may set it). Validation (:meth:`RunConfig.validate`),
the options of ``gabench run`` and ``gabench tune`` (:mod:`gabench.commands`) and the keys of
study files (:mod:`gabench.study`) are all derived from these declarations, so a new setting is
one new field.

Importing this module is cheap (no torch, no plug-in registry): the registries are imported
when a configuration is validated or built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gabench._errors import ConfigError, check_choice, check_int

if TYPE_CHECKING:
    import torch

    from gabench.aggregators import Aggregator
    from gabench.algorithms import Algorithm
    from gabench.tasks import TaskFamily

OPTIMIZERS = ("adam", "sgd")

#: Upper bounds of the run settings: larger values are refused up front (one line, exit status 2)
#: instead of failing after minutes of training or in the memory allocator.
MAX_SEED = 2**63 - 1
MAX_STEPS = 10_000_000
MAX_META_BATCH = 10_000
MAX_INNER_STEPS = 10_000
MAX_EVAL_TASKS = 1_000_000
MAX_EVAL_BATCH = 100_000
MAX_LEARNING_RATE = 1e3
#: Bound of the common family size parameters (``shots``, ``query_shots``, ``ways``); each
#: family checks its own, tighter limits on top.
MAX_FAMILY_SIZE = 100_000
FAMILY_SIZE_PARAMS = ("shots", "query_shots", "ways")


@dataclass(frozen=True)
class Setting:
    """The declaration of one run setting.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"str"``, ``"bool"`` or ``"params"`` (a mapping of
            plug-in constructor parameters: the family's or the aggregator's).
        help: One line for ``--help`` and the docs.
        group: Option group of the command line (``method``, ``tasks``, ``schedule``).
        minimum: Smallest allowed value (numbers).
        maximum: Largest allowed value (numbers).
        above_minimum: The value must be strictly greater than ``minimum`` (floats).
        optional: None is allowed and means the default described in ``help``.
        choices: For strings: a fixed tuple, or the name of a plug-in registry
            (``"family"``, ``"algorithm"``, ``"aggregator"``) looked up when validating.
        study: Where a study file may set it: ``"run"`` (``[defaults]``, families, methods,
            ``[settings]``), ``"method"`` (method tables only) or ``""`` (by the file's structure:
            family tables, seeds).
        metavar: Placeholder in ``--help``.
    """

    kind: str
    help: str
    group: str = "method"
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False
    optional: bool = False
    choices: tuple[str, ...] | str | None = None
    study: str = "run"
    metavar: str | None = None

    def allowed(self) -> str:
        """What the setting accepts, as a phrase for error messages."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            return f"an integer in [{int(self.minimum or 0)}, {int(self.maximum or 0)}]"
        if self.kind == "float":
            if self.minimum == 0 and self.maximum == 1 and not self.above_minimum:
                return "a number in [0, 1]"
            low = f"> {self.minimum:g}" if self.above_minimum else f">= {self.minimum:g}"
            return f"a finite number {low} and <= {self.maximum:g}"
        return "a string"

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to the setting's type; :class:`ConfigError` when it is not allowed."""
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(name, value, self.allowed())
            return value
        if self.kind == "int":
            assert self.minimum is not None and self.maximum is not None
            return check_int(name, value, minimum=int(self.minimum), maximum=int(self.maximum))
        if self.kind == "float":
            if isinstance(value, bool):
                raise ConfigError(name, value, self.allowed())
            try:
                x = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(name, value, self.allowed()) from None
            assert self.minimum is not None and self.maximum is not None
            low_ok = x > self.minimum if self.above_minimum else x >= self.minimum
            if not (math.isfinite(x) and low_ok and x <= self.maximum):
                raise ConfigError(name, value, self.allowed())
            return x
        if self.kind == "str":
            if not isinstance(value, str):
                raise ConfigError(name, value, self.allowed())
            if self.choices is not None:
                check_choice(name, value, registry_names(self.choices))
            return value
        return value


def setting(default: Any = None, *, factory: Any = None, **declaration: Any) -> Any:
    """A dataclass field of :class:`RunConfig` with its :class:`Setting` declaration."""
    meta = {"setting": Setting(**declaration)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def registry_names(choices: tuple[str, ...] | str) -> tuple[str, ...]:
    """The allowed names of a choice: the tuple itself, or the keys of a plug-in registry."""
    if isinstance(choices, tuple):
        return choices
    if choices == "family":
        from gabench.tasks import FAMILIES

        return tuple(FAMILIES)
    if choices == "algorithm":
        from gabench.algorithms import ALGORITHMS

        return tuple(ALGORITHMS)
    if choices == "aggregator":
        from gabench.aggregators import AGGREGATORS

        return tuple(AGGREGATORS)
    if choices == "outlier_mode":
        from gabench.tasks._outliers import MODES

        return tuple(MODES)
    raise KeyError(choices)


@dataclass
class RunConfig:
    """Everything that defines one run; ``config.json`` is this, as a dict.

    Every field is declared with :func:`setting`; see :data:`RUN_SETTINGS`.
    """

    family: str = setting("sine", kind="str", choices="family", study="",
                          help="task family (registry name, see gabench list)")
    family_params: dict[str, Any] = setting(
        factory=dict, kind="params", group="tasks", study="",
        help="family constructor arguments (shots, ways, noise, ...); unset ones take the defaults")
    algorithm: str = setting("maml", kind="str", choices="algorithm", study="method",
                             help="meta-learning algorithm: maml or reptile")
    aggregator: str = setting("mean", kind="str", choices="aggregator", study="method",
                              help="task weighting: mean (baseline), ga (gradient agreement) or "
                                   "ga-textbook (see gabench list)")
    aggregator_params: dict[str, Any] = setting(
        factory=dict, kind="params", study="method",
        help="aggregator parameters (e.g. temperature of ga-softmax, c of cagrad; see gabench list)")
    first_order: bool = setting(False, kind="bool", study="method",
                                help="first-order MAML (FOMAML; maml only)")
    alpha: float | None = setting(None, kind="float", minimum=0, above_minimum=True,
                                  maximum=MAX_LEARNING_RATE, optional=True,
                                  help="inner learning rate (default: the family's, see gabench list)")
    beta: float = setting(0.001, kind="float", minimum=0, above_minimum=True, maximum=MAX_LEARNING_RATE,
                          help="outer learning rate")
    inner_steps: int = setting(1, kind="int", minimum=1, maximum=MAX_INNER_STEPS,
                               help="inner SGD steps per task during meta-training")
    eval_inner_steps: int | None = setting(None, kind="int", minimum=1, maximum=MAX_INNER_STEPS,
                                           optional=True,
                                           help="inner steps at meta-validation and meta-test "
                                                "(default: inner_steps)")
    optimizer: str = setting("adam", kind="str", choices=OPTIMIZERS,
                             help="outer optimizer: adam, or sgd (plain theta <- theta - beta * direction)")
    meta_batch: int = setting(25, kind="int", minimum=1, maximum=MAX_META_BATCH, group="tasks",
                              help="tasks per meta-batch T")
    outlier_fraction: float = setting(0.0, kind="float", minimum=0, maximum=1, group="tasks",
                                      help="fraction of each meta-training batch replaced by corrupted "
                                           "tasks, in [0, 1]")
    outlier_mode: str = setting("shuffle", kind="str", choices="outlier_mode", group="tasks",
                                help="how outlier tasks are corrupted: shuffle, flip (classification) "
                                     "or negate (regression)")
    steps: int = setting(1000, kind="int", minimum=0, maximum=MAX_STEPS, group="schedule",
                         help="meta-iterations (outer steps)")
    seed: int = setting(0, kind="int", minimum=0, maximum=MAX_SEED, group="schedule", study="",
                        help="base seed: fixes the task streams and the model initialisation")
    eval_every: int = setting(0, kind="int", minimum=0, maximum=MAX_STEPS, group="schedule",
                              help="meta-validate every N steps (0: final meta-test only)")
    val_tasks: int = setting(100, kind="int", minimum=1, maximum=MAX_EVAL_TASKS, group="schedule",
                             help="held-out meta-validation tasks (a fixed set)")
    test_tasks: int | None = setting(None, kind="int", minimum=1, maximum=MAX_EVAL_TASKS, optional=True,
                                     group="schedule", help="held-out meta-test tasks (default: the "
                                                            "family's, 600)")
    eval_batch: int = setting(200, kind="int", minimum=1, maximum=MAX_EVAL_BATCH, group="schedule",
                              help="tasks adapted at once during evaluation (bounds memory)")
    device: str = setting("cpu", kind="str", group="schedule", help="cpu, cuda or cuda:N")

    def validate(self, *, plugins: tuple[str, ...] = (), memory: bool = False) -> RunConfig:
        """Check every field against its declaration; raise :class:`ConfigError` on the first bad one.

        Args:
            plugins: Fields (``family``, ``algorithm``, ``aggregator``) whose plug-in is given as
                an instance (see :class:`~gabench.trainer.Trainer`): their names are not looked
                up in the registries and the family is not built from them.
            memory: Also check that the run fits in the memory available now
                (:func:`gabench._memory.check_run_memory`; ``gabench run`` does, before it creates
                anything). Off by default: a study file is planned on one machine and may run on
                another (the :class:`~gabench.trainer.Trainer` checks every run it starts).
        """
        for name, decl in RUN_SETTINGS.items():
            if name in plugins:
                continue
            decl.check(name, getattr(self, name))
        if not isinstance(self.family_params, dict):
            raise ConfigError("family_params", self.family_params, "a mapping of family parameters")
        if not isinstance(self.aggregator_params, dict):
            raise ConfigError("aggregator_params", self.aggregator_params,
                              "a mapping of aggregator parameters")
        if "aggregator" not in plugins:
            self.build_aggregator()  # checks the aggregator's parameters
        for key in FAMILY_SIZE_PARAMS:  # each family checks its own range after this bound
            given = self.family_params.get(key)
            value = int(given) if isinstance(given, str) and given.strip().isdigit() else given
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_FAMILY_SIZE:
                raise ConfigError(key, given, f"an integer <= {MAX_FAMILY_SIZE}")
        if self.first_order and self.algorithm != "maml" and "algorithm" not in plugins:
            raise ConfigError("first_order", self.first_order,
                              "false unless algorithm is maml (Reptile is first order already)")
        resolve_device(self.device)
        if "family" not in plugins:
            family = self.build_family()
            if memory:
                from gabench._memory import check_run_memory

                check_run_memory(self, family)
        return self

    def build_family(self, base: TaskFamily | None = None) -> TaskFamily:
        """The task family (``base``, or the registry's ``family`` built from ``family_params``),
        wrapped with outlier tasks when ``outlier_fraction`` > 0."""
        from gabench.tasks import OutlierTasks, make_family

        family = base if base is not None else make_family(self.family, self.family_params)
        if self.outlier_fraction > 0 or self.outlier_mode != "shuffle":
            family = OutlierTasks(family, self.outlier_fraction, self.outlier_mode)
        return family

    @property
    def effective_alpha(self) -> float:
        """``alpha``, or the registry family's default when it is unset."""
        if self.alpha is not None:
            return float(self.alpha)
        from gabench.tasks import FAMILIES

        return FAMILIES[self.family].default_alpha

    def build_algorithm(self, alpha: float | None = None) -> Algorithm:
        """The algorithm with inner rate ``alpha`` (default :attr:`effective_alpha`)."""
        from gabench.algorithms import ALGORITHMS, MAML

        alpha = self.effective_alpha if alpha is None else alpha
        cls = ALGORITHMS[self.algorithm]
        if cls is MAML:
            return MAML(alpha, self.inner_steps, first_order=self.first_order)
        return cls(alpha, self.inner_steps)

    def build_aggregator(self) -> Aggregator:
        from gabench.aggregators import AGGREGATORS

        return AGGREGATORS[self.aggregator].from_params(self.aggregator_params)

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
        for key in data:
            if key not in RUN_SETTINGS:
                raise ConfigError(key, data[key],
                                  "one of the run settings " + ", ".join(sorted(RUN_SETTINGS)))
        return cls(**data)


#: Field name -> declaration, in field order: the one source of every run setting.
RUN_SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(RunConfig)}


def parse_method(method: str, param: str = "method") -> dict[str, Any]:
    """``maml``, ``fomaml`` or ``reptile``, optionally ``+AGGREGATOR`` -> RunConfig fields.

    >>> parse_method("fomaml+ga")
    {'algorithm': 'maml', 'first_order': True, 'aggregator': 'ga'}
    """
    algorithms, aggregators = registry_names("algorithm"), registry_names("aggregator")
    algo, _, aggregator = method.strip().partition("+")
    aggregator = aggregator or "mean"
    allowed = "maml, fomaml or reptile, optionally +" + "/+".join(aggregators)
    if algo not in (*algorithms, "fomaml") or aggregator not in aggregators:
        raise ConfigError(param, method, allowed)
    return {"algorithm": "maml" if algo == "fomaml" else algo, "first_order": algo == "fomaml",
            "aggregator": aggregator}


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``device``; an error naming it when it is unknown or unavailable."""
    import torch

    if not isinstance(device, str):
        raise ConfigError("device", device, "cpu, cuda or cuda:N")
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
