"""An up-front estimate of the memory a run needs, checked before anything is created.

A run whose tensors do not fit fails in the allocator, minutes in and after its output
directory and MLflow run exist (or is killed by the kernel). :func:`check_run_memory` refuses it
at validation instead, with one :class:`~gabench._errors.ConfigError` line naming the setting
that drives the largest part of the estimate.

The estimate is rough and conservative (it errs towards too much): it adds up the largest
things a run holds at once, in bytes, with these counts of the model and the tasks

- ``P``: model parameters; ``a``: activation values of one example (the input and the output
  of every leaf module, for a forward pass kept for backward); ``m``: the largest of these (a
  forward pass without gradients holds about two at a time);
- ``Ks``, ``Kq``: support and query examples per task; ``x``: input values of one example;
- ``T`` (``meta_batch``), ``S`` (``inner_steps``), ``E`` (tasks evaluated at once:
  ``eval_batch``, at most the number of held-out tasks), ``C`` (tasks drawn per sampling call:
  the family's ``chunk_tasks``, else ``T``), ``V`` and ``N`` held-out meta-validation tasks
  (when ``eval_every > 0``) and meta-test tasks:

====================  ==========================================================================
term                  bytes
====================  ==========================================================================
meta-training         4 T (3 (S + 2) P + 3 (S Ks + Kq) a): per task, S + 2 copies of the
                      parameters with their gradients and second-order graph, and the
                      activations of every inner step and of the query pass, kept for backward
evaluation            4 E (3 P + 2 Ks a + 2 Kq m): per task, the adapted parameters, one inner
                      step's activations and a query pass without gradients
held-out tasks        8 (V + N) (Ks + Kq) (x + 1): the meta-validation and meta-test tasks,
                      sampled once and kept (twice their float32 size: a batch that spans two
                      sampled chunks is a copy, the others are views that keep their chunk)
task sampling         24 C (Ks + Kq) (x + 1), plus 24 C (ways + 3) dim^2 for the scikit-learn
                      families (a rotation and, for ``classification``, a covariance factor per
                      class and task): float64 arrays and their temporaries
training log          steps (T + 10) 16 + 48 steps T: the per-step statistics and task weights,
                      and the weight table built from them
model and optimizer   24 P: parameters, gradient, Adam's two moments, the best-validation copy
====================  ==========================================================================

The total is compared with :func:`available_bytes` (``psutil.virtual_memory().available``; on
a CUDA device ``torch.cuda.mem_get_info``, for the terms held on the device, and host memory for
sampling and the log). Each run of ``gabench compare --workers N`` is checked on its own.

Counting ``P`` and ``a`` builds the family's model and passes one support example through it
(the families' size bounds keep that small); ``Ks``, ``Kq`` and ``x`` come from one task of the
family with ``shots = query_shots = 1`` (so that nothing the size of a real task is drawn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gabench._errors import ConfigError

if TYPE_CHECKING:
    import torch

    from gabench.config import RunConfig
    from gabench.tasks import TaskFamily

#: Family parameters that size the model or the tasks, with the power in which the memory grows
#: with them (``hidden`` and ``filters``: the parameter count grows as their square).
SIZE_PARAMS: dict[str, int] = {"hidden": 2, "filters": 2, "dim": 1, "shots": 1, "query_shots": 1,
                               "ways": 1}
#: Terms held on the device (the others are in host memory).
DEVICE_TERMS: tuple[str, ...] = ("meta-training", "evaluation", "held-out tasks", "model and optimizer")


@dataclass(frozen=True)
class TaskShape:
    """What the estimate needs to know of a family (see the module docstring).

    Attributes:
        params: ``P``, model parameters.
        activations: ``a``, activation values of one example kept for backward.
        largest: ``m``, the largest activation of one example.
        support: ``Ks``, support examples per task.
        query: ``Kq``, query examples per task.
        inputs: ``x``, input values of one example.
    """

    params: int
    activations: int
    largest: int
    support: int
    query: int
    inputs: int


@dataclass
class MemoryEstimate:
    """The estimated bytes of a run, by term, with the settings that drive each term.

    Attributes:
        terms: Term name -> bytes.
        drivers: Term name -> ``(setting as the user writes it, value, growth over the default)``
            for each setting the term grows with.
    """

    terms: dict[str, float] = field(default_factory=dict)
    drivers: dict[str, list[tuple[str, Any, float]]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.terms.values()))

    def on(self, device_type: str) -> tuple[float, float]:
        """Bytes on the device and in host memory (all in host memory on the CPU)."""
        if device_type != "cuda":
            return 0.0, self.total
        dev = sum(v for k, v in self.terms.items() if k in DEVICE_TERMS)
        return float(dev), self.total - dev

    def largest(self, names: tuple[str, ...] | None = None) -> str:
        """The largest term (among ``names``)."""
        items = {k: v for k, v in self.terms.items() if names is None or k in names}
        return max(items, key=items.__getitem__)

    def driver(self, term: str) -> tuple[str, Any]:
        """The setting that grew ``term`` most over its default: ``(name, value)``."""
        name, value, _ = max(self.drivers[term], key=lambda d: d[2])
        return name, value


def task_shape(family: TaskFamily) -> TaskShape:
    """Count the model's parameters and activations and the size of a task of ``family``."""
    import numpy as np
    import torch

    from gabench.tasks import OutlierTasks, init_generator

    base = family.base if isinstance(family, OutlierTasks) else family
    names = {s.name for s in type(base).param_specs()} if hasattr(type(base), "param_specs") else set()
    unit = base
    if {"shots", "query_shots"} <= names:  # one task with one shot: its size per shot
        try:
            unit = type(base).from_params({**base.config(), "shots": 1, "query_shots": 1})
        except (ConfigError, TypeError, ValueError):  # a family of one's own that needs more
            unit = base
    batch = unit.sample(1, "train", np.random.default_rng(0))
    per_shot_s, per_shot_q = int(batch.support_x.shape[1]), int(batch.query_x.shape[1])
    if unit is not base:
        support, query = per_shot_s * base.shots, per_shot_q * base.query_shots
    else:
        support, query = per_shot_s, per_shot_q
    inputs = int(math.prod(batch.support_x.shape[2:]))
    model = base.make_model(init_generator(0, base.name))
    params = sum(int(p.numel()) for p in model.parameters())
    sizes = [inputs]

    def record(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(int(output.numel()))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(batch.support_x[0, :1].float())
    finally:
        for h in hooks:
            h.remove()
    return TaskShape(params, sum(sizes), max(sizes), support, query, inputs)


def estimate_run_memory(config: RunConfig, family: TaskFamily,
                        shape: TaskShape | None = None) -> MemoryEstimate:
    """The bytes a run of ``config`` on ``family`` needs, by term (formula in the module docstring)."""
    from gabench.tasks import OutlierTasks
    from gabench.tasks._sklearn import SklearnFamily

    s = shape or task_shape(family)
    base = family.base if isinstance(family, OutlierTasks) else family
    P, a, m, Ks, Kq, x = s.params, s.activations, s.largest, s.support, s.query, s.inputs
    T, S, steps = config.meta_batch, config.inner_steps, config.steps
    V = config.val_tasks if config.eval_every else 0
    N = config.test_tasks or family.default_meta_test_tasks
    E = min(config.eval_batch, max(V, N))
    C = getattr(base, "chunk_tasks", None) or T

    # how far each family size parameter is above its default, raised to its power
    defaults = {p.name: p.default for p in type(base).param_specs()} if hasattr(
        type(base), "param_specs") else {}
    sized: dict[str, tuple[str, Any, float]] = {}
    for name, power in SIZE_PARAMS.items():
        value, default = getattr(base, name, None), defaults.get(name)
        if isinstance(value, int) and isinstance(default, int) and default > 0:
            sized[name] = (f"-P {name}", value, (value / default) ** power)
    model = [sized[k] for k in ("hidden", "filters", "dim") if k in sized]
    shots = [sized[k] for k in ("shots", "query_shots", "ways") if k in sized]

    def flag(name: str, value: Any, default: float) -> tuple[str, Any, float]:
        return (name, value, value / default)

    est = MemoryEstimate()
    est.terms["meta-training"] = 4.0 * T * (3 * (S + 2) * P + 3 * (S * Ks + Kq) * a)
    est.drivers["meta-training"] = [flag("--meta-batch", T, 25), flag("--inner-steps", S, 1), *model, *shots]
    est.terms["evaluation"] = 4.0 * E * (3 * P + 2 * Ks * a + 2 * Kq * m)
    est.drivers["evaluation"] = [flag("--eval-batch", config.eval_batch, 200), *model, *shots]
    est.terms["held-out tasks"] = 8.0 * (V + N) * (Ks + Kq) * (x + 1)
    est.drivers["held-out tasks"] = [flag("--val-tasks", config.val_tasks, 100),
                                     flag("--test-tasks", N, family.default_meta_test_tasks), *shots,
                                     *[d for d in model if d[0] == "-P dim"]]
    sampling = 24.0 * C * (Ks + Kq) * (x + 1)
    if isinstance(base, SklearnFamily):
        sampling += 24.0 * C * (base.ways + 3) * base.dim**2
    est.terms["task sampling"] = sampling
    est.drivers["task sampling"] = [*shots, *[d for d in model if d[0] == "-P dim"],
                                    flag("--meta-batch", T, 25)]
    est.terms["training log"] = steps * (T + 10) * 16.0 + 48.0 * steps * T
    est.drivers["training log"] = [flag("--steps", steps, 1000), flag("--meta-batch", T, 25)]
    est.terms["model and optimizer"] = 24.0 * P
    est.drivers["model and optimizer"] = model or [("--family", config.family, 1.0)]
    for term, drivers in est.drivers.items():
        if not drivers:
            est.drivers[term] = [flag("--meta-batch", T, 25)]
    return est


def available_bytes(device: torch.device) -> tuple[float, float]:
    """Free memory now: ``(on the device, in host memory)`` (the device's is the host's on the CPU)."""
    import psutil

    host = float(psutil.virtual_memory().available)
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return float(free), host
    return host, host


def check_run_memory(config: RunConfig, family: TaskFamily) -> MemoryEstimate:
    """Refuse a run whose estimated memory exceeds what is available now.

    Returns:
        The estimate (when it fits).

    Raises:
        ConfigError: naming the setting that drives the largest term of the part (device or
            host memory) that does not fit, with the estimate and what is available.
    """
    from gabench.config import resolve_device

    device = resolve_device(config.device)
    est = estimate_run_memory(config, family)
    need_dev, need_host = est.on(device.type)
    free_dev, free_host = available_bytes(device)
    if device.type == "cuda":
        parts = [("GPU", need_dev, free_dev, DEVICE_TERMS),
                 ("host", need_host, free_host, tuple(k for k in est.terms if k not in DEVICE_TERMS))]
    else:
        parts = [("memory", need_host, free_host, tuple(est.terms))]
    for where, need, free, names in parts:
        if need > free:
            term = est.largest(names)
            name, value = est.driver(term)
            raise ConfigError(name, value, (
                f"a smaller value: the run needs about {_gib(need)} of {where} ({term} "
                f"{_gib(est.terms[term])}, the largest part) but {_gib(free)} "
                f"is available"))
    return est


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"
