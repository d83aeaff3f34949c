"""Delta rule / gated DeltaNet: Pallas kernels for the chunk computations, and their ``custom_vjp``.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC chunks ·
Kp, Vp padded dims (see ``_common.fast_weight_pallas``).

Pipeline (the WY/UT chunk form of ``_delta_rule.op``; fla's ``chunk_delta_rule_fwd`` split); γ is the cumulative
log-gate inside the chunk, one column ``(C, 1)`` per head or ``(C, Kp)`` per key:

1. ``_wy_kernel`` — grid ``(B·H, NC)``: A_ri = β_r Σ_d k_rd k_id exp(γ_rd − γ_id) (r > i; per head the decay is
   one factor of K Kᵀ, per key it is accumulated one key dimension at a time, ``_key_scores``); forward
   substitution (I + A)[Ũ | W] = β ⊙ [V | exp(γ) ⊙ K] row by row (``fori_loop``; rows picked with iota masks,
   which Triton lowers); then the chunk transition M = diag(exp(γ_C)) − K̂ᵀ W and input Δ = K̂ᵀ Ũ,
   K̂ = K ⊙ exp(γ_C − γ).
2. the scan core's ``dense_linear_scan`` (Pallas backend, mapped over the V columns) passes the states:
   S_n = M_n S_{n-1} + Δ_n.
3. ``_output_kernel`` — grid ``(B·H, NC)``: O = (Q ⊙ exp(γ)) S⁰ + P (Ũ − W S⁰),
   P_ri = Σ_d q_rd k_id exp(γ_rd − γ_id) [r ≥ i] (per head: Q Kᵀ ⊙ exp(γ_r − γ_i)).

Gradients: ``custom_vjp`` whose backward differentiates the chunked **XLA** form (``_delta_rule.op``);
there is no Pallas backward kernel yet.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from algornn.scan_kernels._common.chunk_utils import previous_states
from algornn.scan_kernels._common.fast_weight_pallas import (
    F32,
    causal,
    decay_matrix,
    dot,
    dot_nt,
    dot_tn,
    from_rows,
    grid_of,
    next_pow2,
    pad_state,
    pallas_chunk,
    row_spec,
    tile_spec,
    to_rows,
)
from algornn.scan_kernels._common.pallas_config import pallas_call_kwargs
from algornn.scan_kernels._delta_rule.chunk_states import scan_chunk_states_dense


def _key_scores(x_ref, k_ref, g_ref, mask):
    """``Σ_d x_rd k_id exp(γ_rd − γ_id)`` on ``mask``, one key dimension at a time (``fori_loop`` over Kp of
    ``(C, C)`` tiles): per-key decays cannot be split into a row and a column factor without overflow."""
    C, Kp = k_ref.shape

    def add_key_dim(d, acc):
        col = pl.ds(d, 1)
        gam = jnp.cumsum(g_ref[:, col], axis=0)  # (C, 1)
        return acc + (x_ref[:, col] * jnp.transpose(k_ref[:, col])) * decay_matrix(gam, mask)

    return lax.fori_loop(0, Kp, add_key_dim, jnp.zeros((C, C), F32))


def _wy_kernel(*refs, kind):
    """Refs: k (C, Kp), v (C, Vp), β (C, 1), [g (C, 1|Kp)] -> Ũ (C, Vp), W (C, Kp), M (Kp, Kp), Δ (Kp, Vp)."""
    if kind == "none":
        k_ref, v_ref, b_ref, u_ref, w_ref, m_ref, d_ref = refs
    else:
        k_ref, v_ref, b_ref, g_ref, u_ref, w_ref, m_ref, d_ref = refs
    k, v, b = k_ref[...], v_ref[...], b_ref[...]
    C, Kp = k.shape
    strict = causal(C, strict=True)
    if kind == "none":
        A = jnp.where(strict, b * dot_nt(k, k), 0.0)
        kw, khat, scale = k, k, jnp.ones((1, 1), F32)
    else:
        gam = jnp.cumsum(g_ref[...], axis=0)  # (C, 1) or (C, Kp)
        # γ_C as the cumsum's own last row (not a separate sum, which rounds differently): exp(γ_C − γ_C) = 1
        # exactly, so the newest token's write into the leaving state is exact even under strong decay
        last = jnp.sum(jnp.where(lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1, gam, 0.0), axis=0, keepdims=True)
        if kind == "scalar":
            A = b * dot_nt(k, k) * decay_matrix(gam, strict)
        else:
            A = b * _key_scores(k_ref, k_ref, g_ref, strict)
        kw, khat, scale = k * jnp.exp(gam), k * jnp.exp(last - gam), jnp.exp(last)
    rhs_u, rhs_w = b * v, b * kw
    rows = lax.broadcasted_iota(jnp.int32, (C, 1), 0)

    def substitute(r, carry):  # X_r = rhs_r − Σ_{i<r} A_ri X_i  (rows ≥ r of X are still zero)
        U, W = carry
        here = rows == r
        a_r = jnp.transpose(jnp.sum(jnp.where(here, A, 0.0), axis=0, keepdims=True))  # column (C, 1)
        u_r = jnp.sum(jnp.where(here, rhs_u, 0.0) - a_r * U, axis=0, keepdims=True)  # (1, Vp)
        w_r = jnp.sum(jnp.where(here, rhs_w, 0.0) - a_r * W, axis=0, keepdims=True)  # (1, Kp)
        return U + jnp.where(here, u_r, 0.0), W + jnp.where(here, w_r, 0.0)

    U, W = lax.fori_loop(0, C, substitute, (jnp.zeros(rhs_u.shape, F32), jnp.zeros(rhs_w.shape, F32)))
    eye = causal(Kp) & jnp.transpose(causal(Kp))  # i == j
    u_ref[...] = U
    w_ref[...] = W
    m_ref[...] = jnp.where(eye, scale, 0.0) - dot_tn(khat, W)  # diag(exp(γ_C)) − K̂ᵀ W
    d_ref[...] = dot_tn(khat, U)


def _output_kernel(*refs, kind):
    """Refs: q, k (C, Kp), Ũ (C, Vp), W (C, Kp), [g (C, 1|Kp)], S⁰ (Kp, Vp) -> o (C, Vp)."""
    if kind == "none":
        q_ref, k_ref, u_ref, w_ref, s_ref, o_ref = refs
    else:
        q_ref, k_ref, u_ref, w_ref, g_ref, s_ref, o_ref = refs
    q, S = q_ref[...], s_ref[...]
    incl = causal(q.shape[0])
    if kind == "none":
        P, qd = jnp.where(incl, dot_nt(q, k_ref[...]), 0.0), q
    elif kind == "scalar":
        gam = jnp.cumsum(g_ref[...], axis=0)
        P, qd = dot_nt(q, k_ref[...]) * decay_matrix(gam, incl), q * jnp.exp(gam)
    else:
        P, qd = _key_scores(q_ref, k_ref, g_ref, incl), q * jnp.exp(jnp.cumsum(g_ref[...], axis=0))
    o_ref[...] = dot(qd, S) + dot(P, u_ref[...] - dot(w_ref[...], S))


def _forward(q, k, v, beta, g, s0, C):
    """Pallas forward on float32 inputs; returns ``o (B, L, H, V)`` and the final state ``(B, H, K, V)``."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    C = pallas_chunk(C, L)
    Kp, Vp = next_pow2(K), next_pow2(V)
    Lp = -(-L // C) * C
    BH = B * H
    grid = grid_of(BH, Lp, C)
    nc = grid[1]
    kind = "none" if g is None else ("key" if g.ndim == 4 else "scalar")
    Gp = Kp if kind == "key" else 1
    qr, kr, vr = to_rows(q, Lp, Kp), to_rows(k, Lp, Kp), to_rows(v, Lp, Vp)
    br = to_rows(beta[..., None], Lp, 1)
    gr = [] if kind == "none" else [to_rows(g if kind == "key" else g[..., None], Lp, Gp)]  # (B·H, Lp, 1|Kp)
    gs = [] if kind == "none" else [row_spec(C, Gp)]
    tiles = lambda r, f: jax.ShapeDtypeStruct((BH, nc, r, f), F32)  # noqa: E731
    rows = lambda f: jax.ShapeDtypeStruct((BH, Lp, f), F32)  # noqa: E731
    U, W, M, delta = pl.pallas_call(
        partial(_wy_kernel, kind=kind),
        out_shape=(rows(Vp), rows(Kp), tiles(Kp, Kp), tiles(Kp, Vp)),
        grid=grid,
        in_specs=[row_spec(C, Kp), row_spec(C, Vp), row_spec(C, 1)] + gs,
        out_specs=(row_spec(C, Vp), row_spec(C, Kp), tile_spec(Kp, Kp), tile_spec(Kp, Vp)),
        name="delta_rule_chunk_wy",
        **pallas_call_kwargs(),
    )(kr, vr, br, *gr)
    s0p = pad_state(s0, Kp, Vp)  # (B·H, 1, Kp, Vp)
    s_end = scan_chunk_states_dense(M[:, None], delta[:, None], s0p, "pallas")  # (B·H, 1, NC, Kp, Vp)
    s_prev = previous_states(s_end, s0p)[:, 0]
    o = pl.pallas_call(
        partial(_output_kernel, kind=kind),
        out_shape=rows(Vp),
        grid=grid,
        in_specs=[row_spec(C, Kp), row_spec(C, Kp), row_spec(C, Vp), row_spec(C, Kp)] + gs + [tile_spec(Kp, Vp)],
        out_specs=row_spec(C, Vp),
        name="delta_rule_chunk_output",
        **pallas_call_kwargs(),
    )(qr, kr, U, W, *gr, s_prev)
    final = s_end[:, 0, -1, :K, :V].reshape(B, H, K, V)
    return from_rows(o, B, H, L, V), final


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _pallas_op(q, k, v, beta, g, s0, C):
    return _forward(q, k, v, beta, g, s0, C)


def _pallas_fwd(q, k, v, beta, g, s0, C):
    return _forward(q, k, v, beta, g, s0, C), (q, k, v, beta, g, s0)


def _pallas_bwd(C, res, cts):
    from algornn.scan_kernels._delta_rule.op import delta_rule_chunked

    q, k, v, beta, g, s0 = res
    L = q.shape[1]
    _, vjp = jax.vjp(lambda *a: delta_rule_chunked(*a, min(C, L), "xla"), q, k, v, beta, g, s0)
    return vjp(cts)


_pallas_op.defvjp(_pallas_fwd, _pallas_bwd)


@partial(jax.jit, static_argnames=("chunk_size",))
def delta_rule_pallas(q, k, v, beta, log_decay, s0, *, chunk_size):
    """Validated inputs; returns ``o`` float32 ``(B, L, H, V)`` and the final state ``(B, H, K, V)``."""
    q, k, v, beta = (x.astype(F32) for x in (q, k, v, beta))
    g = None if log_decay is None else log_decay.astype(F32)
    return _pallas_op(q, k, v, beta, g, s0, chunk_size)
