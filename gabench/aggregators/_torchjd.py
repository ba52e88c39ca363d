"""Multi-task-learning aggregators from TorchJD, applied to the per-task outer gradients.

Each class here is a thin adapter: the method itself is TorchJD's (``torchjd.aggregation``), not
re-implemented. The adapters see the matrix ``J`` of per-task outer gradients
(:data:`~gabench.aggregators.OUTER_GRADIENTS`, see :mod:`gabench.aggregators._base`). For TorchJD's
Gramian-weighted aggregators the weights come from TorchJD's weighting of the Gramian ``J J^T``
and the direction is ``w @ J`` (the same computation as TorchJD's aggregator, whose weights are
then recorded); the others give a direction only and NaN weights.

References:
    V. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232,
    2024 (TorchJD, UPGrad, DualProj).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from gabench._errors import check_choice, check_int, check_positive
from gabench.aggregators._base import OUTER_GRADIENTS, Aggregator, _check_matrix


class TorchJDAggregator(Aggregator):
    """The generic TorchJD adapter: builds the TorchJD object, applies it to ``J``.

    An adapter is declared by :attr:`torchjd_class` (the name of the
    ``torchjd.aggregation.Aggregator`` class) and :attr:`torchjd_params` (which of its own
    attributes are passed to that class as keyword arguments). It takes its parameters as keyword
    arguments of ``__init__``, with literal defaults (``gabench list`` reads them from the source),
    checks them, sets them as attributes of the same names and then calls this ``__init__``.
    """

    matrix = OUTER_GRADIENTS
    #: Name of the ``torchjd.aggregation`` class that the adapter applies.
    torchjd_class: ClassVar[str]
    #: The adapter's attributes passed to :attr:`torchjd_class` as keyword arguments.
    torchjd_params: ClassVar[tuple[str, ...]] = ()
    #: Whether TorchJD's method draws from torch's global generator (it is then run on a forked
    #: global state, seeded from the aggregator's own generator, so that runs are reproducible
    #: and the caller's random state is left alone).
    uses_global_rng: ClassVar[bool] = False

    def __init__(self) -> None:
        self._jd = self._build()

    def _build(self) -> Any:
        """The ``torchjd.aggregation.Aggregator`` instance (TorchJD loads on first use)."""
        import torchjd.aggregation  # noqa: PLC0415

        jd_class = getattr(torchjd.aggregation, self.torchjd_class)
        return jd_class(**{param: getattr(self, param) for param in self.torchjd_params})

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        yield

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        """Task weights of the TorchJD method (NaN for a method without weights), shape (n_tasks,)."""
        return self.combine(G)[1]

    def combine(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchJD's aggregation of ``G`` (shape (n_tasks, n_params)) and its task weights.

        Returns:
            The direction, shape (n_params,), and the weights, shape (n_tasks,): those of the
            Gramian weighting (the direction is then ``w @ G``), or NaN where TorchJD's method has
            none. A ``G`` with a non-finite entry, or whose Gramian (for the direction-only
            methods: the rows' squared norms, its diagonal) overflows, gives a NaN direction and
            NaN weights, as the mean would, without calling TorchJD: several of its methods
            (CAGrad, IMTL-G, Aligned-MTL) end in a linear-algebra error on such a matrix, and
            ConFIG, which divides the rows by their norms, returns a zero direction, where the
            trainer should see the non-finite numbers and report a divergence. (The check costs
            one device synchronisation per call on a GPU.)
        """
        _check_matrix(G)
        no_weights = G.new_full((G.shape[0],), float("nan"))
        with torch.no_grad(), self._rng():
            weighting = getattr(self._jd, "gramian_weighting", None)
            if weighting is not None:
                gramian = G @ G.T  # non-finite whenever G is (its diagonal holds the squared norms)
                if not bool(torch.isfinite(gramian).all()):
                    return G.new_full((G.shape[1],), float("nan")), no_weights
                w = weighting(gramian)
                return w @ G, w
            if not bool(torch.isfinite((G * G).sum(dim=1)).all()):  # non-finite whenever G is
                return G.new_full((G.shape[1],), float("nan")), no_weights
            return self._jd(G), no_weights


