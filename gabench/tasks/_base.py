"""The task-family plug-in kind: a distribution over tasks that samples whole meta-batches."""

from __future__ import annotations

import inspect
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gabench._errors import ConfigError, check_choice, check_int

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Upper bounds of the families' size parameters. A larger value is refused with one line when
#: the family is built (before anything is created), instead of failing in the allocator later;
#: within these bounds, :mod:`gabench._memory` checks that a whole run fits in memory.
#: Support or query examples per task or per class (the run settings' bound, see gabench.config).
MAX_SHOTS = 100_000
#: Width of an MLP hidden layer (MAML's sine model has 40): a 4096-wide MLP has 17M parameters.
MAX_HIDDEN = 4096
#: Feature maps of a Conv-4 layer (MAML uses 32 or 64): 512 maps are 7M parameters.
MAX_FILTERS = 512
#: Input dimension of the logistic families (one weight per input).
MAX_DIM = 100_000
#: Input dimension of the scikit-learn families, which draw a dim x dim rotation per task.
MAX_SKLEARN_DIM = 256
SPLIT_INDEX: dict[str, int] = {s: i for i, s in enumerate(SPLITS)}


class TaskStream(np.random.Generator):
    """The generator of one task stream, with the tasks it has drawn but not yet handed out.

    A :class:`numpy.random.Generator` (every draw works as on one) that also holds, per family
    and split, the rest of the last chunk of tasks drawn. :meth:`TaskFamily.sample` draws tasks
    from a stream in chunks of :attr:`TaskFamily.chunk_tasks` tasks (one vectorised call for
    many meta-batches) and serves them in order, so the tasks a run sees depend only on the
    stream's seed and how many tasks were consumed before, never on how the requests were
    batched: ``sample(50)`` gives the tasks of ``sample(25)`` followed by ``sample(25)``.

    Args:
        bit_generator: The bit generator (see :func:`task_rng`).
    """

    def __init__(self, bit_generator: np.random.BitGenerator) -> None:
        super().__init__(bit_generator)
        self._pending: dict[tuple[TaskFamily, str], tuple[TaskBatch, int]] = {}

    def take(self, family: TaskFamily, split: str, n_tasks: int) -> TaskBatch:
        """The next ``n_tasks`` tasks of ``family``'s ``split`` stream, drawing chunks as needed.

        Returns:
            A :class:`TaskBatch` whose tensors are views of the chunk's (a concatenation when
            the request spans chunks).
        """
        key = (family, split)
        chunk, pos = self._pending.get(key, (None, 0))
        if chunk is not None and pos + n_tasks <= chunk.n_tasks:  # the usual case: one slice
            self._pending[key] = (chunk, pos + n_tasks)
            return chunk.select(slice(pos, pos + n_tasks))
        parts: list[TaskBatch] = []
        while n_tasks > 0:
            if chunk is None or pos == chunk.n_tasks:
                chunk, pos = family.draw_chunk(split, self), 0
            k = min(n_tasks, chunk.n_tasks - pos)
            parts.append(chunk.select(slice(pos, pos + k)))
            pos, n_tasks = pos + k, n_tasks - k
        if chunk is not None:
            self._pending[key] = (chunk, pos)
        return parts[0] if len(parts) == 1 else TaskBatch.concat(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain Generator's pickle would drop the class and the pending tasks, and so change
        # the rest of the stream; pickled together with its families, a stream goes on as before.
        return (_restore_stream, (self.bit_generator, self._pending))


def _restore_stream(bit_generator: np.random.BitGenerator,
                    pending: dict[tuple[TaskFamily, str], tuple[TaskBatch, int]]) -> TaskStream:
    stream = TaskStream(bit_generator)
    stream._pending = pending
    return stream


def task_rng(seed: int, family: str, split: str) -> TaskStream:
    """The task stream of ``(seed, family, split)``.

    The stream depends on nothing else (not on the algorithm or aggregator), so every method in a
    comparison sees the same tasks for a given seed, and the three splits are separate streams.

    Args:
        seed: Base seed of the run.
        family: Registry name of the family.
        split: One of ``"train"``, ``"val"``, ``"test"``.

    Returns:
        A fresh :class:`TaskStream` (a :class:`numpy.random.Generator`).
    """
    check_choice("split", split, SPLITS)
    seq = np.random.SeedSequence([int(seed), zlib.crc32(family.encode()), SPLIT_INDEX[split]])
    return TaskStream(np.random.PCG64(seq))


def init_generator(seed: int, family: str) -> torch.Generator:
    """The torch generator that initialises the model of ``(seed, family)``."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(seed), zlib.crc32(family.encode()), 99])
                      .generate_state(1, dtype=np.uint64)[0] >> 1))
    return g


#: Width of the block of seeds reserved for each split by :func:`split_seed`.
SEED_BLOCK = 2**62


def split_seed(rng: np.random.Generator, split: str) -> int:
    """A seed for a chunk generator, drawn from ``rng`` in the block reserved for ``split``.

    The 64-bit seed space is cut into one block of :data:`SEED_BLOCK` seeds per split, so a
    chunk of meta-train tasks and one of meta-test tasks are never drawn from the same seed,
    however many chunks are drawn. (Before the scikit-learn generators were vectorised, their
    32-bit ``random_state`` values were reserved per split the same way.)
    """
    return SPLIT_INDEX[split] * SEED_BLOCK + int(rng.integers(SEED_BLOCK))


def uniform_float32(rng: np.random.Generator, shape: tuple[int, ...], low: float,
                    width_log2: int = 0) -> np.ndarray:
    """Independent uniform float32 numbers on ``[low, low + 2**width_log2)``, straight from the
    generator's raw 64-bit words (two numbers per word).

    Each 32-bit half ``u`` of a word gives ``(u >> 9) | bits(2**e)``, read as a float32: the
    float ``2**e * (1 + m / 2**23)`` with ``m`` the top 23 bits of ``u``, uniform on the 2**23
    equally spaced floats of ``[2**e, 2**(e + 1))``; subtracting ``2**e - low`` (exact for the
    intervals used here, e.g. ``[0, 1)`` and ``[-1, 1)``) moves them onto ``[low, low + 2**e)``.
    So the numbers are uniform on a grid of spacing ``2**(e - 23)``, as
    ``Generator.random(dtype=np.float32)`` is on one of spacing ``2**-24``, at a third of its
    cost: it calls the bit generator once per number through a function pointer, whereas here
    NumPy's bit generator fills the words in one call and three vectorised passes do the rest.

    Args:
        rng: The generator (its bit generator advances by ``ceil(prod(shape) / 2)`` words).
        shape: Shape of the result.
        low: Lower end of the interval.
        width_log2: ``e``, the interval's width is ``2**e``.

    Returns:
        Float32 array of ``shape``.
    """
    n = int(np.prod(shape))
    words = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
    words >>= 9
    words |= np.float32(2.0**width_log2).view(np.uint32)
    x = words.view(np.float32)
    x -= np.float32(2.0**width_log2 - low)
    return x.reshape(shape)


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from ``rng`` (one draw), for draws that torch makes faster than
    NumPy (Gaussians: ``torch.randn`` is about three times as fast as NumPy's ziggurat on one
    CPU thread)."""
    g = torch.Generator()
    g.manual_seed(int(rng.integers(2**63)))
    return g


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of ``T`` tasks as stacked tensors.

    Attributes:
        support_x: Tensor of shape (T, K_s, *x_shape), the support (adaptation) inputs.
        support_y: Tensor of shape (T, K_s), targets (long class ids or float values).
        query_x: Tensor of shape (T, K_q, *x_shape), the query (evaluation) inputs.
        query_y: Tensor of shape (T, K_q).
        corrupted: Bool tensor of shape (T,), True for outlier tasks.
        classes: Optional long tensor of shape (T, ways): global class ids of each task, for
            families that have classes (used to check that splits share no class).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    corrupted: torch.Tensor
    classes: torch.Tensor | None = None

    @property
    def n_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch on ``device``."""
        return replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            corrupted=self.corrupted.to(device),
        )

    def select(self, index: slice) -> TaskBatch:
        """The tasks ``index`` of this batch."""
        return TaskBatch(
            self.support_x[index], self.support_y[index], self.query_x[index],
            self.query_y[index], self.corrupted[index],
            None if self.classes is None else self.classes[index],
        )

    @staticmethod
    def concat(batches: list[TaskBatch]) -> TaskBatch:
        """The tasks of ``batches`` one after the other, as one batch."""
        classes = [b.classes for b in batches]
        return TaskBatch(
            torch.cat([b.support_x for b in batches]), torch.cat([b.support_y for b in batches]),
            torch.cat([b.query_x for b in batches]), torch.cat([b.query_y for b in batches]),
            torch.cat([b.corrupted for b in batches]),
            None if any(c is None for c in classes) else torch.cat(classes),  # type: ignore[misc]
        )


@dataclass(frozen=True)
class ParamSpec:
    """One constructor parameter of a family, as shown by ``gabench list``."""

    name: str
    type: type
    default: Any
    help: str = field(default="")


class TaskFamily(ABC):
    """A distribution over tasks.

    Subclasses set the class attributes, validate their own parameters in ``__init__`` and
    implement :meth:`_sample` (the arrays of a meta-batch) and :meth:`make_model`.

    Attributes:
        name: Registry name.
        description: One line for ``gabench list``.
        task_type: ``"classification"`` or ``"regression"``.
        default_meta_test_tasks: How many held-out tasks the final meta-test uses by default.
        default_alpha: Inner learning rate used when a run does not set one (a value that
            learns on this family with the default settings, not a tuned optimum).
        chunk_tasks: Tasks drawn at once from a :class:`TaskStream` (see :meth:`sample`), or
            None to draw each request as it comes (families whose tasks are large, or whose
            stream must stay as it was). Part of the definition of the family's task streams:
            changing it changes the tasks.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    task_type: ClassVar[str]
    default_meta_test_tasks: ClassVar[int] = 600
    default_alpha: ClassVar[float] = 0.01
    chunk_tasks: ClassVar[int | None] = None

    shots: int
    query_shots: int
    ways: int

    @abstractmethod
    def _sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Arrays of a meta-batch: keys support_x, support_y, query_x, query_y (and classes)."""

    @abstractmethod
    def make_model(self, generator: torch.Generator) -> nn.Module:
        """A freshly initialised model for this family, its weights drawn from ``generator``."""

    # ------------------------------------------------------------------ public API
    def sample(self, n_tasks: int, split: str, rng: np.random.Generator) -> TaskBatch:
        """Sample ``n_tasks`` tasks of ``split`` as one stacked batch.

        For a family with :attr:`chunk_tasks` set, tasks are drawn from a :class:`TaskStream`
        (what :func:`task_rng` returns) in chunks of that many tasks by one vectorised
        :meth:`_sample` call and handed out in order: the stream depends only on (seed, family,
        split), however the tasks are requested, and a meta-iteration costs a slice, not a
        generator call. Otherwise (or from any other :class:`numpy.random.Generator`), exactly
        ``n_tasks`` tasks are drawn by one :meth:`_sample` call.

        Args:
            n_tasks: Number of tasks T.
            split: ``"train"``, ``"val"`` or ``"test"``.
            rng: The generator of the task stream (see :func:`task_rng`); the only source of
                randomness.

        Returns:
            A :class:`TaskBatch` on the CPU, float32 inputs.
        """
        n_tasks = check_int("n_tasks", n_tasks)
        check_choice("split", split, SPLITS)
        if self.chunk_tasks is not None and isinstance(rng, TaskStream):
            return rng.take(self, split, n_tasks)
        return self._batch(self._sample(n_tasks, split, rng), n_tasks)

    def draw_chunk(self, split: str, rng: np.random.Generator) -> TaskBatch:
        """The next :attr:`chunk_tasks` tasks of ``split`` drawn from ``rng`` in one call."""
        n = check_int("chunk_tasks", self.chunk_tasks)
        return self._batch(self._sample(n, split, rng), n)

    def _batch(self, arrays: dict[str, np.ndarray], n_tasks: int) -> TaskBatch:
        y_dtype = torch.long if self.task_type == "classification" else torch.float32
        classes = arrays.get("classes")
        return TaskBatch(
            support_x=torch.as_tensor(arrays["support_x"], dtype=torch.float32),
            support_y=torch.as_tensor(arrays["support_y"], dtype=y_dtype),
            query_x=torch.as_tensor(arrays["query_x"], dtype=torch.float32),
            query_y=torch.as_tensor(arrays["query_y"], dtype=y_dtype),
            corrupted=torch.zeros(n_tasks, dtype=torch.bool),
            classes=None if classes is None else torch.as_tensor(classes, dtype=torch.long),
        )

    @property
    def n_outputs(self) -> int:
        """Width of the model output: 1 for regression and binary, ``ways`` otherwise."""
        if self.task_type == "regression" or self.ways == 2:
            return 1
        return self.ways

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of one task: MSE (regression), logistic (binary) or cross-entropy.

        Args:
            pred: Tensor of shape (K, n_outputs), the model output.
            y: Tensor of shape (K,).
        """
        if self.task_type == "regression":
            return F.mse_loss(pred.squeeze(-1), y)
        if self.n_outputs == 1:
            return F.binary_cross_entropy_with_logits(pred.squeeze(-1), y.to(pred.dtype))
        return F.cross_entropy(pred, y)

    def accuracy(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Fraction of correct predictions of one task (None for regression)."""
        if self.task_type == "regression":
            return None
        if self.n_outputs == 1:
            return ((pred.squeeze(-1) > 0).long() == y).to(pred.dtype).mean()
        return (pred.argmax(-1) == y).to(pred.dtype).mean()

    def config(self) -> dict[str, Any]:
        """The constructor arguments of this family (what ``config.json`` records)."""
        return {p.name: getattr(self, p.name) for p in self.param_specs()}

    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        """The constructor parameters, with types and defaults, read from ``__init__``."""
        sig = inspect.signature(cls.__init__)
        hints = inspect.get_annotations(cls.__init__, eval_str=True)
        helps = getattr(cls, "param_help", {})
        specs = []
        for p in list(sig.parameters.values())[1:]:
            specs.append(ParamSpec(p.name, hints.get(p.name, str), p.default, helps.get(p.name, "")))
        return specs

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TaskFamily:
        """Build the family from a name -> value mapping (strings are converted by type).

        Raises:
            ConfigError: on an unknown parameter or a value of the wrong type.
        """
        specs = {s.name: s for s in cls.param_specs()}
        kwargs: dict[str, Any] = {}
        for key, value in params.items():
            if key not in specs:
                raise ConfigError(
                    f"{cls.name}.{key}", value,
                    "one of the parameters " + ", ".join(specs) + f" of family {cls.name!r}",
                )
            kwargs[key] = _convert(f"{cls.name}.{key}", value, specs[key].type)
        return cls(**kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _convert(param: str, value: Any, typ: Any) -> Any:
    if not isinstance(value, str):
        return value
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(param, value, "true or false")
    if typ is int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(param, value, "an integer") from None
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(param, value, "a number") from None
    return value


def check_shots(family: str, shots: Any, query_shots: Any, available: int | None = None,
                per: str = "task") -> tuple[int, int]:
    """Validate support and query sizes; ``available`` bounds their sum when data is finite."""
    shots = check_int("shots", shots, maximum=MAX_SHOTS)
    query_shots = check_int("query_shots", query_shots, maximum=MAX_SHOTS)
    if available is not None and shots + query_shots > available:
        raise ConfigError(
            "shots", shots,
            f"shots + query_shots <= {available} (examples per {per} in family {family!r}; "
            f"query_shots={query_shots})",
        )
    return shots, query_shots
