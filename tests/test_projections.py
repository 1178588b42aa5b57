"""PartitionProjection: exact isometry, group sizes, hashed ids, adjoint, errors."""
import numpy as np
import pytest
import torch

from gpart_edu import ConfigError, PartitionProjection
from gpart_edu.core.projections import ASSIGNMENTS, hashed_group_ids

SIZES = [(1, 1), (12, 3), (12, 12), (13, 1), (100, 7), (257, 64), (1000, 999), (4096, 100)]


def _make(D, d, seed, assignment):
    try:
        return PartitionProjection(D, d, seed=seed, assignment=assignment)
    except ConfigError as e:  # multinomial / hashed may leave empty groups when d is close to D
        assert assignment != "balanced" and "empty" in str(e)
        return None


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("D,d", SIZES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_gram_is_identity_in_float64(D, d, seed, assignment):
    P = _make(D, d, seed, assignment)
    if P is None:
        return
    M = P.to_dense(torch.float64)
    gram = M.T @ M
    assert (gram - torch.eye(d, dtype=torch.float64)).abs().max().item() <= 1e-12
    assert (M != 0).sum(1).eq(1).all(), "every row of P has exactly one nonzero"
    assert int(P.counts.sum()) == D


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_matvec_and_adjoint_match_dense(assignment):
    P = PartitionProjection(300, 20, seed=7, assignment=assignment)
    M = P.to_dense()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, generator=g, dtype=torch.float64)
    y = torch.randn(300, generator=g, dtype=torch.float64)
    assert torch.allclose(P(x), M @ x, atol=1e-14, rtol=0)
    assert torch.allclose(P.adjoint(y), M.T @ y, atol=1e-12, rtol=0)
    # adjoint identity <P x, y> = <x, P^T y>
    assert abs(torch.dot(P(x), y).item() - torch.dot(x, P.adjoint(y)).item()) <= 1e-12
    # norm preserved exactly (up to fp64 rounding)
    assert abs(P(x).norm().item() - x.norm().item()) <= 1e-12 * x.norm().item()


@pytest.mark.parametrize("D,d", [(10, 3), (1000, 7), (1001, 1000), (65536, 1000)])
def test_balanced_sizes(D, d):
    P = PartitionProjection(D, d, seed=5)
    counts = torch.bincount(P.group_ids(), minlength=d)
    assert torch.equal(counts, P.counts)
    assert set(counts.tolist()) <= {D // d, -(-D // d)}


def test_balanced_ids_depend_on_seed_only():
    a = PartitionProjection(500, 13, seed=1).group_ids()
    b = PartitionProjection(500, 13, seed=1).group_ids()
    c = PartitionProjection(500, 13, seed=2).group_ids()
    assert torch.equal(a, b) and not torch.equal(a, c)


def _splitmix_reference(seed, D, d):
    """Independent NumPy uint64 implementation of the hashed assignment."""
    def mix(z):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
    with np.errstate(over="ignore"):
        state = mix(np.array([seed % 2**64], dtype=np.uint64))[0]
        z = state + (np.arange(D, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        return ((mix(z) >> np.uint64(1)) % np.uint64(d)).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2**40 + 3, 2**63 + 11, -5])
def test_hashed_ids_match_uint64_reference(seed):
    ref = _splitmix_reference(seed, 5000, 37)
    assert np.array_equal(hashed_group_ids(seed, 0, 5000, 37).numpy(), ref)


def test_hashed_ids_chunk_invariant():
    P = PartitionProjection(10_000, 50, seed=9, assignment="hashed")
    whole = P.group_ids()
    cuts = [0, 1, 17, 4096, 4097, 9999, 10_000]
    pieces = torch.cat([P.group_ids(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
    assert torch.equal(whole, pieces)
    small_chunks = PartitionProjection(10_000, 50, seed=9, assignment="hashed", hash_chunk=333)
    assert torch.equal(small_chunks.counts, P.counts)
    assert torch.equal(torch.bincount(whole, minlength=50), P.counts)


def test_hashed_stores_no_per_weight_state():
    P = PartitionProjection(100_000, 10, assignment="hashed")
    P(torch.ones(10))
    assert not P.stores_ids and P._ids is None
    assert sum(b.numel() for b in P.buffers()) == 10  # counts only


def test_stored_ids_are_int32():
    P = PartitionProjection(1000, 10)
    P(torch.ones(10))
    assert P._ids.dtype == torch.int32


@pytest.mark.parametrize("bad_d", [0, -3])
def test_d_must_be_positive(bad_d):
    with pytest.raises(ConfigError, match="d must be >= 1"):
        PartitionProjection(10, bad_d)


@pytest.mark.parametrize("bad_d", [2.5, "4", True, None])
def test_d_must_be_integer(bad_d):
    with pytest.raises(ConfigError, match="d must be a positive integer"):
        PartitionProjection(10, bad_d)


def test_d_larger_than_D_names_D():
    with pytest.raises(ConfigError, match=r"d=11 exceeds D=10"):
        PartitionProjection(10, 11)


def test_unknown_assignment_lists_choices():
    with pytest.raises(ConfigError, match="balanced, multinomial, hashed"):
        PartitionProjection(10, 2, assignment="random")


def test_multinomial_empty_groups_are_an_error():
    with pytest.raises(ConfigError, match=r"left \d+ of d=1,000 groups empty.*balanced.*smaller d"):
        PartitionProjection(1000, 1000, assignment="multinomial")


def test_to_dense_refuses_large():
    P = PartitionProjection(10**8, 10**3, assignment="balanced")
    with pytest.raises(ConfigError, match="to_dense would allocate"):
        P.to_dense()


def test_theta_shape_checked():
    P = PartitionProjection(10, 3)
    with pytest.raises(ConfigError, match=r"theta must have shape \(3,\)"):
        P(torch.ones(4))


def test_lazy_group_ids_built_inside_torch_func_transforms():
    """The ids cache built on first use under grad / vmap must be a plain tensor (no 'escaped' wrapper)."""
    for build in ("grad", "hessian"):
        P = PartitionProjection(100, 7, seed=0)
        assert P._ids is None
        f = lambda t: P(t).pow(3).sum()  # noqa: E731
        t = torch.randn(7, dtype=torch.float64)
        transform = torch.func.grad(f) if build == "grad" else torch.func.hessian(f)
        first, second = transform(t), transform(t)
        assert torch.equal(first, second)
        assert torch.equal(P.group_ids(), torch.randperm(100, generator=torch.Generator().manual_seed(0)) % 7)
