"""Linear attention (decayed / gated): chunkwise-parallel XLA form and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,      o_t = S_tᵀ q_t           (per head, S ∈ R^{K×V})

Chunkwise form (GLA paper, Yang et al. 2024, §3–4; Mamba-2 SSD): with γ the cumulative log-gate inside
a chunk and S⁰ the state entering it,

    O      = (Q Kᵀ ⊙ exp(γ_i − γ_j) ⊙ [i ≥ j]) V  +  (Q ⊙ exp(γ)) S⁰          intra + inter
    S_end  = exp(γ_C) S⁰ + (K ⊙ exp(γ_C − γ))ᵀ V                           passed by ``linear_scan``

All exponents are ≤ 0. Inputs stay in their ``(B, L, H, ·)`` layout: ``for_chunk_groups`` walks groups of
``CHUNK_GROUP`` chunks in sequence, reading slices and writing outputs in place (heads as a batch dim of
the einsums). Gradients: ``custom_vjp`` — the state cotangents ``h_n = exp(γ_C,n) h_{n+1} + (Q ⊙ e^γ)ᵀ dO``
run backwards through ``linear_scan``, then each group is differentiated on its own (``jax.vjp``, its
intra-chunk terms recomputed) from its entering state and its leaving state's cotangent. Memory
O(B·L·H·(K+V) + NC·B·H·K·V + group·C²) — no per-token K×V state is ever formed (tested with
``memory_analysis``).

Packed sequences (``segment_ids``, ``_packed``): the chunked forms run every sequence from zero with the masks of
:class:`Segments` (scores within one sequence; the carried state read only by the sequence open at the chunk start;
a chunk's end state from the keys of the sequence open at its end, and the carried state only if no sequence starts
in the chunk); the initial state is added by linearity, ``S_t = P_t + diag(exp(γ̂_t)) S_0`` with ``γ̂`` the
log-decay since the start of t's sequence. The cumulative gates are not restarted at a start, so every exponent
stays ≤ 0.

Without differentiation (the ``custom_vjp`` primal) ``_forward_only`` runs instead: one loop over steps of
``FORWARD_STEP`` tokens in sub-chunks of ``FORWARD_CHUNK``, heads-first ``(B·H, C, ·)``, each step computing its
chunks' outputs and passing its state on — no chunk states are stored and nothing is read twice.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.backend import abstract, check_backend, probe_key, resolve_backend
from algornn.scan_kernels._common.chunk_utils import (
    FORWARD_CHUNK,
    FORWARD_STEP,
    causal_masks,
    entering_states,
    factor_midpoint,
    for_chunk_groups,
    leaving_cotangents,
    pad_tokens,
    read_chunks,
    read_chunks_heads_first,
    segment_decay,
    write_chunks,
    write_chunks_heads_first,
    write_states,
)
from algornn.scan_kernels._common.fast_weight_checks import check_chunk_size, check_log_decay, check_qkv, check_state
from algornn.scan_kernels._common.key_decay import key_decayed_scores
from algornn.scan_kernels._common.packing import check_segment_ids, segment_masks
from algornn.scan_kernels._linear_attention.chunk_states import scan_chunk_states_diag, sequence_log_decay
from algornn.scan_kernels._linear_attention.reference import linear_attention_reference, safe_denominator

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)

# Chunks per step of the sequential, rematerialised map over chunk groups (bounds the O(C²) temporaries;
# per-key gates hold (C, c, K) sub-chunk decays per chunk, see _common.key_decay, so they take fewer chunks per step).
CHUNK_GROUP = 16
KEY_GATE_CHUNK_GROUP = 2
# Sub-chunk of the per-key scores (``_common.key_decay``): GLA fwd+bwd (B = 2, L = 4096, H = 4, K = V = C = 64,
# one CPU thread) took ~6% less time with 8 than with 16 (four alternating runs; noisy, shared machine).
KEY_SUB_CHUNK = 8


def _gates(g, kind):
    """Cumulative log-gates γ in each chunk: ``g (B, n, C, H[, K])`` -> ``(B, n, H, C[, K])``; None without gates."""
    return None if kind == "none" else jnp.moveaxis(jnp.cumsum(g, axis=2), 3, 2)


class Segments(NamedTuple):
    """Where packed sequences begin inside each chunk (``segment_ids``), as masks over the chunk's positions.

    From ``R``, the running count of sequence starts inside the chunk (``R_i`` counts the starts at 0 … i):

    * ``same (..., C, C)``: i and j lie in one sequence (no start in (j, i]): the intra-chunk scores keep only these;
    * ``open (..., C)``: no start in [0, i]: query i still reads the state carried into the chunk;
    * ``end (..., C)``: no start in (j, C − 1]: key j belongs to the sequence open at the chunk end, so it enters
      the chunk's end state;
    * ``keep (...)``: no start in the chunk: the carried state enters its end state (decayed).

    A sequence that starts inside a chunk starts from zero here; the op adds the initial state's part outside
    the chunked form (``linear_attention``)."""

    same: jax.Array
    open: jax.Array
    end: jax.Array
    keep: jax.Array


def segments(R):
    """:class:`Segments` from the running start counts ``R (..., C)`` (float32, exact integers)."""
    last = R[..., -1:]
    return Segments(R[..., :, None] == R[..., None, :], R == 0.0, R == last, last[..., 0] == 0.0)


def _chunk_segments(rc):
    """:class:`Segments` in the chunk layout ``(B, n, H, C)`` from the start flags ``rc (B, n, C, H)``; None
    (unpacked) passes."""
    return None if rc is None else segments(jnp.moveaxis(jnp.cumsum(rc, axis=2), 3, 2))


def _lift(mask, ndim: int):
    """``mask`` with leading unit axes up to ``ndim`` (explicit ranks: rank promotion raises in the tests)."""
    return mask.reshape((1,) * (ndim - mask.ndim) + mask.shape)


def _scores(qc, kc, gam, kind, seg=None):
    """Masked, decayed intra-chunk scores ``(B, n, H, C, C)``: ``Σ_k q_ik k_jk exp(γ_ik − γ_jk)``, i ≥ j (and, packed,
    i and j in one sequence)."""
    if kind == "key":  # the exponents cannot be split into a q- and a k-factor without overflow: secondary chunking
        s = key_decayed_scores(jnp.swapaxes(qc, 2, 3), jnp.swapaxes(kc, 2, 3), gam, False, KEY_SUB_CHUNK)
        return s if seg is None else jnp.where(seg.same, s, 0.0)
    incl, _ = causal_masks(qc.shape[2])
    if seg is not None:
        incl = _lift(incl, seg.same.ndim) & seg.same
    qk = _mm("bnihk,bnjhk->bnhij", qc, kc)
    return jnp.where(incl, qk, 0.0) if kind == "none" else qk * segment_decay(gam, incl)


def _chunk_layout(mask):
    """A ``(B, n, H, C)`` mask as a ``(B, n, C, H, 1)`` float32 factor of the chunk layout."""
    return jnp.swapaxes(mask, 2, 3)[..., None].astype(jnp.float32)


def chunk_state(kc, vc, gam, kind, seg=None):
    """Each chunk's own state contribution ``Δ = (K ⊙ exp(γ_C − γ))ᵀ V`` ``(B, H, n, K, V)`` and its total
    decay ``exp(γ_C)`` (``(B, H, n, 1, 1)`` or ``(B, H, n, K, 1)``; None without gates and unpacked).
    ``kc (B, n, C, H, K)``, ``vc (B, n, C, H, V)``, ``gam`` from ``_gates``; packed (``seg``), only the keys of the
    sequence open at the chunk end count and the decay is 0 where a sequence starts in the chunk."""
    if kind == "none":
        decay = None
    elif kind == "scalar":
        last = gam[..., -1:]  # (B, n, H, 1)
        kc = kc * jnp.swapaxes(jnp.exp(last - gam), 2, 3)[..., None]
        decay = jnp.swapaxes(jnp.exp(last), 1, 2)[..., None]  # (B, H, n, 1, 1)
    else:
        last = gam[..., -1:, :]  # (B, n, H, 1, K)
        kc = kc * jnp.swapaxes(jnp.exp(last - gam), 2, 3)
        decay = jnp.swapaxes(jnp.swapaxes(jnp.exp(last), 1, 2), -1, -2)  # (B, H, n, K, 1)
    if seg is not None:
        kc = kc * _chunk_layout(seg.end)
        keep = jnp.swapaxes(seg.keep, 1, 2).astype(jnp.float32)[..., None, None]  # (B, H, n, 1, 1)
        decay = keep if decay is None else decay * keep
    return _mm("bnchk,bnchv->bhnkv", kc, vc), decay


def _query_decay(qc, gam, kind, seg=None):
    """``Q ⊙ exp(γ)`` in the chunk layout ``(B, n, C, H, K)`` (packed: 0 for queries of sequences started in the
    chunk, which do not read the carried state)."""
    if kind != "none":
        qc = qc * jnp.swapaxes(jnp.exp(gam if kind == "key" else gam[..., None]), 2, 3)
    return qc if seg is None else qc * _chunk_layout(seg.open)


def chunk_output(qc, kc, vc, gam, s_prev, kind, seg=None):
    """``O = scores V + (Q ⊙ exp(γ)) S⁰`` per chunk ``(B, n, C, H, V)``; ``s_prev (B, H, n, K, V)`` entering states."""
    intra = _mm("bnhij,bnjhv->bnihv", _scores(qc, kc, gam, kind, seg), vc)
    return intra + _mm("bnihk,bhnkv->bnihv", _query_decay(qc, gam, kind, seg), s_prev)


def _chunk_decays(g, kind, C, r=None):
    """Total decay ``exp(Σ g)`` of every chunk, broadcastable to ``(B, H, NC, K, V)``; ``g (B, NC·C, H[, K])``
    (None without gates). Packed (start flags ``r (B, NC·C, H)``): 0 for chunks in which a sequence starts."""
    if r is None and g is None:
        return jnp.ones((), jnp.float32)
    x = r if g is None else g
    B, Lp, H = x.shape[:3]
    keep = None
    if r is not None:
        keep = jnp.swapaxes(r.reshape(B, Lp // C, C, H).sum(axis=2) == 0.0, 1, 2).astype(jnp.float32)[..., None, None]
    if g is None:
        return keep
    tot = jnp.exp(g.reshape((B, Lp // C, C) + g.shape[2:]).sum(axis=2))  # (B, NC, H[, K])
    tot = jnp.swapaxes(tot, 1, 2)[..., None, None] if kind == "scalar" else jnp.swapaxes(tot, 1, 2)[..., None]
    return tot if keep is None else tot * keep


def _forward(q, k, v, g, s0, r, kind, C, group, scan_backend):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, the end-of-chunk states and the chunk
    decays (kept for the backward's reverse scan). ``r (B, NC·C, H)``: sequence-start flags (packed) or None."""
    B, Lp, H, K = q.shape
    nc = Lp // C
    gc = lambda start, n: None if g is None else read_chunks(g, start, n, C)  # noqa: E731
    sc = lambda start, n: None if r is None else _chunk_segments(read_chunks(r, start, n, C))  # noqa: E731

    def states(start, n, buf):
        kc, vc = read_chunks(k, start, n, C), read_chunks(v, start, n, C)
        delta, _ = chunk_state(kc, vc, _gates(gc(start, n), kind), kind, sc(start, n))
        return write_states(buf, delta, start)

    delta = for_chunk_groups(states, jnp.zeros((B, H, nc, K, v.shape[-1]), jnp.float32), nc, group)
    decay = _chunk_decays(g, kind, C, r)
    s_end = scan_chunk_states_diag(decay, delta, s0, scan_backend)

    def output(start, n, buf):
        qc, kc, vc = (read_chunks(x, start, n, C) for x in (q, k, v))
        s_prev = entering_states(s_end, s0, start, n)
        o = chunk_output(qc, kc, vc, _gates(gc(start, n), kind), s_prev, kind, sc(start, n))
        return write_chunks(buf, o, start)

    return for_chunk_groups(output, jnp.zeros(v.shape, jnp.float32), nc, group), s_end, decay


