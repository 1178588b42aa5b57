"""Partition projections P in R^{D x d}: theta (d,) -> P theta (D,), with P^T P = I exactly.

Math:
    Every row i of P has exactly one nonzero, in column g(i) (the *group id* of position i):
        P[i, g(i)] = 1 / sqrt(n_{g(i)}),   n_j = #{i : g(i) = j}  (the group size).
    Hence (P^T P)_{jk} = sum_i P[i,j] P[i,k] = [j == k] * n_j / n_j = I, provided no group is empty.
    P theta copies theta_j / sqrt(n_j) into the n_j positions of group j; P^T v sums v over each
    group and scales by 1 / sqrt(n_j).

Ways of choosing g (``assignment``):
    "balanced"    g = randperm(D) mod d: every n_j is floor(D/d) or ceil(D/d). Ids are stored (int32).
    "multinomial" g(i) ~ Uniform{0..d-1} i.i.d.; empty groups are possible and rejected. The same draw as the
                  official GPart fork's "materialized" backend (torch.randint, torch.Generator seeded with seed).
    "hashed"      g(i) = (splitmix64_i(seed) >> 1) mod d, computed on the fly from the position i:
                  no per-weight state, identical for any chunking of the positions and on any device.
    "stateless"   the official GPart fork's stateless rule, g(i) = mix64(seed + i + GOLDEN) mod d (uint64):
                  also computed on the fly, but the seed only shifts the stream (seed s + 1 at position i is
                  seed s at position i + 1), so different seeds are not independent partitions.
    "peft-balanced"  peft's Uni-LoRA rule: each id floor(D/d) times plus D mod d distinct extras, shuffled by
                  numpy.random.default_rng(seed) (stored, like balanced).
``allow_empty=True`` accepts empty groups (the fork keeps them: a checkpoint written by it may have some);
their columns of P are zero, so P^T P = I fails there, which ``lab.geometry.partition_check`` reports.
Taught in notebooks/01_isometric_partition.ipynb (sections 1, 2 and 5); the fork's and peft's rules in
notebooks/07_bring_your_own_adapter.ipynb.
"""
from __future__ import annotations

import contextlib
import operator

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

ASSIGNMENTS = ("balanced", "multinomial", "hashed", "stateless", "peft-balanced")
COMPUTED = ("hashed", "stateless")   # ids computed from the position on the fly, never stored
DEFAULT_DENSE_LIMIT_BYTES = 1 << 30  # to_dense refuses beyond 1 GiB

# SplitMix64 constants as signed int64 (torch has no full uint64 arithmetic; int64 wraps the same way)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def as_positive_int(value, name: str, hint: str = "") -> int:
    """Return ``value`` as a Python int >= 1, or raise a ConfigError naming ``name``."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ConfigError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}){hint}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ConfigError(
            f"{name} must be a positive integer, got {value!r} ({type(value).__name__}){hint}"
        ) from None
    if out < 1:
        raise ConfigError(f"{name} must be >= 1, got {out}{hint}")
    return out


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors, in place (wrap-around arithmetic = uint64 arithmetic).

    In place with one scratch buffer: two int64 arrays of len(z) at any time, not seven.
    """
    t = torch.empty_like(z)
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        t.bitwise_and_((1 << (64 - shift)) - 1)       # logical shift: clear the sign-extended bits
        z.bitwise_xor_(t)
        if mult is not None:
            z.mul_(mult)
    return z


def _seed_state(seed: int) -> int:
    """Mix a user seed into a 64-bit SplitMix64 starting state (as a signed int64 value)."""
    v = seed & ((1 << 64) - 1)
    v = v - (1 << 64) if v >= (1 << 63) else v
    return int(_mix64(torch.tensor([v], dtype=torch.int64)).item())


def hashed_group_ids(seed: int, start: int, stop: int, d: int, device=None) -> torch.Tensor:
    """Group ids of positions [start, stop) under the hashed assignment, as int64.

    id(i) = (mix64(state + (i + 1) * GOLDEN) >>> 1) mod d with state = mix64(seed): the i-th output of a
    SplitMix64 stream. Pure function of (seed, i, d): any chunking of the range gives the same ids.
    Taught in notebooks/01_isometric_partition.ipynb, section "The empty-group pitfall".
    """
    z = torch.arange(start + 1, stop + 1, dtype=torch.int64, device=device)
    z.mul_(_GOLDEN).add_(_seed_state(seed))
    z = _mix64(z)
    torch.bitwise_right_shift(z, 1, out=z)
    return z.bitwise_and_((1 << 63) - 1).remainder_(d)


