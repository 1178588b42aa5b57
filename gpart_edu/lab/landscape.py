"""Loss landscapes in the trainable subspace: L(theta) on lines and planes, never mutating the model.

    obj = Objective(model, eval_data)                     # a fixed evaluation batch, loss_fn(model, batch)
    u, v = random_directions(d, k=2, seed=0)              # the same u, v for every method with this d
    surf = grid(obj, u, v, span=1.0, n=21)                # L(theta* + a u + b v), a, b in [-span, span]
    curve = interpolate(obj, theta_init, theta_trained)   # L((1 - t) theta_a + t theta_b)

Every evaluation goes through ``losses.evaluate(model, chunks, theta=t)``, i.e.
``torch.func.functional_call(model, {"gpart_edu_adapter.theta": t}, ...)``: the caller's parameters, theta and
train/eval flags are the same bit-for-bit afterwards. Notebook: 03_loss_landscapes.

Direction choices (``Direction.kind``):
    "random-theta"  unit Gaussian vectors in theta-space (seeded, orthonormalised). For GPart the weight
                    change P u has norm 1 too (isometry); for LoRA / Uni-LoRA its size depends on theta*.
    "filter"        Li et al. (2018) filter-normalised weight-space directions delta (every filter, i.e.
                    output row of W* = W0 + Delta W(theta*), gets a Gaussian row rescaled to that row's
                    norm; biases get 0), pulled back to theta-space with the adjoint J^T of the map
                    theta -> Delta W at theta*. GPart: J = P, so u = P^T delta = P^+ delta and P u = P P^T delta
                    is the orthogonal projection of delta onto the weights GPart can reach (about sqrt(d/D)
                    of its norm). LoRA / Uni-LoRA: the map is bilinear, J depends on theta* and J^T delta is
                    not a preimage of delta; it is offered only with ``linearize=True`` and labelled
                    "filter-linearized".
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.adapter import get_adapter
from ..core.projections import as_positive_int
from ..errors import ConfigError
from ..losses import THETA_KEY, call_with, classification_loss, eval_mode, evaluate, n_examples, take


@dataclass(eq=False, repr=False)
class Objective:
    """Evaluate L(theta) = mean loss of ``model`` over a fixed evaluation set, functionally.

    ``data``: dict of equal-length tensors with "labels", or a tuple (x, y), as in ``train.fit``.
    ``loss_fn(model, batch)`` returns the mean loss of a batch (default ``losses.classification_loss``).
    The set is cut once into chunks of ``batch_size`` examples, in order and with their padding, on theta's
    device (a single chunk is the model's own forward, bit for bit); L is the example-weighted mean of chunk
    means, computed by ``losses.evaluate`` at theta. The model runs in eval mode (dropout off); every module's
    train flag is restored afterwards. Notebook: 03_loss_landscapes.
    """

    model: nn.Module
    data: object
    loss_fn: object = None
    batch_size: int = 256

    def __post_init__(self):
        self.adapter = get_adapter(self.model)
        if self.adapter is None:
            raise ConfigError("model has no gpart_edu adapter; attach one first: ge.attach(model, 'gpart', d=...)")
        if self.loss_fn is None:
            self.loss_fn = classification_loss
        self.batch_size = as_positive_int(self.batch_size, "batch_size")
        self.device = self.adapter.theta.device
        n = n_examples(self.data)
        if n < 1:
            raise ConfigError("evaluation data is empty; pass at least one example")
        self.n_examples = n
        bounds = [(a, min(n, a + self.batch_size)) for a in range(0, n, self.batch_size)]
        self.chunks = [(take(self.data, slice(a, b), self.device), (b - a) / n) for a, b in bounds]
        self.batches = [batch for batch, _ in self.chunks]   # ready batches for losses.evaluate

    def __repr__(self) -> str:
        return (f"Objective(method={self.adapter.method.name}, d={self.d:,}, n_examples={self.n_examples}, "
                f"chunks={len(self.chunks)}, loss_fn={getattr(self.loss_fn, '__name__', self.loss_fn)})")

    @property
    def d(self) -> int:
        return self.adapter.num_trainable

    @property
    def theta(self) -> torch.Tensor:
        """A detached copy of the adapter's current theta (the default centre theta*)."""
        return self.adapter.theta.detach().clone()

    def as_theta(self, theta) -> torch.Tensor:
        """Check shape and return theta as a detached tensor with the adapter's dtype and device."""
        ref = self.adapter.theta
        t = torch.as_tensor(theta)
        if t.shape != ref.shape:
            raise ConfigError(f"theta must have shape {tuple(ref.shape)} (d={self.d}), got {tuple(t.shape)}")
        return t.detach().to(dtype=ref.dtype, device=ref.device)

    def call(self, theta: torch.Tensor, batch):
        """Return the mean loss of one batch at theta (``losses.call_with``: differentiable, torch.func-friendly)."""
        return call_with(self.model, {THETA_KEY: theta}, self.loss_fn, batch)

    def eval_mode(self):
        """Context: every module in eval mode, each module's own train flag restored on exit."""
        return eval_mode(self.model)

    def loss(self, theta=None) -> float:
        """Return L(theta) over the whole evaluation set (theta default: the adapter's own), via ``losses.evaluate``."""
        t = self.theta if theta is None else self.as_theta(theta)
        return evaluate(self.model, self.batches, theta=t, loss_fn=self.loss_fn, device=self.device)["loss"]


def fingerprint(model: nn.Module) -> str:
    """Return a sha256 of every state-dict tensor's bytes and requires_grad flag (equal before/after = untouched).

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for k, p in model.named_parameters():
        h.update(f"{k}:{p.requires_grad}".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------- directions
@dataclass
class Direction:
    """A theta-space direction u (d,) with what it means; ``weight`` holds the weight-space delta if any."""

    theta: torch.Tensor
    kind: str
    meaning: str
    weight: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def random_directions(d: int, k: int = 2, seed: int = 0, dtype=torch.float32, device=None) -> list[Direction]:
    """Draw k orthonormal Gaussian directions in R^d, from ``seed`` only (the same for any method with this d).

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    d, k = as_positive_int(d, "d"), as_positive_int(k, "k")
    if k > d:
        raise ConfigError(f"cannot draw k={k} orthonormal directions in d={d} dimensions; use k <= d")
    g = torch.Generator().manual_seed(int(seed))
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(Q)).where(torch.diagonal(Q) != 0, torch.ones(k, dtype=Q.dtype))
    meaning = (f"random unit direction in theta-space (Gaussian, seed {seed}, orthonormalised); "
               f"identical for every method with d={d}")
    return [Direction(Q[:, i].to(dtype=dtype, device=device), "random-theta", meaning, info={"seed": seed})
            for i in range(k)]