def _forward_step(S, xs, kind, incl):
    """One step of ``_forward_only`` over G chunks: ``S (B·H, K, V)`` the state entering the step, ``xs`` the
    step's ``Q (G, B·H, C, K)``, keys transposed ``Kt (G, B·H, K, C)``, ``V (G, B·H, C, V)``, log-gates
    ``(G, B·H, C[, K])`` (None without gates) and sequence-start flags ``(G, B·H, C)`` (None unpacked;
    :class:`Segments`).
    The chunks' scores and state contributions are batched matmuls in the plain ``(m, k) · (k, n)`` form (the keys
    come transposed, so neither Q Kᵀ nor Kᵀ V contracts a transposed operand); the G-step state recurrence
    between them is elementwise. Returns the state leaving the step and ``O (G, B·H, C, V)``."""
    Q, Kt, V, g, r = xs
    seg = None if r is None else segments(jnp.cumsum(r, axis=2))
    if seg is not None:
        incl = incl[None, None] & seg.same
    if kind == "none":
        P, Qd, Kht, dec = jnp.where(incl, _mm("nbik,nbkj->nbij", Q, Kt), 0.0), Q, Kt, None
    else:
        gam = jnp.cumsum(g, axis=2)  # γ: cumulative log-gates inside each chunk
        if kind == "scalar":
            mid, ok = factor_midpoint(gam)

            def factored(Q, Kt, gam):  # exp(γ_i − γ_j) = exp(γ_i − μ) exp(μ − γ_j): no (C, C) exponentials
                qd, kd = jnp.exp(gam - mid)[..., :, None], jnp.exp(mid - gam)[..., None, :]
                return jnp.where(incl, _mm("nbik,nbkj->nbij", Q * qd, Kt * kd), 0.0)

            exact = lambda Q, Kt, gam: _mm("nbik,nbkj->nbij", Q, Kt) * segment_decay(gam, incl)  # noqa: E731
            P = lax.cond(ok, factored, exact, Q, Kt, gam)
            gam = gam[..., None]
        else:  # exponents γ_ik − γ_jk cannot be split into a q- and a k-factor without overflow: sub-chunks
            P = key_decayed_scores(Q, jnp.swapaxes(Kt, -1, -2), gam, False, min(KEY_SUB_CHUNK, Q.shape[-2]))
            P = P if seg is None else jnp.where(seg.same, P, 0.0)
        last = gam[:, :, -1:]  # (G, B·H, 1, 1|K)
        Qd, Kht = Q * jnp.exp(gam), Kt * jnp.swapaxes(jnp.exp(last - gam), -1, -2)
        dec = jnp.swapaxes(jnp.exp(last), -1, -2)  # (G, B·H, 1|K, 1): rows of S decay
    if seg is not None:  # a sequence started in the chunk: its queries skip, its end state drops the carried state
        f32 = lambda m: m.astype(jnp.float32)[..., None]  # noqa: E731
        Qd, Kht = Qd * f32(seg.open), Kht * jnp.swapaxes(f32(seg.end), -1, -2)
        keep = f32(seg.keep)[..., None]  # (G, B·H, 1, 1)
        dec = keep if dec is None else dec * keep
    delta = _mm("nbkc,nbcv->nbkv", Kht, V)  # Δ = (K ⊙ exp(γ_C − γ))ᵀ V per chunk
    entering = []
    for n in range(delta.shape[0]):  # S_n = exp(γ_C,n) ⊙ S_{n-1} + Δ_n
        entering.append(S)
        S = delta[n] + (S if dec is None else dec[n] * S)
    return S, _mm("nbij,nbjv->nbiv", P, V) + _mm("nbck,nbkv->nbcv", Qd, jnp.stack(entering))


