"""Chunking helpers for the chunkwise-parallel fast-weight recurrences.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

* ``pad_tokens`` pads the time axis with zeros to a multiple of C; zero keys/values (and zero log-gates,
  zero β) make the padded steps the identity map on the state, so the final state is exact.
  ``for_chunk_groups`` walks groups of chunks in sequence, reading (``read_chunks``) and writing
  (``write_chunks``) slices of the ``(B, L, H, ...)`` arrays in place.
* Gates are cumulative log-sums *inside* each chunk (Mamba-2 SSD "segsum", GLA §4): every exponent
  used is a difference γ_i − γ_j with i ≥ j (or γ_C − γ_j), hence ≤ 0 — nothing overflows, even with
  g = −20 per step over long sequences.
* The chunk-to-chunk state recurrences are handed to the scan core by each op's ``chunk_states`` module
  (``linear_scan`` for linear attention's diagonal chunk transition, ``dense_linear_scan`` for the delta
  rule's dense K×K transition); this module imports no op.
"""

import math

import jax.numpy as jnp
from jax import lax

# The forward without differentiation (``_forward_only`` of linear_attention and delta_rule) works on chunks of at
# most FORWARD_CHUNK tokens, FORWARD_STEP tokens per loop step. At B=1, H=4, K=V=64, L=4096 (float32, 2-core CPU,
# jax 0.10.2; ``fast_weights`` benchmark) steps of 2 chunks of 16 took 7.1 ms (linear attention) and 13.9 ms (delta
# rule), against 8.7-9.5 and 17.2 ms with 4 chunks of 32 and 9.8 / 17 ms with 32 chunks of 32: a small step's terms
# stay in cache, and C = 16 has the fewest products per token (the C² terms cost ∝ C per token, the state terms a
# constant 4KV (linear attention) or 6KV (delta rule)).
FORWARD_CHUNK = 16
FORWARD_STEP = 32


def chunk_cumsum(x, axis: int, reverse: bool = False):
    """Cumulative sum of ``x`` along a (short) chunk axis, as a product with a triangle of ones (``reverse``: sums
    from the end). XLA CPU lowers ``jnp.cumsum`` to a reduce-window doing O(C) adds per element, and
    ``lax.associative_scan`` to chains of pads, slices and concatenations: inside the per-key delta rule's backward
    both cost more than this matmul. The last two axes take plain (batched) matmuls, which XLA runs without the
    transposes an einsum over a middle axis brings (per-key delta rule fwd+bwd at L = 4096: 110 -> 100 ms)."""
    axis = axis % x.ndim
    if axis < x.ndim - 2:  # other axes: moved last
        return jnp.moveaxis(chunk_cumsum(jnp.moveaxis(x, axis, -1), -1, reverse), -1, axis)
    n = x.shape[axis]
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    tri = (j >= i if reverse else j <= i).astype(x.dtype)  # out_i = Σ_j tri_ij x_j
    if axis == x.ndim - 1:  # (..., C): one (rows, C) · (C, C) matmul
        rows = math.prod(x.shape[:-1])
        return jnp.matmul(x.reshape(rows, n), tri.T, precision=lax.Precision.HIGHEST).reshape(x.shape)
    tri = jnp.broadcast_to(tri, x.shape[:-2] + (n, n))  # (..., C, F): a batched matmul, the triangle broadcast
    return jnp.matmul(tri, x, precision=lax.Precision.HIGHEST)


