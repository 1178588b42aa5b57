"""GPart, Uni-LoRA and LoRA as pure maps theta -> {weight name: Delta W}.

Each method knows the adapted layers (``Target``s) and offers
    delta_weights(theta)            pure, differentiable (torch.func-friendly) map to every Delta W;
    layer_forward(theta, i, m, x)   the efficient training forward of target i (tested equal to
                                    m's forward with W0 + Delta W_i).

Math (per target layer l with W_l in R^{out x in}):
    GPart     vec(Delta W_all) = P theta,  P in R^{D x d} a partition projection, D = sum_l out*in
    Uni-LoRA  (A_l, B_l)_all = reshape(P theta), P in R^{D_f x d}, D_f = sum_l r(in + out);
              Delta W_l = B_l A_l
    LoRA      (A_l, B_l)_all = reshape(theta) (P = identity);  Delta W_l = (alpha / r) B_l A_l
Taught in notebooks/02_lora_unilora_geometry.ipynb (the three maps) and 00_quickstart (GPart on MiniLM).
"""
from __future__ import annotations

import math
import numbers
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .fused import GPartLinearFn
from .projections import PartitionProjection, as_positive_int


@dataclass(frozen=True)
class Target:
    """One adapted layer. ``kind`` is "linear" (W: out x in) or "conv1d" (HF GPT-2 style, W: in x out)."""

    name: str
    kind: str
    in_features: int
    out_features: int
    has_bias: bool

    @property
    def weight_shape(self) -> tuple[int, int]:
        if self.kind == "linear":
            return (self.out_features, self.in_features)
        return (self.in_features, self.out_features)

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


def _as_linear(delta: torch.Tensor, kind: str) -> torch.Tensor:
    """Delta W in (out, in) orientation -> stored orientation of the target."""
    return delta if kind == "linear" else delta.t()


