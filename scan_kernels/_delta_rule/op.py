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

Packed sequences (``segment_ids``; docs/ops.md §delta_rule): every path takes start flags ``(B, L, H)`` and a reset
state ``s⁰``; in a chunk (``packing``) the scores and ``A`` keep pairs of one sequence, ``e = exp(γ̃)`` decays each
row from its sequence's start, rows of the sequence open at the chunk start use ``S⁰`` (``eo``, ``Wo``) and the
others ``s⁰``, and ``K̂`` keeps the chunk's last sequence: ``M = diag(o_C e_C) − K̂ᵀ W_o``,
``Δ = K̂ᵀ (Ũ − W_s s⁰) + diag((1 − o_C) e_C) s⁰``. Without packing every path is the one above, unchanged.
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
    chunk_cumsum,
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
from algornn.scan_kernels._common.key_decay import decayed_scores, decayed_scores_vjp, factored_or_exact, key_decay
from algornn.scan_kernels._common.packing import check_segment_ids, sequence_starts
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


def _group_gates(g, start, n, C):
    """The group's cumulative per-key log-gates ``(B, n, H, C, K)``: they decide ``factored_or_exact`` (the
    factored or the exact diagonal blocks, ``_common.key_decay``) and are handed on to ``_inputs``; None otherwise."""
    return None if g is None or g.ndim != 4 else chunk_cumsum(_read(g, start, n, C), 3)


def _read(x, start, n, C):
    """Chunks ``[start, start + n)`` of ``(B, NC·C, H, *F)`` heads first: ``(B, n, H, C, *F)``."""
    return jnp.swapaxes(read_chunks(x, start, n, C), 2, 3)


def _write(buf, y, start):
    """Write ``y (B, n, H, C, *F)`` into the token buffer ``buf (B, NC·C, H, *F)`` at chunk ``start``."""
    return write_chunks(buf, jnp.swapaxes(y, 2, 3), start)


def _lift(mask, ndim: int):
    """A ``(C, C)`` mask with leading unit axes up to ``ndim`` (explicit ranks: rank promotion raises)."""
    return mask.reshape((1,) * (ndim - mask.ndim) + mask.shape)


def _inputs(q, k, v, beta, g, start, n, C, st=None, gam=None):
    """The group's ``Q, K (B, n, H, C, K)``, ``V (B, n, H, C, V)``, ``β`` and cumulative log-gates ``γ``:
    ``(B, n, H, C)`` (zeros without gates) or, per key, ``(B, n, H, C, K)`` (``gam``: already computed); with packed
    sequences (``st``, the start flags ``(B, Lp, H)``) also the chunks' packing masks (``packing``)."""
    Q, K, V, b = (_read(x, start, n, C) for x in (q, k, v, beta))
    graw = None if g is None else _read(g, start, n, C)
    if gam is None:
        gam = jnp.zeros_like(b) if g is None else chunk_cumsum(graw, 3)  # over the chunk's C positions
    pk = None if st is None else packing(_read(st, start, n, C), graw, gam)
    return Q, K, V, b, gam, pk


def packing(st, graw, gam):
    """Masks of the sequences packed into chunks, from the start flags ``st (..., C)`` (1.0 where a sequence starts)
    and the raw and cumulative log-gates (``(..., C)`` or ``(..., C, K)``; ``graw`` None without gates).

    ``cnt`` numbers the sequences inside the chunk (0: the one open at the chunk start, entered with the carried
    state); ``same (..., C, C)`` pairs of one sequence; ``o (..., C)`` positions of sequence 0; ``last (..., C)``
    positions of the chunk's last sequence; ``o_last (...)`` whether that is sequence 0; ``gt`` the log-gates summed
    from each position's sequence start (γ̃: the decay of the state its sequence started from; γ for sequence 0).
    """
    cnt = jnp.cumsum(st, axis=-1)
    same = cnt[..., :, None] == cnt[..., None, :]
    o = cnt == 0
    gt = gam
    if graw is not None:  # γ̃_r = Σ_{s ≤ r, same sequence} g_s: a masked sum, not a difference of cumulative sums
        seg = (same & _lift(causal_masks(st.shape[-1])[0], same.ndim)).astype(jnp.float32)
        if gam.ndim > st.ndim:  # per key
            gt = jnp.where(o[..., None], gam, _mm("...rs,...sk->...rk", seg, graw))
        else:
            gt = jnp.where(o, gam, _mm("...rs,...s->...r", seg, graw))
    return dict(same=same, o=o, last=cnt == cnt[..., -1:], o_last=cnt[..., -1] == 0, gt=gt)


