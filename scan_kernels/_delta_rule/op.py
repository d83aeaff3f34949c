"""Delta rule / gated DeltaNet: chunkwise-parallel XLA form (WY/UT representation) and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = (I − β_t k_t k_tᵀ) diag(exp(g_t)) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

with ``g_t`` one scalar per head (gated DeltaNet; then ``diag(exp(g_t)) = exp(g_t) I``) or one per key dimension
(per-key decay of the rows of S, as in Kimi Delta Attention): the decay first, then the delta update.

Chunk form (DeltaNet, Yang et al. 2024, §3.2 and App. B; gated DeltaNet §3): inside a chunk with
entering state S⁰ and local cumulative log-gate γ (per key: γ_r ∈ R^K), the per-token deltas
``u_r = β_r (v_r − (diag(e^{g_r}) S_{r-1})ᵀ k_r)`` solve a unit lower-triangular system (the UT transform),
``T = (I + A)⁻¹``:

    Ũ = T (β ⊙ V),   W = T W_r,   W_r = β ⊙ exp(γ) ⊙ K,      A_ri = β_r Σ_d k_rd k_id exp(γ_rd − γ_id)   (r > i)
    U = Ũ − W S⁰ = T (β ⊙ V − W_r S⁰),     O = (Q ⊙ exp(γ)) S⁰ + P U,     P_ri = Σ_d q_rd k_id exp(γ_rd − γ_id) [r ≥ i]
    S_end = M S⁰ + Δ,   M = diag(exp(γ_C)) − K̂ᵀ W,   Δ = K̂ᵀ Ũ,   K̂ = K ⊙ exp(γ_C − γ)

(per head the decays factor out of the sums: ``A = β ⊙ K Kᵀ ⊙ exp(γ_r − γ_i)``, ``P = Q Kᵀ ⊙ exp(γ_r − γ_i)``).
All exponents are ≤ 0. Per-key scores come from ``_common.key_decay`` (secondary chunking: exact decays only in
16×16 diagonal blocks, plain matmuls of factors with exponents ≤ 0 elsewhere; no ``(C, C, K)`` tensor). One loop
over groups of ``CHUNK_GROUP`` chunks (``KEY_CHUNK_GROUP`` per key; ``for_chunk_groups``) does all a group needs:
its chunk terms (heads as a batch dim), the recurrence ``S_n = M_n S_{n-1} + Δ_n`` over its chunks through the
scan core's ``dense_linear_scan`` (entered with the state the previous group left), and its outputs. ``T`` comes from
``unit_lower_inverse`` (batched matmuls), once per chunk, and is kept with the entering states and U for the
backward. Gradients: ``custom_vjp`` with a closed-form chunk backward (``chunk_grads``), groups in reverse: the
state cotangents ``h_n = M_nᵀ h_{n+1} + Q'_nᵀ dO_n`` (``Q' = Q ⊙ exp(γ) − P W``) run over the group through
``dense_linear_scan``, then each chunk's input gradients follow; as U = T R, the solve's cotangents are
``dR = Tᵀ dU``, ``dA = −dR Uᵀ``; per-key score cotangents go back through the same sub-chunk factors
(``decayed_scores_vjp``). Residuals O(B·L·H·(K+V) + NC·B·H·(K·V + C²)); no per-token state is formed.

Without differentiation (the ``custom_vjp`` primal) ``_forward_only`` runs instead: one loop over steps of
``FORWARD_STEP`` tokens in sub-chunks of ``FORWARD_CHUNK``, heads-first ``(B·H, C, ·)``, the chunks of a step in
order as ``U_n = Ũ_n − W_n S_{n-1}``, ``S_n = diag(exp(γ_C)) S_{n-1} + K̂_nᵀ U_n`` (M is never formed), storing nothing.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.backend import abstract, check_backend, probe_key, resolve_backend
from algornn.scan_kernels._common.chunk_utils import (
    FORWARD_CHUNK,
    FORWARD_STEP,
    causal_masks,
    for_chunk_groups,
    pad_tokens,
    read_chunks,
    read_chunks_heads_first,
    segment_decay,
    unit_lower_inverse,
    write_chunks,
    write_chunks_heads_first,
)
from algornn.scan_kernels._common.fast_weight_checks import (
    check_beta,
    check_chunk_size,
    check_log_decay,
    check_qkv,
    check_state,
)
from algornn.scan_kernels._common.key_decay import decayed_scores, decayed_scores_vjp, key_decay
from algornn.scan_kernels._delta_rule.chunk_states import scan_state_columns_dense
from algornn.scan_kernels._delta_rule.reference import delta_rule_reference

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)
# Chunks per step of the loop over chunk groups (bounds the O(C²) temporaries). 8 keeps a group's terms in
# cache: fwd+bwd at L=4096 (B=1, H=4, K=V=C=64) on the 2-core CPU took 79 / 77 / 97 ms with 4 / 8 / 16.
CHUNK_GROUP = 8
# Per-key gates add (group, H, 4, C, K) decay factors and (group, H, 4, 16, 16, K) diagonal-block decays per group:
# 4 chunks per group keep fwd+bwd scratch at L=16384 (B=1, H=4, K=V=C=64) below 1/10 of per-token states.
KEY_CHUNK_GROUP = 4


def _group(g):
    return KEY_CHUNK_GROUP if g is not None and g.ndim == 4 else CHUNK_GROUP


def _read(x, start, n, C):
    """Chunks ``[start, start + n)`` of ``(B, NC·C, H, *F)`` heads first: ``(B, n, H, C, *F)``."""
    return jnp.swapaxes(read_chunks(x, start, n, C), 2, 3)


def _write(buf, y, start):
    """Write ``y (B, n, H, C, *F)`` into the token buffer ``buf (B, NC·C, H, *F)`` at chunk ``start``."""
    return write_chunks(buf, jnp.swapaxes(y, 2, 3), start)


def _inputs(q, k, v, beta, g, start, n, C):
    """The group's ``Q, K (B, n, H, C, K)``, ``V (B, n, H, C, V)``, ``β`` and cumulative log-gates ``γ``:
    ``(B, n, H, C)`` (zeros without gates) or, per key, ``(B, n, H, C, K)``."""
    Q, K, V, b = (_read(x, start, n, C) for x in (q, k, v, beta))
    if g is None:
        return Q, K, V, b, jnp.zeros_like(b)
    gam = jnp.cumsum(_read(g, start, n, C), axis=3)  # over the chunk's C positions
    return Q, K, V, b, gam


def _per_key(gam):
    return gam.ndim == 5


def chunk_terms(K, b, gam, T=None):
    """The terms of a chunk's UT system, heads first ``(B, n, H, C, ·)``: decays, ``A = β_r Bm``, ``T = (I + A)⁻¹``
    (computed unless given), ``W``, ``K̂``. ``e = exp(γ)`` and ``Kd = exp(γ_C − γ)`` are kept broadcastable
    to ``(B, n, H, C, K)`` (a trailing 1 for per-head gates); per-key gates keep the sub-chunk decay factors
    ``dec`` for the scores instead of the ``(C, C)`` decay matrix ``D``."""
    if _per_key(gam):  # A_ri = β_r Σ_d k_rd k_id exp(γ_rd − γ_id): secondary chunking, no (C, C, K) tensor
        dec = key_decay(gam)
        Bm = decayed_scores(K, K, dec, strict=True)
        e, Kd = jnp.exp(gam), jnp.exp(gam[..., -1:, :] - gam)
        terms = dict(dec=dec, eC=e[..., -1, :])
    else:
        incl, strict = causal_masks(K.shape[-2])
        D = segment_decay(gam, incl)  # exp(γ_r − γ_i), r ≥ i
        Bm = _mm("bnhik,bnhjk->bnhij", K, K) * jnp.where(strict, D, 0.0)
        e, Kd = jnp.exp(gam)[..., None], jnp.exp(gam[..., -1:] - gam)[..., None]
        terms = dict(D=D, eC=e[..., -1, 0])
    A = b[..., None] * Bm
    T = unit_lower_inverse(A) if T is None else T
    Wr = b[..., None] * e * K
    return terms | dict(e=e, Bm=Bm, A=A, T=T, Wr=Wr, W=_mm("bnhij,bnhjk->bnhik", T, Wr), Kd=Kd, Kh=K * Kd)


def _scores(Q, K, c):
    """``P = Q Kᵀ ⊙ exp(γ_r − γ_i) ⊙ [r ≥ i]`` (per key: ``P_ri = Σ_d q_rd k_id exp(γ_rd − γ_id)``)."""
    if "dec" in c:
        return decayed_scores(Q, K, c["dec"])
    return _mm("bnhik,bnhjk->bnhij", Q, K) * c["D"]


def _transition(c, transpose):
    """``M = diag(exp(γ_C)) − K̂ᵀ W`` (or ``Mᵀ``) ``(B, H, n, K, K)`` — the layout of ``scan_state_columns_dense``;
    ``exp(γ_C)`` is one scalar per head or one per key."""
    K = c["Kh"].shape[-1]
    spec = "bnhck,bnhcj->bhnjk" if transpose else "bnhck,bnhcj->bhnkj"
    eC = jnp.swapaxes(c["eC"], 1, 2)  # (B, H, n) or (B, H, n, K)
    eC = eC[..., None] if eC.ndim == 4 else eC[..., None, None]  # diagonal: symmetric, the same for Mᵀ
    return eC * jnp.eye(K, dtype=jnp.float32)[None, None, None] - _mm(spec, c["Kh"], c["W"])


def _entering(s_cols, leave_cols):
    """States entering a group's chunks, ``(s_cols, leave_0, ..., leave_{n-2})`` from columns-first
    ``(V, B, H, ·, K)``, transposed as ``Sᵀ (B, n, H, V, K)``."""
    return jnp.transpose(jnp.concatenate([s_cols[:, :, :, None], leave_cols], axis=3), (1, 3, 2, 0, 4))


def _forward(q, k, v, beta, g, s0, C, group, scan_backend, keep):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, the final state ``(B, H, K, V)`` and,
    if ``keep``, the residuals: transposed entering states ``S⁰ᵀ (B, NC, H, V, K)``, ``T (B, NC, H, C, C)``
    and ``U (B, NC, H, C, V)``."""
    B, Lp, H, K = q.shape
    V = v.shape[-1]
    nc = Lp // C

    def body(start, n, carry):
        s_cols, o_buf, res = carry
        Q, Kc, Vc, b, gam = _inputs(q, k, v, beta, g, start, n, C)
        c = chunk_terms(Kc, b, gam)
        Ut = _mm("bnhij,bnhjv->bnhiv", c["T"], b[..., None] * Vc)
        delta = _mm("bnhck,bnhcv->vbhnk", c["Kh"], Ut)
        s_leave = scan_state_columns_dense(_transition(c, False), delta, s_cols, scan_backend)  # (V, B, H, n, K)
        S0 = _entering(s_cols, s_leave[:, :, :, :-1])
        U = Ut - _mm("bnhck,bnhvk->bnhcv", c["W"], S0)
        P = _scores(Q, Kc, c)
        o = _mm("bnhck,bnhvk->bnhcv", Q * c["e"], S0) + _mm("bnhij,bnhjv->bnhiv", P, U)
        if keep:
            res = tuple(lax.dynamic_update_slice_in_dim(r, x, start, 1) for r, x in zip(res, (S0, c["T"], U)))
        return s_leave[:, :, :, -1], _write(o_buf, o, start), res

    res = tuple(jnp.zeros((B, nc, H) + s, jnp.float32) for s in ((V, K), (C, C), (C, V))) if keep else ()
    s_cols, o, res = for_chunk_groups(body, (jnp.moveaxis(s0, -1, 0), jnp.zeros(v.shape, jnp.float32), res), nc, group)
    return o, jnp.moveaxis(s_cols, 0, -1), res


