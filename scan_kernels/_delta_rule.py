"""Delta rule / gated DeltaNet: chunkwise-parallel XLA form (WY/UT representation) and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

Chunk form (DeltaNet, Yang et al. 2024, §3.2 and App. B; gated DeltaNet §3): inside a chunk with
entering state S⁰ and local cumulative log-gate γ, the per-token deltas ``u_r = β_r (v_r − exp(g_r) S_{r-1}ᵀ k_r)``
solve a unit lower-triangular system (the UT transform), ``T = (I + A)⁻¹``:

    Ũ = T (β ⊙ V),   W = T (β ⊙ exp(γ) ⊙ K),      A_ri = β_r exp(γ_r − γ_i) k_rᵀ k_i   (r > i)
    U = Ũ − W S⁰,    O = (Q ⊙ exp(γ)) S⁰ + P U = P Ũ + Q' S⁰
    P = Q Kᵀ ⊙ exp(γ_r − γ_i) ⊙ [r ≥ i],   Q' = Q ⊙ exp(γ) − P W
    S_end = M S⁰ + Δ,   M = exp(γ_C) I − K̂ᵀ W,   Δ = K̂ᵀ Ũ,   K̂ = K ⊙ exp(γ_C − γ)

All exponents are ≤ 0. One loop over groups of ``CHUNK_GROUP`` chunks (``for_chunk_groups``) does all a
group needs: its chunk terms (heads as a batch dim), the recurrence ``S_n = M_n S_{n-1} + Δ_n`` over its
chunks through the scan core's ``dense_linear_scan`` (entered with the state the previous group left),
and its outputs. ``T`` comes from XLA's batched triangular solve (``unit_lower_inverse``), once per chunk,
and is kept with the entering states for the backward. Gradients: ``custom_vjp`` with a closed-form chunk
backward (``chunk_grads``), groups in reverse: the state cotangents ``h_n = M_nᵀ h_{n+1} + Q'_nᵀ dO_n`` run
over the group through ``dense_linear_scan``, then each chunk's input gradients follow, the solve's from T
(``d(β V) = Tᵀ dŨ``, ``dA = −(Tᵀ dŨ) Ũᵀ − (Tᵀ dW) Wᵀ``). Residuals O(B·L·H·(K+V) + NC·B·H·(K·V + C²));
no per-token state is formed.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from scan_kernels._backend import resolve_backend
from scan_kernels._chunk_utils import (
    causal_masks,
    for_chunk_groups,
    pad_tokens,
    read_chunks,
    scan_state_columns_dense,
    segment_decay,
    unit_lower_inverse,
    write_chunks,
)
from scan_kernels._delta_rule_reference import delta_rule_reference
from scan_kernels._fast_weight_checks import check_beta, check_chunk_size, check_log_decay, check_qkv, check_state

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)
# Chunks per step of the loop over chunk groups (bounds the O(C²) temporaries). 8 keeps a group's terms in
# cache: fwd+bwd at L=4096 on the 2-core CPU took 93 / 86 / 103 / 115 ms with 4 / 8 / 16 / 32.
CHUNK_GROUP = 8


def _read(x, start, n, C):
    """Chunks ``[start, start + n)`` of ``(B, NC·C, H, *F)`` heads first: ``(B, n, H, C, *F)``."""
    return jnp.swapaxes(read_chunks(x, start, n, C), 2, 3)


def _write(buf, y, start):
    """Write ``y (B, n, H, C, *F)`` into the token buffer ``buf (B, NC·C, H, *F)`` at chunk ``start``."""
    return write_chunks(buf, jnp.swapaxes(y, 2, 3), start)


def _read_cols(x, start, n):
    """Per-chunk columns-first ``(V, B, H, NC, K)`` -> chunks ``[start, start + n)``."""
    return lax.dynamic_slice_in_dim(x, start, n, axis=3)


def _write_cols(buf, y, start):
    return lax.dynamic_update_slice_in_dim(buf, y, start, axis=3)


def _inputs(q, k, v, beta, g, start, n, C):
    """The group's ``Q, K (B, n, H, C, K)``, ``V (B, n, H, C, V)``, ``β`` and cumulative log-gates ``γ (B, n, H, C)``."""
    Q, K, V, b = (_read(x, start, n, C) for x in (q, k, v, beta))
    gam = jnp.zeros_like(b) if g is None else jnp.cumsum(_read(g, start, n, C), axis=-1)
    return Q, K, V, b, gam


