"""Maps theta (d,) -> vec(Delta W) (D,) as one flat vector: what every measurement of the lab shares.

``as_map`` wraps an Adapter (``ge.attach``; evaluation point = the adapter's theta), a Method (GPart /
UniLoRA / LoRA), a projection (Partition / Gaussian / Fastfood), or (callable, d). ``linearise`` gives
J v and J^T u at a point as functions of flat tensors (torch.func jvp / vjp), matrix-free: the Jacobian
J = d vec(Delta W) / d theta is never formed. Nothing here mutates a model or a theta (default dtype float64).
Taught in notebooks/02_lora_unilora_geometry.ipynb (the Jacobian and its singular values).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.adapter import Adapter
from ..core.methods import Method
from ..errors import ConfigError

F64 = torch.float64


@dataclass
class FlatMap:
    """theta (d,) -> vec(Delta W) (D,) as one flat tensor; ``theta0`` is the default evaluation point."""

    fn: object
    d: int
    name: str = "map"
    theta0: torch.Tensor | None = field(default=None, repr=False)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return flatten(self.fn(theta))

    def point(self, theta=None, dtype=F64) -> torch.Tensor:
        """A detached copy of ``theta`` (default ``theta0``, else zeros) in ``dtype``, checked for shape."""
        t = self.theta0 if theta is None else theta
        t = torch.zeros(self.d, dtype=dtype) if t is None else torch.as_tensor(t).detach().to(dtype).clone()
        if t.shape != (self.d,):
            raise ConfigError(f"theta for {self.name} must have shape ({self.d},), got {tuple(t.shape)}")
        return t


def flatten(out, buf: torch.Tensor | None = None) -> torch.Tensor:
    """A {name: Delta W} dict (in its order) or a tensor as one flat vector (written into ``buf`` if given)."""
    parts = [v.reshape(-1) for v in out.values()] if isinstance(out, dict) else [out.reshape(-1)]
    return torch.cat(parts, out=buf) if buf is not None else torch.cat(parts)


def unflatten(u: torch.Tensor, like):
    """Views of the flat ``u`` shaped like ``like`` (a dict of tensors or a tensor)."""
    if not isinstance(like, dict):
        return u.view(like.shape)
    out, pos = {}, 0
    for k, v in like.items():
        out[k] = u[pos: pos + v.numel()].view(v.shape)
        pos += v.numel()
    return out


def linearise(obj, theta=None, dtype=F64):
    """(D, d, Jv, JTu) at theta: J v and J^T u as functions of flat tensors (torch.func jvp / vjp).

    The AD transforms run on the map's own output (a dict of Delta W); flattening happens outside them,
    and ``Jv`` writes into one reused (D,) buffer (copy the result if you keep it).
    """
    f = as_map(obj)
    t = f.point(theta, dtype)
    y, vjp_fn = torch.func.vjp(f.fn, t)
    D = sum(v.numel() for v in y.values()) if isinstance(y, dict) else y.numel()
    buf = torch.empty(D, dtype=dtype)
    return (D, f.d, lambda v: flatten(torch.func.jvp(f.fn, (t,), (v.to(dtype),))[1], buf),
            lambda u: vjp_fn(unflatten(u.to(dtype), y))[0])


def as_map(obj, d: int | None = None, name: str | None = None) -> FlatMap:
    """Wrap an Adapter, Method, projection, FlatMap or callable (with ``d``) as a FlatMap.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "2 · LoRA's bilinear map is not identifiable".
    """
    if isinstance(obj, FlatMap):
        return obj
    if isinstance(obj, Adapter):
        return FlatMap(obj.method.delta_weights, obj.num_trainable, name or obj.method.name,
                       obj.theta.detach().clone())
    if isinstance(obj, Method):
        return FlatMap(obj.delta_weights, obj.num_params, name or obj.name)
    if hasattr(obj, "adjoint") and hasattr(obj, "d"):
        return FlatMap(obj, obj.d, name or type(obj).__name__)
    if callable(obj) and d is not None:
        return FlatMap(obj, int(d), name or getattr(obj, "__name__", "map"))
    raise ConfigError(f"cannot measure a {type(obj).__name__}: pass an Adapter (ge.attach), a Method, a "
                      f"projection, or a callable theta -> Delta W together with d=...")


def restrict(obj, index, theta=None, name: str | None = None) -> FlatMap:
    """The map b -> f(theta with theta[index] = b): only the coordinates ``index`` move (e.g. LoRA's B)."""
    f = as_map(obj)
    base = f.point(theta)
    index = torch.as_tensor(index, dtype=torch.long)
    return FlatMap(lambda b: f.fn(base.to(b.dtype).index_put((index,), b)), len(index),
                   name or f"{f.name}[restricted]", base[index].clone())


def jvp(obj, theta, v: torch.Tensor) -> torch.Tensor:
    """J(theta) v, flat (D,), in v's dtype.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "2 · LoRA's bilinear map is not identifiable".
    """
    return linearise(obj, theta, v.dtype)[2](v).clone()


def vjp(obj, theta, u: torch.Tensor) -> torch.Tensor:
    """J(theta)^T u, shape (d,), in u's dtype.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "3 · Distance ratios against ‖θ‖".
    """
    return linearise(obj, theta, u.dtype)[3](u)