def _forward_step(S, xs):
    """One step of ``_forward_only`` over G chunks: ``S (B·H, K, V)`` entering the step; ``xs`` the step's
    ``Q, K (G, B·H, C, K)``, ``V (G, B·H, C, V)``, ``β (G, B·H, C)`` and log-gates ``(G, B·H, C[, K])`` (or None).
    The chunk terms (``chunk_terms``, one leading batch axis of 1) are batched over the G chunks; between them
    the chunks run in order, ``U_n = Ũ_n − W_n S_{n-1}``, ``S_n = diag(exp(γ_C)) S_{n-1} + K̂_nᵀ U_n`` (two
    ``(C, K)·(K, V)`` products per chunk: the transition ``M`` is never formed, saving its ``K×K`` product and the
    ``K²V`` product ``M S``). Returns the leaving state and ``O (G, B·H, C, V)``."""
    Q, K, V, b, g = (None if x is None else x[None] for x in xs)  # (1, G, B·H, C, ·)
    gam = jnp.zeros_like(b) if g is None else jnp.cumsum(g, axis=3)
    c = chunk_terms(K, b, gam)
    Ut = _mm("bnhij,bnhjv->nhiv", c["T"], b[..., None] * V)  # Ũ = T (β ⊙ V)
    W, Kh = c["W"][0], c["Kh"][0]
    eC = c["eC"][0]  # (G, B·H) or, per key, (G, B·H, K)
    eC = eC[..., None, None] if eC.ndim == 2 else eC[..., None]
    entering, Us = [], []
    for n in range(Ut.shape[0]):
        entering.append(S)
        Us.append(Ut[n] - _mm("hck,hkv->hcv", W[n], S))
        S = eC[n] * S + _mm("hck,hcv->hkv", Kh[n], Us[n])
    S0, U = jnp.stack(entering)[None], jnp.stack(Us)[None]  # (1, G, B·H, ·, V)
    o = _mm("bnhck,bnhkv->bnhcv", Q * c["e"], S0) + _mm("bnhij,bnhjv->bnhiv", _scores(Q, K, c), U)
    return S, o[0]