def _per_key(gam):
    return gam.ndim == 5


def chunk_terms(K, b, gam, T=None, pk=None, factored: bool = False):
    """The terms of a chunk's UT system, heads first ``(B, n, H, C, ·)``: decays, ``A = β_r Bm``, ``T = (I + A)⁻¹``
    (computed unless given), ``W``, ``K̂``. ``e = exp(γ)`` and ``Kd = exp(γ_C − γ)`` are kept broadcastable
    to ``(B, n, H, C, K)`` (a trailing 1 for per-head gates); per-key gates keep the sub-chunk decay factors
    ``dec`` for the scores instead of the ``(C, C)`` decay matrix ``D`` (with ``factored``, the factored diagonal
    blocks: only where ``key_factorable(gam)``).

    ``eo``, ``Wo`` and ``eCo`` are the parts of ``e``, ``W`` and ``e_C = exp(γ_C)`` that act on the carried state
    ``S⁰``: all of them for one sequence per row. With packed sequences (``pk``, from ``packing``) the scores and
    ``A`` are masked to pairs of one sequence (``T`` is then block diagonal), ``e = exp(γ̃)`` is each position's
    decay since its sequence started (from ``S⁰`` for sequence 0, from the reset state ``s⁰`` for the others),
    ``K̂`` keeps the chunk's last sequence only (the end state is built from it), and ``eo = o ⊙ e``,
    ``Wo = o ⊙ W``, ``eCo = o_last e_C`` (zero unless that sequence is open since the chunk start)."""
    incl, strict = causal_masks(K.shape[-2])
    if pk is not None:
        incl, strict = (_lift(m, pk["same"].ndim) & pk["same"] for m in (incl, strict))
    gt = gam if pk is None else pk["gt"]
    if _per_key(gam):  # A_ri = β_r Σ_d k_rd k_id exp(γ_rd − γ_id): secondary chunking, no (C, C, K) tensor
        dec = key_decay(gam, factored=factored)
        Bm = decayed_scores(K, K, dec, strict=True)
        Bm = Bm if pk is None else jnp.where(strict, Bm, 0.0)
        e, Kd = jnp.exp(gt), jnp.exp(gam[..., -1:, :] - gam)
        terms = dict(dec=dec, eC=e[..., -1, :])
    else:
        D = segment_decay(gam, incl)  # exp(γ_r − γ_i), r ≥ i (and one sequence, when packed)
        Bm = _mm("bnhik,bnhjk->bnhij", K, K) * jnp.where(strict, D, 0.0)
        e, Kd = jnp.exp(gt)[..., None], jnp.exp(gam[..., -1:] - gam)[..., None]
        terms = dict(D=D, eC=e[..., -1, 0])
    if pk is not None:
        Kd = Kd * pk["last"][..., None].astype(jnp.float32)
    A = b[..., None] * Bm
    T = unit_lower_inverse(A) if T is None else T
    Wr = b[..., None] * e * K
    W = _mm("bnhij,bnhjk->bnhik", T, Wr)
    terms |= dict(e=e, Bm=Bm, A=A, T=T, Wr=Wr, W=W, Kd=Kd, Kh=K * Kd, eo=e, Wo=W, eCo=terms["eC"])
    if pk is not None:
        o, o_last = pk["o"][..., None], pk["o_last"].astype(jnp.float32)
        of = o.astype(jnp.float32)
        eCo = terms["eC"] * (o_last[..., None] if _per_key(gam) else o_last)
        terms |= dict(same=pk["same"], last=pk["last"], o=o, o_last=pk["o_last"], eo=e * of, Wo=W * of, eCo=eCo)
    return terms


def _scores(Q, K, c):
    """``P = Q Kᵀ ⊙ exp(γ_r − γ_i) ⊙ [r ≥ i]`` (per key: ``P_ri = Σ_d q_rd k_id exp(γ_rd − γ_id)``), packed: only
    pairs of one sequence."""
    if "dec" in c:
        P = decayed_scores(Q, K, c["dec"])
        return P if "same" not in c else jnp.where(c["same"], P, 0.0)
    return _mm("bnhik,bnhjk->bnhij", Q, K) * c["D"]


