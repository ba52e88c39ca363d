"""The fast path of the inner loop for fully connected models: hand-written batched backprop.

The general path (:class:`~gabench.algorithms.Learner` without a fast path) computes per-task
gradients with ``vmap(grad_and_value(loss))``: readable and model-agnostic, but every inner step
pays torch.func's tracing overhead, and second-order MAML differentiates through functorch's
double-backward machinery. For the fully connected models of gabench (:class:`~gabench.models.MLP`:
Linear/ReLU layers, and :class:`~gabench.models.Logistic`) with a standard loss (squared error,
logistic, cross-entropy) the same numbers come from a few batched matrix products:

- per-task weights are tensors of shape (n_tasks, *weight_shape), so a layer is one
  ``baddbmm`` over all tasks (one ``addmm`` while the weights are still shared by all tasks);
- the gradient of each task's mean loss is written out (``dL/dpred`` in closed form, then
  ``dL/dW = delta^T a`` and ``delta <- (delta W) * relu'(z)`` layer by layer): a dozen ops per
  inner step instead of a traced vmap of autograd;
- second-order MAML (:meth:`FastMLP.maml_grad`) is reverse mode through the inner loop written
  out too: ``v <- v - alpha H v`` per inner step, with the Hessian-vector products of the
  support losses by forward-over-reverse differentiation of the same layers. No autograd graph
  is built at all; the weighted sum over tasks folds into the last matrix product of each layer
  (without weights, the same pass gives every task's own outer gradient, the matrix the
  multi-task aggregators combine);
- with ``create_graph=True`` (the public :meth:`Algorithm.adapt <gabench.algorithms.Algorithm.adapt>`)
  the hand-written gradients are recorded by ordinary autograd instead, so they stay
  differentiable for callers that build their own outer loss.

:class:`FastMLP` only computes the same quantities as the general path differently:
``tests/test_fast_path.py`` checks both against each other (meta-gradients, weights, whole
runs; every family, algorithm, aggregator) and the fast path against closed forms and finite
differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gabench.models import MLP, Logistic

Params = dict[str, torch.Tensor]

#: Losses the fast path knows in closed form (the per-task mean over examples, as
#: :meth:`gabench.tasks.TaskFamily.loss` defines them).
LOSS_KINDS: tuple[str, ...] = ("mse", "bce", "ce")

# relu'(z) * grad, selected by the layer's output (> 0 exactly where z > 0); one op, and
# autograd knows its derivative (with respect to grad; zero with respect to the mask).
_relu_backward = torch.ops.aten.threshold_backward


@dataclass(frozen=True)
class _Layer:
    """One affine layer: ``z = a W^T + b`` (``a W`` when ``in_out``), then optionally ReLU."""

    weight: str
    bias: str | None
    in_out: bool
    relu: bool


def _layers_of(model: nn.Module) -> list[_Layer] | None:
    """The affine layers of a supported model, or None when the model is not supported."""
    if type(model) is Logistic:
        return [_Layer("theta", None, in_out=True, relu=False)]
    if type(model) is not MLP:
        return None
    layers: list[_Layer] = []
    for i, module in enumerate(model.net):
        if type(module) is nn.Linear:
            bias = f"net.{i}.bias" if module.bias is not None else None
            layers.append(_Layer(f"net.{i}.weight", bias, in_out=False, relu=False))
        elif type(module) is nn.ReLU and layers and not layers[-1].relu:
            layers[-1] = _Layer(layers[-1].weight, layers[-1].bias, in_out=False, relu=True)
        else:
            return None
    return layers or None


class FastMLP:
    """Batched forward and hand-written backward of a fully connected model, for all tasks at once.

    Parameters come as a dict like ``dict(model.named_parameters())``: either shared by all
    tasks (``per_task=False``, the meta-parameters) or with a leading task dimension
    (``per_task=True``, adapted parameters of shape (n_tasks, *param_shape)).

    Args:
        layers: The affine layers, in order (see :meth:`of`).
        loss_kind: ``"mse"`` (``mse_loss(pred.squeeze(-1), y)``), ``"bce"``
            (``binary_cross_entropy_with_logits(pred.squeeze(-1), y)``) or ``"ce"``
            (``cross_entropy(pred, y)``), each the mean over a task's examples.
    """

    def __init__(self, layers: list[_Layer], loss_kind: str) -> None:
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"loss_kind={loss_kind!r} is not allowed: expected one of {LOSS_KINDS}")
        self.layers = layers
        self.loss_kind = loss_kind

    @classmethod
    def of(cls, model: nn.Module, loss_kind: str | None) -> FastMLP | None:
        """The fast path for ``model``, or None where only the general path applies.

        Supported: exactly :class:`~gabench.models.MLP` (Linear and ReLU layers) and
        :class:`~gabench.models.Logistic`, with a loss in :data:`LOSS_KINDS`.
        """
        if loss_kind not in LOSS_KINDS:
            return None
        layers = _layers_of(model)
        return None if layers is None else cls(layers, loss_kind)

    # ------------------------------------------------------------------ matrix products
    @staticmethod
    def _times_w(layer: _Layer, a: torch.Tensor, W: torch.Tensor, per_task: bool) -> torch.Tensor:
        """``a W^T`` (``a W`` when ``in_out``): (T, K, in) -> (T, K, out)."""
        if per_task:
            return torch.bmm(a, W if layer.in_out else W.transpose(1, 2))
        return torch.matmul(a, W if layer.in_out else W.t())

    @staticmethod
    def _times_w_back(layer: _Layer, d: torch.Tensor, W: torch.Tensor, per_task: bool) -> torch.Tensor:
        """``d W`` (``d W^T`` when ``in_out``): (T, K, out) -> (T, K, in)."""
        if per_task:
            return torch.bmm(d, W.transpose(1, 2) if layer.in_out else W)
        return torch.matmul(d, W.t() if layer.in_out else W)

    @staticmethod
    def _outer(layer: _Layer, d: torch.Tensor, a: torch.Tensor, sum_tasks: bool) -> torch.Tensor:
        """Weight gradient ``d^T a`` in the weight's layout, per task or summed over tasks."""
        if sum_tasks:  # one product over all T*K rows
            d2, a2 = d.flatten(0, 1), a.flatten(0, 1)
            return a2.t().mm(d2) if layer.in_out else d2.t().mm(a2)
        return torch.bmm(a.transpose(1, 2), d) if layer.in_out else torch.bmm(d.transpose(1, 2), a)

    @staticmethod
    def _bias_sum(d: torch.Tensor, sum_tasks: bool) -> torch.Tensor:
        return d.sum((0, 1)) if sum_tasks else d.sum(1)

    # ------------------------------------------------------------------ forward
    def _affine(self, layer: _Layer, params: Params, h: torch.Tensor, per_task: bool) -> torch.Tensor:
        """``h`` of shape (T, K, in) -> pre-activations (T, K, out)."""
        W = params[layer.weight]
        b = None if layer.bias is None else params[layer.bias]
        if per_task:
            Wt = W if layer.in_out else W.transpose(1, 2)  # (T, in, out)
            return torch.bmm(h, Wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, Wt)
        T, K = h.shape[:2]
        flat = h.reshape(T * K, h.shape[2])
        Wt = W if layer.in_out else W.t()  # (in, out)
        z = torch.mm(flat, Wt) if b is None else torch.addmm(b, flat, Wt)
        return z.view(T, K, z.shape[1])

    def forward(self, params: Params, x: torch.Tensor, *,
                per_task: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Outputs of shape (T, K, n_out), and each layer's input and output (after ReLU)."""
        h = x.reshape(x.shape[0], x.shape[1], -1)
        inputs, outputs = [], []
        for layer in self.layers:
            inputs.append(h)
            h = self._affine(layer, params, h, per_task)
            if layer.relu:
                h = torch.relu(h)
            outputs.append(h)
        return h, inputs, outputs

    # ------------------------------------------------------------------ losses
    def _loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task mean loss, shape (T,)."""
        if self.loss_kind == "mse":
            return F.mse_loss(pred.squeeze(-1), y, reduction="none").mean(-1)
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(pred.squeeze(-1), y.to(pred.dtype),
                                                      reduction="none").mean(-1)
        T, K, C = pred.shape
        return F.cross_entropy(pred.reshape(T * K, C), y.reshape(T * K), reduction="none").view(T, K).mean(-1)

    def _loss_grad(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``d L_t / d pred`` of each task's mean loss, shape of ``pred`` (T, K, n_out)."""
        K = pred.shape[1]
        if self.loss_kind == "mse":
            return (pred.squeeze(-1) - y).mul_(2.0 / K).unsqueeze(-1)
        if self.loss_kind == "bce":
            return (torch.sigmoid(pred.squeeze(-1)) - y.to(pred.dtype)).div_(K).unsqueeze(-1)
        onehot = F.one_hot(y, pred.shape[-1]).to(pred.dtype)
        return (torch.softmax(pred, dim=-1) - onehot).div_(K)

    def _loss_hvp(self, pred: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The loss Hessian (with respect to ``pred``, per task) applied to ``r`` (T, K, n_out)."""
        K = pred.shape[1]
        if self.loss_kind == "mse":
            return r * (2.0 / K)
        if self.loss_kind == "bce":
            s = torch.sigmoid(pred)
            return (s * (1 - s)).mul_(r).div_(K)
        s = torch.softmax(pred, dim=-1)
        sr = s * r
        return (sr - s * sr.sum(-1, keepdim=True)).div_(K)

    # ------------------------------------------------------------------ public
    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, *, per_task: bool) -> torch.Tensor:
        """Per-task loss, shape (T,), differentiable with respect to ``params``."""
        return self._loss(self.forward(params, x, per_task=per_task)[0], y)

    def predict(self, params: Params, x: torch.Tensor, *, per_task: bool) -> torch.Tensor:
        """Model outputs for every task, shape (T, K, n_out)."""
        return self.forward(params, x, per_task=per_task)[0]

    def grad_and_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, *, per_task: bool,
                      create_graph: bool,
                      tape: list[_TapeEntry] | None = None) -> tuple[Params, torch.Tensor]:
        """Gradient of each task's loss with respect to its parameters.

        Args:
            params: Shared (``per_task=False``) or per-task parameters.
            x: Tensor of shape (T, K, *x_shape).
            y: Tensor of shape (T, K).
            per_task: Whether ``params`` have a leading task dimension.
            create_graph: Record the gradient computation for a later backward pass (second
                order); otherwise the gradients are constants.
            tape: When given, what :meth:`maml_grad` needs of this step is appended to it.

        Returns:
            Gradients, each of shape (T, *param_shape), and the losses (detached), shape (T,).
        """
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            pred, inputs, outputs = self.forward(params, x, per_task=per_task)
            with torch.no_grad():
                loss = self._loss(pred, y)
            deltas: list[torch.Tensor] = [pred] * len(self.layers)
            grads = self._backward(params, self._loss_grad(pred, y), inputs, outputs, per_task,
                                   deltas=deltas)
        if tape is not None:
            tape.append(_TapeEntry(params, per_task, pred, inputs, outputs, deltas))
        return grads, loss

    def weighted_grad_and_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                               weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """``sum_t w_t grad L_t(params_t)`` for per-task ``params``, and the losses (T,).

        The task sum is folded into the last matrix product of each layer (one ``mm`` over all
        tasks' examples), so the per-task gradients are never formed. No graph is recorded.
        """
        with torch.no_grad():
            pred, inputs, outputs = self.forward(params, x, per_task=True)
            loss = self._loss(pred, y)
            delta = self._loss_grad(pred, y).mul_(weights.view(-1, 1, 1))
            return self._backward(params, delta, inputs, outputs, per_task=True, sum_tasks=True), loss

    def maml_grad(self, tape: list[_TapeEntry], adapted: Params, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor | None, alpha: float) -> tuple[Params, torch.Tensor]:
        """Second-order MAML gradient ``grad_theta sum_t w_t L_t(theta'_t(theta))``, by hand.

        Reverse mode through the recorded inner loop ``theta_{j+1} = theta_j - alpha grad
        L^s_t(theta_j)``: starting from ``v = w_t grad L_t(theta'_t)`` on the query set, each
        step back applies ``v <- v - alpha H_j v`` (``H_j``: each task's support-loss Hessian at
        ``theta_j``, applied by forward-over-reverse differentiation of the layers); the shared
        first step sums over tasks. No autograd graph is built.

        Args:
            tape: What :meth:`grad_and_loss` recorded at each inner step, in order.
            adapted: The adapted per-task parameters.
            x: Query inputs, shape (T, K_q, *x_shape).
            y: Query targets, shape (T, K_q).
            weights: Task weights, shape (T,); None for every task's own gradient
                ``grad_theta L_t(theta'_t(theta))`` (the shared first step then does not sum
                over tasks).
            alpha: The inner learning rate.

        Returns:
            The meta-gradient, each of the shared parameter's shape (with ``weights=None``: the
            per-task gradients, each of shape (T, *param_shape)), and the per-task query losses,
            shape (T,).
        """
        with torch.no_grad():
            pred, inputs, outputs = self.forward(adapted, x, per_task=True)
            loss = self._loss(pred, y)
            delta = self._loss_grad(pred, y)
            if weights is not None:
                delta.mul_(weights.view(-1, 1, 1))
            v = self._backward(adapted, delta, inputs, outputs, per_task=True)
            for entry in reversed(tape):
                shared = not entry.per_task and weights is not None
                hv = self._hvp(entry, v, sum_tasks=shared)
                if shared:
                    v = {k: torch.add(v[k].sum(0), hv[k], alpha=-alpha) for k in v}
                else:
                    v = {k: torch.add(v[k], hv[k], alpha=-alpha) for k in v}
            return v, loss

    # ------------------------------------------------------------------ backward passes
    def _backward(self, params: Params, delta: torch.Tensor, inputs: list[torch.Tensor],
                  outputs: list[torch.Tensor], per_task: bool, sum_tasks: bool = False,
                  deltas: list[torch.Tensor] | None = None) -> Params:
        """Backpropagate ``delta = dL/dpred`` (T, K, n_out) through the layers.

        ``deltas``, when given, receives ``dL/dz`` of every layer (by layer index).
        """
        grads: Params = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if deltas is not None:
                deltas[i] = delta
            grads[layer.weight] = self._outer(layer, delta, inputs[i], sum_tasks)
            if layer.bias is not None:
                grads[layer.bias] = self._bias_sum(delta, sum_tasks)
            if i == 0:
                break
            delta = self._times_w_back(layer, delta, params[layer.weight], per_task)
            if self.layers[i - 1].relu:  # the mask is a constant (relu'' = 0): detached
                delta = _relu_backward(delta, outputs[i - 1].detach(), 0)
        return grads

    def _hvp(self, entry: _TapeEntry, v: Params, sum_tasks: bool) -> Params:
        """Each task's support-loss Hessian at ``entry.params`` applied to its ``v`` (per task).

        Forward-over-reverse (Pearlmutter's R-operator): ``R{x}`` is the directional derivative
        of ``x`` along ``v``. ReLU's second derivative is zero, so its masks are constants.
        """
        per_task = entry.per_task
        r_a: torch.Tensor | None = None  # R{layer input}; the data does not depend on params
        r_outputs: list[torch.Tensor | None] = []
        for i, layer in enumerate(self.layers):
            W, a = entry.params[layer.weight], entry.inputs[i]
            r_z = self._times_w(layer, a, v[layer.weight], per_task=True)
            if r_a is not None:
                r_z = r_z + self._times_w(layer, r_a, W, per_task)
            if layer.bias is not None:
                r_z = r_z + v[layer.bias].unsqueeze(1)
            r_outputs.append(r_a)
            r_a = _relu_backward(r_z, entry.outputs[i], 0) if layer.relu else r_z
        r_delta = self._loss_hvp(entry.pred, r_a)
        out: Params = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer, delta, r_in = self.layers[i], entry.deltas[i], r_outputs[i]
            gW = self._outer(layer, r_delta, entry.inputs[i], sum_tasks)
            if r_in is not None:
                gW = gW + self._outer(layer, delta, r_in, sum_tasks)
            out[layer.weight] = gW
            if layer.bias is not None:
                out[layer.bias] = self._bias_sum(r_delta, sum_tasks)
            if i == 0:
                break
            W = entry.params[layer.weight]
            r_delta = (self._times_w_back(layer, r_delta, W, per_task)
                       + self._times_w_back(layer, delta, v[layer.weight], per_task=True))
            if self.layers[i - 1].relu:
                r_delta = _relu_backward(r_delta, entry.outputs[i - 1], 0)
        return out


@dataclass(frozen=True)
class _TapeEntry:
    """One inner step as :meth:`FastMLP.maml_grad` needs it: parameters and activations."""

    params: Params
    per_task: bool
    pred: torch.Tensor
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    deltas: list[torch.Tensor]
