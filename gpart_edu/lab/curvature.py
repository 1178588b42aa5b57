"""Curvature of L(theta) in the trainable subspace: Hessian-vector products, Lanczos eigenvalues, spectra.

    obj = landscape.Objective(model, eval_data)
    Hv = hvp(obj)                          # v (d,) -> H_theta v, torch.func forward-over-reverse
    c = top_eigenvalues(obj, k=5)          # Lanczos (lab.eigen: scipy eigsh) on the HVP; c.eigenvalues ...
    nodes, weights = spectral_density(obj) # stochastic Lanczos quadrature (optional)

Math: for vec(Delta W) = F(theta) with Jacobian J = dF/dtheta and weight-space Hessian H_W at
W* = W0 + Delta W(theta*):   H_theta = J^T H_W J + sum_k (dL/dW_k) d^2 F_k / dtheta^2.
GPart: F(theta) = P theta is linear, so the second term is 0 and H_theta = P^T H_W P exactly.
LoRA / Uni-LoRA: F is bilinear, the second term is not 0 away from a stationary point of L in W.
Nothing here mutates the model or theta (all evaluations go through ``Objective.call``).
Taught in notebooks/03_loss_landscapes.ipynb (sections 1-3, "Curvature ...").
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.projections import as_positive_int
from ..errors import ConfigError
from ..losses import THETA_KEY, call_with
from . import eigen
from .landscape import Objective

MODES = ("forward-over-reverse", "double-backward")


def _check_mode(obj: Objective, mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown HVP mode {mode!r}; choose one of {', '.join(MODES)}")
    cfg = getattr(obj.model, "config", None)
    if getattr(cfg, "_attn_implementation", None) == "sdpa":
        raise ConfigError(
            "Hessian-vector products differentiate twice through attention; SDPA attention supports neither "
            "forward-mode AD nor double backward on CPU. Load the model with attn_implementation='eager' "
            "(or call model.set_attn_implementation('eager') once) and try again")


def hvp(obj: Objective, theta=None, mode: str = "forward-over-reverse"):
    """Return v -> H_theta v at theta (default theta*), v and result (d,) tensors in theta's dtype.

    "forward-over-reverse": jvp of torch.func.grad (one forward-mode pass over the backward graph);
    "double-backward": autograd.grad twice (works where forward-mode AD does not).
    Hugging Face models must use eager attention (SDPA has no second derivative on CPU).
    Taught in notebooks/03_loss_landscapes.ipynb,
    section "Curvature of the MLP: Lanczos vs the dense Hessian, and H_θ = Pᵀ H_W P".
    """
    _check_mode(obj, mode)
    t = obj.theta if theta is None else obj.as_theta(theta)

    def apply(v):
        v = obj.as_theta(v)
        total = torch.zeros_like(t)
        with obj.eval_mode():
            for batch, w in obj.chunks:
                if mode == MODES[0]:
                    _, hv = torch.func.jvp(torch.func.grad(lambda s: obj.call(s, batch)), (t,), (v,))
                else:
                    with torch.enable_grad():
                        s = t.clone().requires_grad_(True)
                        (g,) = torch.autograd.grad(obj.call(s, batch), s, create_graph=True)
                        (hv,) = torch.autograd.grad(g, s, grad_outputs=v)
                total = total + w * hv.detach()
        return total

    return apply


def gradient(obj: Objective, theta=None) -> torch.Tensor:
    """Return dL/dtheta at theta (default theta*), over the whole evaluation set.

    Taught in notebooks/03_loss_landscapes.ipynb, section "Curvature at each trained point".
    """
    t = obj.theta if theta is None else obj.as_theta(theta)
    total = torch.zeros_like(t)
    with obj.eval_mode():
        for batch, w in obj.chunks:
            total = total + w * torch.func.grad(lambda s: obj.call(s, batch))(t).detach()
    return total


def dense(matvec, n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Return the n x n matrix of a linear map given as a matvec (n calls; small n only: tests, teaching)."""
    cols = [matvec(torch.eye(n, dtype=dtype, device=device)[i]).to(torch.float64) for i in range(n)]
    return torch.stack(cols, dim=1)