def filter_normalized_weights(weights: dict, seed: int = 0) -> dict:
    """Return Li et al. (2018) directions: per filter (row of each 2-D W), a Gaussian row scaled to ||W_row||.

    ``weights``: {name: W} with one filter per row (out x in); 1-D tensors and names ending in ".bias" get
    zeros (as Li et al. do for biases). Math: delta_i = r_i / ||r_i|| * ||W_i||, r ~ N(0, I). float64 out.
    """
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, w in weights.items():
        w = w.detach().double().cpu()
        if w.dim() < 2 or name.endswith(".bias"):
            out[name] = torch.zeros_like(w)
            continue
        r = torch.randn(w.shape, generator=g, dtype=torch.float64)
        out[name] = r / r.norm(dim=1, keepdim=True) * w.norm(dim=1, keepdim=True)
    return out


def filter_direction(obj: Objective, theta=None, seed: int = 0, linearize: bool = False) -> Direction:
    """A filter-normalised weight-space direction pulled back to theta-space with J(theta*)^T (see module doc).

    GPart: exact (J = P, u = P^T delta). LoRA / Uni-LoRA: requires ``linearize=True`` (first-order only).
    Taught in notebooks/03_loss_landscapes.ipynb, section "2 · An MLP on real MNIST digits".
    """
    adapter, method = obj.adapter, obj.adapter.method
    linear = method.name == "gpart"
    if not linear and not linearize:
        raise ConfigError(
            f"{method.name}: theta -> Delta W is not linear, so a weight-space direction has no exact theta-space "
            f"counterpart; pass linearize=True to pull it back with the Jacobian at theta* (first order only), "
            f"or use random_directions (random-theta)")
    t = obj.theta if theta is None else obj.as_theta(theta)
    params = dict(obj.model.named_parameters())
    deltas = method.delta_weights(t.double())
    kinds = {tg.name + ".weight": tg.kind for tg in method.targets}
    W = {}
    for name, dw in deltas.items():
        w = params[name].detach().double() + dw.detach()
        W[name] = w.t() if kinds.get(name) == "conv1d" else w  # rows = filters (output units)
    delta = filter_normalized_weights(W, seed=seed)
    delta = {k: (v.t() if kinds.get(k) == "conv1d" else v).to(t.device) for k, v in delta.items()}
    _, vjp = torch.func.vjp(method.delta_weights, t.double())
    u = vjp(delta)[0]
    moved = {k: a - b for (k, a), b in zip(method.delta_weights(t.double() + u).items(), deltas.values())}
    dnorm = float(torch.sqrt(sum(v.pow(2).sum() for v in delta.values())))
    if linear:
        meaning = ("P^T delta: Li et al. filter-normalised weight direction delta at W* = W0 + P theta*, "
                   "projected onto the weights GPart reaches (P u = P P^T delta)")
    else:
        meaning = (f"J(theta*)^T delta, {method.name}: adjoint of the linearised bilinear map at theta* applied to "
                   f"a filter-normalised weight direction (first order only; not a preimage of delta)")
    info = {"seed": seed, "delta_norm": dnorm, "theta_norm": float(u.norm()),
            "weight_change_norm": float(torch.sqrt(sum(v.pow(2).sum() for v in moved.values())))}
    return Direction(u.to(adapter.theta.dtype), "filter" if linear else "filter-linearized", meaning, delta, info)