@partial(jax.jit, static_argnames=("kind", "C"))
def _forward_only(q, k, v, g, s0, r, kind, C):
    """Forward without residuals (the ``custom_vjp`` primal: no differentiation) on padded float32 inputs
    ``(B, Lp, H, ·)``: ``o (B, Lp, H, V)`` and the final state ``(B, H, K, V)``. ``r (B, Lp, H)``: sequence-start
    flags (packed) or None.

    One pass over steps of ``FORWARD_STEP // Cf`` chunks of ``Cf = min(C, FORWARD_CHUNK)`` tokens
    (``for_chunk_groups``), each step reading its slices heads-first ``(B·H, Cf, ·)``, computing its chunks'
    outputs and the state it passes on, and writing its outputs in place — no separate state pass, no stored chunk
    states, no transposed copy of a whole input, and a step's temporaries stay in cache.
    """
    B, Lp, H, K = q.shape
    Cf = min(C, FORWARD_CHUNK)
    q, k, v, g, r = (None if x is None else pad_tokens(x, Cf) for x in (q, k, v, g, r))  # a copy only if Cf ∤ Lp
    incl, _ = causal_masks(Cf)

    def body(start, n, carry):
        S, o = carry
        xs = [None if x is None else read_chunks_heads_first(x, start, n, Cf) for x in (q, k, v, g, r)]
        xs[1] = jnp.swapaxes(xs[1], -1, -2)  # keys (n, B·H, K, C), transposed in the same copy
        S, o_n = _forward_step(S, xs, kind, incl)
        return S, write_chunks_heads_first(o, o_n, start)

    carry = (s0.reshape(B * H, K, v.shape[-1]), jnp.zeros(v.shape, jnp.float32))
    S, o = for_chunk_groups(body, carry, q.shape[1] // Cf, max(1, FORWARD_STEP // Cf))
    return o[:, :Lp], S.reshape(s0.shape)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _chunked(q, k, v, g, s0, r, kind, C, scan_backend):
    # no differentiation: the residual-free one-pass forward (``_chunked_fwd`` keeps the chunk states instead)
    return _forward_only(q, k, v, g, s0, r, kind, C)


def _chunked_fwd(q, k, v, g, s0, r, kind, C, scan_backend):
    o, s_end, decay = _forward(q, k, v, g, s0, r, kind, C, _group(kind), scan_backend)
    return (o, s_end[:, :, -1]), (q, k, v, g, s0, r, s_end, decay)


def _chunked_bwd(kind, C, scan_backend, res, cts):
    """Chunkwise backward: the state cotangents run backwards through the scan core, then every chunk group
    is differentiated on its own (``jax.vjp``, recomputing its intra-chunk terms) given its entering state and
    the cotangent of its leaving state. Memory O(B·L·H·(K+V) + NC·B·H·K·V + group·C²)."""
    q, k, v, g, s0, r, s_end, decay = res
    do, d_final = cts
    B, Lp, H, K = q.shape
    nc, group = Lp // C, _group(kind)
    gc = lambda start, n: None if g is None else read_chunks(g, start, n, C)  # noqa: E731
    sc = lambda start, n: None if r is None else _chunk_segments(read_chunks(r, start, n, C))  # noqa: E731

    def local(start, n, buf):  # ∂O/∂S⁰ᵀ dO = (Q ⊙ exp(γ))ᵀ dO per chunk
        qd = _query_decay(read_chunks(q, start, n, C), _gates(gc(start, n), kind), kind, sc(start, n))
        return write_states(buf, _mm("bnchk,bnchv->bhnkv", qd, read_chunks(do, start, n, C)), start)

    dloc = for_chunk_groups(local, jnp.zeros(s_end.shape, jnp.float32), nc, group)
    h = scan_chunk_states_diag(decay, dloc, d_final, scan_backend, reverse=True)  # cotangents of entering states

    def grads(start, n, bufs):
        s_prev, d_next = entering_states(s_end, s0, start, n), leaving_cotangents(h, d_final, start, n)
        seg = sc(start, n)

        def f(qc, kc, vc, *gg):
            gam = _gates(gg[0], kind) if gg else None
            delta, dec = chunk_state(kc, vc, gam, kind, seg)
            s_leave = delta + (s_prev if dec is None else dec * s_prev)
            return chunk_output(qc, kc, vc, gam, s_prev, kind, seg), s_leave

        xs = tuple(read_chunks(x, start, n, C) for x in (q, k, v) + (() if g is None else (g,)))
        _, vjp = jax.vjp(f, *xs)
        dxs = vjp((read_chunks(do, start, n, C), d_next))
        return tuple(write_chunks(b, d, start) for b, d in zip(bufs, dxs))

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v) + (() if g is None else (g,)))
    bufs = for_chunk_groups(grads, bufs, nc, group, reverse=True)
    dq, dk, dv = bufs[:3]
    return dq, dk, dv, (None if g is None else bufs[3]), h[:, :, 0], None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _group(kind):
    return KEY_GATE_CHUNK_GROUP if kind == "key" else CHUNK_GROUP


