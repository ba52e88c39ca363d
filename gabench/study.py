"""Study files: a comparison declared in TOML, validated on load and expanded to a plan of runs.

A study names task families, methods (algorithm x aggregator x first order, with their
hyperparameters or "take them from an Optuna study"), seeds, budgets and optionally a grid of
settings (outlier fractions, family parameters, ...). :func:`load_study` reads and validates
one file and expands it into :class:`PlannedRun` objects, each a validated
:class:`~gabench.config.RunConfig` with a run id that is unique within the study. Every error
is one line naming the file, the key and the problem.

File format (every key but ``families`` and ``methods`` is optional)::

    name = "quick"                   # default: the file name without .toml
    description = "one line"
    seeds = 3                        # 3 means [0, 1, 2]; or a list such as [0, 1, 2]
    archive = "../reports/quick/data"  # optional, relative to this file: see below

    [defaults]                       # run settings shared by every run (RunConfig fields)
    steps = 1000
    meta_batch = 25
    eval_every = 100

    [settings]                       # optional grid: every combination is run
    outlier_fraction = [0.0, 0.25]   # a RunConfig field, or "params.NAME" for a family parameter

    [families.sine]                  # the label; `family` defaults to the label
    params = { shots = 10 }          # family parameters (gabench list)
    steps = 2000                     # run settings for this family only

    [methods."maml+ga"]              # the label, used in tables and run ids
    algorithm = "maml"
    aggregator = "ga"                # default "mean"
    first_order = false
    beta = 0.001                     # run settings for this method only
    families.sine = { alpha = 0.02 } # run settings for this method on one family only
    # tuned = { storage = "sqlite:///optuna.db", study = "{family}__{method}" }  (gabench tune's names;
    #   trials = 30 refuses the study until that Optuna study holds 30 finished trials)
    # baseline = "maml"              # the method GA is compared with (default: found)

Precedence, lowest first: ``[defaults]``, the family's settings, the method's, the method's
``families.<label>`` table, the ``tuned`` alpha and beta, the ``[settings]`` grid.

A ``[tuning]`` table makes the study a tuned comparison: every method's alpha and beta are
tuned per family (and grid point) by ``gabench tune --study FILE``, with one protocol for all,
and the compared runs take the best trial's values::

    [tuning]
    storage = "journal:tuned.journal"  # relative paths are relative to this file
    trials = 30                      # finished trials every (family, method) study must hold
    sampler_seed = 0                 # the same TPE seed for every method
    seed = 1000                      # the tasks seed of every trial; not one of `seeds`
    prune_warmup = 2                 # validations before the median pruner may stop a trial
    objective = "loss"               # or "acc"
    select = "best_val"              # trial value: best validation, or "final"
    alpha_range = [0.001, 1.0]       # log-uniform search ranges
    beta_range = [0.0001, 0.1]

    [families.sine]
    tuning = { alpha_range = [0.001, 0.3] }   # this family's ranges

The Optuna study of one cell is named ``<study>__<family>__<method>`` (plus
``__<key>-<value>`` for each grid setting), like a run id without its seed. While a cell holds
fewer than ``trials`` finished trials, the comparison refuses to run and says which.

``archive`` names a directory (usually the study's committed ``reports/<name>/data``) where
``gabench compare`` keeps a compact summary of every finished run with its configuration, so
that a study longer than one machine's session resumes anywhere: a run archived with the
planned configuration is not run again, and ``gabench report`` reads the archive
(:mod:`gabench.compare._archive`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gabench._errors import ConfigError
from gabench.config import MAX_SEED, RUN_SETTINGS, RunConfig, registry_names

#: Run settings that ``[defaults]``, families, methods and ``[settings]`` may set (derived from
#: the declarations in :data:`gabench.config.RUN_SETTINGS`).
RUN_KEYS: tuple[str, ...] = tuple(name for name, s in RUN_SETTINGS.items() if s.study == "run")
#: Run settings that only a method may set (algorithm, aggregator, first order).
METHOD_KEYS: tuple[str, ...] = tuple(name for name, s in RUN_SETTINGS.items() if s.study == "method")
#: Largest number of seeds a study may plan.
MAX_SEEDS = 10_000
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


class StudyError(ConfigError):
    """A study file is invalid.

    The message is one line: ``FILE: KEY: PROBLEM``.

    Args:
        file: The study file.
        key: Dotted key path inside the file (``methods.maml.alpha``), or ``""`` for the file.
        problem: What is wrong, as a phrase.
    """

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        self.param, self.value, self.allowed = key, None, problem
        ValueError.__init__(self, f"{file}: {key}: {problem}" if key else f"{file}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.key, self.problem))


@dataclass(frozen=True)
class Tuned:
    """Take ``alpha`` and ``beta`` from the best trial of an Optuna study.

    Attributes:
        storage: Optuna storage URL (``sqlite:///tuning.db``).
        study: Study name; ``{family}`` and ``{method}`` are replaced by the labels.
        min_trials: Finished trials the study must hold before its best trial is used (a
            study file's ``[tuning]`` budget, or a ``tuned = {...}`` reference's ``trials``; 0: any
            completed trial will do).
    """

    storage: str
    study: str
    min_trials: int = 0
    setup: str | None = None
    """JSON of the setup the trials must have run under (:func:`gabench._tuning_setup.expected_setup`;
    a study file's ``[tuning]`` cell), None: not checked."""


class TunedElsewhere(ValueError):
    """The Optuna study's finished trials ran under another setup than the one asked for."""


#: Keys of a study's ``[tuning]`` table, and those a family's ``tuning`` table may override.
TUNING_KEYS = ("storage", "trials", "sampler_seed", "seed", "prune_warmup", "objective", "select",
               "alpha_range", "beta_range")
FAMILY_TUNING_KEYS = ("alpha_range", "beta_range")
SELECTS = ("best_val", "final")


@dataclass(frozen=True)
class Tuning:
    """A study's ``[tuning]`` protocol: the same for every family and method."""

    storage: str
    """Optuna storage URL (a relative ``journal:`` or ``sqlite:///`` path resolved against the
    study file's folder)."""
    trials: int = 30
    sampler_seed: int = 0
    seed: int = 1000
    prune_warmup: int = 2
    objective: str = "loss"
    select: str = "best_val"
    alpha_range: tuple[float, float] = (1e-3, 1.0)
    beta_range: tuple[float, float] = (1e-4, 1e-1)


@dataclass(frozen=True)
class TuningTask:
    """One Optuna study of a ``[tuning]`` study file: one family (and grid point) x method.

    Attributes:
        name: The Optuna study name (``<study>__<family>__<method>[__<setting>]``).
        config: The run every trial starts from (seed: the tuning seed); alpha and beta are
            replaced by the sampler's suggestions.
        family_label, method_label, setting: Where the cell sits in the study.
        alpha_range, beta_range: The log-uniform search ranges for this family.
        aggregator_ranges: Log-uniform ranges of the method's aggregator parameters tuned with
            alpha and beta (the method's ``tuning`` table; usually empty).
    """

    name: str
    config: RunConfig
    family_label: str
    method_label: str
    setting: dict[str, Any]
    alpha_range: tuple[float, float]
    beta_range: tuple[float, float]
    aggregator_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study.

    Attributes:
        run_id: Directory name of the run, unique within the study:
            ``family__method__s<seed>`` plus ``__key-value`` for each setting.
        config: The validated run configuration.
        family_label: The family's label in the study.
        method_label: The method's label in the study.
        setting: The grid values of this run (empty without ``[settings]``).
    """

    run_id: str
    config: RunConfig
    family_label: str
    method_label: str
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def setting_label(self) -> str:
        """``key=value, key=value`` (``""`` without settings)."""
        return setting_label(self.setting)


@dataclass
class Study:
    """A validated study: what it compares and the plan of runs.

    Attributes:
        name: Study name (the runs go to ``<out-root>/<name>/``).
        path: The study file.
        description: One line from the file.
        seeds: Base seeds; every method runs on every seed (paired task streams).
        families: Family labels in file order.
        methods: Method label -> ``(algorithm, aggregator, first_order)``.
        pairs: GA-style method label -> the baseline label it is compared with.
        settings: The grid, key -> values (empty without ``[settings]``).
        runs: The plan: seed-major, then family, setting and method.
        tuning: The ``[tuning]`` protocol (None: alpha and beta are set in the file).
        tuning_tasks: One Optuna study per family (and grid point) x method under ``tuning``.
    """

    name: str
    path: Path
    description: str
    seeds: list[int]
    families: list[str]
    methods: dict[str, tuple[str, str, bool]]
    pairs: dict[str, str]
    settings: dict[str, list[Any]]
    runs: list[PlannedRun]
    tuning: Tuning | None = None
    tuning_tasks: list[TuningTask] = field(default_factory=list)
    archive: Path | None = None

    def summary(self) -> dict[str, Any]:
        """What ``study.json`` records about the plan (JSON-serialisable)."""
        return {
            "name": self.name, "file": str(self.path), "description": self.description,
            "seeds": self.seeds, "families": self.families,
            "methods": {k: {"algorithm": a, "aggregator": g, "first_order": fo}
                        for k, (a, g, fo) in self.methods.items()},
            "pairs": self.pairs, "settings": self.settings,
            "tuning": None if self.tuning is None else dataclasses.asdict(self.tuning),
            # as the study file says (relative to it), so that no machine's path is recorded
            "archive": None if self.archive is None else os.path.relpath(self.archive, self.path.parent),
            "runs": [{"run_id": r.run_id, "family_label": r.family_label,
                      "method_label": r.method_label, "setting": r.setting_label,
                      "seed": r.config.seed, "alpha": r.config.effective_alpha, "beta": r.config.beta,
                      "inner_steps": r.config.inner_steps, "meta_batch": r.config.meta_batch,
                      "steps": r.config.steps, "optimizer": r.config.optimizer,
                      "eval_every": r.config.eval_every} for r in self.runs],
        }


def setting_label(setting: Mapping[str, Any]) -> str:
    """``outlier_fraction=0.1, params.noise=0.2`` for a grid point."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in setting.items())


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _id_part(key: str, value: Any) -> str:
    key = key.removeprefix("params.")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{key}-{_fmt(value)}")


# --------------------------------------------------------------------------- loading
def load_study(path: str | Path, *, load_tuned: Callable[[Tuned], dict[str, float]] | None = None,
               resolve_tuned: bool = True) -> Study:
    """Read, validate and expand a study file.

    Args:
        path: The ``.toml`` file.
        load_tuned: Returns ``{"alpha": ..., "beta": ...}`` for a :class:`Tuned` reference
            (default: the best trial's parameters through ``optuna.load_study``).
        resolve_tuned: False: leave the alpha and beta of a ``[tuning]`` study's runs at their
            untuned values instead of reading the Optuna storage (for ``gabench tune --study``,
            which produces them, and readers that need only the plan's shape).

    Returns:
        The :class:`Study` with its plan of validated runs.

    Raises:
        StudyError: one line naming the file, the key and the problem.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(path, "", "no such study file") from None
    except OSError as exc:
        raise StudyError(path, "", f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise StudyError(path, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(path, "", f"is not valid TOML ({exc})") from None
    # each storage is opened (a journal replayed) once per load, not once per cell
    loader = load_tuned or functools.partial(best_params, storages={})
    return _StudyReader(path, loader, resolve_tuned).parse(raw)


def best_params(tuned: Tuned, storages: dict[str, Any] | None = None) -> dict[str, float]:
    """``alpha`` and ``beta`` (and any other tuned parameter) of the best trial of an Optuna
    study, which must hold ``tuned.min_trials`` finished trials run under ``tuned.setup``
    (optuna imported lazily).

    Args:
        tuned: The study and what it must hold.
        storages: Storages already opened, by URL (this call adds the one it opens); None: open
            it for this call only.

    Raises:
        ValueError: no such storage or study, too few trials, or no completed trial.
        TunedElsewhere: the trials ran under another setup.
    """
    if storages is None:
        storages = {}
    if tuned.storage not in storages:
        storages[tuned.storage] = _open_storage(tuned.storage)
    finished, params, recorded = _study_record(storages[tuned.storage], tuned.storage, tuned.study)
    where = f"Optuna study {tuned.study!r} in {_redacted(tuned.storage)}"
    if tuned.setup is not None:  # before the budget: a changed cell is retuned, not resumed
        from gabench._tuning_setup import setup_changes
        from gabench.tuning import run_defaults

        changes = setup_changes(recorded, json.loads(tuned.setup), run_defaults())
        if changes:
            raise TunedElsewhere(f"{where} was tuned under another setup ({'; '.join(changes)})")
    if finished < tuned.min_trials:
        raise ValueError(f"{where} holds {finished} of its {tuned.min_trials} trials (tuning not finished)")
    if isinstance(params, str):
        raise ValueError(f"{where}: {params}")
    return dict(params)


def _redacted(storage: str) -> str:
    from gabench._redact import redact

    return redact(storage)


def _open_storage(storage: str) -> Any:
    """The Optuna storage at ``storage``, for reading (creates nothing)."""
    from gabench.tuning import make_storage

    try:  # the storages `gabench tune` writes, journal:PATH included; reading creates nothing
        return make_storage(storage, create=False)
    except ConfigError as exc:
        raise ValueError(f"cannot open Optuna storage {_redacted(storage)!r} "
                         f"(expected {exc.allowed})") from None


def _study_record(opened: Any, storage: str,
                  study: str) -> tuple[int, tuple[tuple[str, float], ...] | str, dict[str, Any] | None]:
    """(finished trials, the best trial's parameters or why there is none, the setup its trials
    ran under) of one Optuna study in the opened ``storage``, as it holds it now."""
    import optuna

    from gabench.tuning import FINISHED, study_setup

    try:
        loaded = optuna.load_study(study_name=study, storage=opened)
    except KeyError:
        raise ValueError(f"no Optuna study {study!r} in {_redacted(storage)} (not tuned yet)") from None
    finished = len(loaded.get_trials(deepcopy=False, states=FINISHED))
    try:
        params: tuple[tuple[str, float], ...] | str = tuple(sorted(loaded.best_params.items()))
    except ValueError as exc:  # e.g. no completed trial yet
        params = str(exc)
    return finished, params, study_setup(loaded)


class _StudyReader:
    """Reads and validates one parsed study file into a :class:`Study`; every error names the
    key path."""

    TOP = ("name", "description", "seeds", "archive", "defaults", "settings", "tuning", "families", "methods")
    FAMILY = ("family", "params", "settings", "tuning", *RUN_KEYS)
    METHOD = (*METHOD_KEYS, "baseline", "tuned", "families", "tuning", *RUN_KEYS)

    def __init__(self, path: Path, load_tuned: Callable[[Tuned], dict[str, float]],
                 resolve_tuned: bool = True) -> None:
        self.path = path
        self.load_tuned = load_tuned
        self.resolve_tuned = resolve_tuned
        self.tuning: Tuning | None = None
        self.study_name = ""
        self.method_ranges: dict[str, dict[str, tuple[float, float]]] = {}
        self.tasks_by_name: dict[str, TuningTask] = {}

    def error(self, key: str, problem: str) -> StudyError:
        return StudyError(self.path, key, problem)

    # ------------------------------------------------------------------ generic checks
    def integer(self, key: str, value: Any, minimum: int) -> int:
        """``value`` if it is an integer in [minimum, MAX_SEED], else the one-line error for ``key``."""
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_SEED:
            raise self.error(key, f"expected an integer in [{minimum}, {MAX_SEED}], got {value!r}")
        return value

    def table(self, key: str, value: Any, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_describe(value)}")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    raise self.error(_join(key, k), "unknown key; expected one of " + ", ".join(allowed))
        return value

    def run_value(self, key: str, name: str, value: Any) -> Any:
        """Type-check one run setting's value given at ``key`` (the TOML type its declaration
        asks for; ranges are checked with the whole configuration)."""
        kind = RUN_SETTINGS[name].kind
        if kind == "params":  # a table of plug-in parameters (checked by the plug-in)
            table = self.table(key, value)
            for k, v in table.items():
                if isinstance(v, dict | list):
                    raise self.error(_join(key, k),
                                     f"expected a number, string or boolean, got {_describe(v)}")
            return dict(table)
        if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise self.error(key, f"expected a finite number, got {value!r}")
            return float(value)
        expected = {"int": int, "float": float, "str": str, "bool": bool}[kind]
        if type(value) is expected:
            return value
        raise self.error(key, f"expected {_type_phrase((expected,))}, got {_describe(value)}")

    def run_settings(self, key: str, data: dict[str, Any],
                     skip: tuple[str, ...]) -> dict[str, tuple[Any, str]]:
        """The RunConfig fields of ``data`` as ``name -> (value, key path)``."""
        out: dict[str, tuple[Any, str]] = {}
        for name, value in data.items():
            if name in skip:
                continue
            out[name] = (self.run_value(_join(key, name), name, value), _join(key, name))
        return out

    def label(self, key: str, label: str) -> str:
        if not _LABEL.match(label) or "__" in label:
            raise self.error(key, "a label must start with a letter or digit and use only letters, "
                             "digits and _ . + - (no '__')")
        return label

    # ------------------------------------------------------------------ sections
    def parse(self, raw: dict[str, Any]) -> Study:
        self.table("", raw, self.TOP)
        name = raw.get("name", self.path.stem)
        if not isinstance(name, str):
            raise self.error("name", f"expected a string, got {_describe(name)}")
        self.label("name", name)
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.error("description", f"expected a string, got {_describe(description)}")
        seeds = self.seeds(raw.get("seeds", 3))
        archive = self.archive(raw["archive"]) if "archive" in raw else None
        self.study_name = name
        if "tuning" in raw:
            self.tuning = self.tuning_table(raw["tuning"], seeds)
        defaults = self.run_settings("defaults", self.table("defaults", raw.get("defaults", {}), RUN_KEYS),
                                     ())
        self.untuned("defaults", defaults)
        grid = self.grid("settings", raw.get("settings", {}))
        if "families" not in raw:
            raise self.error("families", "missing; declare at least one [families.<label>] table")
        if "methods" not in raw:
            raise self.error("methods", "missing; declare at least one [methods.<label>] table")
        families = self.table("families", raw["families"])
        methods = self.table("methods", raw["methods"])
        if not families:
            raise self.error("families", "empty; declare at least one [families.<label>] table")
        if not methods:
            raise self.error("methods", "empty; declare at least one [methods.<label>] table")
        fams = {label: self.family(label, spec) for label, spec in families.items()}
        meths = {label: self.method(label, spec, list(fams)) for label, spec in methods.items()}
        tasks = [] if self.tuning is None else self.tuning_tasks(defaults, grid, fams, meths)
        self.tasks_by_name = {t.name: t for t in tasks}
        runs = self.expand(name, seeds, defaults, grid, fams, meths)
        pairs = self.pairs(meths)
        return Study(
            name=name, path=self.path, description=description, seeds=seeds, families=list(fams),
            methods={k: (m["algorithm"], m["aggregator"], m["first_order"]) for k, m in meths.items()},
            pairs=pairs, settings={k: [v for v, _ in vals] for k, vals in grid.items()}, runs=runs,
            tuning=self.tuning, tuning_tasks=tasks, archive=archive,
        )

    def archive(self, value: Any) -> Path:
        """``archive``: a directory path, relative to the study file's folder."""
        if not isinstance(value, str) or not value.strip():
            raise self.error("archive", "expected a directory path such as "
                             f"\"../reports/{self.path.stem}/data\" (relative to this file), got "
                             f"{_describe(value)}")
        path = Path(value)
        if not path.is_absolute():
            path = Path(os.path.normpath(self.path.parent / path))
        if path.exists() and not path.is_dir():
            raise self.error("archive", f"expected a directory, got {value!r} ({path} is a file)")
        return path

    def tuning_table(self, value: Any, seeds: list[int]) -> Tuning:
        """``[tuning]``: the protocol every (family, method) study is tuned with."""
        data = self.table("tuning", value, TUNING_KEYS)
        if not isinstance(data.get("storage"), str) or not data["storage"]:
            raise self.error("tuning.storage", "missing; expected an Optuna storage such as "
                             "\"journal:tuned.journal\" (relative to this file)")
        out: dict[str, Any] = {"storage": self.storage_url(data["storage"])}
        for name, minimum in (("trials", 1), ("sampler_seed", 0), ("seed", 0), ("prune_warmup", 0)):
            if name in data:
                out[name] = self.integer(_join("tuning", name), data[name], minimum)
        for name, allowed in (("objective", ("loss", "acc")), ("select", SELECTS)):
            if name in data:
                if data[name] not in allowed:
                    raise self.error(_join("tuning", name), f"expected one of {', '.join(allowed)}, "
                                     f"got {data[name]!r}")
                out[name] = data[name]
        out.update(self.ranges("tuning", data))
        tuning = Tuning(**out)
        if tuning.seed in seeds:
            raise self.error("tuning.seed", f"{tuning.seed} is also an evaluation seed; tuning seeds "
                             "must be disjoint from `seeds` (e.g. 1000)")
        return tuning

    def ranges(self, key: str, data: dict[str, Any]) -> dict[str, tuple[float, float]]:
        from gabench.config import MAX_LEARNING_RATE

        out = {}
        for name in FAMILY_TUNING_KEYS:
            if name not in data:
                continue
            v = data[name]
            ok = (isinstance(v, list) and len(v) == 2
                  and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                  and 0 < v[0] < v[1] <= MAX_LEARNING_RATE)
            if not ok:
                raise self.error(_join(key, name), f"expected [LOW, HIGH] with 0 < LOW < HIGH <= "
                                 f"{MAX_LEARNING_RATE:g}, got {v!r}")
            out[name] = (float(v[0]), float(v[1]))
        return out

    def storage_url(self, url: str) -> str:
        """A relative ``journal:`` or ``sqlite:///`` path, resolved against the study file's folder."""
        base = self.path.parent
        if url.startswith("journal:") and not Path(url[len("journal:"):]).is_absolute():
            return "journal:" + str(base / url[len("journal:"):])
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str((base / url[len("sqlite:///"):]).absolute())
        return url

    def untuned(self, key: str, values: dict[str, tuple[Any, str]]) -> None:
        """Under ``[tuning]``, alpha and beta come from the tuner only."""
        if self.tuning is None:
            return
        for part in ("alpha", "beta"):
            if part in values:
                raise self.error(values[part][1], "set by [tuning] in this study (alpha and beta are "
                                 "tuned); remove it")

    def tuning_name(self, flabel: str, mlabel: str, point: list[tuple[str, Any, str]]) -> str:
        return "__".join([self.study_name, flabel, mlabel, *(_id_part(k, v) for k, v, _ in point)])

    def tuning_tasks(self, defaults: dict[str, tuple[Any, str]], grid: dict[str, list[tuple[Any, str]]],
                     fams: dict[str, dict[str, Any]], meths: dict[str, dict[str, Any]]) -> list[TuningTask]:
        assert self.tuning is not None
        tasks = []
        for flabel, fam in fams.items():
            fgrid = fam["grid"] if fam["grid"] is not None else grid
            ranges = {"alpha_range": self.tuning.alpha_range, "beta_range": self.tuning.beta_range,
                      **fam["tuning"]}
            for point in _grid_points(fgrid):
                for mlabel, meth in meths.items():
                    run = self.run(self.tuning.seed, flabel, fam, mlabel, meth, defaults, point,
                                   resolve=False)
                    tasks.append(TuningTask(self.tuning_name(flabel, mlabel, point), run.config, flabel,
                                            mlabel, run.setting, **ranges,
                                            aggregator_ranges=dict(meth["tuning"])))
        return tasks

    def seeds(self, value: Any) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_SEEDS:
                raise self.error("seeds", f"expected a count in [1, {MAX_SEEDS}] or a list of seeds, "
                                 f"got {value}")
            return list(range(value))
        if isinstance(value, list) and value:
            if len(value) > MAX_SEEDS:
                raise self.error("seeds", f"expected at most {MAX_SEEDS} seeds, got {len(value)}")
            for i, s in enumerate(value):
                if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
                    raise self.error(f"seeds[{i}]", f"expected an integer in [0, {MAX_SEED}], got {s!r}")
            if len(set(value)) != len(value):
                raise self.error("seeds", f"seeds must be distinct, got {value}")
            return list(value)
        raise self.error("seeds", f"expected a count >= 1 or a non-empty list of seeds, got {value!r}")

    def grid(self, key: str, value: Any) -> dict[str, list[tuple[Any, str]]]:
        """``[settings]``: key -> list of (value, key path)."""
        data = self.table(key, value)
        grid: dict[str, list[tuple[Any, str]]] = {}
        for name, values in data.items():
            k = _join(key, name)
            if name.startswith("params.") and len(name) > len("params."):
                checker = None
            elif name in RUN_KEYS:
                checker = name
            else:
                raise self.error(k, "unknown setting; expected a run setting (" + ", ".join(RUN_KEYS)
                                 + ") or params.NAME for a family parameter")
            if not isinstance(values, list) or not values:
                raise self.error(k, f"expected a non-empty list of values, got {_describe(values)}")
            checked = []
            for i, v in enumerate(values):
                ki = f"{k}[{i}]"
                checked.append((self.run_value(ki, checker, v) if checker else v, ki))
            if len({_fmt(v) for v, _ in checked}) != len(checked):
                raise self.error(k, "values must be distinct")
            grid[name] = checked
        return grid

    def family(self, label: str, spec: Any) -> dict[str, Any]:
        key = _join("families", label)
        self.label(key, label)
        spec = self.table(key, spec, self.FAMILY)
        registry = spec.get("family", label)
        families = registry_names("family")
        if registry not in families:
            where = _join(key, "family") if "family" in spec else key
            raise self.error(where, f"unknown family {registry!r}; expected one of " + ", ".join(families)
                             + (" (or set family = NAME in the table)" if "family" not in spec else ""))
        params = self.table(_join(key, "params"), spec.get("params", {}))
        tuning: dict[str, tuple[float, float]] = {}
        if "tuning" in spec:
            tk = _join(key, "tuning")
            if self.tuning is None:
                raise self.error(tk, "only a study with a [tuning] table tunes; add one or remove this")
            tuning = self.ranges(tk, self.table(tk, spec["tuning"], FAMILY_TUNING_KEYS))
        run = self.run_settings(key, spec, ("family", "params", "settings", "tuning"))
        self.untuned(key, run)
        return {
            "family": registry, "params": params, "key": key, "tuning": tuning,
            "run": run,
            "grid": self.grid(_join(key, "settings"), spec["settings"]) if "settings" in spec else None,
        }

    def method(self, label: str, spec: Any, families: list[str]) -> dict[str, Any]:
        key = _join("methods", label)
        self.label(key, label)
        spec = self.table(key, spec, self.METHOD)
        if "algorithm" not in spec:
            raise self.error(_join(key, "algorithm"), "missing; expected maml or reptile")
        out: dict[str, Any] = {"key": key}
        defaults = RunConfig()
        for name in METHOD_KEYS:
            out[name] = self.run_value(_join(key, name), name, spec.get(name, getattr(defaults, name)))
        out["run"] = self.run_settings(key, spec, (*METHOD_KEYS, "baseline", "tuned", "families", "tuning"))
        out["tuning"] = self.method_tuning(key, spec, out["aggregator"])
        self.method_ranges[label] = out["tuning"]
        self.untuned(key, out["run"])
        if self.tuning is not None and "tuned" in spec:
            raise self.error(_join(key, "tuned"), "this study's [tuning] table tunes every method; remove it")
        out["baseline"] = spec.get("baseline")
        if out["baseline"] is not None and not isinstance(out["baseline"], str):
            raise self.error(_join(key, "baseline"),
                             f"expected a method label, got {_describe(out['baseline'])}")
        out["tuned"] = None
        if "tuned" in spec:
            tk = _join(key, "tuned")
            t = self.table(tk, spec["tuned"], ("storage", "study", "trials"))
            for part in ("storage", "study"):
                if not isinstance(t.get(part), str) or not t[part]:
                    raise self.error(_join(tk, part), "missing; expected a string")
            trials = self.integer(_join(tk, "trials"), t["trials"], 1) if "trials" in t else 0
            for part in ("alpha", "beta"):
                if part in spec:
                    raise self.error(_join(key, part), "set both here and by `tuned`; keep one")
            out["tuned"] = Tuned(t["storage"], t["study"], trials)
        per_family = self.table(_join(key, "families"), spec.get("families", {}))
        out["per_family"] = {}
        for flabel, fspec in per_family.items():
            fk = _join(_join(key, "families"), flabel)
            if flabel not in families:
                raise self.error(fk, "not a family of this study; expected one of " + ", ".join(families))
            fspec = self.table(fk, fspec, RUN_KEYS)
            if out["tuned"] is not None:
                for part in ("alpha", "beta"):
                    if part in fspec:
                        raise self.error(_join(fk, part), "set both here and by `tuned`; keep one")
            out["per_family"][flabel] = self.run_settings(fk, fspec, ())
            self.untuned(fk, out["per_family"][flabel])
        return out

    def method_tuning(self, key: str, spec: dict[str, Any],
                      aggregator: str) -> dict[str, tuple[float, float]]:
        """A method's ``tuning = { NAME = [LOW, HIGH] }``: aggregator parameters tuned with alpha and
        beta under ``[tuning]``."""
        if "tuning" not in spec:
            return {}
        tk = _join(key, "tuning")
        if self.tuning is None:
            raise self.error(tk, "only in a study with a [tuning] table")
        from gabench.aggregators import check_param_ranges

        ranges = {}
        for name, v in self.table(tk, spec["tuning"]).items():
            if not (isinstance(v, list) and len(v) == 2):
                raise self.error(_join(tk, name), f"expected [LOW, HIGH], got {_describe(v)}")
            ranges[name] = (v[0], v[1])
        try:
            check_param_ranges(aggregator, ranges, tk)
        except ConfigError as exc:
            raise self.error(tk, f"{exc.value} is not allowed: expected {exc.allowed}") from None
        return {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}

    def pairs(self, methods: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Each non-mean method -> the mean-aggregator method it is compared with."""
        pairs: dict[str, str] = {}
        for label, m in methods.items():
            key = _join(m["key"], "baseline")
            if m["baseline"] is not None:
                if m["baseline"] not in methods or m["baseline"] == label:
                    raise self.error(key, f"{m['baseline']!r} is not another method of this study; "
                                     "expected one of " + ", ".join(k for k in methods if k != label))
                pairs[label] = m["baseline"]
                continue
            if m["aggregator"] == "mean":
                continue
            found = [k for k, b in methods.items() if b["aggregator"] == "mean"
                     and b["algorithm"] == m["algorithm"] and b["first_order"] == m["first_order"]]
            if len(found) > 1:
                raise self.error(key, "several baselines match (" + ", ".join(found)
                                 + "); name the one to compare with")
            if found:
                pairs[label] = found[0]
        return pairs

    # ------------------------------------------------------------------ expansion
    def expand(self, name: str, seeds: list[int], defaults: dict[str, tuple[Any, str]],
               grid: dict[str, list[tuple[Any, str]]], fams: dict[str, dict[str, Any]],
               meths: dict[str, dict[str, Any]]) -> list[PlannedRun]:
        runs: list[PlannedRun] = []
        seen: dict[str, str] = {}
        for seed in seeds:
            for flabel, fam in fams.items():
                fgrid = fam["grid"] if fam["grid"] is not None else grid
                for point in _grid_points(fgrid):
                    for mlabel, meth in meths.items():
                        run = self.run(seed, flabel, fam, mlabel, meth, defaults, point)
                        if run.run_id in seen:  # cannot happen with valid labels; a guard
                            raise self.error(fam["key"], f"run id {run.run_id} is planned twice")
                        seen[run.run_id] = run.run_id
                        runs.append(run)
        return runs

    def run(self, seed: int, flabel: str, fam: dict[str, Any], mlabel: str, meth: dict[str, Any],
            defaults: dict[str, tuple[Any, str]], point: list[tuple[str, Any, str]],
            resolve: bool = True) -> PlannedRun:
        values: dict[str, tuple[Any, str]] = {}
        for layer in (defaults, fam["run"], meth["run"], meth["per_family"].get(flabel, {})):
            values.update(layer)
        tuned: dict[str, tuple[Any, str]] = {}
        if meth["tuned"] is not None:
            tuned.update(self.tuned(meth, mlabel, flabel))
        if self.tuning is not None and resolve and self.resolve_tuned:
            tuned.update(self.from_tuning(flabel, mlabel, point))
        from_trial = tuned.pop(_TUNED_AGGREGATOR, None)
        values.update(tuned)
        params = {k: (v, _join(_join(fam["key"], "params"), k)) for k, v in fam["params"].items()}
        setting: dict[str, Any] = {}
        for name, value, key in point:
            setting[name] = value
            if name.startswith("params."):
                params[name.removeprefix("params.")] = (value, key)
            else:
                values[name] = (value, key)
        for name in METHOD_KEYS:
            values[name] = (meth[name], _join(meth["key"], name))
        if from_trial is not None:  # the best trial's aggregator parameters (e.g. temperature)
            found, where = from_trial
            from gabench.aggregators import AGGREGATORS, RUN_PARAMS

            names = {p.name for p in AGGREGATORS[meth["aggregator"]].param_specs()} - set(RUN_PARAMS)
            found = {k: v for k, v in found.items() if k in names}
            if found:
                values["aggregator_params"] = ({**values["aggregator_params"][0], **found}, where)
        config = RunConfig(family=fam["family"], family_params={k: v for k, (v, _) in params.items()},
                           seed=seed, **{k: v for k, (v, _) in values.items()})
        try:
            config.validate()
        except ConfigError as exc:
            raise self.error(_provenance(exc.param, values, params, fam), str(exc)) from None
        run_id = "__".join([flabel, mlabel, f"s{seed}", *(_id_part(k, v) for k, v in setting.items())])
        return PlannedRun(run_id, config, flabel, mlabel, setting)

    def from_tuning(self, flabel: str, mlabel: str,
                    point: list[tuple[str, Any, str]]) -> dict[str, tuple[Any, str]]:
        """Alpha and beta of the best trial of this cell's ``[tuning]`` study."""
        assert self.tuning is not None
        name = self.tuning_name(flabel, mlabel, point)
        ref = Tuned(self.tuning.storage, name, self.tuning.trials, self.expected_setup(name))
        try:
            params = self.load_tuned(ref)
        except TunedElsewhere as exc:
            raise self.error("tuning", f"{exc}; run `gabench tune --study {self.path} --retune-changed` "
                             "first") from None
        except (ValueError, ImportError) as exc:
            raise self.error("tuning", f"{exc}; run `gabench tune --study {self.path}` first") from None
        missing = [k for k in self.method_ranges.get(mlabel, {}) if k not in params]
        if missing:
            raise self.error(_join(_join("methods", mlabel), "tuning"),
                             f"the best trial of Optuna study {name!r} has no parameter {missing[0]!r} "
                             "(tuned before the range was added): delete that study from the storage and run "
                             f"`gabench tune --study {self.path}` again")
        out = {part: (float(params[part]), f"tuning (study {name!r})") for part in ("alpha", "beta")}
        out.update(_aggregator_part(params, f"tuning (study {name!r})"))
        return out

    def expected_setup(self, name: str) -> str:
        """JSON of the setup the trials of this study's tuning cell ``name`` must have run under."""
        from gabench._tuning_setup import expected_setup
        from gabench.tuning import resolved_config

        assert self.tuning is not None
        task = self.tasks_by_name[name]
        ranges = {"alpha": task.alpha_range, "beta": task.beta_range, **task.aggregator_ranges}
        return json.dumps(expected_setup(task.config.to_dict(), self.tuning.objective, self.tuning.select,
                                         ranges, resolved_config), sort_keys=True)

    def tuned(self, meth: dict[str, Any], mlabel: str, flabel: str) -> dict[str, tuple[Any, str]]:
        t: Tuned = meth["tuned"]
        key = _join(meth["key"], "tuned")
        template = t.study
        if set(_PLACEHOLDER.findall(template)) - {"{family}", "{method}"} or \
                "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
            raise self.error(_join(key, "study"), "only {family} and {method} may appear in braces")
        ref = Tuned(t.storage, template.replace("{family}", flabel).replace("{method}", mlabel), t.min_trials)
        try:
            params = self.load_tuned(ref)
        except (ValueError, ImportError) as exc:
            hint = "; finish tuning it first (rerun the gabench tune command that fills it)" \
                if ref.min_trials and "tuning not finished" in str(exc) else ""
            raise self.error(key, f"{exc}{hint}") from None
        out = {}
        for part in ("alpha", "beta"):
            if part not in params:
                raise self.error(key, f"Optuna study {ref.study!r} has no parameter {part!r} "
                                 f"(its best trial has {', '.join(sorted(params)) or 'none'})")
            out[part] = (float(params[part]), f"{key} (study {ref.study!r})")
        out.update(_aggregator_part(params, f"{key} (study {ref.study!r})"))
        return out


#: Key under which :meth:`_StudyReader.tuned` and ``from_tuning`` pass a best trial's other parameters.
_TUNED_AGGREGATOR = "__aggregator_params__"


def _aggregator_part(params: dict[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    """The best trial's parameters other than alpha and beta (candidates for the method's
    aggregator parameters; those its aggregator does not declare are not used)."""
    other = {k: float(v) for k, v in params.items()
             if k not in ("alpha", "beta") and isinstance(v, int | float) and not isinstance(v, bool)}
    return {_TUNED_AGGREGATOR: (other, where)} if other else {}


def _grid_points(grid: dict[str, list[tuple[Any, str]]]) -> Iterator[list[tuple[str, Any, str]]]:
    names = list(grid)
    for combo in itertools.product(*(grid[n] for n in names)):
        yield [(n, v, k) for n, (v, k) in zip(names, combo, strict=True)]


def _provenance(param: str, values: dict[str, tuple[Any, str]], params: dict[str, tuple[Any, str]],
                fam: dict[str, Any]) -> str:
    """The key path that set the value a :class:`ConfigError` names."""
    name = param.lstrip("-").replace("-", "_")
    if name in values:
        return values[name][1]
    short = name.split(".", 1)[1] if "." in name else name
    if short in params:
        return params[short][1]
    if name in ("shots", "query_shots", "ways", "n_tasks"):
        return _join(fam["key"], "params")
    return fam["key"]


def _join(key: str, part: str) -> str:
    if not key:
        return part
    if not re.fullmatch(r"[A-Za-z0-9_-]+", part):  # not a bare TOML key: quote it
        part = f'"{part}"'
    return f"{key}.{part}"


def _describe(value: Any) -> str:
    kind = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind


def _type_phrase(options: tuple[Any, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", type(None): "omitted"}
    return " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in options)
