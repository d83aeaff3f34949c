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

Packed sequences (start flags ``(C, 1)`` and the reset state ``s⁰``, ``_packing``): both kernels mask the scores
and ``A`` to pairs of one sequence, decay each position from its sequence's start (``γ̃``), enter the chunk's first
sequence with ``S⁰`` and the others with ``s⁰``, and build ``M``, ``Δ`` from the chunk's last sequence:
``M = diag(o_last e^{γ̃_C}) − K̂ᵀ W_o``, ``Δ = K̂ᵀ (Ũ − W_s s⁰) + diag((1 − o_last) e^{γ̃_C}) s⁰``
(``W_o``, ``W_s``: the rows of W in the first sequence, in the others).

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


def _last_row(x):
    """The last row of ``x (C, F)`` as ``(1, F)`` (a masked sum: no value slicing in kernels)."""
    C = x.shape[0]
    return jnp.sum(jnp.where(lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1, x, 0.0), axis=0, keepdims=True)


def _packing(st, g, gam):
    """Packed chunk from its start flags ``st (C, 1)``: ``same (C, C)`` (pairs of one sequence), ``o (C, 1)`` (rows of
    the sequence open at the chunk start), ``last (C, 1)`` (rows of the chunk's last sequence), ``o_last (1, 1)``
    and ``γ̃`` (log-gates summed from each row's sequence start; γ on the first sequence; None without gates)."""
    C = st.shape[0]
    cnt = jnp.cumsum(st, axis=0)
    same = cnt == jnp.transpose(cnt)
    cnt_last = _last_row(cnt)
    gt = None
    if g is not None:
        seg = causal(C) & same
        if g.shape[1] == 1:  # per head: a masked row sum (a (C, C)·(C, 1) dot does not lower)
            gt = jnp.sum(jnp.where(seg, jnp.transpose(g), 0.0), axis=1, keepdims=True)
        else:
            gt = dot(jnp.where(seg, 1.0, 0.0), g)
        gt = jnp.where(cnt == 0, gam, gt)
    return same, cnt == 0, cnt == cnt_last, cnt_last == 0, gt


def _wy_kernel(*refs, kind, packed):
    """Refs: k (C, Kp), v (C, Vp), β (C, 1), [g (C, 1|Kp)], [st (C, 1), s⁰ (Kp, Vp)] -> Ũ (C, Vp), W (C, Kp),
    M (Kp, Kp), Δ (Kp, Vp) (packed: ``Ũ − W_s s⁰`` and ``W_o``)."""
    refs = list(refs)
    k_ref, v_ref, b_ref = refs[:3]
    g_ref = None if kind == "none" else refs[3]
    st_ref, s0r_ref = refs[-6:-4] if packed else (None, None)
    u_ref, w_ref, m_ref, d_ref = refs[-4:]
    k, v, b = k_ref[...], v_ref[...], b_ref[...]
    C, Kp = k.shape
    strict = causal(C, strict=True)
    gam = None if kind == "none" else jnp.cumsum(g_ref[...], axis=0)  # (C, 1) or (C, Kp)
    if packed:
        same, o, lastm, o_last, gt = _packing(st_ref[...], None if kind == "none" else g_ref[...], gam)
        strict = strict & same
    if kind == "none":
        A = jnp.where(strict, b * dot_nt(k, k), 0.0)
        kw, khat, scale = k, k, jnp.ones((1, 1), F32)
    else:
        # γ_C as the cumsum's own last row (not a separate sum, which rounds differently): exp(γ_C − γ_C) = 1
        # exactly, so the newest token's write into the leaving state is exact even under strong decay
        last = _last_row(gam)
        if kind == "scalar":
            A = b * dot_nt(k, k) * decay_matrix(gam, strict)
        else:
            A = b * _key_scores(k_ref, k_ref, g_ref, strict)
        e = jnp.exp(gam if not packed else gt)
        kw, khat, scale = k * e, k * jnp.exp(last - gam), jnp.exp(last if not packed else _last_row(gt))
    if packed:
        khat = jnp.where(lastm, khat, 0.0)
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
    if not packed:
        u_ref[...] = U
        w_ref[...] = W
        m_ref[...] = jnp.where(eye, scale, 0.0) - dot_tn(khat, W)  # diag(exp(γ_C)) − K̂ᵀ W
        d_ref[...] = dot_tn(khat, U)
        return
    s0r = s0r_ref[...]
    Wo = jnp.where(o, W, 0.0)
    U = U - dot(W - Wo, s0r)  # the rows entered with s⁰: Ũ − W_s s⁰
    diag = jnp.where(eye, scale if scale.shape[1] == 1 else jnp.transpose(scale), 0.0)  # diag(e^{γ̃_C}), (Kp, Kp)
    u_ref[...] = U
    w_ref[...] = Wo
    m_ref[...] = jnp.where(o_last, diag, 0.0) - dot_tn(khat, Wo)
    d_ref[...] = dot_tn(khat, U) + dot(jnp.where(o_last, 0.0, diag), s0r)


