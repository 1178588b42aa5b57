"""The one Lanczos / ARPACK helper: extreme eigenvalues of a symmetric operator known only by its matvec, and
the tridiagonal Lanczos of stochastic Lanczos quadrature.

    vals, vecs, n_mv = eigsh_operator(hvp, d, k=5)              # top-5 of a torch matvec, descending
    res = eigsh_operator(gram, d, k, dtype=None, vectors=False, robust=True)   # numpy matvec; res.converged
    alpha, beta = lanczos(matvec, v0, m)                        # T = tridiag(beta, alpha, beta), m x m

Used by ``jacobian.singular_values`` (J^T J, notebook 02_lora_unilora_geometry) and by
``curvature.top_eigenvalues`` / ``spectral_density`` (H_theta, notebook 03_loss_landscapes).

Math: Lanczos builds an orthonormal basis V of the Krylov space span{v0, A v0, ..., A^(m-1) v0}, in which
A is the tridiagonal T = V^T A V; the eigenvalues of T (Ritz values) approach the extreme eigenvalues of A
first (ARPACK restarts implicitly to keep m small). Each distinct eigenvalue is found once; further copies
of a repeated eigenvalue appear only slowly, so a top-k / bottom-k of an operator with repeated eigenvalues
may skip some of them (a block Lanczos would not). The start vector is seeded: the same seed, the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.projections import as_positive_int
from ..errors import ConfigError


def numpy_matvec(matvec, dtype=torch.float64, device=None):
    """Return v -> matvec(v) on float64 numpy vectors (what scipy calls).

    ``matvec`` takes and returns (n,) torch tensors: v is converted to ``dtype`` on ``device``, the result to
    float64 on the CPU. ``dtype=None``: ``matvec`` is already a numpy function (v arrives flattened).
    """
    if dtype is None:
        return lambda v: matvec(np.asarray(v).reshape(-1))

    def mv(v):
        x = torch.as_tensor(np.asarray(v).reshape(-1), dtype=dtype, device=device)
        return matvec(x).to(torch.float64).cpu().numpy()

    return mv


@dataclass
class Eigs:
    """Extreme eigenvalues (descending) of a symmetric operator; unpacks as (values, vectors, n_matvec)."""

    values: np.ndarray              # (count,), descending
    vectors: np.ndarray | None      # (n, count), columns match values; None unless asked for
    n_matvec: int                   # operator applications
    converged: dict = field(default_factory=dict)   # {"count": eigenvalues found, "solver": how}

    def __iter__(self):
        return iter((self.values, self.vectors, self.n_matvec))


def eigsh_operator(matvec, n: int, k: int = 1, which: str = "LA", tol: float = 1e-8, maxiter=None, ncv=None,
                   seed: int = 0, dtype=torch.float64, device=None, vectors: bool = True,
                   robust: bool = False) -> Eigs:
    """Compute the k largest ("LA") or smallest ("SA") eigenvalues of a symmetric n x n operator by Lanczos.

    ``scipy.sparse.linalg.eigsh`` (ARPACK) on a LinearOperator of ``matvec`` (a torch matvec in ``dtype`` on
    ``device``; ``dtype=None``: a numpy matvec), started from a seeded Gaussian vector (deterministic).
    ``robust=False``: ARPACK errors are raised. ``robust=True``: on an ARPACK breakdown (it happens on operators
    that equal c I up to rounding, e.g. P^T P) retry with a larger Krylov space (ncv = 4k+1, 8k+1) and another
    start, then fall back to LOBPCG; if ARPACK stops at ``maxiter``, keep the eigenvalues that converged.
    ``converged`` says how many were found and by which solver. ``vectors=False`` skips the eigenvectors.
    Works for any of ``curvature.hvp``, ``weight_hvp``, ``pullback_hvp`` and the Gram operator J^T J.
    Taught in notebooks/03_loss_landscapes.ipynb,
    section "Curvature of the MLP: Lanczos vs the dense Hessian, and H_θ = Pᵀ H_W P".
    """
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh, lobpcg

    k, n = as_positive_int(k, "k"), as_positive_int(n, "n")
    if which not in ("LA", "SA"):
        raise ConfigError(f"which must be 'LA' (largest) or 'SA' (smallest), got {which!r}")
    if k >= n:
        raise ConfigError(f"eigsh needs k < d; got k={k}, d={n}: for a tiny operator form the dense matrix "
                          f"(curvature.hessian(obj) or curvature.dense(matvec, d)) and use eigvalsh")
    mv, count = numpy_matvec(matvec, dtype, device), [0]

    def counted(v):
        count[0] += 1
        return mv(v)

    op = LinearOperator((n, n), matvec=counted, dtype=np.float64)
    attempts = (ncv, min(n - 1, 4 * k + 1), min(n - 1, 8 * k + 1)) if robust else (ncv,)
    for attempt, ncv_try in enumerate(attempts):
        v0 = np.random.default_rng(seed + attempt).standard_normal(n)
        try:
            out = eigsh(op, k=k, which=which, v0=v0, ncv=ncv_try, tol=tol, maxiter=maxiter,
                        return_eigenvectors=vectors)
            solver = "eigsh"
        except ArpackNoConvergence as e:
            if not robust:
                raise
            out = (e.eigenvalues, e.eigenvectors) if vectors else e.eigenvalues
            solver = "eigsh (stopped early: converged ones kept)"
        except ArpackError:
            if not robust:
                raise
            continue
        lam, V = out if vectors else (out, None)
        return _descending(np.asarray(lam), V, count[0], solver)
    X = np.random.default_rng(seed).standard_normal((n, k))
    lam, V = lobpcg(op, X, largest=which == "LA", tol=max(tol, 1e-12), maxiter=maxiter or 500)
    res = np.linalg.norm(op.matmat(V) - V * lam, axis=0)
    ok = res <= 1e-8 * max(np.abs(lam).max(), 1e-300)
    return _descending(lam[ok], V[:, ok] if vectors else None, count[0], "lobpcg (ARPACK broke down)")


def _descending(lam: np.ndarray, V, n_matvec: int, solver: str) -> Eigs:
    order = np.argsort(lam)[::-1]
    return Eigs(lam[order], None if V is None else V[:, order], n_matvec, {"count": len(lam), "solver": solver})


def lanczos(matvec, v0: np.ndarray, m: int, dtype=None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Run m steps of Lanczos with full reorthogonalisation from v0: (alpha (m,), beta (m-1,)) of T.

    ``matvec``: a numpy function (``dtype=None``) or a torch one in ``dtype`` on ``device``.
    Math: for unit v0, sum_i tau_i^2 rho_i^p = v0^T H^p v0 for p <= 2m - 1, where rho_i are the eigenvalues
    of the tridiagonal T and tau_i the first components of its eigenvectors (Gauss quadrature).
    Stops early (shorter alpha, beta) when the Krylov space is invariant.
    """
    mv = numpy_matvec(matvec, dtype, device)
    n = v0.shape[0]
    m = min(as_positive_int(m, "m"), n)
    V = np.zeros((m, n))
    alpha, beta = np.zeros(m), np.zeros(max(m - 1, 0))
    V[0] = v0 / np.linalg.norm(v0)
    for j in range(m):
        w = mv(V[j])
        alpha[j] = V[j] @ w
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)           # full reorthogonalisation (twice is enough)
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        if j + 1 < m:
            beta[j] = np.linalg.norm(w)
            if beta[j] < 1e-12 * max(1.0, abs(alpha[j])):  # invariant subspace found: stop early
                return alpha[: j + 1], beta[:j]
            V[j + 1] = w / beta[j]
    return alpha, beta
