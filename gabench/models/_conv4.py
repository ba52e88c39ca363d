"""Conv-4: the four-block convolutional network of MAML's few-shot image experiments."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

from gabench.models._base import _uniform_


def _xavier_(t: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator) -> None:
    """Glorot-uniform initialisation, U(-sqrt(6 / (fan_in + fan_out)), +...), seeded."""
    _uniform_(t, math.sqrt(6.0 / (fan_in + fan_out)), generator)


class BatchStatNorm2d(nn.Module):
    """Batch normalisation with the statistics of the batch it is given, always (no running
    statistics), and a learned per-channel scale and shift.

    The same function as ``nn.BatchNorm2d(channels, track_running_stats=False)`` in training
    mode, written with elementary operations: under ``torch.func.vmap`` of ``grad`` the fused
    ``batch_norm`` kernel gives wrong second-order gradients (its batched backward rule,
    pytorch/functorch#534; with torch 2.13, Conv-4's MAML meta-gradient through it differed
    from a per-task autograd loop by 3% (one inner step) and 26% (two) of its largest entry, in
    float64), while these operations give the loop's meta-gradient to rounding (the tests
    check it).

    Args:
        channels: Feature maps.
        eps: Added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (N, channels, H, W), normalised per channel over N, H and W."""
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)  # biased, as batch norm
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        # x * scale + (bias - mean * scale): one pass over x
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale)


class Conv4Block(nn.Module):
    """3x3 convolution (padding 1, no bias), batch norm, ReLU, 2x2 max-pool.

    The convolution has no bias: batch norm subtracts the per-channel mean right after it, so a
    bias would have no effect on the output (and a gradient of exactly zero).

    Args:
        in_channels: Input feature maps.
        out_channels: Output feature maps.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = skip_init(nn.Conv2d, in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = BatchStatNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (N, in_channels, H, W) -> (N, out_channels, H // 2, W // 2).

        ReLU is applied after the max-pool, on a quarter of the values: the same output and
        gradients as ReLU then max-pool, since both are monotone (max of ReLUs = ReLU of max).
        """
        return F.relu(F.max_pool2d(self.norm(self.conv(x)), 2))


class Conv4(nn.Module):
    """The Conv-4 network of MAML (Finn et al. 2017, Sec. 5.2), after Vinyals et al. (2016).

    Four blocks of a 3x3 convolution with ``filters`` maps, batch normalisation, ReLU and 2x2
    max-pooling, then a linear layer on the flattened features: 64 features for 28x28 Omniglot
    images with 64 filters, 800 for 84x84 Mini-ImageNet images with 32 filters.

    Batch norm always normalises with the statistics of the batch it is given and keeps no
    running statistics (:class:`BatchStatNorm2d`), as MAML's reference code does (its batch
    norm is always in training mode). Under gabench's vmap over tasks a batch is one
    task's support or query set, so every task is normalised with its own statistics, at
    meta-training and at meta-test alike, and the model has no buffers to carry per task. Batch
    norm learns a scale and a shift per channel (MAML's TensorFlow code learns only the shift;
    the PyTorch ports learn both).

    Initialisation, drawn from ``generator``: Glorot-uniform convolution and head weights and a
    zero head bias (as MAML's code), batch-norm scale 1 and shift 0.

    Args:
        in_channels: Image channels (1 for Omniglot, 3 for Mini-ImageNet).
        side: Height (= width) of the input images, >= 16.
        out_features: Number of classes.
        generator: Source of the initial weights.
        filters: Feature maps of every convolution.

    References:
        C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017, Sec. 5.2. O. Vinyals et al., "Matching Networks for One Shot
        Learning", NeurIPS 2016.
    """

    def __init__(self, in_channels: int, side: int, out_features: int, generator: torch.Generator,
                 filters: int = 64) -> None:
        super().__init__()
        if side < 16:
            raise ValueError(f"Conv4 needs images of side >= 16, got {side}")
        self.in_channels, self.side = in_channels, side
        widths = (in_channels, filters, filters, filters, filters)
        self.blocks = nn.Sequential(*(Conv4Block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        final = side
        for _ in range(4):
            final //= 2
        self.head = skip_init(nn.Linear, filters * final * final, out_features)
        for block in self.blocks:
            w = block.conv.weight
            _xavier_(w, w.shape[1] * 9, w.shape[0] * 9, generator)
        _xavier_(self.head.weight, self.head.in_features, out_features, generator)
        with torch.no_grad():
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images of shape (N, in_channels, side, side) (or flattened, (N, in_channels*side*side))
        -> logits of shape (N, out_features)."""
        n = x.shape[0]
        h = self.blocks(x.reshape(n, self.in_channels, self.side, self.side))
        return self.head(h.reshape(n, -1))