def _transition(c, transpose):
    """``M = diag(exp(γ_C)) − K̂ᵀ W`` (or ``Mᵀ``) ``(B, H, n, K, K)`` — the layout of ``scan_state_columns_dense``;
    ``exp(γ_C)`` is one scalar per head or one per key."""
    K = c["Kh"].shape[-1]
    spec = "bnhck,bnhcj->bhnjk" if transpose else "bnhck,bnhcj->bhnkj"
    eC = jnp.swapaxes(c["eCo"], 1, 2)  # (B, H, n) or (B, H, n, K)
    eC = eC[..., None] if eC.ndim == 4 else eC[..., None, None]  # diagonal: symmetric, the same for Mᵀ
    return eC * jnp.eye(K, dtype=jnp.float32)[None, None, None] - _mm(spec, c["Kh"], c["Wo"])


def _reset_terms(c, Ut, s0r):
    """Packed chunks: the parts of ``U`` and of the end state that come from the reset state ``s⁰`` (sequences
    starting inside a chunk, ``o = 0``): ``Ũ − (1 − o) W s⁰`` ``(B, n, H, C, V)`` and ``diag((1 − o_last) e_C) s⁰``
    columns first ``(V, B, H, n, K)``."""
    Ws = c["W"] - c["Wo"]  # (1 − o) ⊙ W, exactly (o is 0 or 1)
    Ut = Ut - _mm("bnhck,bhkv->bnhcv", Ws, s0r)
    eCs = jnp.swapaxes(c["eC"] - c["eCo"], 1, 2)  # (B, H, n[, K])
    eCs = eCs if eCs.ndim == 4 else eCs[..., None]
    return Ut, eCs[None] * jnp.moveaxis(s0r, -1, 0)[:, :, :, None, :]


def _entering(s_cols, leave_cols):
    """States entering a group's chunks, ``(s_cols, leave_0, ..., leave_{n-2})`` from columns-first
    ``(V, B, H, ·, K)``, transposed as ``Sᵀ (B, n, H, V, K)``."""
    return jnp.transpose(jnp.concatenate([s_cols[:, :, :, None], leave_cols], axis=3), (1, 3, 2, 0, 4))


def _forward(q, k, v, beta, g, s0, C, group, scan_backend, keep, st=None, s0r=None):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, the final state ``(B, H, K, V)`` and,
    if ``keep``, the residuals: transposed entering states ``S⁰ᵀ (B, NC, H, V, K)``, ``T (B, NC, H, C, C)``
    and ``U (B, NC, H, C, V)``. Packed sequences: ``st`` start flags ``(B, NC·C, H)``, ``s0r`` the reset state
    ``(B, H, K, V)`` every sequence but the row's first starts from (``chunk_terms``)."""
    B, Lp, H, K = q.shape
    V = v.shape[-1]
    nc = Lp // C

    def one_group(start, s_cols, gk, n, factored):
        Q, Kc, Vc, b, gam, pk = _inputs(q, k, v, beta, g, start, n, C, st, gk)
        c = chunk_terms(Kc, b, gam, pk=pk, factored=factored)
        Ut = _mm("bnhij,bnhjv->bnhiv", c["T"], b[..., None] * Vc)
        if pk is not None:
            Ut, reset = _reset_terms(c, Ut, s0r)
        delta = _mm("bnhck,bnhcv->vbhnk", c["Kh"], Ut)
        if pk is not None:
            delta = delta + reset
        s_leave = scan_state_columns_dense(_transition(c, False), delta, s_cols, scan_backend)  # (V, B, H, n, K)
        S0 = _entering(s_cols, s_leave[:, :, :, :-1])
        U = Ut - _mm("bnhck,bnhvk->bnhcv", c["Wo"], S0)
        P = _scores(Q, Kc, c)
        o = _mm("bnhck,bnhvk->bnhcv", Q * c["eo"], S0) + _mm("bnhij,bnhjv->bnhiv", P, U)
        if pk is not None:
            o = o + _mm("bnhck,bhkv->bnhcv", Q * (c["e"] - c["eo"]), s0r)
        return s_leave[:, :, :, -1], o, (S0, c["T"], U) if keep else ()

    def body(start, n, carry):
        s_cols, o_buf, res = carry
        gk = _group_gates(g, start, n, C)
        s_cols, o, kept = factored_or_exact(gk, partial(one_group, n=n), start, s_cols, gk)
        res = tuple(lax.dynamic_update_slice_in_dim(r, x, start, 1) for r, x in zip(res, kept))
        return s_cols, _write(o_buf, o, start), res

    res = tuple(jnp.zeros((B, nc, H) + s, jnp.float32) for s in ((V, K), (C, C), (C, V))) if keep else ()
    s_cols, o, res = for_chunk_groups(body, (jnp.moveaxis(s0, -1, 0), jnp.zeros(v.shape, jnp.float32), res), nc, group)
    return o, jnp.moveaxis(s_cols, 0, -1), res