@partial(jax.jit, static_argnames=("kind", "C", "scan_backend"))
def linear_attention_chunked(q, k, v, log_decay, s0, kind, C, scan_backend, starts=None):
    """Chunked form in float32 on validated inputs (``custom_vjp``). ``s0 (B, H, K, V)`` float32; ``starts``:
    None, or the sequence-start flags ``(B, L, H)`` float32 of packed sequences, which then start from zero here
    (the caller masks padding and adds the initial state's part, ``linear_attention``).

    Returns ``o (B, L, H, V)`` float32 and the final state ``(B, H, K, V)``.
    """
    L = q.shape[1]
    g = None if kind == "none" else pad_tokens(log_decay, C)
    r = None if starts is None else pad_tokens(starts, C)
    o, final = _chunked(pad_tokens(q, C), pad_tokens(k, C), pad_tokens(v, C), g, s0, r, kind, C, scan_backend)
    return o[:, :L], final


def with_normaliser(v, initial_state, normalize, B, H, K):
    """Fold the normaliser z into the value/state: ``v -> [v, 1]``, ``S -> [S, z]`` (z is S's extra column)."""
    if initial_state is None:
        s0 = None
    elif normalize:
        s0 = jnp.concatenate([initial_state[0], initial_state[1][..., None]], -1).astype(jnp.float32)
    else:
        s0 = initial_state.astype(jnp.float32)
    v = v.astype(jnp.float32)
    if normalize:
        v = jnp.concatenate([v, jnp.ones(v.shape[:3] + (1,), jnp.float32)], axis=-1)
    if s0 is None:
        s0 = jnp.zeros((B, H, K, v.shape[-1]), jnp.float32)
    return v, s0


