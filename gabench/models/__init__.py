"""Model factories: logistic, MLP, a small conv net and Conv-4, all seeded by an explicit generator."""

from gabench.models._base import MLP, ConvNet, Logistic
from gabench.models._conv4 import BatchStatNorm2d, Conv4, Conv4Block

__all__ = ["MLP", "BatchStatNorm2d", "Conv4", "Conv4Block", "ConvNet", "Logistic"]