def _forward_step(S, xs, s0r=None, gam=None, factored: bool = False):
    """One step of ``_forward_only`` over G chunks: ``S (B·H, K, V)`` entering the step; ``xs`` the step's
    ``Q, K (G, B·H, C, K)``, ``V (G, B·H, C, V)``, ``β (G, B·H, C)``, log-gates ``(G, B·H, C[, K])`` (or None) and
    packed sequences' start flags ``(G, B·H, C)`` (or None; then ``s0r (B·H, K, V)`` is the reset state).
    The chunk terms (``chunk_terms``, one leading batch axis of 1) are batched over the G chunks; between them
    the chunks run in order, ``U_n = Ũ_n − W_n S_{n-1}``, ``S_n = diag(exp(γ_C)) S_{n-1} + K̂_nᵀ U_n`` (two
    ``(C, K)·(K, V)`` products per chunk: the transition ``M`` is never formed, saving its ``K×K`` product and the
    ``K²V`` product ``M S``). ``gam``: the cumulative log-gates ``(1, G, B·H, C[, K])`` if already computed.
    Returns the leaving state and ``O (G, B·H, C, V)``."""
    Q, K, V, b, g, st = (None if x is None else x[None] for x in xs)  # (1, G, B·H, C, ·)
    if gam is None:
        gam = jnp.zeros_like(b) if g is None else chunk_cumsum(g, 3)
    pk = None if st is None else packing(st, g, gam)
    c = chunk_terms(K, b, gam, pk=pk, factored=factored)
    Ut = _mm("bnhij,bnhjv->nhiv", c["T"], b[..., None] * V)  # Ũ = T (β ⊙ V)
    if pk is not None:  # the reset state's part: Ũ − (1 − o) W s⁰, and diag((1 − o_last) e_C) s⁰ in each end state
        Ut, reset = _reset_terms(c, Ut[None], s0r[None])
        Ut, reset = Ut[0], jnp.moveaxis(reset[:, 0], 0, -1)  # (G, B·H, C, V), (B·H, G, K, V)
    W, Kh = c["Wo"][0], c["Kh"][0]
    eC = c["eCo"][0]  # (G, B·H) or, per key, (G, B·H, K)
    eC = eC[..., None, None] if eC.ndim == 2 else eC[..., None]
    entering, Us = [], []
    for n in range(Ut.shape[0]):
        entering.append(S)
        Us.append(Ut[n] - _mm("hck,hkv->hcv", W[n], S))
        S = eC[n] * S + _mm("hck,hcv->hkv", Kh[n], Us[n])
        if pk is not None:
            S = S + reset[:, n]
    S0, U = jnp.stack(entering)[None], jnp.stack(Us)[None]  # (1, G, B·H, ·, V)
    o = _mm("bnhck,bnhkv->bnhcv", Q * c["eo"], S0) + _mm("bnhij,bnhjv->bnhiv", _scores(Q, K, c), U)
    if pk is not None:
        o = o + _mm("bnhck,hkv->bnhcv", Q * (c["e"] - c["eo"]), s0r)
    return S, o[0]