def num_chunks(L: int, C: int) -> int:
    return -(-L // C)


# ``exp(γ_i − γ_j) = exp(γ_i − μ) · exp(μ − γ_j)`` (μ the midpoint of the chunk's γ range) turns decayed scores
# into one plain matmul of decayed queries against decayed keys, with no (C, C) exponentials. Both factors stay within
# e^{±FACTOR_LIMIT} where every |γ − μ| ≤ FACTOR_LIMIT (e^40 ≈ 2e17, far from float32 overflow, e^−40 far above its
# smallest normal); callers check that bound at run time and take the exact ``segment_decay`` form otherwise.
FACTOR_LIMIT = 40.0


def causal_masks(C: int):
    """``(C, C)`` boolean masks: inclusive (i ≥ j) and strict (i > j) lower triangles."""
    i = jnp.arange(C)[:, None]
    j = jnp.arange(C)[None, :]
    return i >= j, i > j


def segment_decay(gam, mask):
    """``exp(γ_i − γ_j)`` where ``mask`` holds (i ≥ j), else 0. ``gam (..., C)`` -> ``(..., C, C)``.

    The masked-out (i < j) exponents are positive and can be huge; they are replaced by 0 *before*
    the exponential so that neither the value nor its gradient sees an inf.
    """
    diff = gam[..., :, None] - gam[..., None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def factor_midpoint(gam):
    """``(μ (..., 1), ok)``: the midpoint μ of each row of cumulative log-gates ``gam (..., C)`` and whether every
    ``|γ − μ| ≤ FACTOR_LIMIT`` (one boolean for the whole array; False on inf / NaN), so that
    ``exp(γ_i − γ_j) = exp(γ_i − μ) · exp(μ − γ_j)`` neither overflows nor underflows."""
    mid = 0.5 * (jnp.max(gam, axis=-1, keepdims=True) + jnp.min(gam, axis=-1, keepdims=True))
    return mid, jnp.max(jnp.abs(gam - mid)) <= FACTOR_LIMIT


def unit_lower_inverse(A, block: int = 16):
    """``(I + A)⁻¹`` for strictly lower-triangular ``A (..., C, C)`` (C padded to a power of two).

    The ``block × block`` diagonal blocks first, as products of Neumann factors of the nilpotent ``N = −A_ii``:
    ``(I + A_ii)⁻¹ = (I + N)(I + N²)(I + N⁴)…`` (2·log2(block) − 2 batched matmuls); then diagonal blocks are
    merged pairwise, ``[[T11, 0], [A21, T22]]⁻¹ = [[T11⁻¹, 0], [−T22⁻¹ A21 T11⁻¹, T22⁻¹]]`` (the block form of
    forward substitution, as in fla's ``solve_tril``). On the 2-core CPU this takes 4.9 ms for 256 chunks
    of C = 64 in groups of 32, against 8.0 ms for pairwise merging from 1×1 blocks (the tiny early rounds
    cost more than their arithmetic).
    """
    hi = lax.Precision.HIGHEST
    lead, C = A.shape[:-2], A.shape[-1]
    # One flat batch axis for every matmul: with several batch axes (e.g. (2, 8, 2, 4) blocks) XLA's algebraic
    # simplifier (jaxlib 0.10.2 and 0.11.2) aborted the process on a transpose folded into these dots.
    A = A.reshape((-1, C, C))
    Cp = 1
    while Cp < C:
        Cp *= 2
    if Cp != C:
        A = jnp.pad(A, [(0, 0), (0, Cp - C), (0, Cp - C)])
    mm = lambda x, y: jnp.einsum("bij,bjk->bik", x, y, precision=hi)  # noqa: E731
    s = min(block, Cp)
    nb = Cp // s
    N = -jnp.moveaxis(jnp.diagonal(A.reshape((-1, nb, s, nb, s)), axis1=-4, axis2=-2), -1, -3).reshape(-1, s, s)
    T, Nk, k = jnp.eye(s, dtype=A.dtype)[None] + N, N, 1
    while 2 * k < s:  # T ← T (I + N^{2k})
        Nk = mm(Nk, Nk)
        T = T + mm(T, Nk)
        k *= 2
    T = T.reshape(-1, nb, s, s)
    while s < Cp:
        nb = Cp // (2 * s)
        Ab = jnp.diagonal(A.reshape((-1, nb, 2 * s, nb, 2 * s)), axis1=-4, axis2=-2)  # (b, 2s, 2s, nb)
        A21 = jnp.moveaxis(Ab, -1, -3)[..., s:, :s].reshape(-1, s, s)  # (b·nb, s, s)
        T11, T22 = T[:, 0::2], T[:, 1::2]  # (b, nb, s, s)
        X = -mm(mm(T22.reshape(-1, s, s), A21), T11.reshape(-1, s, s)).reshape(T11.shape)
        top = jnp.concatenate([T11, jnp.zeros_like(T11)], axis=-1)
        T = jnp.concatenate([top, jnp.concatenate([X, T22], axis=-1)], axis=-2)  # (b, nb, 2s, 2s)
        s *= 2
    return T[:, 0, :C, :C].reshape(lead + (C, C))


def pad_tokens(x, C: int):
    """``(B, L, H, *F)`` -> ``(B, NC·C, H, *F)`` float32, zero-padded in time (no copy when C divides L)."""
    pad = num_chunks(x.shape[1], C) * C - x.shape[1]
    x = x.astype(jnp.float32)
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x


def read_chunks(x, start, n: int, C: int):
    """Chunks ``[start, start + n)`` of a token array ``(B, NC·C, H, *F)`` as ``(B, n, C, H, *F)`` (a slice)."""
    y = lax.dynamic_slice_in_dim(x, start * C, n * C, axis=1)
    return y.reshape((y.shape[0], n, C) + y.shape[2:])


def write_chunks(buf, y, start):
    """Write ``y (B, n, C, H, *F)`` into the token buffer ``buf (B, NC·C, H, *F)`` at chunk ``start`` (in place)."""
    n, C = y.shape[1:3]
    y = y.reshape((y.shape[0], n * C) + y.shape[3:])
    return lax.dynamic_update_slice_in_dim(buf, y.astype(buf.dtype), start * C, axis=1)


def read_chunks_heads_first(x, start, n: int, C: int):
    """Chunks ``[start, start + n)`` of ``(B, NC·C, H, *F)`` as ``(n, B·H, C, *F)``: a slice, transposed in cache
    (heads and batch rows become one leading batch axis of the chunk matmuls)."""
    y = read_chunks(x, start, n, C)  # (B, n, C, H, *F)
    B, H = y.shape[0], y.shape[3]
    y = jnp.transpose(y, (1, 0, 3, 2) + tuple(range(4, y.ndim)))
    return y.reshape((n, B * H, C) + y.shape[4:])


def write_chunks_heads_first(buf, y, start):
    """Write ``y (n, B·H, C, *F)`` into the token buffer ``buf (B, NC·C, H, *F)`` at chunk ``start`` (in place)."""
    B, H = buf.shape[0], buf.shape[2]
    n, _, C = y.shape[:3]
    y = y.reshape((n, B, H, C) + y.shape[3:])
    return write_chunks(buf, jnp.transpose(y, (1, 0, 3, 2) + tuple(range(4, y.ndim))), start)


def write_states(buf, y, start):
    return lax.dynamic_update_slice_in_dim(buf, y.astype(buf.dtype), start, axis=2)


def entering_states(s_end, s0, start, n: int):
    """States entering chunks ``[start, start + n)``: ``(S_{start-1}, ..., S_{start+n-2})`` with ``S_{-1} = s0``;
    ``s_end (B, H, NC, K, V)`` end-of-chunk states, ``s0 (B, H, K, V)``; returns ``(B, H, n, K, V)``."""
    first = jnp.where(start == 0, s0, lax.dynamic_index_in_dim(s_end, jnp.maximum(start - 1, 0), 2, False))
    rest = lax.dynamic_slice_in_dim(s_end, start, n - 1, axis=2) if n > 1 else None
    first = first[:, :, None]
    return first if rest is None else jnp.concatenate([first, rest], axis=2)


def leaving_cotangents(h, d_final, start, n: int):
    """Cotangents of the states *leaving* chunks ``[start, start + n)``: ``(h_{start+1}, ..., h_{start+n})``
    with ``h_{NC} = d_final``, where ``h (B, H, NC, K, V)`` are the cotangents of the entering states."""
    nc = h.shape[2]
    last = jnp.where(start + n >= nc, d_final, lax.dynamic_index_in_dim(h, jnp.minimum(start + n, nc - 1), 2, False))
    rest = lax.dynamic_slice_in_dim(h, start + 1, n - 1, axis=2) if n > 1 else None
    last = last[:, :, None]
    return last if rest is None else jnp.concatenate([rest, last], axis=2)


def for_chunk_groups(body, carry, nc: int, group: int, reverse: bool = False):
    """``carry = body(start, n, carry)`` over the chunk groups ``[start, start + n)`` that tile ``0..nc-1``
    (``n = group``, a shorter static tail last), in sequence: a ``fori_loop`` over the full groups.

    Inputs are read and outputs written by slices of whole buffers (``read_chunks`` / ``write_chunks``),
    so the O(C²) intra-chunk temporaries scale with the group, and no transposed copy of an input, an
    output or a gradient is ever made — the "fused chunk" memory profile with batched matmuls inside a group.
    """
    n_full, tail = divmod(nc, group)

    def full(carry):
        if n_full == 0:
            return carry
        step = lambda i, c: body((n_full - 1 - i if reverse else i) * group, group, c)  # noqa: E731
        return lax.fori_loop(0, n_full, step, carry)

    if reverse and tail:
        carry = body(n_full * group, tail, carry)
    carry = full(carry)
    if not reverse and tail:
        carry = body(n_full * group, tail, carry)
    return carry


def previous_states(s_end, s0):
    """States at the *start* of each chunk: ``(s0, S_0, ..., S_{NC-2})``, shape ``(B, H, NC, K, V)``."""
    return jnp.concatenate([s0[:, :, None], s_end[:, :, :-1]], axis=2)
