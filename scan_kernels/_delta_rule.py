"""Delta rule / gated DeltaNet: chunkwise-parallel XLA form (WY/UT representation) and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

Chunk form (DeltaNet, Yang et al. 2024, §3.2 and App. B; gated DeltaNet §3): inside a chunk with
entering state S⁰ and local cumulative log-gate γ, the per-token deltas ``u_r = β_r (v_r − exp(g_r) S_{r-1}ᵀ k_r)``
solve a unit lower-triangular system (the UT transform):

    (I + A) [Ũ | W] = [β ⊙ V | β ⊙ exp(γ) ⊙ K],     A_ri = β_r exp(γ_r − γ_i) k_rᵀ k_i   (r > i)
    U = Ũ − W S⁰
    O = (Q ⊙ exp(γ)) S⁰ + (Q Kᵀ ⊙ exp(γ_r − γ_i) ⊙ [r ≥ i]) U
    S_end = M S⁰ + Δ,   M = exp(γ_C) I − K̂ᵀ W,   Δ = K̂ᵀ Ũ,   K̂ = K ⊙ exp(γ_C − γ)

so the only sequential part is ``S_n = M_n S_{n-1} + Δ_n`` over chunks, run by the scan core's
``dense_linear_scan`` (a K×K transition per chunk and head). All exponents are ≤ 0.
(I + A)⁻¹ comes from log2(C) rounds of batched matmuls (``unit_lower_inverse``), once per chunk; it is
kept (``T``, C×C per chunk) for the output pass and the backward. Gradients: ``custom_vjp`` — the state
cotangents ``h_n = M_nᵀ h_{n+1} + (∂O_n/∂S⁰)ᵀ dO_n`` run backwards through ``dense_linear_scan``, then each
group of chunks is differentiated on its own (``jax.vjp``; the solve's gradient from T, ``apply_inverse``).
Residuals O(B·L·H·(K+V) + NC·B·H·(K·V + C²)); no per-token state is formed.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from scan_kernels._backend import resolve_backend
from scan_kernels._chunk_utils import (
    causal_masks,
    entering_states,
    for_chunk_groups,
    leaving_cotangents,
    pad_tokens,
    read_chunks,
    scan_state_columns_dense,
    segment_decay,
    unit_lower_inverse,
    write_chunks,
    write_states,
)
from scan_kernels._delta_rule_reference import delta_rule_reference
from scan_kernels._fast_weight_checks import check_beta, check_chunk_size, check_log_decay, check_qkv, check_state

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)
# Chunks per step of the sequential loop over chunk groups (bounds the O(C²) temporaries).
CHUNK_GROUP = 16


def _heads_first(x):
    """``(B, n, C, H, ...)`` -> ``(B, n, H, C, ...)`` for per-token scalars (β, γ)."""
    return jnp.swapaxes(x, 2, 3)


@jax.custom_vjp
def apply_inverse(T, A, rhs):
    """``X = (I + A)⁻¹ rhs`` given ``T = (I + A)⁻¹`` ``(B, n, H, C, C)``; ``rhs (B, n, C, H, F)`` -> ``(B, n, H, C, F)``.

    Its gradient uses T instead of differentiating the inversion: ``d rhs = Tᵀ dX``, ``dA = −(Tᵀ dX) Xᵀ``.
    """
    return _mm("bnhij,bnjhf->bnhif", T, rhs)


def _apply_inverse_fwd(T, A, rhs):
    X = apply_inverse(T, A, rhs)
    return X, (T, X)


def _apply_inverse_bwd(res, dX):
    T, X = res
    drhs = _mm("bnhij,bnhif->bnhjf", T, dX)  # (B, n, H, C, F)
    dA = -_mm("bnhjf,bnhif->bnhji", drhs, X)
    return jnp.zeros_like(T), dA, jnp.swapaxes(drhs, 2, 3)


apply_inverse.defvjp(_apply_inverse_fwd, _apply_inverse_bwd)


def ut_system(kc, vc, bc, gam):
    """The chunk's UT system ``(I + A) [Ũ | W] = rhs``: ``A (B, n, H, C, C)`` (strictly lower) and
    ``rhs = β ⊙ [V | exp(γ) ⊙ K]`` ``(B, n, C, H, V + K)``. ``kc (B, n, C, H, K)``, ``bc (B, n, C, H)``,
    ``gam (B, n, H, C)`` cumulative log-gates or None."""
    _, strict = causal_masks(kc.shape[2])
    b = _heads_first(bc)
    kk = _mm("bnihk,bnjhk->bnhij", kc, kc)
    if gam is None:
        A, kw = jnp.where(strict, b[..., :, None] * kk, 0.0), kc
    else:
        A, kw = b[..., :, None] * kk * segment_decay(gam, strict), kc * _heads_first(jnp.exp(gam))[..., None]
    return A, bc[..., None] * jnp.concatenate([vc, kw], axis=-1)


def _decayed_keys(kc, gam):
    """``K̂ = K ⊙ exp(γ_C − γ)`` ``(B, n, C, H, K)`` and ``exp(γ_C)`` ``(B, H, n, 1, 1)`` (None without gates)."""
    if gam is None:
        return kc, None
    last = gam[..., -1:]  # (B, n, H, 1)
    return kc * _heads_first(jnp.exp(last - gam))[..., None], jnp.swapaxes(jnp.exp(last), 1, 2)[..., None]


def chunk_transition(kc, X, gam):
    """``M = exp(γ_C) I − K̂ᵀ W`` ``(B, H, n, K, K)`` and ``Δ = K̂ᵀ Ũ`` from ``X = [Ũ | W]``, columns first
    ``(V, B, H, n, K)`` (the layout of ``scan_state_columns_dense``)."""
    K = kc.shape[-1]
    V = X.shape[-1] - K
    khat, last = _decayed_keys(kc, gam)
    eye = jnp.eye(K, dtype=jnp.float32)[None, None, None]  # (1, 1, 1, K, K)
    ident = eye if last is None else last * eye  # exp(γ_C) I
    M = ident - _mm("bnchk,bnhcj->bhnkj", khat, X[..., V:])
    return M, _mm("bnchk,bnhcv->vbhnk", khat, X[..., :V])


def _output_terms(qc, kc, gam):
    """``P = Q Kᵀ ⊙ exp(γ_i − γ_j) ⊙ [i ≥ j]`` ``(B, n, H, C, C)`` and ``Q ⊙ exp(γ)`` ``(B, n, C, H, K)``."""
    incl, _ = causal_masks(qc.shape[2])
    qk = _mm("bnihk,bnjhk->bnhij", qc, kc)
    if gam is None:
        return jnp.where(incl, qk, 0.0), qc
    return qk * segment_decay(gam, incl), qc * _heads_first(jnp.exp(gam))[..., None]


def chunk_output(qc, kc, X, gam, s_prev):
    """``O = (Q ⊙ exp(γ)) S⁰ + P (Ũ − W S⁰)`` ``(B, n, C, H, V)`` and the leaving state
    ``exp(γ_C) S⁰ + K̂ᵀ (Ũ − W S⁰)`` ``(B, H, n, K, V)``; ``s_prev (B, H, n, K, V)`` the entering states."""
    K = kc.shape[-1]
    V = X.shape[-1] - K
    P, qd = _output_terms(qc, kc, gam)
    U = X[..., :V] - _mm("bnhck,bhnkv->bnhcv", X[..., V:], s_prev)  # (B, n, H, C, V)
    o = _mm("bnihk,bhnkv->bnihv", qd, s_prev) + _mm("bnhij,bnhjv->bnihv", P, U)
    khat, last = _decayed_keys(kc, gam)
    s_leave = _mm("bnchk,bnhcv->bhnkv", khat, U) + (s_prev if last is None else last * s_prev)
    return o, s_leave


def _read_T(Tbuf, start, n):
    return lax.dynamic_slice_in_dim(Tbuf, start, n, axis=1)


def _states_in(s_cols, s0, start, n):
    """Entering states ``(B, H, n, K, V)`` of chunks ``[start, start + n)`` from columns-first ``(V, B, H, NC, K)``."""
    return jnp.moveaxis(entering_states(s_cols, jnp.moveaxis(s0, -1, 0), start, n, axis=3), 0, -1)


def _cotangents_out(h_cols, d_final, start, n):
    return jnp.moveaxis(leaving_cotangents(h_cols, jnp.moveaxis(d_final, -1, 0), start, n, axis=3), 0, -1)


def _forward(q, k, v, beta, g, s0, C, group, scan_backend):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, end-of-chunk states ``(B, H, NC, K, V)``
    and the inverses ``T = (I + A)⁻¹`` ``(B, NC, H, C, C)`` of every chunk."""
    B, Lp, H, K = q.shape
    V = v.shape[-1]
    nc = Lp // C
    gates = lambda start, n: None if g is None else _heads_first(jnp.cumsum(read_chunks(g, start, n, C), axis=2))  # noqa: E731

    def transitions(start, n, bufs):
        Mb, Db, Tb = bufs
        kc, gam = read_chunks(k, start, n, C), gates(start, n)
        A, rhs = ut_system(kc, read_chunks(v, start, n, C), read_chunks(beta, start, n, C), gam)
        T = unit_lower_inverse(A)
        M, delta = chunk_transition(kc, _mm("bnhij,bnjhf->bnhif", T, rhs), gam)
        Db = lax.dynamic_update_slice_in_dim(Db, delta, start, 3)
        return write_states(Mb, M, start), Db, lax.dynamic_update_slice_in_dim(Tb, T, start, 1)

    bufs = (jnp.zeros((B, H, nc, K, K), jnp.float32), jnp.zeros((V, B, H, nc, K), jnp.float32),
            jnp.zeros((B, nc, H, C, C), jnp.float32))
    M, delta, Tbuf = for_chunk_groups(transitions, bufs, nc, group)
    s_end = scan_state_columns_dense(M, delta, jnp.moveaxis(s0, -1, 0), scan_backend)  # (V, B, H, NC, K)

    def output(start, n, buf):
        qc, kc, gam = read_chunks(q, start, n, C), read_chunks(k, start, n, C), gates(start, n)
        _, rhs = ut_system(kc, read_chunks(v, start, n, C), read_chunks(beta, start, n, C), gam)
        X = _mm("bnhij,bnjhf->bnhif", _read_T(Tbuf, start, n), rhs)
        o, _ = chunk_output(qc, kc, X, gam, _states_in(s_end, s0, start, n))
        return write_chunks(buf, o, start)

    return for_chunk_groups(output, jnp.zeros(v.shape, jnp.float32), nc, group), s_end, Tbuf


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(q, k, v, beta, g, s0, C, scan_backend):
    o, s_end, _ = _forward(q, k, v, beta, g, s0, C, CHUNK_GROUP, scan_backend)
    return o, jnp.moveaxis(s_end[:, :, :, -1], 0, -1)