def stateless_group_ids(seed: int, start: int, stop: int, d: int, device=None) -> torch.Tensor:
    """Group ids of positions [start, stop) under the official GPart fork's stateless rule, as int64.

    id(i) = mix64(seed + i + GOLDEN) mod d in uint64 arithmetic (mix64 = the SplitMix64 finaliser). Unlike
    ``hashed_group_ids`` the seed is added, not mixed: the stream of seed s + 1 is the stream of seed s shifted
    by one position. Taught in notebooks/07_bring_your_own_adapter.ipynb, section "the fork's seeds".
    """
    z = torch.arange(start, stop, dtype=torch.int64, device=device)
    z.add_(_as_int64((seed + _GOLDEN) & ((1 << 64) - 1)))
    z = _mix64(z)
    low = z.bitwise_and(1)                                 # uint64 z = 2 * (z >>> 1) + (z & 1)
    torch.bitwise_right_shift(z, 1, out=z)
    z.bitwise_and_((1 << 63) - 1).remainder_(d)
    return z.mul_(2).add_(low).remainder_(d)


def peft_balanced_group_ids(D: int, d: int, seed: int) -> torch.Tensor:
    """Group ids of peft's Uni-LoRA index assignment for D positions and d groups, as int64 (all D at once).

    Each id 0..d-1 appears floor(D / d) times, D mod d distinct ids (drawn without replacement) once more, and
    the whole list is shuffled: both draws by ``numpy.random.default_rng(seed)``, in that order.
    Taught in notebooks/07_bring_your_own_adapter.ipynb, section "peft's Uni-LoRA".
    """
    rng = np.random.default_rng(seed % (1 << 64))
    q, rem = divmod(D, d)
    ids = np.repeat(np.arange(d, dtype=np.int64), q)
    if rem:
        ids = np.concatenate([ids, rng.choice(d, size=rem, replace=False).astype(np.int64)])
    rng.shuffle(ids)
    return torch.from_numpy(ids)


def _as_int64(v: int) -> int:
    """The signed int64 with the bits of the uint64 ``v``."""
    return v - (1 << 64) if v >= (1 << 63) else v


