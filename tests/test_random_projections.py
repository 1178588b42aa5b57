"""Gaussian and Fastfood projections: adjoint = dense transpose, structure, E||P theta||^2 = ||theta||^2."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gpart_edu import ConfigError
from gpart_edu.lab.random_projections import FastfoodProjection, GaussianProjection, fwht

CLASSES = [GaussianProjection, FastfoodProjection]
SIZES = [(1, 1), (7, 3), (37, 5), (100, 16), (1000, 33), (1030, 64)]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("D,d", SIZES)
def test_matvec_and_adjoint_match_dense(cls, D, d):
    P = cls(D, d, seed=3)
    M = P.to_dense()
    assert M.shape == (D, d) and M.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d, generator=g, dtype=torch.float64)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    assert torch.allclose(P(x), M @ x, atol=1e-13, rtol=0)
    assert torch.allclose(P.adjoint(v), M.T @ v, atol=1e-12, rtol=0)
    assert abs(torch.dot(P(x), v).item() - torch.dot(x, P.adjoint(v)).item()) <= 1e-12
    a, b = D // 3, D - D // 4
    assert torch.allclose(P(x, a, b), (M @ x)[a:b], atol=1e-13, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_adjoint_equals_autograd_vjp(cls):
    P = cls(300, 20, seed=1)
    theta = torch.randn(20, dtype=torch.float64, requires_grad=True)
    u = torch.randn(300, dtype=torch.float64)
    (g,) = torch.autograd.grad(torch.dot(P(theta), u), theta)
    assert torch.allclose(g, P.adjoint(u), atol=1e-12, rtol=0)


def test_fastfood_equals_explicit_H_G_Pi_H_B_blocks():
    """Build P from scratch with scipy's Hadamard matrix and compare with the library."""
    D, d = 50, 6
    P = FastfoodProjection(D, d, seed=2)
    assert P.L == 8 and P.n_blocks == 7
    H = torch.tensor(scipy.linalg.hadamard(P.L), dtype=torch.float64)
    blocks = []
    for b in range(P.n_blocks):
        Pi = torch.eye(P.L, dtype=torch.float64)[P.perm[b]]       # (Pi z)_k = z_perm[k]
        blocks.append(H @ torch.diag(P.G[b]) @ Pi @ H @ torch.diag(P.B[b]))
    M = torch.cat(blocks)[:D, :d] / math.sqrt(D * P.L)
    assert torch.allclose(P.to_dense(), M, atol=1e-14, rtol=0)
    assert set(P.B.unique().tolist()) == {-1.0, 1.0}
    assert all(torch.equal(p.sort().values, torch.arange(P.L)) for p in P.perm)


@pytest.mark.parametrize("L", [1, 2, 4, 64])
def test_fwht_is_hadamard(L):
    x = torch.randn(3, L, dtype=torch.float64)
    H = torch.tensor(scipy.linalg.hadamard(L), dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ H, atol=1e-12, rtol=0)
    with pytest.raises(ConfigError, match="power-of-2"):
        fwht(torch.zeros(6))


@pytest.mark.parametrize("cls,D,d", [(GaussianProjection, 64, 5), (FastfoodProjection, 64, 5),
                                     (FastfoodProjection, 200, 13)])
def test_norm_preserved_in_expectation_only(cls, D, d):
    """E||P theta||^2 / ||theta||^2 = 1 over seeds, checked to 5 standard errors; no single P is exact."""
    theta = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    n = 600
    x = np.array([(cls(D, d, seed=s)(theta).pow(2).sum() / theta.pow(2).sum()).item() for s in range(n)])
    se = x.std(ddof=1) / math.sqrt(n)
    assert abs(x.mean() - 1.0) <= 5 * se, (x.mean(), se)
    assert np.abs(x - 1).min() > 1e-9          # isometric only in expectation, never exactly
    if cls is GaussianProjection:              # ||P theta||^2 / ||theta||^2 ~ chi^2_D / D: variance 2 / D
        var_se = math.sqrt((8 * D + 48) / D ** 3 / n)  # sqrt((mu4 - sigma^4) / n) for chi^2_D / D
        assert abs(x.var(ddof=1) - 2 / D) <= 5 * var_se


def test_gaussian_gram_is_identity_in_expectation():
    D, d, n = 40, 4, 400
    mean = sum(GaussianProjection(D, d, seed=s).to_dense().T @ GaussianProjection(D, d, seed=s).to_dense()
               for s in range(n)) / n
    # each entry of P^T P averages n values with variance ~ 1/D (off-diagonal) or 2/D (diagonal)
    assert (mean - torch.eye(d, dtype=torch.float64)).abs().max().item() <= 5 * math.sqrt(2 / D / n)


@pytest.mark.parametrize("cls", CLASSES)
def test_seeded_and_deterministic(cls):
    a, b, c = cls(200, 9, seed=4).to_dense(), cls(200, 9, seed=4).to_dense(), cls(200, 9, seed=5).to_dense()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gaussian_streamed_equals_cached():
    cached = GaussianProjection(1000, 7, seed=1, chunk_rows=64)
    streamed = GaussianProjection(1000, 7, seed=1, chunk_rows=64, cache_bytes=0)
    assert streamed._cache is None and cached._cache is not None
    x = torch.randn(7, dtype=torch.float64)
    v = torch.randn(1000, dtype=torch.float64)
    assert torch.equal(streamed(x), cached(x))
    assert torch.equal(streamed(x, 100, 300), cached(x)[100:300])
    assert torch.allclose(streamed.adjoint(v), cached.adjoint(v), atol=1e-13, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_follows_theta_dtype(cls):
    P = cls(500, 10, seed=0)
    x = torch.randn(10, dtype=torch.float64)
    y32 = P(x.float())
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), P(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_to_dense_refuses_above_limit(cls):
    P = cls(10 ** 6, 1000, seed=0)
    with pytest.raises(ConfigError, match="to_dense would allocate .* P\\(theta\\) / P.adjoint"):
        P.to_dense()
    with pytest.raises(ConfigError, match="limit"):
        cls(100, 10).to_dense(max_bytes=100)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_input_is_named(cls):
    with pytest.raises(ConfigError, match="d=11 exceeds D=10"):
        cls(10, 11)
    with pytest.raises(ConfigError, match="d must be"):
        cls(10, 0)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        cls(10, 2, seed=1.5)
    P = cls(10, 3)
    with pytest.raises(ConfigError, match=r"theta must be a tensor of shape \(3,\)"):
        P(torch.zeros(4))
    with pytest.raises(ConfigError, match=r"adjoint expects a vector of shape \(10,\)"):
        P.adjoint(torch.zeros(3))
    with pytest.raises(ConfigError, match="row range"):
        P(torch.zeros(3), 5, 11)