def _chunked_fwd(q, k, v, beta, g, s0, C, scan_backend):
    o, s_end, Tbuf = _forward(q, k, v, beta, g, s0, C, CHUNK_GROUP, scan_backend)
    return (o, jnp.moveaxis(s_end[:, :, :, -1], 0, -1)), (q, k, v, beta, g, s0, s_end, Tbuf)


def _chunked_bwd(C, scan_backend, res, cts):
    """Chunkwise backward: state cotangents ``h_n = M_nᵀ h_{n+1} + (∂O_n/∂S⁰_n)ᵀ dO_n`` backwards through the
    scan core, then each chunk group differentiated on its own (``jax.vjp`` with the stored inverses T)
    given its entering state and the cotangent of its leaving state."""
    q, k, v, beta, g, s0, s_end, Tbuf = res
    do, d_final = cts
    B, Lp, H, K = q.shape
    V = v.shape[-1]
    nc, group = Lp // C, CHUNK_GROUP
    gates = lambda gc: None if gc is None else _heads_first(jnp.cumsum(gc, axis=2))  # noqa: E731
    gchunks = lambda start, n: None if g is None else read_chunks(g, start, n, C)  # noqa: E731

    def local(start, n, bufs):  # Mᵀ and (∂O/∂S⁰)ᵀ dO = (Q ⊙ exp(γ))ᵀ dO − Wᵀ Pᵀ dO per chunk
        Mb, Lb = bufs
        qc, kc, gam = read_chunks(q, start, n, C), read_chunks(k, start, n, C), gates(gchunks(start, n))
        _, rhs = ut_system(kc, read_chunks(v, start, n, C), read_chunks(beta, start, n, C), gam)
        X = _mm("bnhij,bnjhf->bnhif", _read_T(Tbuf, start, n), rhs)
        M, _ = chunk_transition(kc, X, gam)
        P, qd = _output_terms(qc, kc, gam)
        doc = read_chunks(do, start, n, C)
        ptdo = _mm("bnhij,bnihv->bnhjv", P, doc)
        loc = _mm("bnchk,bnchv->vbhnk", qd, doc) - _mm("bnhck,bnhcv->vbhnk", X[..., V:], ptdo)
        return write_states(Mb, jnp.swapaxes(M, -1, -2), start), lax.dynamic_update_slice_in_dim(Lb, loc, start, 3)

    bufs = (jnp.zeros((B, H, nc, K, K), jnp.float32), jnp.zeros(s_end.shape, jnp.float32))
    Mt, dloc = for_chunk_groups(local, bufs, nc, group)
    # cotangents of the entering states, columns first (V, B, H, NC, K)
    h = scan_state_columns_dense(Mt, dloc, jnp.moveaxis(d_final, -1, 0), scan_backend, reverse=True)

    def grads(start, n, bufs):
        s_prev, d_next = _states_in(s_end, s0, start, n), _cotangents_out(h, d_final, start, n)
        T = _read_T(Tbuf, start, n)

        def f(qc, kc, vc, bc, *gg):
            gam = gates(gg[0]) if gg else None
            A, rhs = ut_system(kc, vc, bc, gam)
            return chunk_output(qc, kc, apply_inverse(T, A, rhs), gam, s_prev)

        xs = tuple(read_chunks(x, start, n, C) for x in (q, k, v, beta) + (() if g is None else (g,)))
        _, vjp = jax.vjp(f, *xs)
        dxs = vjp((read_chunks(do, start, n, C), d_next))
        return tuple(write_chunks(b, d, start) for b, d in zip(bufs, dxs))

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v, beta) + (() if g is None else (g,)))
    bufs = for_chunk_groups(grads, bufs, nc, group, reverse=True)
    return (*bufs[:4], None if g is None else bufs[4], jnp.moveaxis(h[:, :, :, 0], 0, -1))


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@partial(jax.jit, static_argnames=("C", "scan_backend"))
def delta_rule_chunked(q, k, v, beta, log_decay, s0, C, scan_backend):
    """Chunked form (``custom_vjp``) in float32 on validated inputs; returns ``o (B, L, H, V)`` f32 and the final state."""
    L = q.shape[1]
    g = None if log_decay is None else pad_tokens(log_decay, C)
    o, final = _chunked(*(pad_tokens(x, C) for x in (q, k, v, beta)), g, s0, C, scan_backend)
    return o[:, :L], final


