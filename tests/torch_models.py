"""Torch model factories for tests (loaded as ``torch:tests/torch_models.py:<name>``).

Not a test module: the good factories build small nets, the bad ones break one rule each.
"""

from __future__ import annotations

import torch
from torch import nn


def make(n_features: int, hidden: int = 6, act: str = "tanh", bias: bool = True,
         out: str = "identity") -> nn.Module:
    """d -> hidden -> hidden -> 1 MLP (act: tanh | relu), optional sigmoid/tanh output."""
    a = {"tanh": nn.Tanh, "relu": nn.ReLU}[act]
    layers = [nn.Linear(n_features, hidden, bias=bias), a(), nn.Linear(hidden, hidden, bias=bias),
              a(), nn.Linear(hidden, 1, bias=bias), nn.Flatten(0)]
    if out == "sigmoid":
        layers.append(nn.Sigmoid())
    elif out == "tanh":
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class _LNResidual(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.inp, self.ln = nn.Linear(d, hidden), nn.LayerNorm(hidden)
        self.mid, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.inp(x))
        z = z + nn.functional.gelu(self.mid(self.ln(z)))
        return self.out(z).squeeze(-1)


def ln_residual(n_features: int, hidden: int = 16, gain: float = 2.0) -> nn.Module:
    """tanh layer, then a LayerNorm + GELU residual block, then a linear head; the weights
    scaled by ``gain`` (LayerNorm of a vector shrinking with t makes the gradient along
    t theta sharp near t = 0: the case where (ID) alone missed adjoint errors)."""
    torch.manual_seed(0)
    net = _LNResidual(n_features, hidden)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(gain)
    return net


class Direct(nn.Module):
    """Uses its parameters directly (not through layers): the generic quadrature path."""

    def __init__(self, n_features: int, hidden: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = nn.Parameter(torch.randn(hidden, n_features, generator=g) / n_features ** 0.5)
        self.b = nn.Parameter(torch.randn(hidden, generator=g))
        self.v = nn.Parameter(torch.randn(hidden, generator=g) / hidden ** 0.5)
        self.register_buffer("shift", torch.full((n_features,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu((x - self.shift) @ self.W.T + self.b, 0.1)
        return torch.tanh(h) @ self.v + (h.clamp(min=0.0) ** 2).sum(1) * 0.01


def direct(n_features: int) -> nn.Module:
    return Direct(n_features)


def fixed() -> nn.Module:
    """No n_features argument: called as fixed() (input size 3 hard-wired)."""
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def wrong_shape(n_features: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 2), nn.Unflatten(1, (2, 1)))  # (n, 2, 1)


class _Rounds(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(self.lin(x)[:, 0] * 10.0)


def not_differentiable(n_features: int) -> nn.Module:
    return _Rounds(n_features)


class _Item(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)[:, 0]
        return out * float(out.sum().item() > 0)


def uses_item(n_features: int) -> nn.Module:
    return _Item(n_features)


class _NaN(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.lin(x)[:, 0] - 1e6)


def nan_output(n_features: int) -> nn.Module:
    return _NaN(n_features)


def not_a_module(n_features: int) -> object:
    return object()
