"""Issue 14 B: the matrix-free spectrum (lab.eigen.block_extremes behind jacobian.singular_values) finds repeated
singular values -- LoRA's exact zeros, GPart's all-ones spectrum, Uni-LoRA's spread -- and certifies each by its
residual; what it cannot certify is reported in ``converged``, not returned."""
import numpy as np
import pytest
import torch

import gpart_edu as ge
from gpart_edu import ConfigError
from gpart_edu.lab import eigen, jacobian

from .conftest import MLP

F64 = torch.float64
K = 8


def _mlp_adapter(method, cfg, seed, moved):
    """A 3-layer, 12-wide MLP (three adapted Linear layers), theta at init or at a seeded moved point."""
    torch.manual_seed(seed)
    model = MLP((12, 12, 12, 12)).to(F64)
    ad = ge.attach(model, method, targets=["layers.0", "layers.1", "head"], seed=seed, **cfg)
    if moved:
        with torch.no_grad():
            ad.theta.add_(0.3 * torch.randn(ad.theta.shape, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return ad


CASES = [("lora", {"r": 2}, s, mv) for s in (0, 1, 2) for mv in (False, True)] + \
        [("lora", {"r": 3}, s, mv) for s in (0, 1) for mv in (False, True)] + \
        [("gpart", {"d": 60}, 0, False), ("gpart", {"d": 60, "assignment": "hashed"}, 1, True),
         ("unilora", {"d": 60, "r": 2}, 0, True), ("unilora", {"d": 60, "r": 3}, 1, True)]


@pytest.mark.parametrize("method,cfg,seed,moved", CASES)
def test_matrix_free_spectrum_matches_dense_svd(method, cfg, seed, moved):
    ad = _mlp_adapter(method, cfg, seed, moved)
    dense = jacobian.singular_values(ad, k=K, method="dense")
    lanc = jacobian.singular_values(ad, k=K, method="lanczos", seed=seed)
    assert lanc.converged["top"]["count"] == K and lanc.converged["bottom"]["count"] == K
    smax = dense.sigma_max
    assert np.abs(lanc.top - dense.top).max() <= 1e-8 * smax
    # bottom: equal to within the certified resolution (zeros are resolved to sqrt(tol) sigma_max)
    assert np.abs(lanc.bottom - dense.bottom).max() <= max(lanc.resolution, 1e-8 * smax)
    n_zero_dense = int((dense.bottom <= 1e-10 * smax).sum())
    assert int((lanc.bottom <= lanc.resolution).sum()) == n_zero_dense
    if method == "lora":                     # r^2 null directions per layer (3 layers), or the B = 0 block at init
        assert n_zero_dense == K and lanc.cond == np.inf
    if method == "gpart":                    # J = P, P^T P = I: every singular value is 1 (repeated d times)
        assert np.abs(lanc.top - 1).max() <= 1e-12 and np.abs(lanc.bottom - 1).max() <= 1e-12
    for end in ("top", "bottom"):            # every returned value carries its residual certificate
        c = lanc.converged[end]
        assert c["residual_max"] <= c["tol"] and c["residual_norm"] >= c["residual_max"]


def _with_multiplicities(n, seed):
    """A symmetric n x n matrix with eigenvalues 5 (x6), 3 (x4), spread values in (1, 2), and 0 (x12)."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([np.full(6, 5.0), np.full(4, 3.0), rng.uniform(1, 2, n - 22), np.zeros(12)])
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * lam) @ Q.T, np.sort(lam)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_extremes_resolves_multiplicities_with_restarts(seed):
    """A basis far smaller than n (thick restarts) still returns every copy of 5, 3 and 0."""
    A, lam = _with_multiplicities(600, seed)
    res = eigen.block_extremes(lambda X: A @ X, 600, k_top=8, k_bottom=8, basis=100, seed=seed)
    assert res.converged["top"]["count"] == 8 and res.converged["bottom"]["count"] == 8
    assert res.converged["top"]["restarts"] >= 1
    assert np.abs(res.top - lam[::-1][:8]).max() <= 1e-11
    assert np.abs(res.bottom - lam[:8]).max() <= 1e-11
    assert np.all(res.top_residual <= res.converged["top"]["tol"])


def test_single_vector_lanczos_misses_copies_block_does_not():
    """The defect itself: ARPACK from one vector cannot count a repeated eigenvalue's copies."""
    A, lam = _with_multiplicities(300, 0)
    one = eigen.eigsh_operator(lambda v: A @ v, 300, k=8, dtype=None, vectors=False, robust=True).values
    block = eigen.block_extremes(lambda X: A @ X, 300, k_top=8, basis=100).top
    assert np.abs(block - lam[::-1][:8]).max() <= 1e-11
    assert np.abs(np.sort(one)[::-1] - lam[::-1][:8]).max() > 0.1      # single-vector Lanczos skips copies


def test_uncertified_values_are_counted_not_returned():
    A, _ = _with_multiplicities(600, 3)
    res = eigen.block_extremes(lambda X: A @ X, 600, k_top=8, k_bottom=8, basis=60, maxiter=1, tol=1e-15)
    for end, vals in (("top", res.top), ("bottom", res.bottom)):
        c = res.converged[end]
        assert len(vals) == c["count"] < c["wanted"] == 8
        assert "maxiter=1" in c["solver"]


def test_block_extremes_rejects_a_block_too_small():
    with pytest.raises(ConfigError, match="cannot resolve 8 copies"):
        eigen.block_extremes(lambda X: X, 100, k_top=8, block=8)
    with pytest.raises(ConfigError, match="basis=20 is too small"):
        eigen.block_extremes(lambda X: X, 100, k_top=8, basis=20)