def _output_kernel(*refs, kind, packed):
    """Refs: q, k (C, Kp), Ũ (C, Vp), W (C, Kp), [g (C, 1|Kp)], [st (C, 1), s⁰ (Kp, Vp)], S⁰ (Kp, Vp) -> o (C, Vp)."""
    refs = list(refs)
    q_ref, k_ref, u_ref, w_ref = refs[:4]
    g_ref = None if kind == "none" else refs[4]
    st_ref, s0r_ref = refs[-4:-2] if packed else (None, None)
    s_ref, o_ref = refs[-2:]
    q, S = q_ref[...], s_ref[...]
    incl = causal(q.shape[0])
    gam = None if kind == "none" or (kind == "key" and not packed) else jnp.cumsum(g_ref[...], axis=0)
    if packed:
        same, o, _, _, gt = _packing(st_ref[...], None if kind == "none" else g_ref[...], gam)
        incl = incl & same
    if kind == "none":
        P, qd = jnp.where(incl, dot_nt(q, k_ref[...]), 0.0), q
    elif kind == "scalar":
        P, qd = dot_nt(q, k_ref[...]) * decay_matrix(gam, incl), q * jnp.exp(gam if not packed else gt)
    else:
        P, qd = _key_scores(q_ref, k_ref, g_ref, incl), q * jnp.exp(gt if packed else jnp.cumsum(g_ref[...], axis=0))
    if not packed:
        o_ref[...] = dot(qd, S) + dot(P, u_ref[...] - dot(w_ref[...], S))
        return
    qo = jnp.where(o, qd, 0.0)  # rows of the chunk's first sequence read S⁰, the others s⁰
    o_ref[...] = dot(qo, S) + dot(qd - qo, s0r_ref[...]) + dot(P, u_ref[...] - dot(w_ref[...], S))


def _forward(q, k, v, beta, g, s0, C, starts=None, s0r=None):
    """Pallas forward on float32 inputs; returns ``o (B, L, H, V)`` and the final state ``(B, H, K, V)``.
    Packed sequences: start flags ``starts (B, L, H)`` and the reset state ``s0r (B, H, K, V)``."""
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
    packed = starts is not None
    pr, ps = [], []
    if packed:  # start flags as rows (C, 1); the reset state one (Kp, Vp) tile per (batch, head)
        pr = [to_rows(starts[..., None], Lp, 1), pad_state(s0r, Kp, Vp)[:, 0]]
        ps = [row_spec(C, 1), pl.BlockSpec((None, Kp, Vp), lambda i, n: (i, 0, 0))]
    tiles = lambda r, f: jax.ShapeDtypeStruct((BH, nc, r, f), F32)  # noqa: E731
    rows = lambda f: jax.ShapeDtypeStruct((BH, Lp, f), F32)  # noqa: E731
    U, W, M, delta = pl.pallas_call(
        partial(_wy_kernel, kind=kind, packed=packed),
        out_shape=(rows(Vp), rows(Kp), tiles(Kp, Kp), tiles(Kp, Vp)),
        grid=grid,
        in_specs=[row_spec(C, Kp), row_spec(C, Vp), row_spec(C, 1)] + gs + ps,
        out_specs=(row_spec(C, Vp), row_spec(C, Kp), tile_spec(Kp, Kp), tile_spec(Kp, Vp)),
        name="delta_rule_chunk_wy",
        **pallas_call_kwargs(),
    )(kr, vr, br, *gr, *pr)
    s0p = pad_state(s0, Kp, Vp)  # (B·H, 1, Kp, Vp)
    s_end = scan_chunk_states_dense(M[:, None], delta[:, None], s0p, "pallas")  # (B·H, 1, NC, Kp, Vp)
    s_prev = previous_states(s_end, s0p)[:, 0]
    o = pl.pallas_call(
        partial(_output_kernel, kind=kind, packed=packed),
        out_shape=rows(Vp),
        grid=grid,
        in_specs=[row_spec(C, Kp), row_spec(C, Kp), row_spec(C, Vp), row_spec(C, Kp)] + gs + ps + [tile_spec(Kp, Vp)],
        out_specs=row_spec(C, Vp),
        name="delta_rule_chunk_output",
        **pallas_call_kwargs(),
    )(qr, kr, U, W, *gr, *pr, s_prev)
    final = s_end[:, 0, -1, :K, :V].reshape(B, H, K, V)
    return from_rows(o, B, H, L, V), final


@partial(jax.custom_vjp, nondiff_argnums=(8,))
def _pallas_op(q, k, v, beta, g, s0, starts, s0r, C):
    return _forward(q, k, v, beta, g, s0, C, starts, s0r)


def _pallas_fwd(q, k, v, beta, g, s0, starts, s0r, C):
    return _forward(q, k, v, beta, g, s0, C, starts, s0r), (q, k, v, beta, g, s0, starts, s0r)


def _pallas_bwd(C, res, cts):
    from algornn.scan_kernels._delta_rule.op import delta_rule_chunked

    *args, starts, s0r = res
    L = args[0].shape[1]
    f = lambda *a: delta_rule_chunked(*a[:6], min(C, L), "xla", *a[6:])  # noqa: E731
    if starts is None:
        _, vjp = jax.vjp(f, *args)
        return vjp(cts) + (None, None)
    _, vjp = jax.vjp(lambda *a: f(*a[:6], starts, a[6]), *args, s0r)
    grads = vjp(cts)
    return grads[:6] + (jnp.zeros_like(starts), grads[6])


_pallas_op.defvjp(_pallas_fwd, _pallas_bwd)


@partial(jax.jit, static_argnames=("chunk_size",))
def delta_rule_pallas(q, k, v, beta, log_decay, s0, starts=None, s0r=None, *, chunk_size):
    """Validated inputs; returns ``o`` float32 ``(B, L, H, V)`` and the final state ``(B, H, K, V)``. Packed
    sequences: ``starts`` float ``(B, L, H)`` (inputs already zero on padding) and the reset state ``s0r``."""
    q, k, v, beta = (x.astype(F32) for x in (q, k, v, beta))
    g = None if log_decay is None else log_decay.astype(F32)
    return _pallas_op(q, k, v, beta, g, s0, starts, s0r, chunk_size)