def layer_output(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Forward of a Linear / Conv1D ``module`` with ``weight`` (stored orientation) and ``bias``."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    out = x2 @ weight if bias is None else torch.addmm(bias, x2, weight)  # as HF Conv1D
    return out.reshape(*x.shape[:-1], weight.shape[-1])


def _functorch_active() -> bool:
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(check()) if check is not None else False


class Method(nn.Module, metaclass=ABCMeta):
    """Base class: holds the targets and any projection state (buffers); theta lives in the Adapter."""

    name = "method"

    def __init__(self, targets: list[Target]):
        super().__init__()
        self.targets = list(targets)

    @property
    @abstractmethod
    def num_params(self) -> int:
        """Length of theta."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable configuration that rebuilds the same map (saved with theta)."""

    @abstractmethod
    def init_theta(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """Initial theta (seeded, deterministic)."""

    @abstractmethod
    def delta_weights(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map theta to {qualified weight name: Delta W} (pure, differentiable)."""

    def layer_delta(self, theta: torch.Tensor, i: int) -> torch.Tensor:
        """Delta W of target i in the stored weight orientation."""
        return self.delta_weights(theta)[self.targets[i].name + ".weight"]

    def layer_forward(self, theta: torch.Tensor, i: int, module: nn.Module, x: torch.Tensor):
        """Reference forward: the layer with W0 + Delta W_i (subclasses override with faster paths)."""
        w = module.weight + self.layer_delta(theta, i).to(module.weight.dtype)
        return layer_output(module, x, w, module.bias)


# --------------------------------------------------------------------------------------- GPart
class GPart(Method):
    """vec(Delta W of all targets) = P theta with P a D x d partition projection; theta starts at 0.

    ``allow_empty=True`` accepts a partition with empty groups (checkpoints of the official fork, which keeps
    them; notebooks/07_bring_your_own_adapter.ipynb): their theta entries then never reach Delta W.
    """

    name = "gpart"

    def __init__(self, targets, d: int, seed: int = 0, assignment: str = "balanced",
                 include_bias: bool = False, allow_empty: bool = False):
        super().__init__(targets)
        self.include_bias = bool(include_bias)
        # positions: target l's weight (flattened in stored order), then its bias if included
        self.offsets, pos = [], 0
        for t in self.targets:
            bias_len = t.out_features if (self.include_bias and t.has_bias) else 0
            self.offsets.append((pos, pos + t.numel, pos + t.numel + bias_len))
            pos += t.numel + bias_len
        self.D = pos
        self.P = PartitionProjection(self.D, d, seed=seed, assignment=assignment, allow_empty=allow_empty)

    @property
    def num_params(self) -> int:
        return self.P.d

    def config(self) -> dict:
        return {"d": self.P.d, "seed": self.P.seed, "assignment": self.P.assignment,
                "include_bias": self.include_bias, "allow_empty": self.P.allow_empty}

    def init_theta(self, dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.zeros(self.P.d, dtype=dtype, device=device)

    def delta_weights(self, theta):
        # one gather per target slice of P theta (not slices of one (D,) vector): the same numbers, but a
        # backward / vjp costs O(D + d * #targets) instead of a full (D,) zero-filled gradient per target
        out = {}
        for t, (a, b, c) in zip(self.targets, self.offsets):
            out[t.name + ".weight"] = self.P(theta, a, b).view(t.weight_shape)
            if c > b:
                out[t.name + ".bias"] = self.P(theta, b, c)
        return out

    def layer_delta(self, theta, i):
        t, (a, b, _) = self.targets[i], self.offsets[i]
        return self.P(theta, a, b).view(t.weight_shape)

    def layer_forward(self, theta, i, module, x):
        t, (a, b, c) = self.targets[i], self.offsets[i]
        bias = module.bias
        if c > b:
            bias = bias + self.P(theta, b, c).to(bias.dtype)
        if _functorch_active():  # torch.func transforms: plain differentiable ops
            w = module.weight + self.P(theta, a, b).view(t.weight_shape).to(module.weight.dtype)
            return layer_output(module, x, w, bias)
        return GPartLinearFn.apply(x, module.weight, bias, self.P.scaled(theta), self.P, a, b,
                                   t.kind == "linear")


# ----------------------------------------------------------------------------- LoRA / Uni-LoRA
class _LowRank(Method):
    """Shared low-rank machinery: factors f (D_f,) -> A_l (r x in), B_l (out x r) per target."""

    def __init__(self, targets, r: int):
        super().__init__(targets)
        self.r = as_positive_int(r, "r", " (the LoRA rank)")
        self.offsets, pos = [], 0
        for t in self.targets:
            a_len, b_len = self.r * t.in_features, t.out_features * self.r
            self.offsets.append((pos, pos + a_len, pos + a_len + b_len))
            pos += a_len + b_len
        self.D_f = pos
        self.scaling = 1.0

    @abstractmethod
    def factors(self, theta, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The LoRA factor vector f (D_f,), or its slice [start:stop]."""

    def layer_factors(self, theta, i):
        t, (a, m, b) = self.targets[i], self.offsets[i]
        f = self.factors(theta, a, b)
        return f[: m - a].view(self.r, t.in_features), f[m - a:].view(t.out_features, self.r)

    def delta_weights(self, theta):
        f = self.factors(theta)
        out = {}
        for t, (a, m, b) in zip(self.targets, self.offsets):
            A = f[a:m].view(self.r, t.in_features)
            B = f[m:b].view(t.out_features, self.r)
            out[t.name + ".weight"] = _as_linear(self.scaling * (B @ A), t.kind)
        return out

    def layer_delta(self, theta, i):
        A, B = self.layer_factors(theta, i)
        return _as_linear(self.scaling * (B @ A), self.targets[i].kind)

    def layer_forward(self, theta, i, module, x):
        A, B = self.layer_factors(theta, i)
        dt = module.weight.dtype
        base = layer_output(module, x, module.weight, module.bias)
        return base + self.scaling * F.linear(F.linear(x, A.to(dt)), B.to(dt))  # x -> A -> B


class LoRA(_LowRank):
    """Delta W_l = (alpha / r) B_l A_l with (A_l, B_l) read directly from theta; A Kaiming-uniform, B = 0."""

    name = "lora"

    def __init__(self, targets, r: int = 8, alpha: float = 8.0, seed: int = 0):
        super().__init__(targets, r)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) \
                or alpha <= 0:
            raise ConfigError(f"alpha must be a finite number > 0 (LoRA scaling alpha/r), got {alpha!r}")
        self.alpha, self.seed = float(alpha), int(seed)
        self.scaling = self.alpha / self.r

    @property
    def num_params(self) -> int:
        return self.D_f

    def config(self):
        return {"r": self.r, "alpha": self.alpha, "seed": self.seed}

    def factors(self, theta, start=0, stop=None):
        return theta[start:stop]

    def init_theta(self, dtype=torch.float32, device=None):
        g = torch.Generator().manual_seed(self.seed)
        theta = torch.zeros(self.D_f, dtype=torch.float64)
        for t, (a, m, _) in zip(self.targets, self.offsets):
            bound = 1.0 / math.sqrt(t.in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear's default
            theta[a:m] = (torch.rand(m - a, generator=g, dtype=torch.float64) * 2 - 1) * bound
        return theta.to(dtype=dtype, device=device)  # B part stays 0 -> Delta W = 0 at init


class UniLoRA(_LowRank):
    """All LoRA factors = P theta with one balanced partition P (D_f x d); Delta W_l = B_l A_l."""

    name = "unilora"

    def __init__(self, targets, d: int, r: int = 4, seed: int = 0, init_scale: float = 0.02,
                 assignment: str = "balanced"):
        super().__init__(targets, r)
        if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real) \
                or not math.isfinite(init_scale) or init_scale <= 0:
            raise ConfigError(f"init_scale must be a finite number > 0, got {init_scale!r} (at theta = 0 both "
                              f"factors A = B = 0 and the gradient of every entry is zero: it could never train)")
        self.init_scale = float(init_scale)
        self.P = PartitionProjection(self.D_f, d, seed=seed, assignment=assignment)

    @property
    def num_params(self) -> int:
        return self.P.d

    def config(self):
        return {"d": self.P.d, "r": self.r, "seed": self.P.seed, "init_scale": self.init_scale,
                "assignment": self.P.assignment}

    def factors(self, theta, start=0, stop=None):
        return self.P(theta, start, stop)

    def init_theta(self, dtype=torch.float32, device=None):
        g = torch.Generator().manual_seed(self.P.seed + 1)
        theta = (torch.rand(self.P.d, generator=g, dtype=torch.float64) * 2 - 1) * self.init_scale
        return theta.to(dtype=dtype, device=device)


METHODS = {"gpart": GPart, "unilora": UniLoRA, "lora": LoRA}