def chunk_terms(Q, K, V, b, gam, T=None):
    """Everything a chunk's forward and backward share (heads-first ``(B, n, H, C, ·)``); T computed unless given."""
    incl, strict = causal_masks(Q.shape[-2])
    D = segment_decay(gam, incl)  # exp(γ_r − γ_i), r ≥ i
    e = jnp.exp(gam)
    Bm = _mm("bnhik,bnhjk->bnhij", K, K) * jnp.where(strict, D, 0.0)  # A = β_r Bm
    A = b[..., None] * Bm
    T = unit_lower_inverse(A) if T is None else T
    Wr = (b * e)[..., None] * K
    Ut = _mm("bnhij,bnhjv->bnhiv", T, b[..., None] * V)
    W = _mm("bnhij,bnhjk->bnhik", T, Wr)
    P = _mm("bnhik,bnhjk->bnhij", Q, K) * D
    Kd = jnp.exp(gam[..., -1:] - gam)  # exp(γ_C − γ)
    Kh = K * Kd[..., None]
    Qp = Q * e[..., None] - _mm("bnhij,bnhjk->bnhik", P, W)
    return dict(D=D, e=e, eC=e[..., -1], Bm=Bm, A=A, T=T, Wr=Wr, Ut=Ut, W=W, P=P, Kd=Kd, Kh=Kh, Qp=Qp)


def _transition_t(c, transpose):
    """``M = exp(γ_C) I − K̂ᵀ W`` (or ``Mᵀ``) ``(B, H, n, K, K)`` — the layout of ``scan_state_columns_dense``."""
    K = c["Kh"].shape[-1]
    spec = "bnhck,bnhcj->bhnjk" if transpose else "bnhck,bnhcj->bhnkj"
    eC = jnp.swapaxes(c["eC"], 1, 2)[..., None, None]  # (B, H, n, 1, 1)
    return eC * jnp.eye(K, dtype=jnp.float32)[None, None, None] - _mm(spec, c["Kh"], c["W"])


def _group_states(c, s_cols, scan_backend):
    """States entering the group's chunks ``(V, B, H, n, K)`` and the one leaving it ``(V, B, H, K)``
    (columns first), from the state ``s_cols`` entering the group."""
    delta = _mm("bnhck,bnhcv->vbhnk", c["Kh"], c["Ut"])
    s_leave = scan_state_columns_dense(_transition_t(c, False), delta, s_cols, scan_backend)
    return jnp.concatenate([s_cols[:, :, :, None], s_leave[:, :, :, :-1]], axis=3), s_leave[:, :, :, -1]


