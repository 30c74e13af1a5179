"""Small torch model factories usable as ``torch:nldist.examples.nets:<name>(...)`` specs.

Each factory takes the number of input features first (``factory(n_features, **kwargs)``)
and returns a ``torch.nn.Module`` whose ``forward`` maps (n, d) to (n,). Keyword
arguments come from the spec, e.g. ``torch:nldist.examples.nets:mlp(hidden=32,depth=2)``.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
         "softplus": nn.Softplus, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


class Squeeze(nn.Module):
    """(n, 1) -> (n,)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)


def mlp(n_features: int, hidden: int = 32, depth: int = 2, act: str = "tanh", bias: bool = True,
        out: str = "identity") -> nn.Module:
    """Multilayer perceptron d -> hidden (x depth) -> 1.

    Parameters
    ----------
    n_features : int
    hidden : int
        Units per hidden layer.
    depth : int
        Number of hidden layers (``depth + 1`` Linear layers in all).
    act : str
        Hidden activation: relu, tanh, sigmoid, gelu, softplus, silu, leaky_relu.
    bias : bool
        Biases in every Linear layer.
    out : {"identity", "sigmoid"}
        Output map (sigmoid for ``loss: bce``).
    """
    if act not in _ACTS:
        raise ValueError(f"act must be one of {sorted(_ACTS)}")
    layers: list[nn.Module] = []
    width = n_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden, bias=bias), _ACTS[act]()]
        width = hidden
    layers += [nn.Linear(width, 1, bias=bias), Squeeze()]
    if out == "sigmoid":
        layers.append(nn.Sigmoid())
    elif out != "identity":
        raise ValueError("out must be identity or sigmoid")
    return nn.Sequential(*layers)


def paper_mlp(n_features: int, hidden: int = 10) -> nn.Module:
    """The paper's classifier (MATH.md §8): d -> hidden ReLU -> 1 with sigmoid output."""
    return mlp(n_features, hidden=hidden, depth=1, act="relu", bias=True, out="sigmoid")


class ReLUNet(nn.Module):
    """ReLU net without biases, declared positively homogeneous of degree depth + 1.

    The adjoint then takes the one-gradient shortcut of Prop. 3.1 (``homogeneous_degree``);
    ``out="sigmoid"`` declares an outer sigmoid (``outer_activation``): the model is
    sigmoid(forward(X)).
    """

    def __init__(self, n_features: int, hidden: int = 16, depth: int = 1,
                 out: str = "identity") -> None:
        super().__init__()
        dims = [n_features] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = nn.Linear(dims[-1], 1, bias=False)
        self.homogeneous_degree = depth + 1
        if out != "identity":
            self.outer_activation = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)[:, 0]


def relu_net(n_features: int, hidden: int = 16, depth: int = 1, out: str = "identity") -> nn.Module:
    """:class:`ReLUNet` (homogeneous; depth=1 is the torch twin of ``relu2:<hidden>``)."""
    return ReLUNet(n_features, hidden=hidden, depth=depth, out=out)


def classifier(n_features: int, hidden: str | int = "32", n_classes: int = 10,
               act: str = "relu") -> nn.Module:
    """C-class MLP: d -> h1 -> h2 ... -> C logits (the ``mlp:<h1>,<h2>:<C>[:act]`` spec).

    Parameters
    ----------
    n_features : int
    hidden : str or int
        Hidden widths, ``"64-32"`` for two layers.
    n_classes : int
        C, the number of logits.
    act : str
        Activation between layers (relu, tanh, gelu, silu, softplus, sigmoid).
    """
    widths = [int(h) for h in str(hidden).split("-") if h]
    layers: list[nn.Module] = []
    prev = n_features
    for h in widths:
        layers += [nn.Linear(prev, h), _ACTS[act]()]
        prev = h
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)