@partial(jax.jit, static_argnames=("C",))
def _forward_only(q, k, v, beta, g, s0, C, st=None, s0r=None):
    """Forward without residuals (the ``custom_vjp`` primal: no differentiation) on padded float32 inputs
    ``(B, Lp, H, ·)``: ``o (B, Lp, H, V)`` and the final state ``(B, H, K, V)``; packed sequences: start flags
    ``st (B, Lp, H)`` and the reset state ``s0r (B, H, K, V)``.

    One pass over steps of ``FORWARD_STEP // Cf`` chunks of ``Cf = min(C, FORWARD_CHUNK)`` tokens
    (``for_chunk_groups``), each step reading its slices heads-first ``(B·H, Cf, ·)``, computing its chunks' terms,
    outputs and the state it passes on, and writing its outputs in place; nothing is stored for a backward pass.
    """
    B, Lp, H, K = q.shape
    Cf = min(C, FORWARD_CHUNK)
    xs = tuple(None if x is None else pad_tokens(x, Cf) for x in (q, k, v, beta, g, st))  # a copy only if Cf ∤ Lp
    s0r = None if s0r is None else s0r.reshape(B * H, K, v.shape[-1])

    def body(start, n, carry):
        S, o = carry
        step_xs = tuple(None if x is None else read_chunks_heads_first(x, start, n, Cf) for x in xs)
        gk = step_xs[4]
        gam = None if gk is None or gk.ndim != 4 else chunk_cumsum(gk, 2)[None]  # (1, G, B·H, C, K)
        S, o_n = factored_or_exact(gam, lambda S, gam, factored: _forward_step(S, step_xs, s0r, gam, factored), S, gam)
        return S, write_chunks_heads_first(o, o_n, start)

    carry = (s0.reshape(B * H, K, v.shape[-1]), jnp.zeros(xs[2].shape, jnp.float32))
    S, o = for_chunk_groups(body, carry, xs[0].shape[1] // Cf, max(1, FORWARD_STEP // Cf))
    return o[:, :Lp], S.reshape(s0.shape)


@partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _chunked(q, k, v, beta, g, s0, st, s0r, C, scan_backend):
    # no differentiation: the residual-free one-pass forward (``_chunked_fwd`` keeps S⁰, T and U instead)
    return _forward_only(q, k, v, beta, g, s0, C, st, s0r)


def _chunked_fwd(q, k, v, beta, g, s0, st, s0r, C, scan_backend):
    o, final, res = _forward(q, k, v, beta, g, s0, C, _group(g), scan_backend, keep=True, st=st, s0r=s0r)
    return (o, final), (q, k, v, beta, g, st, s0r) + res


def chunk_grads(Q, K, V, b, c, P, U, S0, dO, PtdO, dN, s0r=None):
    """Input gradients of chunks' ``(O, S_end)`` at fixed entering states ``S0`` (transposed, ``(B, n, H, V, K)``),
    given the output cotangent ``dO``, ``Pᵀ dO`` and the leaving states' cotangents ``dN`` (as S0); returns
    ``dQ, dK, dV, dβ, dg`` (the log-gates' own gradient, ``γ = cumsum(g)`` inside the chunk; per head or per key)
    and, packed (``s0r``: the reset state ``(B, H, K, V)``), the reset state's gradient from these chunks.

    ``U = T R`` with ``R = β ⊙ V − W_r S⁰`` (``W_r = β ⊙ exp(γ) ⊙ K``), so with ``dR = Tᵀ dU``:
    ``d(β ⊙ V) = dR``, ``dW_r = −dR S⁰ᵀ`` and ``dA = −dR Uᵀ`` (strict lower part). Packed, each row r has its own
    entering state ``E_r`` (``S⁰`` where ``o_r``, else ``s⁰``; ``e = exp(γ̃)``): ``dW_r`` and ``d(Q ⊙ e)`` take
    ``E_r``, and ``ds⁰ = ((1 − o) ⊙ Q ⊙ e)ᵀ dO − ((1 − o) ⊙ W_r)ᵀ dR + (1 − o_last) diag(e_C) dN``.
    """
    _, strict = causal_masks(Q.shape[-2])
    packed = "same" in c
    if packed:
        strict = _lift(strict, c["same"].ndim) & c["same"]
        s0t = jnp.swapaxes(s0r, -1, -2)[:, None]  # (B, 1, H, V, K), as S0

        def by_row(x):  # x E_rᵀ: S⁰ on rows of the chunk's first sequence, s⁰ on the others
            return jnp.where(c["o"], _mm("bnhcv,bnhvk->bnhck", x, S0), _mm("bnhcv,bhvk->bnhck", x, s0t[:, 0]))
    else:

        def by_row(x):
            return _mm("bnhcv,bnhvk->bnhck", x, S0)

    e, Kh = c["e"], c["Kh"]
    dU = PtdO + _mm("bnhck,bnhvk->bnhcv", Kh, dN)
    dKh = _mm("bnhcv,bnhvk->bnhck", U, dN)
    dP = _mm("bnhiv,bnhjv->bnhij", dO, U)
    dQd = by_row(dO)
    dR = _mm("bnhji,bnhjv->bnhiv", c["T"], dU)
    dWr = -by_row(dR)
    dA = -jnp.where(strict, _mm("bnhiv,bnhjv->bnhij", dR, U), 0.0)
    # row sums as contractions: XLA CPU ran these multiply-reduce fusions 4-6x slower than the equivalent dots
    db = _mm("...v,...v->...", dR, V) + _mm("...k,...k->...", e * dWr, K) + _mm("...j,...j->...", dA, c["Bm"])
    dQ = e * dQd
    dK = b[..., None] * e * dWr + c["Kd"] * dKh
    # ∂/∂g (γ = cumsum(g) in the chunk) gathered so that no term is added and later subtracted: an O(1) term that
    # cancels leaves float32 rounding far above the true ∂/∂g where decays are strong (≤ 3e-8 at −20 per step).
    #   terms ∝ e^{γ_r} (Q ⊙ e^γ, W_r):        ∂/∂g_t = Σ_{r ≥ t}          (reverse cumulative sum)
    #   terms ∝ e^{γ_C − γ_s} (K̂):             ∂/∂g_t = Σ_{s < t}          (exclusive forward cumulative sum)
    #   terms ∝ e^{γ_C} (diag(e^{γ_C}) S⁰):     ∂/∂g_t = the term, every t
    #   scores ∝ e^{γ_r − γ_i} (P, A):          ∂/∂g_t = Σ_{r ≥ t} Σ_{i < t}  (per head: exact rectangle sums)
    # Packed, ``e = exp(γ̃)`` counts from each sequence's start: its sum runs over r ≥ t of t's sequence (``erev``,
    # a masked sum), e_C's over t of the chunk's last sequence; K̂ and the scores are masked to one sequence already.
    rev = partial(chunk_cumsum, reverse=True)
    if packed:
        seg = (c["same"] & _lift(causal_masks(Q.shape[-2])[0], 5)).astype(jnp.float32)  # (r, t): t ≤ r, one sequence
        erev = lambda x, ax: _mm("bnhrt,bnhr...->bnht...", seg, jnp.moveaxis(x, ax, 3))  # noqa: E731
    else:
        erev = rev

    def excl(x, ax):  # Σ_{s < t} x_s along ``ax`` (a shifted cumulative sum: nothing added and taken away)
        x = jnp.moveaxis(x, ax, -1)
        x = jnp.concatenate([jnp.zeros_like(x[..., :1]), chunk_cumsum(x[..., :-1], -1)], -1)
        return jnp.moveaxis(x, -1, ax)

    Ge = e * dQd * Q + dWr * c["Wr"]  # (B, n, H, C, K)
    Fk = dKh * Kh
    SdN = _mm("bnhvk,bnhvk->bnhk", S0, dN)  # (B, n, H, K): the γ_C side of diag(e^{γ_C}) S⁰
    if packed:  # the end state starts from s⁰ unless the chunk's last sequence is its first
        SdN = jnp.where(c["o_last"][..., None], SdN, _mm("bhvk,bnhvk->bnhk", s0t[:, 0], dN))
    if "dec" in c:  # per-key scores: cotangents through the same sub-chunk factors (P: r ≥ i; Bm: r > i)
        dPm = dP if not packed else jnp.where(c["same"], dP, 0.0)
        dxq, dkq, dgq = decayed_scores_vjp(dPm, Q, K, c["dec"], strict=True)  # the diagonal added below
        dPd = jnp.diagonal(dP, axis1=-2, axis2=-1)[..., None]  # (B, n, H, C, 1)
        dxk, dkk, dgk = decayed_scores_vjp(b[..., None] * dA, K, K, c["dec"], strict=True)
        dQ = dQ + dxq + dPd * K
        dK = dK + dkq + dPd * Q + dxk + dkk
        # the scores' ∂/∂γ arrive per position as rows minus columns (+ on γ_r, − on γ_i; no diagonal terms)
        if packed:
            eCdN = jnp.where(c["last"][..., None], (c["eC"] * SdN)[..., None, :], 0.0)
            dg = erev(Ge, -2) + rev(dgq + dgk, -2) + excl(Fk, -2) + eCdN
        else:
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
        eCdN = (c["eC"] * jnp.sum(SdN, -1))[..., None]
        if packed:
            eCdN = jnp.where(c["last"], eCdN, 0.0)
        dg = jnp.sum(jnp.where(incl, pre, 0.0), -2) + erev(jnp.sum(Ge, -1), -1) + excl(f, -1) + eCdN
    if not packed:
        return dQ, dK, b[..., None] * dR, db, dg
    so = 1.0 - c["o"].astype(jnp.float32)  # rows entered with s⁰
    eCs = c["eC"] - c["eCo"]  # (B, n, H[, K])
    eCs = eCs[..., None, :] if eCs.ndim == 4 else eCs[..., None, None]
    ds0 = (
        _mm("bnhck,bnhcv->bhkv", so * e * Q, dO)
        - _mm("bnhck,bnhcv->bhkv", so * c["Wr"], dR)
        + jnp.swapaxes(jnp.sum(eCs * dN, 1), -1, -2)
    )
    return dQ, dK, b[..., None] * dR, db, dg, ds0


def _chunked_bwd(C, scan_backend, res, cts):
    """Chunkwise backward, groups in reverse: the state cotangents ``h_n = M_nᵀ h_{n+1} + Q'_nᵀ dO_n`` (with
    ``Q'ᵀ dO = (Q ⊙ e^γ)ᵀ dO − Wᵀ Pᵀ dO``) over the group's chunks through the scan core, entered with the
    cotangent of the state leaving the group, then ``chunk_grads`` at the stored entering states."""
    q, k, v, beta, g, st, s0r, S0buf, Tbuf, Ubuf = res
    do, d_final = cts
    nc = q.shape[1] // C

    def one_group(start, h_cols, gk, n, factored):
        Q, K, V, b, gam, pk = _inputs(q, k, v, beta, g, start, n, C, st, gk)
        S0, T, U = (lax.dynamic_slice_in_dim(r, start, n, 1) for r in (S0buf, Tbuf, Ubuf))
        c = chunk_terms(K, b, gam, T=T, pk=pk, factored=factored)
        P = _scores(Q, K, c)
        dO = _read(do, start, n, C)
        PtdO = _mm("bnhij,bnhiv->bnhjv", P, dO)
        loc = _mm("bnhck,bnhcv->vbhnk", Q * c["eo"], dO) - _mm("bnhck,bnhcv->vbhnk", c["Wo"], PtdO)
        h_in = scan_state_columns_dense(_transition(c, True), loc, h_cols, scan_backend, reverse=True)
        dN = jnp.transpose(jnp.concatenate([h_in[:, :, :, 1:], h_cols[:, :, :, None]], axis=3), (1, 3, 2, 0, 4))
        return h_in[:, :, :, 0], chunk_grads(Q, K, V, b, c, P, U, S0, dO, PtdO, dN, s0r)

    def body(start, n, carry):
        h_cols, bufs, ds0r = carry
        gk = _group_gates(g, start, n, C)
        h_cols, grads = factored_or_exact(gk, partial(one_group, n=n), start, h_cols, gk)
        bufs = tuple(_write(buf, d, start) for buf, d in zip(bufs, grads[:5]))
        return h_cols, bufs, (ds0r if st is None else ds0r + grads[5])

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v, beta, beta if g is None else g))
    ds0r = None if st is None else jnp.zeros(s0r.shape, jnp.float32)
    carry = (jnp.moveaxis(d_final, -1, 0), bufs, ds0r)
    h0, (dq, dk, dv, db, dg), ds0r = for_chunk_groups(body, carry, nc, _group(g), reverse=True)
    dst = None if st is None else jnp.zeros_like(st)
    return dq, dk, dv, db, None if g is None else dg, jnp.moveaxis(h0, 0, -1), dst, ds0r


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@partial(jax.jit, static_argnames=("C", "scan_backend"))
def delta_rule_chunked(q, k, v, beta, log_decay, s0, C, scan_backend, starts=None, s0r=None):
    """Chunked form (``custom_vjp``) in float32 on validated inputs: ``o (B, L, H, V)`` f32 and the final state.
    Packed sequences: ``starts`` float ``(B, L, H)`` (1.0 where a sequence starts; the inputs already zero on
    padding) and the reset state ``s0r (B, H, K, V)``."""
    L = q.shape[1]
    g = None if log_decay is None else pad_tokens(log_decay, C)
    st = None if starts is None else pad_tokens(starts, C)
    o, final = _chunked(*(pad_tokens(x, C) for x in (q, k, v, beta)), g, s0, st, s0r, C, scan_backend)
    return o[:, :L], final


