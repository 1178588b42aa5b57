"""Jacobian J = d vec(Delta W) / d theta: dense or matrix-free spectra, and the projected-step identity.

Works on the same maps as ``gpart_edu.geometry`` (Adapter, Method, projection, FlatMap); float64 default.

Math:
    Singular values of J: dense ``torch.linalg.svdvals`` when D x d fits, otherwise a certified block Lanczos
    (``lab.eigen.block_extremes``) on the d x d operator J^T J, applied matrix-free to blocks of columns as
    X -> vjp(jvp(X)) (vmapped). sigma = sqrt(lambda(J^T J)); both ends come from one block Krylov space whose
    block (k + 2 random vectors) is wider than the copies of any repeated value among the k wanted, so LoRA's
    exact zeros (the B = 0 block at init, r^2 symmetry directions per layer) and GPart's all-ones spectrum are
    counted with their multiplicity. Each returned value is certified by a fresh residual ||J^T J u - lambda u||
    <= max(tol, 100 eps) lambda_max; values that are not certified are not returned (``converged`` counts them).
    Zero is resolved to sqrt(max(tol, 100 eps)) * sigma_max (1.5e-7 relative in float64): smaller singular
    values are "0 within resolution" (cond = inf).
    Projected step (GPart): dL/dtheta = P^T dL/dW, so an SGD step on theta moves W by
    -lr P P^T g_W: the full fine-tuning step -lr g_W projected onto range(P) (P P^T is an orthogonal
    projector because P^T P = I). For other maps J J^T is not a projector; the same checks measure how far.
Taught in notebooks/02_lora_unilora_geometry.ipynb, sections 5 (spectra) and 6 (projected step).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.adapter import ADAPTER_ATTR
from ..errors import AttachError, ConfigError
from ..losses import classification_loss, with_tensors
from . import eigen
from .maps import F64, as_map, linearise
from .random_projections import check_dense_size

DENSE_AUTO_BYTES = 64 << 20  # method="auto" forms the dense J below this size


def jacobian_dense(obj, theta=None, dtype=F64, max_bytes: int = DENSE_AUTO_BYTES * 16) -> torch.Tensor:
    """The dense Jacobian J (D, d) of the map at theta (torch.func.jacfwd); refuses above ``max_bytes``."""
    f = as_map(obj)
    t = f.point(theta, dtype)
    with torch.no_grad():
        D = f(t).numel()
    check_dense_size(D, f.d, dtype, max_bytes)
    return torch.func.jacfwd(f)(t)


def jacobian_operator(obj, theta=None, dtype=F64):
    """J at theta as a scipy LinearOperator of shape (D, d): matvec = jvp, rmatvec = vjp."""
    from scipy.sparse.linalg import LinearOperator
    D, d, Jv, JTu = linearise(obj, theta, dtype)
    np_dtype = np.float64 if dtype == F64 else np.float32
    return LinearOperator((D, d), dtype=np_dtype,
                          matvec=lambda v: Jv(torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(dtype))
                          .numpy().copy(),
                          rmatvec=lambda u: JTu(torch.from_numpy(np.ascontiguousarray(u).reshape(-1)).to(dtype))
                          .numpy())


@dataclass
class Spectrum:
    """Top (descending) and bottom (ascending) singular values of J, with how they were obtained."""

    top: np.ndarray
    bottom: np.ndarray
    D: int
    d: int
    method: str
    seconds: float
    resolution: float           # singular values <= this are 0 to within the method's accuracy
    n_matvec: int = 0           # J^T J products (Lanczos)
    converged: dict = field(default_factory=dict)

    @property
    def sigma_max(self) -> float:
        return float(self.top[0]) if len(self.top) else float("nan")

    @property
    def sigma_min(self) -> float:
        return float(self.bottom[0]) if len(self.bottom) else float("nan")

    @property
    def cond(self) -> float:
        """sigma_max / sigma_min (inf if sigma_min is 0 within resolution)."""
        return math.inf if self.sigma_min <= self.resolution else self.sigma_max / self.sigma_min

    def max_error_from(self, value: float = 1.0) -> float:
        """max |sigma - value| over the computed singular values."""
        return float(np.max(np.abs(np.concatenate([self.top, self.bottom]) - value)))

    def __str__(self) -> str:
        return (f"{self.method}: sigma in [{self.sigma_min:.6g}, {self.sigma_max:.6g}], cond {self.cond:.4g} "
                f"(D={self.D:,}, d={self.d:,}, {self.seconds:.2f} s)")


def singular_values(obj, theta=None, k: int = 20, dtype=F64, method: str = "auto", tol: float = 0.0,
                    maxiter: int | None = None, seed: int = 0) -> Spectrum:
    """Compute the top-k and bottom-k singular values of J at theta (all d of them counted, zeros included).

    method: "dense" (svdvals of jacfwd's J), "lanczos" (``eigen.block_extremes`` on J^T J: matrix-free block
    Lanczos that finds repeated values, each certified by its residual) or "auto" (dense when D x d fits in
    64 MiB). Lanczos returns only certified values: ``converged[end]`` holds count / wanted, the residuals,
    ``sigma_error`` (a bound on |sigma - returned|) and why it stopped. Notebook: 02_lora_unilora_geometry.
    """
    f = as_map(obj)
    t = f.point(theta, dtype)
    with torch.no_grad():
        D = f(t).numel()
    if not 1 <= k <= f.d:
        raise ConfigError(f"k must be in 1..d={f.d}, got {k}")
    if method == "auto":
        method = "dense" if D * f.d * 8 <= DENSE_AUTO_BYTES else "lanczos"
    if method not in ("dense", "lanczos"):
        raise ConfigError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    eps = torch.finfo(dtype).eps
    t0 = time.perf_counter()
    if method == "dense":
        s = torch.linalg.svdvals(jacobian_dense(f, t, dtype)).double().numpy()
        s = np.concatenate([s, np.zeros(max(0, f.d - len(s)))])     # d > D: J has d - D zero values
        return Spectrum(s[:k].copy(), s[::-1][:k].copy(), D, f.d, "dense", time.perf_counter() - t0,
                        resolution=eps * max(D, f.d) * (s[0] if len(s) else 0.0))
    if k >= f.d - 1:
        raise ConfigError(f"Lanczos needs k < d - 1 (k={k}, d={f.d}); use method='dense' for tiny maps")
    gram = gram_block(f, t, dtype, D)
    tol_eff = max(float(tol), 100 * eps)
    res = eigen.block_extremes(gram, f.d, k_top=k, k_bottom=k, tol=tol_eff, maxiter=maxiter, seed=seed)
    lam_max = res.converged["top"]["scale"]                    # max |Ritz value| <= lambda_max(J^T J)
    converged = {end: dict(c) for end, c in res.converged.items()}
    top = np.sqrt(np.clip(res.top, 0.0, None))
    bottom = np.sqrt(np.clip(res.bottom, 0.0, None))
    for end, lam, r in (("top", res.top, res.top_residual), ("bottom", res.bottom, res.bottom_residual)):
        # |lambda - theta| <= ||R||_2 for k distinct eigenvalues (Kahan), so |sigma - sqrt(theta)| <= this
        rn = converged[end]["residual_norm"]
        converged[end]["sigma_error"] = float(max((min(math.sqrt(rn), rn / math.sqrt(x)) if x > 0 else
                                                   math.sqrt(rn)) for x in lam)) if len(lam) else 0.0
        if lam_max == 0.0 and len(lam):
            converged[end]["solver"] = "J = 0"                 # J^T J vanished on a random block: J = 0
    smax = math.sqrt(lam_max)
    return Spectrum(top, bottom, D, f.d, "lanczos", time.perf_counter() - t0, resolution=math.sqrt(tol_eff) * smax,
                    n_matvec=res.n_matvec, converged=converged)


def gram_block(obj, theta=None, dtype=F64, D: int | None = None, max_bytes: int = 256 << 20):
    """Return X (d, p) float64 numpy -> J^T J X: the Gram operator on a block of columns, matrix-free.

    The columns go through one vmapped jvp + vjp (torch.func) in chunks of at most ``max_bytes`` of (D, p)
    intermediates; a map that vmap cannot batch falls back to one column at a time (same numbers).
    """
    f = as_map(obj)
    t = f.point(theta, dtype)
    _, vjp_fn = torch.func.vjp(f.fn, t)

    def one(v):
        return vjp_fn(torch.func.jvp(f.fn, (t,), (v,))[1])[0]

    if D is None:
        with torch.no_grad():
            D = f(t).numel()
    chunk = max(1, max_bytes // (4 * 8 * max(D, f.d)))
    batched = [torch.func.vmap(one, in_dims=1, out_dims=1)]

    def gram(X):
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(dtype)
        outs = []
        for j in range(0, Xt.shape[1], chunk):
            part = Xt[:, j:j + chunk]
            if batched:
                try:
                    outs.append(batched[0](part))
                    continue
                except (RuntimeError, NotImplementedError):   # an op vmap cannot batch: one column at a time
                    batched.clear()
            outs.append(torch.stack([one(part[:, i]) for i in range(part.shape[1])], dim=1))
        return torch.cat(outs, dim=1).to(F64).numpy()

    return gram


def singular_value_sample(obj, theta=None, m: int = 256, seed: int = 0, dtype=F64) -> np.ndarray:
    """Singular values of J restricted to m random theta coordinates (all of J when d <= m), descending.

    Built from m products J^T J e_j (matrix-free). By Cauchy interlacing they lie inside
    [sigma_min(J), sigma_max(J)]: a cheap picture of the spread for histograms.
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "5 · Jacobian singular values, matrix-free".
    """
    f = as_map(obj)
    t = f.point(theta, dtype)
    _, d, Jv, JTu = linearise(f, t, dtype)
    cols = torch.arange(d) if d <= m else \
        torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:m].sort().values
    G = torch.empty(len(cols), len(cols), dtype=F64)
    for i, j in enumerate(cols.tolist()):
        e = torch.zeros(d, dtype=dtype)
        e[j] = 1
        G[i] = JTu(Jv(e)).double()[cols]
    lam = torch.linalg.eigvalsh((G + G.T) / 2).clamp_min(0)
    return lam.sqrt().flip(0).numpy()


# ------------------------------------------------------------------------- projected step
def projected_step(adapter, batch, loss_fn=None, lr: float = 1e-2, dtype=None) -> dict:
    """Compare one SGD step on theta with the full fine-tuning step, both measured in weight space.

    One forward/backward (functional_call on copies: the model, its .grad and theta are untouched) gives
    g_theta (the adapter's own backward) and g_W = dL/dW of the adapted weights. Returns relative errors:
        adjoint      ||g_theta - J^T g_W|| / ||J^T g_W||           (chain rule through the efficient path)
        linear       ||f(theta - lr g_theta) - f(theta) - s|| / ||s||, s = -lr J g_theta (0 if f is linear, up
                     to the rounding floor ~ eps ||f(theta)|| / ||s||; ``map_norm`` = ||f(theta)||)
        orthogonal   ||J^T (s_full - s)|| / ||J^T s_full||         (residual is orthogonal to range(J))
        pythagoras   | ||s_full||^2 - ||s||^2 - ||s_full - s||^2 | / ||s_full||^2
        idempotent   ||J J^T s - s|| / ||s||                       (J J^T is a projector)
    plus the norms and, for GPart, ``P_adjoint`` = ||g_theta - P.adjoint(vec g_W)|| / ||P^T g_W||.
    ``dtype`` (e.g. torch.float64) evaluates the whole model in that precision, still on copies.
    Taught in notebooks/02_lora_unilora_geometry.ipynb,
    section "6 · A GPart step is the full fine-tuning step projected onto range(P)".
    """
    model = getattr(adapter, "model", None)
    if model is None:
        raise AttachError("projected_step needs an adapter attached to a model (ge.attach); this one is detached")
    if adapter.merged:
        raise AttachError("projected_step needs an unmerged adapter; call adapter.unmerge() first")
    loss_fn = loss_fn or classification_loss
    dtype = dtype or adapter.theta.dtype
    f = as_map(adapter)
    theta = f.point(None, dtype)
    keys = list(f.fn(theta).keys())
    tensors = {n: p.detach().to(dtype) if torch.is_floating_point(p) else p
               for n, p in list(model.named_parameters()) + list(model.named_buffers())}
    leaves = {k: tensors[k].clone().requires_grad_(True) for k in keys}
    theta_leaf = theta.clone().requires_grad_(True)
    tensors.update(leaves)
    tensors[f"{ADAPTER_ATTR}.theta"] = theta_leaf
    loss = loss_fn(with_tensors(model, tensors), batch)
    g_theta, *g_w = torch.autograd.grad(loss, [theta_leaf, *leaves.values()])
    g_flat = torch.cat([g.reshape(-1) for g in g_w]).detach()
    g_theta = g_theta.detach()

    def rel(a, b):
        nb = b.norm().item()
        return (a - b).norm().item() / nb if nb > 0 else (a - b).norm().item()

    _, _, Jv_buf, JT = linearise(f, theta, dtype)
    Jv = lambda v: Jv_buf(v).clone()
    s_full = -lr * g_flat
    s = Jv(-lr * g_theta)
    with torch.no_grad():
        exact = f(theta - lr * g_theta) - f(theta)
    r = s_full - s
    n_full, n_s, n_r = (x.norm().item() for x in (s_full, s, r))
    out = {"loss": loss.item(), "full_norm": n_full, "step_norm": n_s, "captured": n_s / n_full if n_full else 0.0,
           "map_norm": f(theta).norm().item(),
           "adjoint": rel(g_theta, JT(g_flat)), "linear": rel(exact, s),
           "orthogonal": JT(r).norm().item() / max(JT(s_full).norm().item(), 1e-300),
           "pythagoras": abs(n_full ** 2 - n_s ** 2 - n_r ** 2) / n_full ** 2 if n_full else 0.0,
           "idempotent": rel(Jv(JT(s)), s)}
    if adapter.method.name == "gpart":
        out["P_adjoint"] = rel(g_theta, adapter.method.P.adjoint(g_flat))
    return out
