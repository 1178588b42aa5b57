"""Measure the geometry of theta -> vec(Delta W): Gram residuals, group sizes, distance ratios.

Everything works on a *map* f: theta (d,) -> vec(Delta W) (D,), built by ``maps.as_map`` from an Adapter,
a Method, a projection or (callable, d). Nothing here mutates a model or a theta: maps are evaluated on
copies (default dtype float64). Taught in notebooks 01 (partitions, distance ratios) and 02 (LoRA, Uni-LoRA).

Math:
    GPart      f(theta) = P theta: J = P, J^T J = P^T P = I  -> every singular value is 1, every ratio 1.
    Uni-LoRA   f = (B A)(P theta): 2-homogeneous, J(0) = 0, ratio(s x, s y) = s ratio(x, y).
    LoRA       f = (alpha/r) B A: J has >= r^2 null directions per layer ((B, A) -> (B M, M^{-1} A)).
Jacobian spectra and the projected-step identity live in ``gpart_edu.lab.jacobian`` (same maps).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..core.projections import DEFAULT_DENSE_LIMIT_BYTES
from ..errors import ConfigError
from .jacobian import jacobian_dense
from .maps import F64, as_map, restrict


# -------------------------------------------------------------------------------- Gram, groups
def gram_residual(obj, theta=None, max_bytes: int = DEFAULT_DENSE_LIMIT_BYTES) -> dict:
    """||M^T M - I|| (max-abs and Frobenius) in float64, M = P.to_dense() or the dense Jacobian at theta.

    Taught in notebooks/01_isometric_partition.ipynb, section "2 · Three ways to choose the groups".
    """
    if hasattr(obj, "to_dense"):
        M = obj.to_dense(F64, max_bytes=max_bytes)
    else:
        M = jacobian_dense(obj, theta, max_bytes=max_bytes)
    R = M.T @ M - torch.eye(M.shape[1], dtype=F64)
    return {"max_abs": R.abs().max().item(), "fro": torch.linalg.matrix_norm(R).item()}


def gram_from_counts(counts: torch.Tensor) -> dict:
    """Gram residual of a partition from its group sizes alone.

    P has one nonzero per row, so P^T P is diagonal with entries n_j * (1/sqrt(n_j))^2 (exactly 0 off the
    diagonal); an empty group gives a 0 on the diagonal (residual 1).
    """
    n = counts.to(F64)
    diag = torch.where(n > 0, n * n.rsqrt() ** 2, torch.zeros_like(n))
    r = diag - 1
    return {"max_abs": r.abs().max().item(), "fro": r.norm().item()}


def group_stats(counts: torch.Tensor) -> dict:
    """Group-size statistics: d, D = sum, min, max, mean, std, number of empty groups."""
    n = counts.to(F64)
    return {"d": len(n), "D": int(counts.sum()), "min": int(counts.min()), "max": int(counts.max()),
            "mean": n.mean().item(), "std": n.std(unbiased=False).item(), "empty": int((counts == 0).sum())}


def partition_check(P, recount: bool = False, chunk: int = 1 << 24) -> dict:
    """Verify a PartitionProjection from its counts (no dense P): Gram residual + group stats + seconds.

    ``recount`` streams every group id again (in chunks), checks 0 <= id < d and that the bincount equals
    P.counts; without it only the stored counts are used (seconds even for D = 10^8).
    Taught in notebooks/01_isometric_partition.ipynb, section "2 · Three ways to choose the groups".
    """
    t0 = time.perf_counter()
    counts = P.counts
    if recount:
        again = torch.zeros_like(counts)
        for a in range(0, P.D, chunk):
            ids = P.group_ids(a, min(P.D, a + chunk))
            if int(ids.min()) < 0 or int(ids.max()) >= P.d:
                raise ConfigError(f"group ids outside [0, {P.d}) in rows [{a}, {a + chunk})")
            again += torch.bincount(ids, minlength=P.d)
        if not torch.equal(again, counts):
            raise ConfigError("recounted group sizes differ from P.counts: the partition state is corrupted")
    out = {**gram_from_counts(counts), **group_stats(counts)}
    out["sums_to_D"] = out["D"] == P.D
    out["seconds"] = time.perf_counter() - t0
    return out


def streamed_norm(P, theta: torch.Tensor, chunk: int = 1 << 22) -> float:
    """||P theta|| computed in row chunks (never holds the (D,) vector): the isometry check at scale.

    Taught in notebooks/01_isometric_partition.ipynb,
    section "5 · The check at scale: D = 10⁸ weights, d = 10⁶ parameters, no dense P".
    """
    total = 0.0
    for a in range(0, P.D, chunk):
        total += P(theta, a, min(P.D, a + chunk)).double().pow(2).sum().item()
    return total ** 0.5


# ---------------------------------------------------------------------------------- distances
def _directions(d: int, n: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=F64)
    return (u / u.norm(dim=1, keepdim=True)).to(dtype)


def distance_ratios(obj, n_pairs: int = 100, scale: float = 1.0, seed: int = 0, dtype=F64) -> np.ndarray:
    """||f(x) - f(y)|| / ||x - y|| for ``n_pairs`` random pairs with ||x|| = ||y|| = ``scale``.

    The map runs in ``dtype``; differences and norms are accumulated in float64, so a float32 run shows the
    map's own rounding (~1e-7), not the error of a length-D float32 sum (which grows with D).
    Taught in notebooks/01_isometric_partition.ipynb, section "3 · Norms and distances, in float64 and float32".
    """
    f = as_map(obj)
    if n_pairs < 1:
        raise ConfigError(f"n_pairs must be >= 1, got {n_pairs}")
    u = _directions(f.d, 2 * n_pairs, seed, dtype) * scale
    out = np.empty(n_pairs)
    with torch.no_grad():
        for i in range(n_pairs):
            x, y = u[2 * i], u[2 * i + 1]
            out[i] = ((f(x).double() - f(y).double()).norm() / (x.double() - y.double()).norm()).item()
    return out


def ratio_vs_norm(obj, norms, n_pairs: int = 50, seed: int = 0, dtype=F64) -> dict:
    """{norm s: ratios at ||x|| = ||y|| = s}; the same pair directions are used for every s.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "3 · Distance ratios against ‖θ‖".
    """
    return {float(s): distance_ratios(obj, n_pairs, float(s), seed, dtype) for s in norms}


# ----------------------------------------------------------------------------------- LoRA
def lora_reparametrize(obj, theta: torch.Tensor, M) -> torch.Tensor:
    """Return theta' with every LoRA layer's (A, B) replaced by (M^{-1} A, B M): same Delta W.

    ``obj``: a LoRA Method or an Adapter holding one; ``M``: an invertible r x r matrix (or one per layer).
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "2 · LoRA's bilinear map is not identifiable".
    """
    method = getattr(obj, "method", obj)
    if getattr(method, "name", None) != "lora":
        raise ConfigError("lora_reparametrize needs a LoRA adapter or method (theta holds A and B directly)")
    Ms = list(M) if isinstance(M, (list, tuple)) else [M] * len(method.targets)
    if len(Ms) != len(method.targets):
        raise ConfigError(f"got {len(Ms)} matrices M for {len(method.targets)} LoRA layers")
    out = theta.detach().clone()
    for i, (t, (a, m, b)) in enumerate(zip(method.targets, method.offsets)):
        A, B = method.layer_factors(out, i)
        Mi = torch.as_tensor(Ms[i], dtype=out.dtype)
        if Mi.shape != (method.r, method.r):
            raise ConfigError(f"M must be {method.r} x {method.r} (r x r), got {tuple(Mi.shape)}")
        newA, newB = torch.linalg.solve(Mi, A), B @ Mi
        out = torch.cat([out[:a], newA.reshape(-1), newB.reshape(-1), out[b:]])
    return out


def lora_null_direction(obj, theta: torch.Tensor, dM) -> torch.Tensor:
    """The tangent of (A, B) -> (M^{-1} A, B M) at M = I + t dM: v_A = -dM A, v_B = B dM per layer.

    J(theta) v = 0 for every r x r ``dM`` (one per layer or shared): LoRA's Jacobian has >= r^2 null
    directions per layer at *every* theta, so its smallest singular value is always 0.
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "2 · LoRA's bilinear map is not identifiable".
    """
    method = getattr(obj, "method", obj)
    if getattr(method, "name", None) != "lora":
        raise ConfigError("lora_null_direction needs a LoRA adapter or method")
    dMs = list(dM) if isinstance(dM, (list, tuple)) else [dM] * len(method.targets)
    theta = theta.detach()
    parts = []
    for i in range(len(method.targets)):
        A, B = method.layer_factors(theta, i)
        Mi = torch.as_tensor(dMs[i], dtype=theta.dtype)
        parts += [(-Mi @ A).reshape(-1), (B @ Mi).reshape(-1)]
    return torch.cat(parts)  # offsets are contiguous: A_0, B_0, A_1, B_1, ...


def lora_b_index(obj) -> torch.Tensor:
    """Indices into a LoRA theta of every B factor entry (the coordinates the isometric control trains).

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "1 · One MiniLM per method".
    """
    method = getattr(obj, "method", obj)
    return torch.cat([torch.arange(m, b) for (_, m, b) in method.offsets])


def isometric_lora_control(adapter, seed: int = 0):
    """Turn a LoRA adapter into the isometric low-rank control: A fixed with orthonormal rows, B trained.

    Sets every A_l = Q_l / (alpha/r) with Q_l Q_l^T = I_r (seeded) and B_l = 0 in adapter.theta, and masks
    the gradient of the A entries, so AdamW (weight_decay 0) never moves them. Then Delta W_l =
    (alpha/r) B_l A_l is linear and isometric in B (||B Q|| = ||B||) but has rank <= r. Returns
    (FlatMap of B -> vec(Delta W), hook handle); ``handle.remove()`` restores normal training.
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "1 · One MiniLM per method".
    """
    method = adapter.method
    if method.name != "lora":
        raise ConfigError("isometric_lora_control needs a LoRA adapter (ge.attach(model, 'lora', r=...))")
    g = torch.Generator().manual_seed(seed)
    theta = adapter.theta.detach().clone()
    for t, (a, m, b) in zip(method.targets, method.offsets):
        Q, _ = torch.linalg.qr(torch.randn(t.in_features, method.r, generator=g, dtype=F64))
        theta[a:m] = (Q.T / method.scaling).reshape(-1).to(theta.dtype)
        theta[m:b] = 0
    with torch.no_grad():
        adapter.theta.copy_(theta)
    mask = torch.zeros_like(theta)
    mask[lora_b_index(method)] = 1
    handle = adapter.theta.register_hook(lambda grad: grad * mask.to(grad))
    fmap = restrict(adapter, lora_b_index(method), theta, name="lora-isometric-control")
    return fmap, handle
