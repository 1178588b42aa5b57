"""Intrinsic dimension (Li et al. 2018): train a network from scratch inside a random d-dim subspace.

    params = params0 + M theta,   theta in R^d starts at 0,  params0 a random init,  M: R^d -> R^D

M is any linear map theta -> (D,). Two are provided, built from torch ops only:
    "partition"  GPart's PartitionProjection (one nonzero per row; exactly M^T M = I);
    "gaussian"   a dense Gaussian D x d matrix with unit-norm columns (M^T M = I only approximately,
                 off-diagonals ~ 1/sqrt(D)), the construction of Li et al.
d90 is the smallest d whose held-out accuracy reaches 90 % of the same network trained directly.
Taught in notebooks/04_toy_to_small_finetuning.ipynb, section "(c) Intrinsic dimension".
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from ..core.projections import PartitionProjection, as_positive_int
from ..errors import ConfigError

PROJECTIONS = ("partition", "gaussian")
DENSE_LIMIT_BYTES = 1 << 30


class DenseGaussian(nn.Module):
    """theta (d,) -> M theta (D,) with M[:, j] ~ N(0, I_D) normalised to unit length (seeded).

    Stored densely (4 D d bytes in float32); refuses beyond ``max_bytes``.
    """

    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int = DENSE_LIMIT_BYTES):
        super().__init__()
        D, d = as_positive_int(D, "D"), as_positive_int(d, "d")
        if 4 * D * d > max_bytes:
            raise ConfigError(f"a dense Gaussian {D:,} x {d:,} matrix needs {4 * D * d / 2**30:.1f} GiB "
                              f"(> {max_bytes / 2**30:.1f} GiB); use projection='partition' or a smaller d")
        g = torch.Generator().manual_seed(seed)
        M = torch.randn(D, d, generator=g)
        self.register_buffer("M", M / M.norm(dim=0, keepdim=True))
        self.D, self.d = D, d

    def forward(self, theta):
        return self.M @ theta


def make_projection(kind: str, D: int, d: int, seed: int = 0) -> nn.Module:
    """A theta -> (D,) map: "partition" (GPart's P) or "gaussian" (dense, unit-norm columns).

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(c) Intrinsic dimension: training from scratch in a random subspace".
    """
    if kind == "partition":
        return PartitionProjection(D, d, seed=seed)
    if kind == "gaussian":
        return DenseGaussian(D, d, seed=seed)
    raise ConfigError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")


class SubspaceModel(nn.Module):
    """Wrap ``net``: its parameters become params0 + M theta; theta (d,) is the only trainable tensor.

    ``net`` is not modified: params0 is a frozen copy of its parameters at construction.
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(c) Intrinsic dimension: training from scratch in a random subspace".
    """

    def __init__(self, net: nn.Module, projection: nn.Module):
        super().__init__()
        names, shapes, flat = [], [], []
        for n, p in net.named_parameters():
            names.append(n)
            shapes.append(p.shape)
            flat.append(p.detach().reshape(-1))
        self.net = net
        self.names, self.shapes = names, shapes
        self.register_buffer("params0", torch.cat(flat).clone())
        D = self.params0.numel()
        pD = getattr(projection, "D", D)
        if pD != D:
            raise ConfigError(f"projection maps to D={pD:,} but the network has {D:,} parameters")
        self.projection = projection
        d = getattr(projection, "d")
        self.theta = nn.Parameter(torch.zeros(d, dtype=self.params0.dtype))
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def D(self) -> int:
        return self.params0.numel()

    def params(self) -> dict[str, torch.Tensor]:
        flat = self.params0 + self.projection(self.theta).to(self.params0.dtype)
        out, pos = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = flat[pos: pos + k].view(s)
            pos += k
        return out

    def forward(self, x):
        return functional_call(self.net, self.params(), (x,))


def d90(dims, accuracies, baseline: float, fraction: float = 0.9) -> dict:
    """Smallest measured d with accuracy >= fraction * baseline, and a log-linear interpolation between
    the last d below and the first d above the threshold (None when the threshold is never reached).
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(c) Intrinsic dimension: training from scratch in a random subspace".
    """
    pairs = sorted(zip(dims, accuracies))
    threshold = fraction * baseline
    for i, (d, acc) in enumerate(pairs):
        if acc >= threshold:
            if i == 0:
                return {"threshold": threshold, "d90": d, "d90_interp": d}
            d0, a0 = pairs[i - 1]
            t = (threshold - a0) / (acc - a0)
            return {"threshold": threshold, "d90": d,
                    "d90_interp": float(math.exp(math.log(d0) + t * (math.log(d) - math.log(d0))))}
    return {"threshold": threshold, "d90": None, "d90_interp": None}