# ---------------------------------------------------------------------------------- line / plane
@dataclass
class Landscape:
    """Losses on a line (``loss`` shape (n,)) or a plane (``loss[i, j]`` at coords a[i], b[j]) + metadata."""

    coords: tuple
    loss: np.ndarray
    meta: dict

    @property
    def center_loss(self) -> float:
        """Loss at theta* (the point with all coordinates 0; lines and grids always contain it)."""
        idx = tuple(int(np.flatnonzero(c == 0)[0]) for c in self.coords)
        return float(self.loss[idx])

    def argmin(self) -> tuple:
        """Coordinates of the lowest loss on the grid / line."""
        idx = np.unravel_index(int(np.nanargmin(self.loss)), self.loss.shape)
        return tuple(float(c[i]) for c, i in zip(self.coords, idx))


def symmetric_coords(span: float, n: int) -> np.ndarray:
    """Return n points from -span to span that contain 0 exactly (n odd)."""
    n = as_positive_int(n, "n")
    if n % 2 == 0 or n < 3:
        raise ConfigError(f"n={n}: use an odd number >= 3 so that the grid contains theta* itself (e.g. {n + 1})")
    if not (float(span) > 0 and np.isfinite(span)):
        raise ConfigError(f"span must be a finite number > 0, got {span!r}")
    k = n // 2
    return float(span) * np.arange(-k, k + 1, dtype=np.float64) / k


