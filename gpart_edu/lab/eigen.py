"""The Lanczos helpers: extreme eigenvalues of a symmetric operator known only by its matvec, certified when
eigenvalues repeat, and the tridiagonal Lanczos of stochastic Lanczos quadrature.

    ext = block_extremes(gram_matmat, d, k_top=20, k_bottom=20)     # block Krylov, residual-certified
    ext.top, ext.bottom, ext.converged                              # descending / ascending; what is certified
    vals, vecs, n_mv = eigsh_operator(hvp, d, k=5)                   # ARPACK top-5 of a torch matvec
    alpha, beta = lanczos(matvec, v0, m)                             # T = tridiag(beta, alpha, beta), m x m

Used by ``jacobian.singular_values`` (``block_extremes`` on J^T J, notebook 02_lora_unilora_geometry) and by
``curvature.top_eigenvalues`` / ``spectral_density`` (``eigsh_operator``, ``lanczos`` on H_theta, notebook
03_loss_landscapes).

Math: Lanczos builds an orthonormal basis V of the Krylov space span{v0, A v0, ..., A^(m-1) v0}, in which
A is the tridiagonal T = V^T A V; the eigenvalues of T (Ritz values) approach the extreme eigenvalues of A
first (ARPACK restarts implicitly to keep m small). A Krylov space grown from ONE vector holds one copy of each
eigenvector (the projection of v0 on the eigenspace): in exact arithmetic it cannot see how often an eigenvalue
repeats, and in floating point further copies appear only through rounding, late or never. So ``eigsh_operator``
can return a top-k / bottom-k that skips copies of a repeated eigenvalue -- each value a true eigenvalue with a
small residual, the list still wrong. ``block_extremes`` grows the Krylov space from a block of b random vectors,
b > the number of copies any one eigenvalue may need among the k wanted (b >= k + 1): the space then holds
min(b, multiplicity) independent vectors of every eigenspace, enough for all the copies among the k extreme
values. Each returned value is certified by its residual ||A u - theta u|| (the k returned Ritz vectors are
orthonormal, so k distinct eigenvalues of A lie within ||A U - U Theta||_2 of them, Kahan's theorem); values
that do not reach the tolerance are not returned but counted in ``converged``. What no matrix-free method can
prove is that an extreme eigenvalue was not missed altogether (its eigenspace orthogonal to the random start:
probability 0, and convergence is monitored until the wanted values are stable). The start is seeded: the same
seed, the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.projections import as_positive_int
from ..errors import ConfigError

EPS64 = float(np.finfo(np.float64).eps)
FULL_BASIS = 512    # block_extremes' default basis spans all of R^n up to this n (exact Rayleigh-Ritz)
STALL = 20          # block_extremes stops when the worst wanted residual has not halved in this many restarts


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


# ------------------------------------------------------------------------ block Krylov, certified
@dataclass
class Extremes:
    """Certified extreme eigenvalues of a symmetric operator (``block_extremes``).

    ``top`` (descending) / ``bottom`` (ascending) hold only certified values: the first ``len(top)`` of the
    k_top largest (a prefix, so position i is the i-th largest). ``*_residual``: ||A u_i - theta_i u_i|| of each,
    recomputed from fresh products A U of the returned vectors.
    """

    top: np.ndarray
    bottom: np.ndarray
    top_residual: np.ndarray
    bottom_residual: np.ndarray
    n_matvec: int
    converged: dict                         # {"top": {...}, "bottom": {...}}: count, wanted, residual_norm, ...
    top_vectors: np.ndarray | None = None   # (n, len(top)) when asked for
    bottom_vectors: np.ndarray | None = None


def _extend(Z: np.ndarray, V: np.ndarray, rng, room: int) -> np.ndarray:
    """Return min(room, Z's width) orthonormal columns orthogonal to V spanning Z's new part (block CGS2 + QR).

    Columns of Z that (numerically) lie in span(V) -- an invariant subspace, a null vector with A q = 0 -- are
    replaced by fresh Gaussian ones, so the block keeps its width b (what resolves multiplicities).
    """
    n = Z.shape[0]
    Z = np.array(Z[:, :room], dtype=np.float64, copy=True)
    for _ in range(3):                                      # a few rounds: each replaces the deficient columns
        norms = np.linalg.norm(Z, axis=0)
        for _ in range(2):
            Z -= V @ (V.T @ Z)
        Q, R = np.linalg.qr(Z)
        for _ in range(2):                                  # QR's columns, orthogonal to V again
            Q -= V @ (V.T @ Q)
            Q, R2 = np.linalg.qr(Q)
            R = R2 @ R
        weak = np.abs(np.diag(R)) <= 1e-8 * np.maximum(norms, 1e-300)
        if not weak.any():
            return Q
        Z = np.where(weak[None, :], rng.standard_normal((n, Z.shape[1])), Q)
    return Q[:, ~weak]


def block_extremes(matmat, n: int, k_top: int = 1, k_bottom: int = 0, block: int | None = None, tol: float = 0.0,
                   maxiter: int | None = None, basis: int | None = None, seed: int = 0,
                   vectors: bool = False) -> Extremes:
    """Compute the k_top largest and k_bottom smallest eigenvalues of a symmetric n x n operator, certified.

    ``matmat`` maps an (n, p) float64 array to (n, p) (A applied to p columns). Thick-restarted block Lanczos
    (Rayleigh-Ritz on a block Krylov space with full reorthogonalisation, restarted on the wanted Ritz vectors
    and a guard of b more at each end) from a seeded Gaussian block of width ``block`` (default
    max(k_top, k_bottom) + 2: more than the copies of one eigenvalue any end may need). Both ends come from one
    space. At the end, A is applied afresh to the returned Ritz vectors U; a pair (theta, u) is certified when
    ||A u - theta u|| <= max(tol, 100 eps) * max|theta|. Only the certified prefix of each end is returned;
    ``converged`` says how many of how many, the largest residual, ||A U - U Theta||_2 (Kahan: the returned
    values lie within it of as many eigenvalues of A, counted with multiplicity), the restarts and why it
    stopped. ``maxiter``: restarts (default 100); it also stops when the residuals stop improving (``STALL``).
    ``basis``: largest basis (default n when n <= ``FULL_BASIS``, else keep + 8 b); once the basis spans all
    of R^n the Rayleigh-Ritz values are exact (still certified by residuals). A restart keeps the wanted Ritz
    vectors and a guard, and continues with the residuals of the least converged wanted pairs.
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "5 · Jacobian singular values, matrix-free".
    """
    n = as_positive_int(n, "n")
    k_top, k_bottom = (int(x) for x in (k_top, k_bottom))
    if k_top < 0 or k_bottom < 0 or k_top + k_bottom == 0 or max(k_top, k_bottom) > n:
        raise ConfigError(f"block_extremes needs 0 <= k_top, k_bottom <= n={n}, not both 0; got k_top={k_top}, "
                          f"k_bottom={k_bottom}")
    need = max(k_top, k_bottom)
    b = min(n, as_positive_int(block, "block") if block is not None else need + 2)
    if b <= need and b < n:
        raise ConfigError(f"block={b} cannot resolve {need} copies of a repeated eigenvalue; use block >= {need + 1}")
    keep_n = min(n, k_top + k_bottom + b * ((k_top > 0) + (k_bottom > 0)))
    m = min(n, as_positive_int(basis, "basis") if basis is not None else
            (n if n <= FULL_BASIS else keep_n + 8 * b))
    if m < min(n, keep_n + b):
        raise ConfigError(f"basis={m} is too small: it must hold the kept Ritz vectors and one block "
                          f"({keep_n + b}); leave basis=None")
    maxiter = 100 if maxiter is None else as_positive_int(maxiter, "maxiter")
    tol_eff = max(float(tol), 100 * EPS64)
    rng = np.random.default_rng(seed)
    n_mv = [0]

    def apply(X):
        n_mv[0] += X.shape[1]
        return np.asarray(matmat(X), dtype=np.float64).reshape(n, X.shape[1])

    V, W = np.zeros((n, 0)), np.zeros((n, 0))
    Z = rng.standard_normal((n, b))
    restarts, best, since_best, stop = 0, np.inf, 0, ""
    check_at = min(m, keep_n + b)                          # a first Rayleigh-Ritz check early (J^T J = I: done)
    stuck = False
    while True:
        while V.shape[1] < check_at:                        # grow the block Krylov space
            Q = _extend(Z, V, rng, min(b, m - V.shape[1]))
            if not Q.shape[1]:
                stuck = True                                # no new direction could be made orthogonal to V
                break
            AQ = apply(Q)
            V, W, Z = np.hstack([V, Q]), np.hstack([W, AQ]), AQ
        H = V.T @ W
        theta, Y = np.linalg.eigh((H + H.T) / 2)           # ascending Ritz values
        mm = len(theta)
        top_idx = np.arange(mm - 1, mm - 1 - min(k_top, mm), -1)
        bot_idx = np.arange(min(k_bottom, mm))
        scale = float(np.abs(theta).max())
        want = np.concatenate([top_idx, bot_idx])
        res = np.linalg.norm(W @ Y[:, want] - (V @ Y[:, want]) * theta[want], axis=0)
        worst = float(res.max()) if len(res) else 0.0
        check_at = m
        if worst <= tol_eff * scale:
            stop = "converged"
        elif V.shape[1] >= n or stuck:
            stop = "basis spans R^n" if V.shape[1] >= n else "no new direction orthogonal to the basis"
        elif V.shape[1] < m:
            continue                                        # the early check: grow on to the full basis
        elif restarts >= maxiter:
            stop = f"maxiter={maxiter} restarts"
        elif since_best >= STALL:
            stop = f"residuals stalled for {STALL} restarts"
        if stop:
            break
        best, since_best = (worst, 0) if worst < 0.5 * best else (best, since_best + 1)
        # thick restart: keep the wanted Ritz vectors and a guard of b at each end; continue the space with the
        # residuals A u - theta u of the b least converged wanted pairs (the directions they still miss)
        R = W @ Y[:, want] - (V @ Y[:, want]) * theta[want]
        Z = R[:, np.argsort(-res)[:b]]
        keep = np.unique(np.concatenate([np.arange(min(mm, k_bottom + b)) if k_bottom else np.zeros(0),
                                         np.arange(max(0, mm - k_top - b), mm) if k_top else np.zeros(0)]
                                        ).astype(int))
        V, W = V @ Y[:, keep], W @ Y[:, keep]
        restarts += 1
    # certification on fresh products A U (not on the rotated W)
    U_all = V @ Y[:, want]
    R_all = apply(U_all) - U_all * theta[want]
    res_all = np.linalg.norm(R_all, axis=0)
    out, converged = {}, {}
    solver = f"block Lanczos (block {b}, basis {m}, {restarts} restarts: {stop})"
    for name, wanted, sl in (("top", k_top, slice(0, len(top_idx))), ("bottom", k_bottom, slice(len(top_idx), None))):
        idx, U, R, r = want[sl], U_all[:, sl], R_all[:, sl], res_all[sl]
        ok = r <= tol_eff * scale
        count = len(idx) if ok.all() else int(np.argmin(ok))
        norm2 = float(np.linalg.norm(R[:, :count], 2)) if count else 0.0
        out[name] = (theta[idx[:count]].copy(), r[:count].copy(), U[:, :count].copy() if vectors else None)
        converged[name] = {"count": count, "wanted": wanted, "solver": solver,
                           "residual_max": float(r[:count].max()) if count else 0.0, "residual_norm": norm2,
                           "tol": tol_eff * scale, "scale": scale, "restarts": restarts, "block": b}
    return Extremes(out["top"][0], out["bottom"][0], out["top"][1], out["bottom"][1], n_mv[0], converged,
                    out["top"][2], out["bottom"][2])
