"""The implementations the benchmark times side by side, all behind one small interface.

Every implementation starts from the same initial model, takes the same task batches and returns
the meta-gradient (the outer direction, one tensor per parameter in the model's order) before it
takes the same outer step (Adam, learning rate beta). Task weights come from the same gabench
aggregator object in all of them, so "mean" and "ga" mean the same thing everywhere.

- ``gabench``: the trainer's own per-step path, :meth:`gabench.trainer.Trainer.train_step`
  (fast path on), and ``gabench-vmap``: the same with the general vmap path.
- ``loop``: a plain per-task PyTorch loop (functional_call + torch.autograd.grad).
- ``learn2learn``: ``learn2learn.algorithms.MAML`` (clone / adapt), MAML only.
- ``higher``: ``higher.innerloop_ctx`` with a differentiable SGD, MAML only.

learn2learn's top-level import pulls torchvision, gym and requests; only its MAML module (which
needs torch alone) is loaded here, by registering empty parent packages that point at the
installed files (:func:`load_learn2learn_maml`).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from gabench.aggregators import AGGREGATORS, Aggregator
from gabench.config import RunConfig
from gabench.tasks import TaskBatch
from gabench.trainer import Trainer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: algorithm, order, meta-batch size, inner steps, aggregator."""

    algorithm: str  # "maml" or "reptile"
    first_order: bool
    meta_batch: int
    inner_steps: int
    aggregator: str

    @property
    def method(self) -> str:
        if self.algorithm == "reptile":
            return "reptile"
        return "fomaml" if self.first_order else "maml"

    def config(self, device: str, beta: float, seed: int) -> RunConfig:
        return RunConfig(family="sine", algorithm=self.algorithm, first_order=self.first_order,
                         aggregator=self.aggregator, inner_steps=self.inner_steps,
                         meta_batch=self.meta_batch, beta=beta, seed=seed, device=device,
                         steps=1, test_tasks=1)


class Implementation:
    """A meta-learning implementation under test.

    Attributes:
        name: Column name in the report.
    """

    name: str

    def direction(self, batch: TaskBatch) -> list[torch.Tensor]:
        """The meta-gradient on ``batch`` at the current parameters (no update)."""
        raise NotImplementedError

    def step(self, batch: TaskBatch) -> None:
        """One meta-iteration: direction, then the outer Adam step."""
        raise NotImplementedError


class Gabench(Implementation):
    """gabench's trainer; ``fast_path=False`` forces the general vmap path."""

    def __init__(self, setting: Setting, device: str, beta: float, seed: int, fast_path: bool):
        self.name = "gabench" if fast_path else "gabench-vmap"
        self.trainer = Trainer(setting.config(device, beta, seed), progress=False,
                                           fast_path=fast_path)
        if fast_path and self.trainer.learner.fast is None:
            raise RuntimeError("the fast path does not apply to the sine MLP")

    def direction(self, batch: TaskBatch) -> list[torch.Tensor]:
        tr = self.trainer
        res = tr.algorithm.step(tr.learner, tr.params, batch, tr.aggregator)
        return [res.direction[k] for k in tr.params]

    def step(self, batch: TaskBatch) -> None:
        self.trainer.train_step(batch)

    def update_matrix(self, batch: TaskBatch) -> torch.Tensor:
        """G (rows g_i = theta - theta'_i) of ``batch`` at the current parameters."""
        tr = self.trainer
        with torch.no_grad():
            adapted, _ = tr.algorithm.adapt(tr.learner, tr.params, batch.support_x, batch.support_y)
        return tr.algorithm.update_matrix(tr.params, adapted)