def hessian(obj: Objective, theta=None, mode: str = "forward-over-reverse") -> torch.Tensor:
    """Return the dense d x d Hessian H_theta (float64), from d HVPs. For small d only.

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    return dense(hvp(obj, theta, mode), obj.d, obj.adapter.theta.dtype, obj.adapter.theta.device)


# ------------------------------------------------------------------------- weight space (H_W, J)
def _weight_layout(obj: Objective, t: torch.Tensor):
    """[(name, shape, start, stop)] of vec(W) over the adapted tensors, in delta_weights order."""
    out, pos = [], 0
    for name, dw in obj.adapter.method.delta_weights(t).items():
        out.append((name, dw.shape, pos, pos + dw.numel()))
        pos += dw.numel()
    return out, pos


def weight_hvp(obj: Objective, theta=None):
    """Return (v_W -> H_W v_W, D): Hessian of L in the adapted weights at W* = W0 + Delta W(theta*).

    vec(W) concatenates the tensors of ``delta_weights`` in order (for GPart: exactly the rows of P).
    Notebook: 03_loss_landscapes.
    """
    _check_mode(obj, MODES[0])
    t = obj.theta if theta is None else obj.as_theta(theta)
    layout, D = _weight_layout(obj, t)
    params = dict(obj.model.named_parameters())

    def loss_w(w, batch):
        over = {n: params[n].detach() + w[a:b].view(shape).to(params[n].dtype) for n, shape, a, b in layout}
        over[THETA_KEY] = t
        return call_with(obj.model, over, obj.loss_fn, batch)

    def apply(v):
        v = torch.as_tensor(v).to(t)
        zero = torch.zeros(D, dtype=t.dtype, device=t.device)
        total = torch.zeros_like(zero)
        with obj.eval_mode():
            for batch, wt in obj.chunks:
                _, hv = torch.func.jvp(torch.func.grad(lambda w: loss_w(w, batch)), (zero,), (v,))
                total = total + wt * hv.detach()
        return total

    return apply, D


def pullback_hvp(obj: Objective, theta=None):
    """Return v -> J^T H_W J v (J = d vec(Delta W) / d theta at theta*): the first term of H_theta."""
    t = obj.theta if theta is None else obj.as_theta(theta)
    hw, _ = weight_hvp(obj, t)
    method = obj.adapter.method

    def apply(v):
        v = obj.as_theta(v)
        _, jv = torch.func.jvp(method.delta_weights, (t,), (v,))
        hjv = hw(torch.cat([x.reshape(-1) for x in jv.values()]))
        pieces, pos = {}, 0
        for k, x in jv.items():
            pieces[k] = hjv[pos: pos + x.numel()].view(x.shape)
            pos += x.numel()
        _, vjp = torch.func.vjp(method.delta_weights, t)
        return vjp(pieces)[0].detach()

    return apply


# ----------------------------------------------------------------------------- Lanczos (eigsh)
@dataclass
class Curvature:
    """Top-k eigenvalues of H_theta (descending), the smallest one, and condition estimates."""

    eigenvalues: np.ndarray      # top k, descending
    eigenvectors: np.ndarray     # (d, k), columns match eigenvalues
    lambda_min: float            # algebraically smallest eigenvalue (None if not computed)
    n_hvp: int
    seconds: float
    meta: dict

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def top_k_ratio(self) -> float:
        """lambda_1 / lambda_k: how stretched the top-k curvature is (always finite if lambda_k > 0)."""
        return float(self.eigenvalues[0] / self.eigenvalues[-1]) if self.eigenvalues[-1] > 0 else float("inf")

    @property
    def condition(self) -> float:
        """lambda_max / lambda_min if H is positive definite, else inf (an indefinite H has no condition number)."""
        if self.lambda_min is None or self.lambda_min <= 0:
            return float("inf")
        return self.lambda_max / self.lambda_min


def top_eigenvalues(obj: Objective, theta=None, k: int = 5, smallest: bool = True, tol: float = 1e-8,
                    maxiter: int | None = None, ncv: int | None = None, seed: int = 0,
                    mode: str = "forward-over-reverse") -> Curvature:
    """Compute the top-k eigenvalues of H_theta by Lanczos (``eigen.eigsh_operator`` on the HVP).

    ``smallest``: also the algebraically smallest eigenvalue (a second eigsh run, which="SA"), for the
    condition estimate. ``tol`` is eigsh's relative accuracy. The start vector is seeded (deterministic).
    Notebook: 03_loss_landscapes.
    """
    apply = hvp(obj, theta, mode)
    dtype, d = obj.adapter.theta.dtype, obj.d
    opts = dict(tol=tol, maxiter=maxiter, ncv=ncv, seed=seed, dtype=dtype, device=obj.device)
    t0 = time.perf_counter()
    vals, vecs, n_mv = eigen.eigsh_operator(apply, d, k=k, which="LA", **opts)
    lam_min = None
    if smallest:
        low, _, n_low = eigen.eigsh_operator(apply, d, k=1, which="SA", **opts)
        lam_min, n_mv = float(low[0]), n_mv + n_low
    meta = {"method": obj.adapter.method.name, "d": d, "k": k, "tol": tol, "mode": mode,
            "n_examples": obj.n_examples, "dtype": str(dtype)}
    return Curvature(vals, vecs, lam_min, n_mv, time.perf_counter() - t0, meta)


# ------------------------------------------------------------------- stochastic Lanczos quadrature
def spectral_density(obj: Objective, theta=None, m: int = 30, n_probes: int = 3, seed: int = 0,
                     mode: str = "forward-over-reverse") -> tuple[np.ndarray, np.ndarray]:
    """Estimate the eigenvalue density of H_theta by stochastic Lanczos quadrature.

    Returns (nodes, weights): a weighted histogram of the nodes estimates the density (weights sum to 1);
    m Lanczos steps (``eigen.lanczos``) from each of ``n_probes`` Rademacher probes, i.e. m * n_probes HVPs.
    Notebook: 03_loss_landscapes.
    """
    from scipy.linalg import eigh_tridiagonal

    apply = hvp(obj, theta, mode)
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(as_positive_int(n_probes, "n_probes")):
        a, b = eigen.lanczos(apply, rng.choice([-1.0, 1.0], size=obj.d), m, obj.adapter.theta.dtype, obj.device)
        rho, S = eigh_tridiagonal(a, b) if len(a) > 1 else (a, np.ones((1, 1)))
        nodes.append(rho)
        weights.append(S[0] ** 2 / n_probes)
    return np.concatenate(nodes), np.concatenate(weights)