@partial(jax.jit, static_argnames=("C",))
def _forward_only(q, k, v, beta, g, s0, C):
    """Forward without residuals (the ``custom_vjp`` primal: no differentiation) on padded float32 inputs
    ``(B, Lp, H, ·)``: ``o (B, Lp, H, V)`` and the final state ``(B, H, K, V)``.

    One pass over steps of ``FORWARD_STEP // Cf`` chunks of ``Cf = min(C, FORWARD_CHUNK)`` tokens
    (``for_chunk_groups``), each step reading its slices heads-first ``(B·H, Cf, ·)``, computing its chunks' terms,
    outputs and the state it passes on, and writing its outputs in place; nothing is stored for a backward pass.
    """
    B, Lp, H, K = q.shape
    Cf = min(C, FORWARD_CHUNK)
    xs = tuple(None if x is None else pad_tokens(x, Cf) for x in (q, k, v, beta, g))  # a copy only if Cf ∤ Lp

    def body(start, n, carry):
        S, o = carry
        S, o_n = _forward_step(S, tuple(None if x is None else read_chunks_heads_first(x, start, n, Cf) for x in xs))
        return S, write_chunks_heads_first(o, o_n, start)

    carry = (s0.reshape(B * H, K, v.shape[-1]), jnp.zeros(xs[2].shape, jnp.float32))
    S, o = for_chunk_groups(body, carry, xs[0].shape[1] // Cf, max(1, FORWARD_STEP // Cf))
    return o[:, :Lp], S.reshape(s0.shape)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(q, k, v, beta, g, s0, C, scan_backend):
    # no differentiation: the residual-free one-pass forward (``_chunked_fwd`` keeps S⁰, T and U instead)
    return _forward_only(q, k, v, beta, g, s0, C)


def _chunked_fwd(q, k, v, beta, g, s0, C, scan_backend):
    o, final, res = _forward(q, k, v, beta, g, s0, C, _group(g), scan_backend, keep=True)
    return (o, final), (q, k, v, beta, g) + res


def chunk_grads(Q, K, V, b, c, P, U, S0, dO, PtdO, dN):
    """Input gradients of chunks' ``(O, S_end)`` at fixed entering states ``S0`` (transposed, ``(B, n, H, V, K)``),
    given the output cotangent ``dO``, ``Pᵀ dO`` and the leaving states' cotangents ``dN`` (as S0); returns
    ``dQ, dK, dV, dβ, dg`` (the log-gates' own gradient, ``γ = cumsum(g)`` inside the chunk; per head or per key).

    ``U = T R`` with ``R = β ⊙ V − W_r S⁰`` (``W_r = β ⊙ exp(γ) ⊙ K``), so with ``dR = Tᵀ dU``:
    ``d(β ⊙ V) = dR``, ``dW_r = −dR S⁰ᵀ`` and ``dA = −dR Uᵀ`` (strict lower part).
    """
    _, strict = causal_masks(Q.shape[-2])
    e, Kh = c["e"], c["Kh"]
    dU = PtdO + _mm("bnhck,bnhvk->bnhcv", Kh, dN)
    dKh = _mm("bnhcv,bnhvk->bnhck", U, dN)
    dP = _mm("bnhiv,bnhjv->bnhij", dO, U)
    dQd = _mm("bnhcv,bnhvk->bnhck", dO, S0)
    dR = _mm("bnhji,bnhjv->bnhiv", c["T"], dU)
    dWr = -_mm("bnhcv,bnhvk->bnhck", dR, S0)
    dA = -jnp.where(strict, _mm("bnhiv,bnhjv->bnhij", dR, U), 0.0)
    db = jnp.sum(dR * V, -1) + jnp.sum(e * dWr * K, -1) + jnp.sum(dA * c["Bm"], -1)
    dQ = e * dQd
    dK = b[..., None] * e * dWr + c["Kd"] * dKh
    # ∂/∂g (γ = cumsum(g) in the chunk) gathered so that no term is added and later subtracted: an O(1) term that
    # cancels leaves float32 rounding far above the true ∂/∂g where decays are strong (≤ 3e-8 at −20 per step).
    #   terms ∝ e^{γ_r} (Q ⊙ e^γ, W_r):        ∂/∂g_t = Σ_{r ≥ t}          (reverse cumulative sum)
    #   terms ∝ e^{γ_C − γ_s} (K̂):             ∂/∂g_t = Σ_{s < t}          (exclusive forward cumulative sum)
    #   terms ∝ e^{γ_C} (diag(e^{γ_C}) S⁰):     ∂/∂g_t = the term, every t
    #   scores ∝ e^{γ_r − γ_i} (P, A):          ∂/∂g_t = Σ_{r ≥ t} Σ_{i < t}  (per head: exact rectangle sums)
    rev = lambda x, ax: jnp.flip(jnp.cumsum(jnp.flip(x, ax), ax), ax)  # noqa: E731

    def excl(x, ax):  # Σ_{s < t} x_s along ``ax`` (a shifted cumulative sum: nothing added and taken away)
        x = jnp.moveaxis(x, ax, -1)
        x = jnp.concatenate([jnp.zeros_like(x[..., :1]), jnp.cumsum(x[..., :-1], -1)], -1)
        return jnp.moveaxis(x, -1, ax)

    Ge = e * dQd * Q + dWr * c["Wr"]  # (B, n, H, C, K)
    Fk = dKh * Kh
    SdN = jnp.sum(S0 * dN, -2)  # (B, n, H, K): the γ_C side of diag(e^{γ_C}) S⁰
    if "dec" in c:  # per-key scores: cotangents through the same sub-chunk factors (P: r ≥ i; Bm: r > i)
        dxq, dkq, dgq = decayed_scores_vjp(dP, Q, K, c["dec"], strict=True)  # the diagonal added below
        dPd = jnp.diagonal(dP, axis1=-2, axis2=-1)[..., None]  # (B, n, H, C, 1)
        dxk, dkk, dgk = decayed_scores_vjp(b[..., None] * dA, K, K, c["dec"], strict=True)
        dQ = dQ + dxq + dPd * K
        dK = dK + dkq + dPd * Q + dxk + dkk
        # the scores' ∂/∂γ arrive per position as rows minus columns (+ on γ_r, − on γ_i; no diagonal terms)
        dg = rev(Ge + dgq + dgk, -2) + excl(Fk, -2) + (c["eC"] * SdN)[..., None, :]
    else:
        dqk = dP * c["D"]
        dkk = b[..., None] * dA * c["D"]  # dA is zero off the strict lower triangle
        dQ = dQ + _mm("bnhij,bnhjk->bnhik", dqk, K)
        dK = dK + _mm("bnhij,bnhik->bnhjk", dqk, Q) + _mm("bnhij,bnhjk->bnhik", dkk + jnp.swapaxes(dkk, -1, -2), K)
        E = jnp.where(strict, dP * P + dA * c["A"], 0.0)  # (B, n, H, r, i): ∂/∂(γ_r − γ_i) of the scores
        Cn = E.shape[-1]
        pre = excl(E, -1)  # Σ_{i < t} E_ri at column t
        incl = jnp.arange(Cn)[:, None] >= jnp.arange(Cn)[None, :]  # r ≥ t
        f = jnp.sum(Fk, -1)
        dg = (
            jnp.sum(jnp.where(incl, pre, 0.0), -2)
            + rev(jnp.sum(Ge, -1), -1)
            + excl(f, -1)
            + (c["eC"] * jnp.sum(SdN, -1))[..., None]
        )
    return dQ, dK, b[..., None] * dR, db, dg


def _chunked_bwd(C, scan_backend, res, cts):
    """Chunkwise backward, groups in reverse: the state cotangents ``h_n = M_nᵀ h_{n+1} + Q'_nᵀ dO_n`` (with
    ``Q'ᵀ dO = (Q ⊙ e^γ)ᵀ dO − Wᵀ Pᵀ dO``) over the group's chunks through the scan core, entered with the
    cotangent of the state leaving the group, then ``chunk_grads`` at the stored entering states."""
    q, k, v, beta, g, S0buf, Tbuf, Ubuf = res
    do, d_final = cts
    nc = q.shape[1] // C

    def body(start, n, carry):
        h_cols, bufs = carry
        Q, K, V, b, gam = _inputs(q, k, v, beta, g, start, n, C)
        S0, T, U = (lax.dynamic_slice_in_dim(r, start, n, 1) for r in (S0buf, Tbuf, Ubuf))
        c = chunk_terms(K, b, gam, T=T)
        P = _scores(Q, K, c)
        dO = _read(do, start, n, C)
        PtdO = _mm("bnhij,bnhiv->bnhjv", P, dO)
        loc = _mm("bnhck,bnhcv->vbhnk", Q * c["e"], dO) - _mm("bnhck,bnhcv->vbhnk", c["W"], PtdO)
        h_in = scan_state_columns_dense(_transition(c, True), loc, h_cols, scan_backend, reverse=True)
        dN = jnp.transpose(jnp.concatenate([h_in[:, :, :, 1:], h_cols[:, :, :, None]], axis=3), (1, 3, 2, 0, 4))
        dQ, dK, dV, db, dg = chunk_grads(Q, K, V, b, c, P, U, S0, dO, PtdO, dN)
        bufs = tuple(_write(buf, d, start) for buf, d in zip(bufs, (dQ, dK, dV, db, dg)))
        return h_in[:, :, :, 0], bufs

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v, beta, beta if g is None else g))
    h0, (dq, dk, dv, db, dg) = for_chunk_groups(body, (jnp.moveaxis(d_final, -1, 0), bufs), nc, _group(g), reverse=True)
    return dq, dk, dv, db, None if g is None else dg, jnp.moveaxis(h0, 0, -1)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@partial(jax.jit, static_argnames=("C", "scan_backend"))