def delta_rule(q, k, v, beta, *, log_decay=None, initial_state=None, chunk_size=64, backend=None):
    """Delta rule / gated DeltaNet: ``S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t``.

    Args:
      q, k: ``(B, L, H, K)`` (keys usually L2-normalised by the layer); v: ``(B, L, H, V)`` —
        float32 or bfloat16 (one dtype).
      beta: ``(B, L, H)`` writing strength in (0, 2).
      log_decay: None or ``(B, L, H)``, g ≤ 0 (gated DeltaNet).
      initial_state: ``(B, H, K, V)``; default zeros.
      chunk_size: C for the chunked backends (a power of two for ``"pallas"``).
      backend: None (auto) | "reference" | "xla" | "pallas".

    Returns:
      ``o (B, L, H, V)`` in the inputs' dtype and the final state ``(B, H, K, V)`` float32.
    """
    backend = resolve_backend(backend)
    B, L, H, K, V = check_qkv(q, k, v)
    check_beta(beta, B, L, H)
    kind = check_log_decay(log_decay, B, L, H, K, per_key_ok=False)
    check_state(initial_state, B, H, K, V)
    C = check_chunk_size(chunk_size, power_of_two=backend == "pallas")
    if backend == "reference":
        return delta_rule_reference(q, k, v, beta, log_decay=log_decay, initial_state=initial_state)
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    g = None if kind == "none" else log_decay
    if backend == "pallas":
        from scan_kernels._delta_rule_pallas import delta_rule_pallas

        o, final = delta_rule_pallas(q, k, v, beta, g, s0, chunk_size=C)
    else:
        o, final = delta_rule_chunked(q, k, v, beta, g, s0, min(C, L), "xla")
    return o.astype(v.dtype), final
