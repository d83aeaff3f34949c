"""Layout and masking helpers shared by the fast-weight Pallas kernels.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC chunks ·
Lp = NC·C padded length · Kp, Vp padded feature dims.

Kernels see one chunk of one (batch, head) pair: rows ``(C, Kp)`` / ``(C, Vp)`` and a state tile
``(Kp, Vp)``, on a grid ``(B·H, NC)``. Triton lowering wants power-of-two block shapes (and ≥ 16 for
``dot``), so features are zero-padded to ``next_pow2(·) ≥ 16`` and time to a multiple of C; zero keys,
values, gates and β leave the state unchanged, so the padding is exact. Inside kernels we use only
what Triton lowers (docs/backends.md §Pallas lowering): ref loads/stores, ``fori_loop``, forward ``cumsum``,
2-D ``dot``, ``iota`` masks and reductions — no value slicing.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from algornn.scan_kernels._common.chunk_utils import num_chunks

F32 = jnp.float32
HIGHEST = lax.Precision.HIGHEST


def next_pow2(n: int, minimum: int = 16) -> int:
    p = minimum
    while p < n:
        p *= 2
    return p


def pallas_chunk(C: int, L: int) -> int:
    """Chunk actually used: ``C`` (a power of two), shrunk for short sequences but kept ≥ min(C, 16)."""
    return max(min(C, next_pow2(L, 1)), min(C, 16))


def to_rows(x, Lp: int, Fp: int):
    """``(B, L, H, F)`` -> ``(B·H, Lp, Fp)`` float32, zero-padded in time and features."""
    B, L, H, F = x.shape
    x = x.astype(F32).transpose(0, 2, 1, 3).reshape(B * H, L, F)
    return jnp.pad(x, ((0, 0), (0, Lp - L), (0, Fp - F)))


def gate_rows(g, Lp: int):
    """Scalar gates ``(B, L, H)`` -> ``(B·H, Lp, 1)`` (zero-padded: exp(0) = 1 on padded steps)."""
    return to_rows(g[..., None], Lp, 1)


def from_rows(x, B: int, H: int, L: int, F: int):
    """``(B·H, Lp, Fp)`` -> ``(B, L, H, F)``."""
    return x[:, :L, :F].reshape(B, H, L, F).transpose(0, 2, 1, 3)


def pad_state(s, Kp: int, Vp: int):
    """``(B, H, K, V)`` -> ``(B·H, 1, Kp, Vp)`` (a singleton "head" axis for the chunk-state scans)."""
    B, H, K, V = s.shape
    s = jnp.pad(s.astype(F32), ((0, 0), (0, 0), (0, Kp - K), (0, Vp - V)))
    return s.reshape(B * H, 1, Kp, Vp)


def row_spec(C: int, F: int):
    """One chunk of rows of one (batch, head): block ``(C, F)`` of a ``(B·H, Lp, F)`` array."""
    return pl.BlockSpec((None, C, F), lambda i, n: (i, n, 0))


def tile_spec(R: int, F: int):
    """One chunk's ``(R, F)`` tile of a ``(B·H, NC, R, F)`` array."""
    return pl.BlockSpec((None, None, R, F), lambda i, n: (i, n, 0, 0))


def grid_of(BH: int, Lp: int, C: int):
    return (BH, num_chunks(Lp, C))


def causal(C: int, strict: bool = False):
    """``(C, C)`` mask i ≥ j (or i > j) built from iotas (no value slicing)."""
    i = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    j = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    return i > j if strict else i >= j


def decay_matrix(gam_col, mask):
    """``exp(γ_i − γ_j)`` on ``mask``, else 0, from a cumulative log-gate column ``(C, 1)``."""
    diff = gam_col - jnp.transpose(gam_col)  # (C, 1) - (1, C) -> (C, C)
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def dot(a, b):
    return jnp.dot(a, b, precision=HIGHEST, preferred_element_type=F32)


def dot_tn(a, b):
    """``aᵀ b`` for 2-D tiles."""
    return jnp.dot(jnp.transpose(a), b, precision=HIGHEST, preferred_element_type=F32)


def dot_nt(a, b):
    """``a bᵀ`` for 2-D tiles."""
    return jnp.dot(a, jnp.transpose(b), precision=HIGHEST, preferred_element_type=F32)