def split_normaliser(o, final, normalize, V):
    if not normalize:
        return o, final
    return o[..., :V] / safe_denominator(o[..., V])[..., None], (final[..., :V], final[..., V])


def _pallas_probe(q, k, v, log_decay, kind, normalize, C, packed=False):
    """Compile the Pallas linear attention (its chunk kernels and the Pallas chunk-state scan) for these shapes and
    dtypes (``packed``: with sequence-start flags); raises if it cannot run (also for a chunk size that is not a
    power of two)."""
    from algornn.scan_kernels._linear_attention.pallas import linear_attention_pallas

    check_chunk_size(C, power_of_two=True)
    B, L, H, K = q.shape
    V = v.shape[-1] + (1 if normalize else 0)  # the normaliser travels as an extra value column
    vv = jax.ShapeDtypeStruct(v.shape[:-1] + (V,), jnp.float32)
    s0 = jax.ShapeDtypeStruct((B, H, K, V), jnp.float32)
    starts = jax.ShapeDtypeStruct((B, L, H), jnp.float32) if packed else None
    qa, ka, ga = abstract(q, k, log_decay)
    linear_attention_pallas.lower(qa, ka, vv, ga, s0, kind=kind, chunk_size=C, starts=starts).compile()


def _packed(q, k, v, log_decay, s0, has_initial, segment_ids, kind, C, backend):
    """Packed sequences (``segment_ids``) on the chunked backends; ``v`` float32 (with the normaliser column),
    ``s0 (B, H, K, V)`` float32. Returns ``o (B, L, H, V)`` float32 (exactly 0 on padding) and the final state.

    Padding: q, k, v and g are zeroed there, so it is the identity on the state and reads nothing. Sequence starts
    ``r_t``: the chunked forms (``Segments``) run the recurrence ``P_t = (1 − r_t) exp(g_t) P_{t−1} + k_t v_tᵀ``,
    every sequence from zero. The initial state enters by linearity: the recurrence with
    ``S_t = exp(g_t)((1 − r_t) S_{t−1} + r_t S_0) + k_t v_tᵀ`` has ``S_t = P_t + diag(exp(γ̂_t)) S_0`` with
    ``γ̂_t = g_t + (1 − r_t) γ̂_{t−1}`` the log-decay since the start of t's sequence (``sequence_log_decay``), so
    ``o_t += S_0ᵀ (exp(γ̂_t) ⊙ q_t)`` and the final state gains ``diag(exp(γ̂_{L−1})) S_0``.
    """
    B, L, H, K = q.shape
    starts, pad = segment_masks(segment_ids)
    real = ~pad[..., None, None]  # (B, L, 1, 1)
    q, k, v = (jnp.where(real, x, 0.0) for x in (q, k, v))
    g = None
    if kind != "none":
        g = jnp.where(real[..., 0] if kind == "scalar" else real, log_decay.astype(jnp.float32), 0.0)
    r = jnp.broadcast_to(starts.astype(jnp.float32)[..., None], (B, L, H))
    zero = jnp.zeros_like(s0)
    if backend == "pallas":
        from algornn.scan_kernels._linear_attention.pallas import linear_attention_pallas

        o, final = linear_attention_pallas(q, k, v, g, zero, kind=kind, chunk_size=C, starts=r)
    else:
        o, final = linear_attention_chunked(q, k, v, g, zero, kind, min(C, L), "xla", r)
    if has_initial:  # S_t = P_t + diag(exp(γ̂_t)) S_0
        qd, left = q.astype(jnp.float32), jnp.ones((B, H, K, 1), jnp.float32)
        if kind != "none":
            e = jnp.exp(sequence_log_decay(g, starts, "xla"))  # (B, L, H[, K]), exponents ≤ 0
            e = e[..., None] if kind == "scalar" else e
            qd, left = qd * e, jnp.broadcast_to(e[:, -1], (B, H, K))[..., None]
        o = o + _mm("blhk,bhkv->blhv", qd, s0)
        final = final + left * s0
    return jnp.where(real, o, 0.0), final


