"""Random-subspace projections P in R^{D x d} that are isometric only *in expectation* (for contrast).

Both share PartitionProjection's interface: ``P(theta, start=0, stop=None)`` (d,) -> (D,) (or a row slice),
``P.adjoint(v)`` (D,) -> (d,), ``P.to_dense(dtype, max_bytes)`` (refused above the memory limit), and are
seeded: the same (D, d, seed) gives the same P on every run.

Math:
    GaussianProjection   P_ij ~ N(0, 1/D) i.i.d.  E[P^T P] = I, so E||P theta||^2 = ||theta||^2; for fixed
                         theta, ||P theta||^2 / ||theta||^2 ~ chi^2_D / D (Johnson-Lindenstrauss): the norm
                         ratio has standard deviation ~ 1/sqrt(2D) and is never exactly 1.
    FastfoodProjection   theta is zero-padded to L = 2^l >= d; each of ceil(D/L) blocks computes
                         H G Pi H B theta (H: L x L Walsh-Hadamard, entries +-1; B: random signs; Pi: random
                         permutation; G: diagonal N(0, 1)); the blocks are stacked, cut to D rows and scaled
                         by 1/sqrt(D L). Every output y_i = sum_k H_ik g_k z_k / sqrt(DL) with z = Pi H B theta
                         has E_G[y_i^2] = ||z||^2 / (DL) = ||theta||^2 / D, hence E||P theta||^2 = ||theta||^2
                         exactly (any theta, B, Pi). O(D log L) time and O(D) memory instead of D x d.
                         (Structure as in Le et al. 2013 and Aghajanyan et al. 2021's intrinsic-dimension work.)
Taught in notebooks/01_isometric_partition.ipynb, section "4 · Random projections".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.projections import DEFAULT_DENSE_LIMIT_BYTES, as_positive_int
from ..errors import ConfigError

DEFAULT_CACHE_BYTES = 128 << 20  # GaussianProjection keeps P in memory up to this size, else streams it


def _validate(D, d, seed) -> tuple[int, int, int]:
    D = as_positive_int(D, "D")
    d = as_positive_int(d, "d", f" (the subspace dimension; choose 1 <= d <= D={D:,})")
    if d > D:
        raise ConfigError(f"d={d:,} exceeds D={D:,}: a D x d projection cannot preserve distances when d > D; "
                          f"choose d <= {D:,}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return D, d, int(seed)


def check_dense_size(D: int, d: int, dtype, max_bytes: int) -> None:
    """Raise ConfigError if a dense D x d matrix of ``dtype`` would exceed ``max_bytes``."""
    need = D * d * torch.empty((), dtype=dtype).element_size()
    if need > max_bytes:
        raise ConfigError(
            f"to_dense would allocate a {D:,} x {d:,} matrix ({need / 2**30:.2f} GiB > "
            f"limit {max_bytes / 2**30:.2f} GiB); use P(theta) / P.adjoint(v) instead, or pass a "
            f"larger max_bytes if you really have the memory")


class _Projection(nn.Module):
    """Shared checks of the random projections."""

    D: int
    d: int

    def _check_theta(self, theta: torch.Tensor) -> None:
        if not isinstance(theta, torch.Tensor) or theta.dim() != 1 or theta.shape[0] != self.d:
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ConfigError(f"theta must be a tensor of shape ({self.d},), got {shape}")

    def _check_v(self, v: torch.Tensor) -> None:
        if not isinstance(v, torch.Tensor) or v.shape != (self.D,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ConfigError(f"adjoint expects a vector of shape ({self.D},), got {shape}")

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.D if stop is None else stop
        if not 0 <= start <= stop <= self.D:
            raise ConfigError(f"row range [{start}, {stop}) is outside [0, {self.D}]")
        return start, stop

    def extra_repr(self) -> str:
        return f"D={self.D:,}, d={self.d:,}, seed={self.seed}"


# ------------------------------------------------------------------------------------ Gaussian
class GaussianProjection(_Projection):
    """Dense P with i.i.d. N(0, 1/D) entries, generated from the seed in row chunks (JL projection).

    P is kept in memory (float64) when D*d*8 <= ``cache_bytes``; otherwise every call regenerates the rows
    chunk by chunk from per-chunk seeds (O(chunk*d) memory, same numbers).
    Shapes: ``P(theta)`` (d,) -> (D,); ``P.adjoint(v)`` (D,) -> (d,).
    Taught in notebooks/01_isometric_partition.ipynb, section "4 · Random projections: isometric only in expectation".
    """

    def __init__(self, D: int, d: int, seed: int = 0, chunk_rows: int = 1 << 14,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        super().__init__()
        self.D, self.d, self.seed = _validate(D, d, seed)
        self.chunk_rows = as_positive_int(chunk_rows, "chunk_rows")
        self._cache = self._rows(0, self.D) if self.D * self.d * 8 <= cache_bytes else None

    def _chunk(self, c: int) -> torch.Tensor:
        """Rows [c*chunk_rows, (c+1)*chunk_rows) of P in float64 (seeded by (seed, c))."""
        a = c * self.chunk_rows
        n = min(self.D, a + self.chunk_rows) - a
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + c) % (2 ** 63))
        return torch.randn(n, self.d, generator=g, dtype=torch.float64) / math.sqrt(self.D)

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        if getattr(self, "_cache", None) is not None:
            return self._cache[start:stop]
        c0, c1 = start // self.chunk_rows, max(start, stop - 1) // self.chunk_rows
        rows = torch.cat([self._chunk(c) for c in range(c0, c1 + 1)]) if stop > start else \
            torch.zeros(0, self.d, dtype=torch.float64)
        return rows[start - c0 * self.chunk_rows: stop - c0 * self.chunk_rows]

    def forward(self, theta: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Return (P theta)[start:stop] in theta's dtype. Differentiable in theta."""
        self._check_theta(theta)
        start, stop = self._range(start, stop)
        if self._cache is not None:
            return self._cache[start:stop].to(theta) @ theta
        parts = [self._rows(a, min(stop, a + self.chunk_rows)).to(theta) @ theta
                 for a in range(start, stop, self.chunk_rows)]
        return torch.cat(parts) if parts else theta.new_zeros(0)

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """Return P^T v, shape (d,)."""
        self._check_v(v)
        if self._cache is not None:
            return self._cache.to(v).t() @ v
        out = v.new_zeros(self.d)
        for a in range(0, self.D, self.chunk_rows):
            b = min(self.D, a + self.chunk_rows)
            out = out + self._rows(a, b).to(v).t() @ v[a:b]
        return out

    def to_dense(self, dtype=torch.float64, max_bytes: int = DEFAULT_DENSE_LIMIT_BYTES) -> torch.Tensor:
        """Return P as a dense (D, d) matrix, for small sizes only (teaching and tests)."""
        check_dense_size(self.D, self.d, dtype, max_bytes)
        return self._rows(0, self.D).to(dtype)