class PartitionProjection(nn.Module):
    """Sparse isometric projection P in R^{D x d} (one nonzero per row, columns scaled 1/sqrt(n_j)).

    Shapes: ``P(theta)`` maps (d,) -> (D,); ``P.adjoint(v)`` maps (D,) -> (d,).
    State: ``counts`` (d,) int64 always; group ids (D,) int32 for balanced / multinomial / peft-balanced
    (built lazily, regenerable from the seed), none for hashed / stateless.
    Taught in notebooks/01_isometric_partition.ipynb, section "1 · Ground truth: D = 12 weights, d = 3 parameters".
    """

    def __init__(self, D: int, d: int, seed: int = 0, assignment: str = "balanced",
                 hash_chunk: int = 1 << 24, allow_empty: bool = False):
        super().__init__()
        D = as_positive_int(D, "D")
        d = as_positive_int(d, "d", f" (the number of trainable parameters; choose 1 <= d <= D={D:,})")
        if d > D:
            raise ConfigError(f"d={d:,} exceeds D={D:,} weights to adapt; choose d <= {D:,}")
        if assignment not in ASSIGNMENTS:
            raise ConfigError(f"unknown assignment {assignment!r}; choose one of {', '.join(ASSIGNMENTS)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            try:
                seed = operator.index(seed)
            except TypeError:
                raise ConfigError(f"seed must be an integer, got {seed!r}") from None
        self.D, self.d, self.seed, self.assignment = D, d, int(seed), assignment
        self.hash_chunk = int(hash_chunk)
        self.allow_empty = bool(allow_empty)
        self.register_buffer("_ids", None, persistent=False)
        if assignment == "balanced":
            q, rem = divmod(D, d)  # group j holds the k < D with k = j (mod d): q or q + 1 of them
            counts = torch.full((d,), q, dtype=torch.int64)
            counts[:rem] += 1
        elif assignment in COMPUTED:
            counts = torch.zeros(d, dtype=torch.int64)
            for a in range(0, D, self.hash_chunk):
                counts += torch.bincount(self._computed_ids(a, min(D, a + self.hash_chunk)), minlength=d)
        else:
            self._ids = self._build_ids()
            counts = torch.bincount(self._ids.long(), minlength=d)
        empty = int((counts == 0).sum())
        if empty and not self.allow_empty:
            raise ConfigError(
                f"{assignment} assignment left {empty:,} of d={d:,} groups empty (D={D:,}), so P^T P != I "
                f"and those parameters would never be trained; use assignment='balanced' or a smaller d "
                f"(d <= D/10 makes empty groups unlikely)"
            )
        self.register_buffer("counts", counts, persistent=False)

    # ----------------------------------------------------------------------------------- ids
    def _build_ids(self) -> torch.Tensor:
        if self.assignment == "peft-balanced":
            return peft_balanced_group_ids(self.D, self.d, self.seed).to(torch.int32)
        g = torch.Generator().manual_seed(self.seed % (1 << 64))  # any int seed, as for hashed
        if self.assignment == "balanced":
            # the same permutation as randperm(D) (int64), drawn in int32 and reduced in place: 4 B per weight at
            # peak instead of ~16 B (int64 permutation + int64 remainder + int32 copy); benchmarks/id_memory.py
            if self.D < (1 << 31):
                return torch.randperm(self.D, generator=g, dtype=torch.int32).remainder_(self.d)
            perm = torch.randperm(self.D, generator=g)
            return perm.remainder_(self.d).to(torch.int32)
        else:
            ids = torch.randint(0, self.d, (self.D,), generator=g)
        return ids.to(torch.int32)

    def _computed_ids(self, start: int, stop: int, device=None) -> torch.Tensor:
        rule = hashed_group_ids if self.assignment == "hashed" else stateless_group_ids
        return rule(self.seed, start, stop, self.d, device=device)

    @property
    def stores_ids(self) -> bool:
        """True if group ids are kept in memory (balanced, multinomial, peft-balanced); False for hashed and
        stateless."""
        return self.assignment not in COMPUTED

    def index(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Group ids of positions [start, stop) as an index tensor (int32 view or fresh int64)."""
        stop = self.D if stop is None else stop
        if self.assignment in COMPUTED:
            return self._computed_ids(start, stop, device=self.counts.device)
        if self._ids is None:
            # built outside any torch.func transform: otherwise the cache would hold a transform-wrapped
            # tensor that breaks every later call ("escaped?") or hits vmap's randomness check
            with getattr(torch._C, "_DisableFuncTorch", contextlib.nullcontext)():
                self._ids = self._build_ids().to(self.counts.device)
        return self._ids[start:stop]

    fused_chunk = 1 << 17   # positions per hashed chunk on a CPU (index_chunks); 512 KiB of float32

    def index_chunks(self, start: int = 0, stop: int | None = None, chunk: int | None = None):
        """Yield ``(i, j, ids)``: the group ids of positions [start + i, start + j), covering [start, stop).

        Materialised assignments yield one view of the stored ids. Hashed (and stateless) ids are generated ``chunk``
        (default ``fused_chunk``) positions at a time on a CPU, so that the hash and whatever consumes the ids
        stay in cache (about twice as fast as hashing a whole layer first), and in one piece on a GPU.
        """
        stop = self.D if stop is None else stop
        chunk = self.fused_chunk if chunk is None else int(chunk)
        if self.assignment not in COMPUTED or self.counts.device.type != "cpu":
            yield 0, stop - start, self.index(start, stop)
            return
        for i in range(0, stop - start, chunk):
            j = min(stop - start, i + chunk)
            yield i, j, self._computed_ids(start + i, start + j)

    def group_ids(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Return g(i) for positions [start, stop) as a LongTensor (default: all D positions)."""
        return self.index(start, stop).long()

    # ------------------------------------------------------------------------------- algebra
    @property
    def scales(self) -> torch.Tensor:
        """Column scales 1/sqrt(n_j), shape (d,), float64 (0 for an empty group: its column of P is zero)."""
        n = self.counts.double()
        return torch.where(n > 0, n.rsqrt(), torch.zeros_like(n))

    def scaled(self, theta: torch.Tensor) -> torch.Tensor:
        """theta_j / sqrt(n_j) in theta's dtype, shape (d,)."""
        self._check_theta(theta)
        return theta * self.scales.to(theta.dtype)

    def forward(self, theta: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Return (P theta)[start:stop]; default the whole (D,) vector. Differentiable in theta."""
        return self.scaled(theta).index_select(0, self.index(start, stop))

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """Return P^T v, shape (d,): group sums of v scaled by 1/sqrt(n_j)."""
        if v.shape != (self.D,):
            raise ConfigError(f"adjoint expects a vector of shape ({self.D},), got {tuple(v.shape)}")
        out = v.new_zeros(self.d)
        for a in range(0, self.D, self.hash_chunk):
            b = min(self.D, a + self.hash_chunk)
            out = out.index_add(0, self.index(a, b), v[a:b])
        return out * self.scales.to(v.dtype)

    def to_dense(self, dtype=torch.float64, max_bytes: int = DEFAULT_DENSE_LIMIT_BYTES) -> torch.Tensor:
        """Return P as a dense (D, d) matrix, for small sizes only (teaching and tests)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = self.D * self.d * itemsize
        if need > max_bytes:
            raise ConfigError(
                f"to_dense would allocate a {self.D:,} x {self.d:,} matrix ({need / 2**30:.2f} GiB > "
                f"limit {max_bytes / 2**30:.2f} GiB); use P(theta) / P.adjoint(v) instead, or pass a "
                f"larger max_bytes if you really have the memory"
            )
        P = torch.zeros(self.D, self.d, dtype=dtype, device=self.counts.device)
        rows = torch.arange(self.D, device=self.counts.device)
        ids = self.group_ids()
        P[rows, ids] = self.scales.to(dtype)[ids]
        return P

    def _check_theta(self, theta: torch.Tensor) -> None:
        if theta.dim() != 1 or theta.shape[0] != self.d:
            raise ConfigError(f"theta must have shape ({self.d},), got {tuple(theta.shape)}")

    def extra_repr(self) -> str:
        return (f"D={self.D:,}, d={self.d:,}, seed={self.seed}, assignment={self.assignment!r}"
                + (", allow_empty=True" if self.allow_empty else ""))