def delta_rule_chunked(q, k, v, beta, log_decay, s0, C, scan_backend):
    """Chunked form (``custom_vjp``) in float32 on validated inputs: ``o (B, L, H, V)`` f32 and the final state."""
    L = q.shape[1]
    g = None if log_decay is None else pad_tokens(log_decay, C)
    o, final = _chunked(*(pad_tokens(x, C) for x in (q, k, v, beta)), g, s0, C, scan_backend)
    return o[:, :L], final


def _pallas_probe(q, k, v, beta, log_decay, C):
    """Compile the Pallas delta rule (its WY and output kernels and the Pallas dense chunk-state scan) for these
    shapes and dtypes; raises if it cannot run (also for a chunk size that is not a power of two)."""
    from algornn.scan_kernels._delta_rule.pallas import delta_rule_pallas

    check_chunk_size(C, power_of_two=True)
    B, _, H, K = q.shape
    s0 = jax.ShapeDtypeStruct((B, H, K, v.shape[-1]), jnp.float32)
    delta_rule_pallas.lower(*abstract(q, k, v, beta, log_decay), s0, chunk_size=C).compile()


def delta_rule(q, k, v, beta, *, log_decay=None, initial_state=None, chunk_size=64, backend=None):
    """Delta rule / gated DeltaNet: ``S_t = (I − β_t k_t k_tᵀ) diag(exp(g_t)) S_{t-1} + β_t k_t v_tᵀ``,
    ``o_t = S_tᵀ q_t`` — per step the rows of S decay first (``S ← diag(e^g) S``), then the delta update
    (``u = β (v − Sᵀ k)``, ``S ← S + k uᵀ``).

    Args:
      q, k: ``(B, L, H, K)`` (keys usually L2-normalised by the layer); v: ``(B, L, H, V)`` —
        float32 or bfloat16 (one dtype).
      beta: ``(B, L, H)`` writing strength in (0, 2).
      log_decay: None, ``(B, L, H)`` (one g ≤ 0 per head: gated DeltaNet) or ``(B, L, H, K)`` (one per key
        dimension, decaying the rows of S: per-key / channel-wise gates).
      initial_state: ``(B, H, K, V)``; default zeros.
      chunk_size: C for the chunked backends (a power of two for ``"pallas"``).
      backend: None (auto) | "reference" | "xla" | "pallas".

    Returns:
      ``o (B, L, H, V)`` in the inputs' dtype and the final state ``(B, H, K, V)`` float32.
    """
    check_backend(backend)
    B, L, H, K, V = check_qkv(q, k, v)
    check_beta(beta, B, L, H)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V)
    C = check_chunk_size(chunk_size)
    # auto: Pallas on a GPU where it compiles for these shapes, else XLA (the rule every op shares)
    probe = partial(_pallas_probe, q, k, v, beta, log_decay, C)
    key = probe_key(q=q, k=k, v=v, beta=beta, log_decay=log_decay, chunk_size=C)
    backend = resolve_backend(backend, op="delta_rule", probe=probe, key=key)
    check_chunk_size(C, power_of_two=backend == "pallas")
    if backend == "reference":
        return delta_rule_reference(q, k, v, beta, log_decay=log_decay, initial_state=initial_state)
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    g = None if kind == "none" else log_decay
    if backend == "pallas":
        from algornn.scan_kernels._delta_rule.pallas import delta_rule_pallas

        o, final = delta_rule_pallas(q, k, v, beta, g, s0, chunk_size=C)
    else:
        o, final = delta_rule_chunked(q, k, v, beta, g, s0, min(C, L), "xla")
    return o.astype(v.dtype), final