# ------------------------------------------------------------------------------------ Fastfood
def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along the last dim (length a power of 2): x @ H.

    H is the Sylvester Hadamard matrix (entries +-1, H = H^T, H H = L I). O(L log L); differentiable.
    """
    L = x.shape[-1]
    if L & (L - 1):
        raise ConfigError(f"fwht needs a power-of-2 length, got {L}")
    lead = x.shape[:-1]
    h = 1
    while h < L:
        y = x.reshape(*lead, L // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, L)
        h *= 2
    return x


class FastfoodProjection(_Projection):
    """Structured random P = (1/sqrt(DL)) [H G_b Pi_b H B_b]_b stacked over ceil(D/L) blocks, cut to D rows.

    State per block b: random signs B_b (L,), permutation Pi_b (L,), Gaussian diagonal G_b (L,), all from
    the seed; L = 2^ceil(log2 d). E||P theta||^2 = ||theta||^2 exactly (over G); ||P theta|| != ||theta||.
    Shapes: ``P(theta)`` (d,) -> (D,); ``P.adjoint(v)`` (D,) -> (d,).
    Taught in notebooks/01_isometric_partition.ipynb, section "4 · Random projections: isometric only in expectation".
    """

    def __init__(self, D: int, d: int, seed: int = 0):
        super().__init__()
        self.D, self.d, self.seed = _validate(D, d, seed)
        self.L = 1 << max(0, (self.d - 1).bit_length())
        self.n_blocks = -(-self.D // self.L)
        g = torch.Generator().manual_seed(self.seed)
        nb, L = self.n_blocks, self.L
        self.register_buffer("B", torch.randint(0, 2, (nb, L), generator=g).double() * 2 - 1, persistent=False)
        self.register_buffer("perm", torch.argsort(torch.rand(nb, L, generator=g), dim=1), persistent=False)
        self.register_buffer("G", torch.randn(nb, L, generator=g, dtype=torch.float64), persistent=False)
        self.scale = 1.0 / math.sqrt(self.D * self.L)

    def forward(self, theta: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Return (P theta)[start:stop] in theta's dtype (all blocks are computed). Differentiable."""
        self._check_theta(theta)
        start, stop = self._range(start, stop)
        x = torch.cat([theta, theta.new_zeros(self.L - self.d)])                       # (L,) zero-padded
        z = fwht(self.B.to(theta) * x)                                                  # (nb, L) = H B x
        z = torch.gather(z, 1, self.perm)                                               # Pi
        y = fwht(self.G.to(theta) * z) * self.scale                                     # H G
        return y.reshape(-1)[start:stop]

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """Return P^T v = (1/sqrt(DL)) sum_b B_b H Pi_b^T G_b H v_b, shape (d,)."""
        self._check_v(v)
        u = torch.cat([v, v.new_zeros(self.n_blocks * self.L - self.D)]).reshape(self.n_blocks, self.L)
        u = self.G.to(v) * fwht(u)                                                      # G H v_b
        w = torch.zeros_like(u).scatter(1, self.perm, u)                                # Pi^T
        x = (self.B.to(v) * fwht(w)).sum(0) * self.scale                                # B H, sum over blocks
        return x[: self.d]

    def to_dense(self, dtype=torch.float64, max_bytes: int = DEFAULT_DENSE_LIMIT_BYTES) -> torch.Tensor:
        """Return P as a dense (D, d) matrix (P applied to the identity), for small sizes only."""
        check_dense_size(self.D, self.d, dtype, max_bytes)
        eye = torch.eye(self.d, dtype=torch.float64)
        return torch.stack([self(eye[j]) for j in range(self.d)], dim=1).to(dtype)

    def extra_repr(self) -> str:
        return f"D={self.D:,}, d={self.d:,}, L={self.L}, blocks={self.n_blocks}, seed={self.seed}"


PROJECTIONS = {"gaussian": GaussianProjection, "fastfood": FastfoodProjection}
