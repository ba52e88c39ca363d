"""Model factories: logistic, MLP and a small conv net, all seeded by an explicit generator."""

from gabench.models._base import MLP, ConvNet, Logistic

__all__ = ["MLP", "ConvNet", "Logistic"]