def linear_attention(
    q, k, v, *, log_decay=None, initial_state=None, normalize=False, chunk_size=64, backend=None, segment_ids=None
):
    """Linear attention with optional decay/gates: ``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``.

    Args:
      q, k: ``(B, L, H, K)``; v: ``(B, L, H, V)`` — float32 or bfloat16 (one dtype).
      log_decay: ``g ≤ 0``: None (no decay), ``(B, L, H)`` (scalar per head: RetNet, Mamba-2) or
        ``(B, L, H, K)`` (per key dimension: gated linear attention).
      initial_state: ``(B, H, K, V)`` (with ``normalize``: a pair ``(S, z (B, H, K))``); default zeros.
      normalize: divide by ``q_tᵀ z_t``, ``z_t = exp(g_t) z_{t-1} + k_t`` (Katharopoulos et al.),
        guarded against |q·z| < ``NORM_EPS``.
      chunk_size: C for the chunked backends (a power of two for ``"pallas"``).
      backend: None (auto) | "reference" | "xla" | "pallas".
      segment_ids: None, or packed sequences: an integer ``(B, L)`` array, 0 = padding; t starts a new sequence
        where t = 0 or the id changes. Every sequence starts from ``initial_state`` (the same for all sequences of a
        row); padding is the identity on the state and its outputs are 0; the final state is the one after the
        row's last position. Each sequence gives what it would alone (forward and gradients), on every backend.

    Returns:
      ``o (B, L, H, V)`` in the inputs' dtype and the final state ``(B, H, K, V)`` float32
      (with ``normalize``: the pair ``(S, z)``).
    """
    check_backend(backend)
    B, L, H, K, V = check_qkv(q, k, v)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V, normalize=normalize)
    C = check_chunk_size(chunk_size)
    packed = segment_ids is not None
    if packed:
        check_segment_ids(segment_ids, B, L)
    # auto: Pallas on a GPU where it compiles for these shapes, else XLA (the rule every op shares)
    probe = partial(_pallas_probe, q, k, v, log_decay, kind, normalize, C, packed)
    key = probe_key(q=q, k=k, v=v, log_decay=log_decay, normalize=normalize, chunk_size=C, packed=packed or None)
    backend = resolve_backend(backend, op="linear_attention", probe=probe, key=key)
    check_chunk_size(C, power_of_two=backend == "pallas")
    if backend == "reference":
        return linear_attention_reference(
            q, k, v, log_decay=log_decay, initial_state=initial_state, normalize=normalize, segment_ids=segment_ids
        )
    vv, s0 = with_normaliser(v, initial_state, normalize, B, H, K)
    if packed:
        o, final = _packed(q, k, vv, log_decay, s0, initial_state is not None, segment_ids, kind, C, backend)
    elif backend == "pallas":
        from algornn.scan_kernels._linear_attention.pallas import linear_attention_pallas

        o, final = linear_attention_pallas(q, k, vv, log_decay, s0, kind=kind, chunk_size=C)
    else:
        o, final = linear_attention_chunked(q, k, vv, log_decay, s0, kind, min(C, L), "xla")
    o, final = split_normaliser(o, final, normalize, V)
    return o.astype(v.dtype), final