class _PerTask(Implementation):
    """Shared plumbing of the per-task implementations: own model copy, Adam, aggregator."""

    def __init__(self, setting: Setting, model: torch.nn.Module, loss_fn: LossFn, alpha: float,
                 beta: float):
        self.setting = setting
        self.model = copy.deepcopy(model)
        self.params = list(self.model.parameters())
        self.names = [n for n, _ in self.model.named_parameters()]
        self.loss_fn = loss_fn
        self.alpha = alpha
        self.aggregator: Aggregator = AGGREGATORS[setting.aggregator]()
        self.optimizer = torch.optim.Adam(self.params, lr=beta)

    def _theta_minus(self, adapted: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([(p - a).detach().reshape(-1) for p, a in zip(self.params, adapted, strict=True)])

    def _maml_direction(self, losses: list[torch.Tensor], G: list[torch.Tensor]) -> list[torch.Tensor]:
        w = self.aggregator.weights(torch.stack(G))
        return list(torch.autograd.grad(torch.stack(losses) @ w, self.params))

    def step(self, batch: TaskBatch) -> None:
        for p, g in zip(self.params, self.direction(batch), strict=True):
            p.grad = g
        self.optimizer.step()


class Loop(_PerTask):
    """A plain per-task PyTorch loop: functional_call and torch.autograd.grad, task by task."""

    name = "loop"

    def _call(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.names, params, strict=True)), (x,))

    def direction(self, batch: TaskBatch) -> list[torch.Tensor]:
        s = self.setting
        if s.algorithm == "reptile":
            return self._reptile(batch)
        second = not s.first_order
        losses, G = [], []
        for i in range(batch.n_tasks):
            fast = self.params
            for _ in range(s.inner_steps):
                loss = self.loss_fn(self._call(fast, batch.support_x[i]), batch.support_y[i])
                grads = torch.autograd.grad(loss, fast, create_graph=second)
                fast = [p - self.alpha * g for p, g in zip(fast, grads, strict=True)]
            G.append(self._theta_minus(fast))
            losses.append(self.loss_fn(self._call(fast, batch.query_x[i]), batch.query_y[i]))
        return self._maml_direction(losses, G)

    def _reptile(self, batch: TaskBatch) -> list[torch.Tensor]:
        G = []
        for i in range(batch.n_tasks):
            fast = [p.detach().requires_grad_(True) for p in self.params]
            for _ in range(self.setting.inner_steps):
                loss = self.loss_fn(self._call(fast, batch.support_x[i]), batch.support_y[i])
                grads = torch.autograd.grad(loss, fast)
                fast = [(p - self.alpha * g).detach().requires_grad_(True)
                        for p, g in zip(fast, grads, strict=True)]
            G.append(self._theta_minus(fast))
        Gm = torch.stack(G)
        d = self.aggregator.weights(Gm) @ Gm
        out, offset = [], 0
        for p in self.params:
            out.append(d[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out


class Learn2learn(_PerTask):
    """learn2learn's MAML wrapper: clone(), adapt() per task, as in its examples."""

    name = "learn2learn"

    def __init__(self, maml_cls: type, *args) -> None:
        super().__init__(*args)
        self.maml = maml_cls(self.model, lr=self.alpha, first_order=self.setting.first_order)

    def direction(self, batch: TaskBatch) -> list[torch.Tensor]:
        losses, G = [], []
        for i in range(batch.n_tasks):
            learner = self.maml.clone()
            for _ in range(self.setting.inner_steps):
                learner.adapt(self.loss_fn(learner(batch.support_x[i]), batch.support_y[i]))
            G.append(self._theta_minus(list(learner.parameters())))
            losses.append(self.loss_fn(learner(batch.query_x[i]), batch.query_y[i]))
        return self._maml_direction(losses, G)


class Higher(_PerTask):
    """higher's innerloop_ctx with a differentiable SGD inner optimizer."""

    name = "higher"

    def __init__(self, higher_mod: types.ModuleType, *args) -> None:
        super().__init__(*args)
        self.higher = higher_mod
        self.inner_opt = torch.optim.SGD(self.params, lr=self.alpha)

    def direction(self, batch: TaskBatch) -> list[torch.Tensor]:
        first_order = self.setting.first_order
        losses, G, grads = [], [], []
        for i in range(batch.n_tasks):
            with self.higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False,
                                           track_higher_grads=not first_order) as (fmodel, diffopt):
                for _ in range(self.setting.inner_steps):
                    diffopt.step(self.loss_fn(fmodel(batch.support_x[i]), batch.support_y[i]))
                fast = list(fmodel.parameters())
                G.append(self._theta_minus(fast))
                loss = self.loss_fn(fmodel(batch.query_x[i]), batch.query_y[i])
                if first_order:  # higher detaches the fast weights: take their gradients
                    grads.append(torch.autograd.grad(loss, fast))
                else:
                    losses.append(loss)
        if not first_order:
            return self._maml_direction(losses, G)
        w = self.aggregator.weights(torch.stack(G))
        return [sum(wi * g[j] for wi, g in zip(w, grads, strict=True)) for j in range(len(self.params))]


def load_learn2learn_maml() -> type | None:
    """``learn2learn.algorithms.maml.MAML`` without running learn2learn's top-level import.

    Returns None when learn2learn is not installed.
    """
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", f"{root}/algorithms")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    from learn2learn.algorithms.maml import MAML  # noqa: PLC0415 - after the stubs above

    return MAML


def load_higher() -> types.ModuleType | None:
    """The ``higher`` module, or None when it is not installed."""
    if importlib.util.find_spec("higher") is None:
        return None
    import higher  # noqa: PLC0415

    return higher


def load_libraries(names: tuple[str, ...], hint: str, require: bool = False) -> dict[str, Any]:
    """The optional libraries of the comparison, by name: ``"learn2learn"`` (its MAML class, see
    :func:`load_learn2learn_maml`) and ``"higher"`` (the module); None for one not installed.

    Args:
        names: Which libraries to load.
        hint: How to install them, said in the warning for each one missing.
        require: A missing library stops the benchmark (SystemExit) instead of a warning.
    """
    loaders = {"learn2learn": load_learn2learn_maml, "higher": load_higher}
    loaded = {name: loaders[name]() for name in names}
    for name, lib in loaded.items():
        if lib is None:
            msg = f"{name} is not installed: its columns stay empty ({hint})"
            if require:
                raise SystemExit(msg)
            print("warning:", msg, file=sys.stderr)
    return loaded


def per_task_baselines(setting: Setting, model: torch.nn.Module, loss_fn: LossFn, alpha: float, beta: float,
                       libraries: dict[str, Any]) -> list[Implementation]:
    """The per-task implementations starting from ``model``: the plain loop, then (MAML only)
    learn2learn and higher where ``libraries`` (from :func:`load_libraries`) has them."""
    impls: list[Implementation] = [Loop(setting, model, loss_fn, alpha, beta)]
    if setting.algorithm == "maml":
        if libraries.get("learn2learn") is not None:
            impls.append(Learn2learn(libraries["learn2learn"], setting, model, loss_fn, alpha, beta))
        if libraries.get("higher") is not None:
            impls.append(Higher(libraries["higher"], setting, model, loss_fn, alpha, beta))
    return impls