def _evaluate(obj: Objective, points, total: int, desc: str, progress: bool) -> np.ndarray:
    """Loss at each theta of the iterable ``points`` (generated lazily: only one (d,) point in memory).

    ``Objective.loss`` per point: the chunks stay on the device, one host copy of the losses per point.
    """
    out = np.empty(total)
    for i, t in enumerate(tqdm(points, total=total, desc=desc, disable=not progress, leave=False)):
        out[i] = obj.loss(t)
    return out


def _meta(obj: Objective, kind: str, theta, seconds: float, **extra) -> dict:
    method = obj.adapter.method
    return {"kind": kind, "method": method.name, "config": method.config(), "d": obj.d,
            "n_examples": obj.n_examples, "dtype": str(obj.adapter.theta.dtype), "theta_norm": float(theta.norm()),
            "seconds": seconds, **extra}


def _direction(obj: Objective, u) -> tuple[torch.Tensor, dict]:
    if isinstance(u, Direction):
        return obj.as_theta(u.theta), {"kind": u.kind, "meaning": u.meaning, **u.info}
    t = obj.as_theta(u)
    return t, {"kind": "user", "meaning": "direction passed by the caller", "norm": float(t.norm())}


def interpolate(obj: Objective, theta_a, theta_b, n: int = 25, t_range=(-0.25, 1.25),
                progress: bool = True) -> Landscape:
    """Evaluate L((1 - t) theta_a + t theta_b) for n values of t in ``t_range`` (t = 0 and t = 1 always included).

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    a, b = obj.as_theta(theta_a), obj.as_theta(theta_b)
    n = as_positive_int(n, "n")
    lo, hi = float(t_range[0]), float(t_range[1])
    if not lo < hi or n < 2:
        raise ConfigError(f"need t_range (lo, hi) with lo < hi and n >= 2, got {t_range!r}, n={n}")
    ts = np.union1d(np.linspace(lo, hi, n), [0.0, 1.0])
    t0 = time.perf_counter()
    losses = _evaluate(obj, (torch.lerp(a, b, float(t)) if t not in (0.0, 1.0) else (a if t == 0 else b)
                             for t in ts), len(ts), "interpolate", progress)
    return Landscape((ts,), losses, _meta(obj, "interpolation", b, time.perf_counter() - t0,
                                          distance=float((b - a).norm()), t_range=(lo, hi)))


def line(obj: Objective, direction, theta=None, span: float = 1.0, n: int = 25,
         progress: bool = True) -> Landscape:
    """Evaluate L(theta* + t u) for t in [-span, span] (n odd, t = 0 included); u a Direction or a (d,) tensor."""
    c = obj.theta if theta is None else obj.as_theta(theta)
    u, info = _direction(obj, direction)
    ts = symmetric_coords(span, n)
    t0 = time.perf_counter()
    losses = _evaluate(obj, (c + float(t) * u for t in ts), len(ts), "line", progress)
    return Landscape((ts,), losses, _meta(obj, "line", c, time.perf_counter() - t0, span=float(span),
                                          direction=info))


def grid(obj: Objective, u, v, theta=None, span: float = 1.0, n: int = 21, progress: bool = True) -> Landscape:
    """Evaluate L(theta* + a u + b v) on an n x n grid, a, b in [-span, span] (n odd: the centre is theta* itself).

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    c = obj.theta if theta is None else obj.as_theta(theta)
    (du, iu), (dv, iv) = _direction(obj, u), _direction(obj, v)
    ax = symmetric_coords(span, n)
    t0 = time.perf_counter()
    pts = (c + float(a) * du + float(b) * dv for a in ax for b in ax)
    losses = _evaluate(obj, pts, n * n, f"grid {n}x{n}", progress).reshape(n, n)
    return Landscape((ax, ax), losses, _meta(obj, "grid", c, time.perf_counter() - t0, span=float(span),
                                             direction=iu, direction2=iv,
                                             cos_uv=float(du @ dv / (du.norm() * dv.norm()))))
