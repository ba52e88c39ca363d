"""Model factories matched to task families.

Every model takes its initial weights from an explicit ``torch.Generator`` (never the global
torch RNG), so the same seed gives the same initialisation for every method in a comparison.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import skip_init


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=generator, dtype=t.dtype) * (2 * bound) - bound)


def _init_layer(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default layer initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded."""
    fan_in = layer.weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    _uniform_(layer.weight, bound, generator)
    if layer.bias is not None:
        _uniform_(layer.bias, bound, generator)


class Logistic(nn.Module):
    """Single-layer logistic model ``logit = X theta`` without bias (the textbook's model).

    Args:
        in_features: Input dimension.
        generator: Source of the initial ``theta ~ N(0, init_std^2)``.
        init_std: Standard deviation of the initial weights (1.0 in the textbook).
    """

    def __init__(self, in_features: int, generator: torch.Generator, init_std: float = 1.0):
        super().__init__()
        theta = torch.randn(in_features, 1, generator=generator) * init_std
        self.theta = nn.Parameter(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (..., in_features) -> logits of shape (..., 1)."""
        return x @ self.theta


class MLP(nn.Module):
    """Fully connected ReLU network.

    Args:
        in_features: Input dimension.
        hidden: Widths of the hidden layers, e.g. ``(40, 40)``.
        out_features: Output dimension.
        generator: Source of the initial weights.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int,
                 generator: torch.Generator):
        super().__init__()
        widths = (in_features, *hidden, out_features)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            lin = skip_init(nn.Linear, a, b)  # no draw from the global RNG
            _init_layer(lin, generator)
            layers.append(lin)
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (N, in_features) -> (N, out_features)."""
        return self.net(x)


class ConvNet(nn.Module):
    """A small convolutional network for square single-channel images (e.g. 8x8 digits).

    Two 3x3 convolutions with ReLU and 2x2 max pooling, then a linear head.

    Args:
        side: Height (= width) of the input images.
        out_features: Number of classes.
        generator: Source of the initial weights.
        channels: Feature maps per convolution.
    """

    def __init__(self, side: int, out_features: int, generator: torch.Generator,
                 channels: int = 16):
        super().__init__()
        self.side = side
        self.conv1 = skip_init(nn.Conv2d, 1, channels, 3, padding=1)
        self.conv2 = skip_init(nn.Conv2d, channels, channels, 3, padding=1)
        final = side // 4
        self.head = skip_init(nn.Linear, channels * final * final, out_features)
        for layer in (self.conv1, self.conv2, self.head):
            _init_layer(layer, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (N, side*side) or (N, side, side) -> logits (N, out_features)."""
        n = x.shape[0]
        h = x.reshape(n, 1, self.side, self.side)
        h = torch.max_pool2d(torch.relu(self.conv1(h)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        return self.head(h.reshape(n, -1))
