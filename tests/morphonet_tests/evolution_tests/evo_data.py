"""Small data for the evolution tests: a separable 3-class problem in 6 features."""

import torch


def toy_data(n: int = 240, features: int = 6, classes: int = 3, seed: int = 0):
    """(x, y) with y the argmax of a fixed random projection of x (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return x, (x @ w).argmax(1)


def toy_split(seed: int = 0):
    """(train pair, validation pair), disjoint rows."""
    x, y = toy_data(300, seed=seed)
    return (x[:240], y[:240]), (x[240:], y[240:])