def _pallas_probe(q, k, v, beta, log_decay, C, packed=False):
    """Compile the Pallas delta rule (its WY and output kernels and the Pallas dense chunk-state scan) for these
    shapes and dtypes (``packed``: the packed-sequence kernels); raises if it cannot run (also for a chunk size that
    is not a power of two)."""
    from algornn.scan_kernels._delta_rule.pallas import delta_rule_pallas

    check_chunk_size(C, power_of_two=True)
    B, L, H, K = q.shape
    s0 = jax.ShapeDtypeStruct((B, H, K, v.shape[-1]), jnp.float32)
    pk = (jax.ShapeDtypeStruct((B, L, H), jnp.float32), s0) if packed else ()
    delta_rule_pallas.lower(*abstract(q, k, v, beta, log_decay), s0, *pk, chunk_size=C).compile()


def delta_rule(
    q,
    k,
    v,
    beta,
    *,
    log_decay=None,
    initial_state=None,
    segment_ids=None,
    reset_state=None,
    chunk_size=64,
    backend=None,
):
    """Delta rule / gated DeltaNet: ``S_t = (I − β_t k_t k_tᵀ) diag(exp(g_t)) S_{t-1} + β_t k_t v_tᵀ``,
    ``o_t = S_tᵀ q_t`` — per step the rows of S decay first (``S ← diag(e^g) S``), then the delta update
    (``u = β (v − Sᵀ k)``, ``S ← S + k uᵀ``).

    Args:
      q, k: ``(B, L, H, K)`` (keys usually L2-normalised by the layer); v: ``(B, L, H, V)`` —
        float32 or bfloat16 (one dtype).
      beta: ``(B, L, H)`` writing strength in (0, 2).
      log_decay: None, ``(B, L, H)`` (one g ≤ 0 per head: gated DeltaNet) or ``(B, L, H, K)`` (one per key
        dimension, decaying the rows of S: per-key / channel-wise gates).
      initial_state: ``(B, H, K, V)``; default zeros. With ``segment_ids``, the state every sequence starts from.
      segment_ids: None or int ``(B, L)``: sequences packed into each row (0 = padding; a position starts a new
        sequence at t = 0 and where the id changes). Every sequence starts from ``initial_state`` (its first step
        decays it, as when run alone); padding positions leave the state as it is and output 0; the final state is
        the one after the row's last real sequence. Exact isolation on every backend: a packed row equals each
        sequence run alone, forward and gradients (docs/ops.md §delta_rule, "Packed sequences").
      reset_state: None or ``(B, H, K, V)``, with ``segment_ids`` only: the state sequences starting at t > 0
        start from instead of ``initial_state`` (a long packed row run in slices passes the state leaving the
        previous slice as ``initial_state`` and the row's own initial state here).
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
    check_segment_ids(segment_ids, B, L)
    if reset_state is not None and segment_ids is None:
        raise ValueError("reset_state is the state packed sequences start from: it needs segment_ids (got None)")
    check_state(reset_state, B, H, K, V, name="reset_state")
    C = check_chunk_size(chunk_size)
    # auto: Pallas on a GPU where it compiles for these shapes, else XLA (the rule every op shares)
    probe = partial(_pallas_probe, q, k, v, beta, log_decay, C, packed=segment_ids is not None)
    # (packed: None for unpacked calls, which probe_key leaves out: their cache key is as before)
    key = probe_key(q=q, k=k, v=v, beta=beta, log_decay=log_decay, chunk_size=C, packed=segment_ids is not None or None)
    backend = resolve_backend(backend, op="delta_rule", probe=probe, key=key)
    check_chunk_size(C, power_of_two=backend == "pallas")
    if backend == "reference":
        kw = dict(log_decay=log_decay, initial_state=initial_state, segment_ids=segment_ids, reset_state=reset_state)
        return delta_rule_reference(q, k, v, beta, **kw)
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    g = None if kind == "none" else log_decay
    packed = ()
    if segment_ids is not None:
        q, k, beta, g, starts = _packed_inputs(q, k, beta, g, segment_ids)
        packed = (starts, s0 if reset_state is None else reset_state.astype(jnp.float32))
    if backend == "pallas":
        from algornn.scan_kernels._delta_rule.pallas import delta_rule_pallas

        o, final = delta_rule_pallas(q, k, v, beta, g, s0, *packed, chunk_size=C)
    else:
        o, final = delta_rule_chunked(q, k, v, beta, g, s0, min(C, L), "xla", *packed)
    return o.astype(v.dtype), final


def _packed_inputs(q, k, beta, g, segment_ids):
    """Padding made identity steps (q, k, β and g zero there: no write, no decay, output 0; their gradients 0) and
    the sequence starts as float flags ``(B, L, H)``, the layout of β."""
    valid, starts = sequence_starts(segment_ids)
    starts = starts.at[:, 0].set(False)  # t = 0 continues the carried state, initial_state: no reset needed
    H = q.shape[2]
    zero = lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype))  # noqa: E731
    q, k = (zero(x, valid[:, :, None, None]) for x in (q, k))
    beta = zero(beta, valid[:, :, None])
    if g is not None:
        g = zero(g, valid[:, :, None, None] if g.ndim == 4 else valid[:, :, None])
    return q, k, beta, g, jnp.broadcast_to(starts[:, :, None], starts.shape + (H,)).astype(jnp.float32)
