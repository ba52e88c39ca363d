"""The aggregator plug-in kind: a matrix of per-task vectors -> one outer direction (and task weights).

Which matrix an aggregator sees is part of its definition (the class attribute
:attr:`Aggregator.matrix`), and the algorithm builds that matrix for it:

``"updates"`` (:data:`UPDATES`): the GA-style weightings (``mean``, ``ga``, ``ga-pos``,
    ``ga-cos``, ``ga-softmax``, ...). They see ``G``, row ``i`` the task's inner update
    ``g_i = theta - theta'_i`` (the quantity the gradient-agreement paper compares), and return
    task weights ``w`` (:meth:`Aggregator.weights`). The weights are constants; the algorithm then
    forms its own weighted outer direction: MAML ``sum_i w_i grad_theta L_query_i(theta'_i)`` in
    one batched backward pass (the per-task outer gradients are never formed), Reptile
    ``sum_i w_i g_i``. This is the fast path and costs what it cost before there were other kinds.

``"outer_gradients"`` (:data:`OUTER_GRADIENTS`): the multi-task-learning aggregators (``upgrad``,
    ``pcgrad``, ``mgda``, ``cagrad``, ``imtl-g``, ``aligned-mtl``, ``dualproj``, ``config``), taken
    from TorchJD. They see ``J``, row ``i`` task ``i``'s own outer gradient, the vector the mean
    would average: MAML ``grad_theta L_query_i(theta'_i(theta))`` (through the inner loop unless
    first order), FOMAML ``grad L_query_i`` at ``theta'_i``, Reptile ``g_i``. The algorithm
    computes all rows at once (batched over tasks: the fast path's hand-written backward without
    the task sum, or ``vmap`` of autograd) and calls :meth:`Aggregator.combine`, which returns the
    direction itself (these methods are not all linear in ``J``) together with the task weights
    where the method has them: for TorchJD's Gramian-weighted aggregators ``direction = w @ J``
    exactly; for those that only give a direction (ConFIG) the weights are NaN, and the weight
    statistics of such a run are NaN too.

Both kinds implement :meth:`Aggregator.combine` (``(direction, weights)`` from a matrix), so an
aggregator of either kind can be applied to any matrix by hand; the ``matrix`` attribute only
tells the algorithm which one to build.

An aggregator's parameters are its constructor's keyword arguments (:meth:`Aggregator.param_specs`
lists them, :meth:`Aggregator.from_params` builds one from a name -> value mapping, strings
converted by type), as for task families.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from gabench._errors import ConfigError
from gabench.tasks._base import ParamSpec, _convert

#: The matrix of inner updates ``g_i = theta - theta'_i`` (GA-style weightings).
UPDATES = "updates"
#: The matrix of per-task outer gradients (multi-task-learning aggregators).
OUTER_GRADIENTS = "outer_gradients"


class Aggregator(ABC):
    """Turns a matrix of per-task vectors into task weights and one outer direction.

    Subclasses implement :meth:`weights`; an aggregator whose direction is not the weighted sum
    of the rows (``OUTER_GRADIENTS`` kinds) overrides :meth:`combine` too. Parameters are
    keyword arguments of ``__init__`` with defaults, validated there (raising
    :class:`~gabench._errors.ConfigError`).

    Attributes:
        name: Registry name.
        description: One line for ``gabench list``.
        matrix: Which matrix the algorithm passes: :data:`UPDATES` (the inner updates ``g_i``,
            the default) or :data:`OUTER_GRADIENTS` (the per-task outer gradients); see the
            module docstring.
        param_help: Optional parameter name -> one-line help, shown with the parameters.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    matrix: ClassVar[str] = UPDATES
    param_help: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def weights(self, G: torch.Tensor) -> torch.Tensor:
        """Task weights.

        Args:
            G: Tensor of shape (n_tasks, n_params), row i the vector of task i.

        Returns:
            Tensor of shape (n_tasks,), same dtype and device as ``G`` (NaN where the method
            defines no weights).
        """

    def combine(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer direction and the task weights.

        Args:
            G: Tensor of shape (n_tasks, n_params), row i the vector of task i (constants).

        Returns:
            The direction, shape (n_params,), and the weights, shape (n_tasks,). Here the
            direction is ``sum_i w_i G_i``.
        """
        w = self.weights(G)
        return w @ G, w

    # ------------------------------------------------------------------ parameters
    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        """The constructor parameters, with types, defaults and help, read from ``__init__``."""
        if cls.__init__ is object.__init__:
            return []
        sig = inspect.signature(cls.__init__)
        hints = inspect.get_annotations(cls.__init__, eval_str=True)
        return [ParamSpec(p.name, hints.get(p.name, str), p.default, cls.param_help.get(p.name, ""))
                for p in list(sig.parameters.values())[1:]]

    @classmethod
    def from_params(cls, params: dict[str, Any] | None = None) -> Aggregator:
        """Build the aggregator from a name -> value mapping (strings are converted by type).

        Raises:
            ConfigError: on an unknown parameter or a value that is not allowed.
        """
        specs = {s.name: s for s in cls.param_specs()}
        kwargs: dict[str, Any] = {}
        for key, value in (params or {}).items():
            if key not in specs:
                allowed = ("one of the parameters " + ", ".join(specs)) if specs else "no parameters"
                raise ConfigError(f"{cls.name}.{key}", value, f"{allowed} of aggregator {cls.name!r}")
            kwargs[key] = _convert(f"{cls.name}.{key}", value, specs[key].type)
        return cls(**kwargs)

    def config(self) -> dict[str, Any]:
        """The constructor arguments of this aggregator (what a run's config records)."""
        return {p.name: getattr(self, p.name) for p in self.param_specs()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _check_matrix(G: torch.Tensor) -> None:
    if G.dim() != 2 or G.shape[0] == 0:
        raise ValueError(f"G must have shape (n_tasks >= 1, n_params), got {tuple(G.shape)}")


def uniform(G: torch.Tensor) -> torch.Tensor:
    """Weights ``1/T`` of shape (T,) for the T rows of ``G``."""
    return torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=G.dtype, device=G.device)


def weight_stats(w: torch.Tensor, corrupted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Summary statistics of weight vectors (tensors, so no device sync is forced).

    Args:
        w: Tensor of shape (n_tasks,), or (n_steps, n_tasks) for one vector per row (the
            trainer summarises a block of steps at once). NaN weights (aggregators that give
            only a direction) give NaN statistics.
        corrupted: Optional bool tensor of the shape of ``w`` marking outlier tasks.

    Returns:
        ``w_min``, ``w_max``, ``w_frac_negative``, ``w_eff_n`` (effective number of tasks,
        ``(sum |w|)^2 / sum w^2``: T for uniform weights, 1 when one task takes all), and when
        ``corrupted`` is given, ``w_mean_corrupted`` and ``w_mean_clean`` (NaN for an empty group);
        each of shape ``w.shape[:-1]`` (a scalar for one vector).
    """
    nan = torch.isnan(w).any(-1)
    stats = {
        "w_min": w.amin(-1),
        "w_max": w.amax(-1),
        "w_frac_negative": torch.where(nan, float("nan"), (w < 0).to(w.dtype).mean(-1)),
        "w_eff_n": w.abs().sum(-1) ** 2 / (w * w).sum(-1).clamp_min(torch.finfo(w.dtype).tiny),
    }
    if corrupted is not None:
        c = corrupted.to(w.dtype)
        stats["w_mean_corrupted"] = (w * c).sum(-1) / c.sum(-1)
        stats["w_mean_clean"] = (w * (1 - c)).sum(-1) / (1 - c).sum(-1)
    return stats