class _SeededGlobalRNG(TorchJDAggregator):
    """A TorchJD method that draws from torch's global CPU generator, made reproducible.

    Each call runs on a forked global state (restored afterwards) seeded from the aggregator's own
    generator, itself seeded with ``seed``: the same seed gives the same sequence of draws.
    """

    uses_global_rng = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_int("seed", seed, minimum=0)
        self._generator = torch.Generator().manual_seed(self.seed)
        super().__init__()

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        draw = int(torch.randint(0, 2**62, (1,), generator=self._generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(draw)
            yield


class UPGradAggregator(TorchJDAggregator):
    """UPGrad: each row projected onto the dual cone of the rows (so that it conflicts with no
    task), then averaged. The result never decreases any task's objective to first order.

    References:
        V. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
    """

    torchjd_class = "UPGrad"
    name = "upgrad"
    description = "TorchJD UPGrad: mean of the rows projected onto the dual cone (outer gradients)"


class PCGradAggregator(_SeededGlobalRNG):
    """PCGrad: each row has its conflicting components with the other rows (in random order)
    projected away; the results are summed.

    Args:
        seed: Seed of the random projection orders (TorchJD draws them from torch's global
            generator; see the base class).

    References:
        T. Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """

    torchjd_class = "PCGrad"
    name = "pcgrad"
    description = "TorchJD PCGrad: sum of rows with conflicting components projected away (outer gradients)"
    param_help = {"seed": "seed of the random projection orders"}


class MGDAAggregator(TorchJDAggregator):
    """MGDA: the minimum-norm point of the convex hull of the rows (Frank-Wolfe on the Gramian).

    Args:
        epsilon: Stop when the step size falls below it, > 0.
        max_iters: At most this many iterations, >= 1.

    References:
        J.-A. Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective
        optimization", 2012; O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018.
    """

    torchjd_class = "MGDA"
    torchjd_params = ("epsilon", "max_iters")
    name = "mgda"
    description = "TorchJD MGDA: minimum-norm convex combination of the rows (outer gradients)"
    param_help = {"epsilon": "stopping tolerance of Frank-Wolfe", "max_iters": "iteration cap"}

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100) -> None:
        self.epsilon = check_positive("epsilon", epsilon)
        self.max_iters = check_int("max_iters", max_iters)
        super().__init__()


class CAGradAggregator(TorchJDAggregator):
    """CAGrad: the direction that maximises the worst task's improvement within a ball of radius
    ``c |g_0|`` around the mean gradient ``g_0`` (a small convex program, solved by cvxpy).

    Args:
        c: Radius scale, >= 0 (0: the mean direction).
        norm_eps: Gramian normalisation floor, >= 0.

    References:
        B. Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    """

    torchjd_class = "CAGrad"
    torchjd_params = ("c", "norm_eps")
    name = "cagrad"
    description = "TorchJD CAGrad: best worst-task gain in a ball c|g_0| around the mean (default c=0.5)"
    param_help = {"c": "radius scale of the ball around the mean gradient, >= 0",
                  "norm_eps": "normalisation floor"}

    def __init__(self, c: float = 0.5, norm_eps: float = 0.0001) -> None:
        self.c = check_positive("c", c, allow_zero=True)
        self.norm_eps = check_positive("norm_eps", norm_eps, allow_zero=True)
        super().__init__()


class IMTLGAggregator(TorchJDAggregator):
    """IMTL-G: the combination of the rows whose projections onto every row's direction are equal.

    References:
        L. Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    torchjd_class = "IMTLG"
    name = "imtl-g"
    description = "TorchJD IMTL-G: equal projection on every task's unit gradient (outer gradients)"


class AlignedMTLAggregator(TorchJDAggregator):
    """Aligned-MTL: the mean of the rows after aligning them (making the Gramian's eigenvalues
    equal), scaled by an eigenvalue of the Gramian.

    Args:
        scale_mode: ``"min"`` (smallest eigenvalue), ``"median"`` or ``"rmse"`` (mean eigenvalue).

    References:
        D. Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    """

    torchjd_class = "AlignedMTL"
    torchjd_params = ("scale_mode",)
    name = "aligned-mtl"
    description = "TorchJD Aligned-MTL: mean of the rows after equalising the Gramian's eigenvalues"
    param_help = {"scale_mode": "min, median or rmse"}

    def __init__(self, scale_mode: str = "min") -> None:
        self.scale_mode = check_choice("scale_mode", scale_mode, ("min", "median", "rmse"))
        super().__init__()


class DualProjAggregator(TorchJDAggregator):
    """DualProj: the mean of the rows projected onto the dual cone of the rows.

    References:
        V. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
    """

    torchjd_class = "DualProj"
    name = "dualproj"
    description = "TorchJD DualProj: mean of the rows, projected onto their dual cone (outer gradients)"


class ConFIGAggregator(TorchJDAggregator):
    """ConFIG: the direction with equal cosine to every row, scaled by the rows' projections.
    TorchJD gives a direction only: the recorded weights are NaN.

    References:
        Q. Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
        Networks", ICLR 2025.
    """

    torchjd_class = "ConFIG"
    name = "config"
    description = "TorchJD ConFIG: equal-angle conflict-free direction (outer gradients; no weights: NaN)"


#: The TorchJD adapters, in the order ``gabench list`` shows them.
TORCHJD_AGGREGATORS: tuple[type[TorchJDAggregator], ...] = (
    UPGradAggregator, PCGradAggregator, MGDAAggregator, CAGradAggregator, IMTLGAggregator,
    AlignedMTLAggregator, DualProjAggregator, ConFIGAggregator,
)