def _forward(q, k, v, beta, g, s0, C, group, scan_backend, keep):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, the final state ``(B, H, K, V)`` and,
    if ``keep``, the residuals: entering states ``(V, B, H, NC, K)`` and inverses ``T (B, NC, H, C, C)``."""
    B, Lp, H, K = q.shape
    V = v.shape[-1]
    nc = Lp // C

    def body(start, n, carry):
        s_cols, o_buf, res = carry
        Q, Kc, Vc, b, gam = _inputs(q, k, v, beta, g, start, n, C)
        c = chunk_terms(Q, Kc, Vc, b, gam)
        s_in, s_cols = _group_states(c, s_cols, scan_backend)
        o = _mm("bnhij,bnhjv->bnhiv", c["P"], c["Ut"]) + _mm("bnhck,vbhnk->bnhcv", c["Qp"], s_in)
        if keep:
            res = (_write_cols(res[0], s_in, start), lax.dynamic_update_slice_in_dim(res[1], c["T"], start, 1))
        return s_cols, _write(o_buf, o, start), res

    res = (jnp.zeros((V, B, H, nc, K), jnp.float32), jnp.zeros((B, nc, H, C, C), jnp.float32)) if keep else ()
    s_cols, o, res = for_chunk_groups(body, (jnp.moveaxis(s0, -1, 0), jnp.zeros(v.shape, jnp.float32), res), nc, group)
    return o, jnp.moveaxis(s_cols, 0, -1), res


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(q, k, v, beta, g, s0, C, scan_backend):
    o, final, _ = _forward(q, k, v, beta, g, s0, C, CHUNK_GROUP, scan_backend, keep=False)
    return o, final


def _chunked_fwd(q, k, v, beta, g, s0, C, scan_backend):
    o, final, (s_in, Tbuf) = _forward(q, k, v, beta, g, s0, C, CHUNK_GROUP, scan_backend, keep=True)
    return (o, final), (q, k, v, beta, g, s_in, Tbuf)


def chunk_grads(Q, K, V, b, c, S0, dO, dN):
    """Input gradients of one chunk's ``(O, S_end)`` at fixed entering state: ``S0, dN (V, B, H, n, K)`` (the
    entering state and the leaving state's cotangent, columns first), ``dO (B, n, H, C, V)``; returns
    ``dQ, dK, dV, dβ, dγ`` heads first."""
    incl, strict = causal_masks(Q.shape[-2])
    e, eC, T, P, W, Ut = c["e"], c["eC"], c["T"], c["P"], c["W"], c["Ut"]
    U = Ut - _mm("bnhck,vbhnk->bnhcv", W, S0)
    dU = _mm("bnhij,bnhiv->bnhjv", P, dO) + _mm("bnhck,vbhnk->bnhcv", c["Kh"], dN)
    dKh = _mm("bnhcv,vbhnk->bnhck", U, dN)
    dP = _mm("bnhiv,bnhjv->bnhij", dO, U)
    dQd = _mm("bnhcv,vbhnk->bnhck", dO, S0)
    dUb = _mm("bnhji,bnhjv->bnhiv", T, dU)  # Tᵀ dŨ
    dWr = -_mm("bnhji,bnhjk->bnhik", T, _mm("bnhcv,vbhnk->bnhck", dU, S0))  # Tᵀ dW, dW = −dU S⁰ᵀ
    dA = -jnp.where(strict, _mm("bnhiv,bnhjv->bnhij", dUb, Ut) + _mm("bnhik,bnhjk->bnhij", dWr, W), 0.0)
    dqk = dP * c["D"]
    dkk = b[..., None] * dA * jnp.where(strict, c["D"], 0.0)
    dQ = e[..., None] * dQd + _mm("bnhij,bnhjk->bnhik", dqk, K)
    dK = (_mm("bnhij,bnhik->bnhjk", dqk, Q) + _mm("bnhij,bnhjk->bnhik", dkk + jnp.swapaxes(dkk, -1, -2), K)
          + (b * e)[..., None] * dWr + c["Kd"][..., None] * dKh)
    dV = b[..., None] * dUb
    db = jnp.sum(dUb * V, -1) + e * jnp.sum(dWr * K, -1) + jnp.sum(dA * c["Bm"], -1)
    E = dP * P + dA * c["A"]  # ∂/∂γ of terms ∝ exp(γ_r − γ_i): + on rows, − on columns
    F = jnp.sum(dKh * c["Kh"], -1)
    dgam = (jnp.sum(E, -1) - jnp.sum(E, -2) + e * jnp.sum(dQd * Q, -1) + jnp.sum(dWr * c["Wr"], -1) - F)
    last = jnp.sum(F, -1) + eC * jnp.swapaxes(jnp.sum(S0 * dN, (0, 4)), 1, 2)  # (B, n, H)
    dgam = dgam.at[..., -1].add(last)
    return dQ, dK, dV, db, dgam


def _chunked_bwd(C, scan_backend, res, cts):
    """Chunkwise backward, groups in reverse: the state cotangents ``h_n = M_nᵀ h_{n+1} + Q'_nᵀ dO_n`` over the
    group's chunks through the scan core (entered with the cotangent of the state leaving the group), then
    ``chunk_grads`` at the stored entering states."""
    q, k, v, beta, g, s_in, Tbuf = res
    do, d_final = cts
    nc = q.shape[1] // C

    def body(start, n, carry):
        h_cols, bufs = carry
        Q, K, V, b, gam = _inputs(q, k, v, beta, g, start, n, C)
        c = chunk_terms(Q, K, V, b, gam, T=lax.dynamic_slice_in_dim(Tbuf, start, n, 1))
        dO = _read(do, start, n, C)
        loc = _mm("bnhck,bnhcv->vbhnk", c["Qp"], dO)
        h_in = scan_state_columns_dense(_transition_t(c, True), loc, h_cols, scan_backend, reverse=True)
        d_next = jnp.concatenate([h_in[:, :, :, 1:], h_cols[:, :, :, None]], axis=3)  # leaving states' cotangents
        dQ, dK, dV, db, dgam = chunk_grads(Q, K, V, b, c, _read_cols(s_in, start, n), dO, d_next)
        dg = jnp.flip(jnp.cumsum(jnp.flip(dgam, -1), -1), -1)  # γ = cumsum(g) inside the chunk
        bufs = tuple(_write(buf, d, start) for buf, d in zip(bufs, (dQ, dK, dV, db, dg)))
        return h_in[:, :, :, 0], bufs

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v, beta, beta))
    h0, (dq, dk, dv, db, dg) = for_chunk_groups(body, (jnp.moveaxis(d_final, -1, 0), bufs), nc, CHUNK_GROUP,
                                                reverse=True)
    return dq, dk, dv, db, None if g is None else dg, jnp.moveaxis(h0, 0, -1)


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
