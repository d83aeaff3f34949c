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

Without differentiation (the ``custom_vjp`` primal) ``_forward_only`` runs instead: one loop over steps of
``FORWARD_STEP`` tokens in sub-chunks of ``FORWARD_CHUNK``, heads-first ``(B·H, C, ·)``, each step computing its
chunks' outputs and passing its state on — no chunk states are stored and nothing is read twice.
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
    entering_states,
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
from algornn.scan_kernels._linear_attention.chunk_states import scan_chunk_states_diag
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


def _scores(qc, kc, gam, kind):
    """Masked, decayed intra-chunk scores ``(B, n, H, C, C)``: ``Σ_k q_ik k_jk exp(γ_ik − γ_jk)``, i ≥ j."""
    if kind == "key":  # the exponents cannot be split into a q- and a k-factor without overflow: secondary chunking
        return key_decayed_scores(jnp.swapaxes(qc, 2, 3), jnp.swapaxes(kc, 2, 3), gam, False, KEY_SUB_CHUNK)
    incl, _ = causal_masks(qc.shape[2])
    qk = _mm("bnihk,bnjhk->bnhij", qc, kc)
    return jnp.where(incl, qk, 0.0) if kind == "none" else qk * segment_decay(gam, incl)


def chunk_state(kc, vc, gam, kind):
    """Each chunk's own state contribution ``Δ = (K ⊙ exp(γ_C − γ))ᵀ V`` ``(B, H, n, K, V)`` and its total
    decay ``exp(γ_C)`` (``(B, H, n, 1, 1)`` or ``(B, H, n, K, 1)``; None without gates).
    ``kc (B, n, C, H, K)``, ``vc (B, n, C, H, V)``, ``gam`` from ``_gates``."""
    if kind == "none":
        return _mm("bnchk,bnchv->bhnkv", kc, vc), None
    if kind == "scalar":
        last = gam[..., -1:]  # (B, n, H, 1)
        kd = kc * jnp.swapaxes(jnp.exp(last - gam), 2, 3)[..., None]
        decay = jnp.swapaxes(jnp.exp(last), 1, 2)[..., None]  # (B, H, n, 1, 1)
    else:
        last = gam[..., -1:, :]  # (B, n, H, 1, K)
        kd = kc * jnp.swapaxes(jnp.exp(last - gam), 2, 3)
        decay = jnp.swapaxes(jnp.swapaxes(jnp.exp(last), 1, 2), -1, -2)  # (B, H, n, K, 1)
    return _mm("bnchk,bnchv->bhnkv", kd, vc), decay


def _query_decay(qc, gam, kind):
    """``Q ⊙ exp(γ)`` in the chunk layout ``(B, n, C, H, K)``."""
    if kind == "none":
        return qc
    return qc * jnp.swapaxes(jnp.exp(gam if kind == "key" else gam[..., None]), 2, 3)


def chunk_output(qc, kc, vc, gam, s_prev, kind):
    """``O = scores V + (Q ⊙ exp(γ)) S⁰`` per chunk ``(B, n, C, H, V)``; ``s_prev (B, H, n, K, V)`` entering states."""
    intra = _mm("bnhij,bnjhv->bnihv", _scores(qc, kc, gam, kind), vc)
    return intra + _mm("bnihk,bhnkv->bnihv", _query_decay(qc, gam, kind), s_prev)


def _chunk_decays(g, kind, C):
    """Total decay ``exp(Σ g)`` of every chunk, broadcastable to ``(B, H, NC, K, V)``; ``g (B, NC·C, H[, K])``."""
    B, Lp, H = g.shape[:3]
    tot = jnp.exp(g.reshape((B, Lp // C, C) + g.shape[2:]).sum(axis=2))  # (B, NC, H[, K])
    return jnp.swapaxes(tot, 1, 2)[..., None, None] if kind == "scalar" else jnp.swapaxes(tot, 1, 2)[..., None]


def _forward(q, k, v, g, s0, kind, C, group, scan_backend):
    """Chunked forward on padded float32 inputs: ``o (B, NC·C, H, V)``, the end-of-chunk states and the chunk
    decays (kept for the backward's reverse scan)."""
    B, Lp, H, K = q.shape
    nc = Lp // C
    gc = lambda start, n: None if g is None else read_chunks(g, start, n, C)  # noqa: E731

    def states(start, n, buf):
        delta, _ = chunk_state(
            read_chunks(k, start, n, C), read_chunks(v, start, n, C), _gates(gc(start, n), kind), kind
        )
        return write_states(buf, delta, start)

    delta = for_chunk_groups(states, jnp.zeros((B, H, nc, K, v.shape[-1]), jnp.float32), nc, group)
    decay = jnp.ones((), jnp.float32) if g is None else _chunk_decays(g, kind, C)
    s_end = scan_chunk_states_diag(decay, delta, s0, scan_backend)

    def output(start, n, buf):
        qc, kc, vc = (read_chunks(x, start, n, C) for x in (q, k, v))
        o = chunk_output(qc, kc, vc, _gates(gc(start, n), kind), entering_states(s_end, s0, start, n), kind)
        return write_chunks(buf, o, start)

    return for_chunk_groups(output, jnp.zeros(v.shape, jnp.float32), nc, group), s_end, decay


def _forward_step(S, xs, kind, incl):
    """One step of ``_forward_only`` over G chunks: ``S (B·H, K, V)`` the state entering the step, ``xs`` the
    step's ``Q, K (G, B·H, C, K)``, ``V (G, B·H, C, V)`` and log-gates ``(G, B·H, C[, K])`` (None without gates).
    The chunks' scores and state contributions are batched matmuls; the G-step state recurrence between them
    is elementwise. Returns the state leaving the step and ``O (G, B·H, C, V)``."""
    Q, K, V, g = xs
    if kind == "none":
        P, Qd, Kh, dec = jnp.where(incl, _mm("nbik,nbjk->nbij", Q, K), 0.0), Q, K, None
    else:
        gam = jnp.cumsum(g, axis=2)  # γ: cumulative log-gates inside each chunk
        if kind == "scalar":
            P = _mm("nbik,nbjk->nbij", Q, K) * segment_decay(gam, incl)
            gam = gam[..., None]
        else:  # exponents γ_ik − γ_jk cannot be split into a q- and a k-factor without overflow: sub-chunks
            P = key_decayed_scores(Q, K, gam, False, min(KEY_SUB_CHUNK, Q.shape[-2]))
        last = gam[:, :, -1:]  # (G, B·H, 1, 1|K)
        Qd, Kh = Q * jnp.exp(gam), K * jnp.exp(last - gam)
        dec = jnp.swapaxes(jnp.exp(last), -1, -2)  # (G, B·H, 1|K, 1): rows of S decay
    delta = _mm("nbck,nbcv->nbkv", Kh, V)  # Δ = (K ⊙ exp(γ_C − γ))ᵀ V per chunk
    entering = []
    for n in range(delta.shape[0]):  # S_n = exp(γ_C,n) ⊙ S_{n-1} + Δ_n
        entering.append(S)
        S = delta[n] + (S if dec is None else dec[n] * S)
    return S, _mm("nbij,nbjv->nbiv", P, V) + _mm("nbck,nbkv->nbcv", Qd, jnp.stack(entering))


@partial(jax.jit, static_argnames=("kind", "C"))
def _forward_only(q, k, v, g, s0, kind, C):
    """Forward without residuals (the ``custom_vjp`` primal: no differentiation) on padded float32 inputs
    ``(B, Lp, H, ·)``: ``o (B, Lp, H, V)`` and the final state ``(B, H, K, V)``.

    One pass over steps of ``FORWARD_STEP // Cf`` chunks of ``Cf = min(C, FORWARD_CHUNK)`` tokens
    (``for_chunk_groups``), each step reading its slices heads-first ``(B·H, Cf, ·)``, computing its chunks'
    outputs and the state it passes on, and writing its outputs in place — no separate state pass, no stored chunk
    states, no transposed copy of a whole input, and a step's temporaries stay in cache.
    """
    B, Lp, H, K = q.shape
    Cf = min(C, FORWARD_CHUNK)
    q, k, v, g = (None if x is None else pad_tokens(x, Cf) for x in (q, k, v, g))  # a copy only if Cf ∤ Lp
    incl, _ = causal_masks(Cf)

    def body(start, n, carry):
        S, o = carry
        xs = tuple(None if x is None else read_chunks_heads_first(x, start, n, Cf) for x in (q, k, v, g))
        S, o_n = _forward_step(S, xs, kind, incl)
        return S, write_chunks_heads_first(o, o_n, start)

    carry = (s0.reshape(B * H, K, v.shape[-1]), jnp.zeros(v.shape, jnp.float32))
    S, o = for_chunk_groups(body, carry, q.shape[1] // Cf, max(1, FORWARD_STEP // Cf))
    return o[:, :Lp], S.reshape(s0.shape)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunked(q, k, v, g, s0, kind, C, scan_backend):
    # no differentiation: the residual-free one-pass forward (``_chunked_fwd`` keeps the chunk states instead)
    return _forward_only(q, k, v, g, s0, kind, C)


def _chunked_fwd(q, k, v, g, s0, kind, C, scan_backend):
    o, s_end, decay = _forward(q, k, v, g, s0, kind, C, _group(kind), scan_backend)
    return (o, s_end[:, :, -1]), (q, k, v, g, s0, s_end, decay)


def _chunked_bwd(kind, C, scan_backend, res, cts):
    """Chunkwise backward: the state cotangents run backwards through the scan core, then every chunk group
    is differentiated on its own (``jax.vjp``, recomputing its intra-chunk terms) given its entering state and
    the cotangent of its leaving state. Memory O(B·L·H·(K+V) + NC·B·H·K·V + group·C²)."""
    q, k, v, g, s0, s_end, decay = res
    do, d_final = cts
    B, Lp, H, K = q.shape
    nc, group = Lp // C, _group(kind)
    gc = lambda start, n: None if g is None else read_chunks(g, start, n, C)  # noqa: E731

    def local(start, n, buf):  # ∂O/∂S⁰ᵀ dO = (Q ⊙ exp(γ))ᵀ dO per chunk
        qd = _query_decay(read_chunks(q, start, n, C), _gates(gc(start, n), kind), kind)
        return write_states(buf, _mm("bnchk,bnchv->bhnkv", qd, read_chunks(do, start, n, C)), start)

    dloc = for_chunk_groups(local, jnp.zeros(s_end.shape, jnp.float32), nc, group)
    h = scan_chunk_states_diag(decay, dloc, d_final, scan_backend, reverse=True)  # cotangents of entering states

    def grads(start, n, bufs):
        s_prev, d_next = entering_states(s_end, s0, start, n), leaving_cotangents(h, d_final, start, n)

        def f(qc, kc, vc, *gg):
            gam = _gates(gg[0], kind) if gg else None
            delta, dec = chunk_state(kc, vc, gam, kind)
            s_leave = delta + (s_prev if dec is None else dec * s_prev)
            return chunk_output(qc, kc, vc, gam, s_prev, kind), s_leave

        xs = tuple(read_chunks(x, start, n, C) for x in (q, k, v) + (() if g is None else (g,)))
        _, vjp = jax.vjp(f, *xs)
        dxs = vjp((read_chunks(do, start, n, C), d_next))
        return tuple(write_chunks(b, d, start) for b, d in zip(bufs, dxs))

    bufs = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v) + (() if g is None else (g,)))
    bufs = for_chunk_groups(grads, bufs, nc, group, reverse=True)
    dq, dk, dv = bufs[:3]
    return dq, dk, dv, (None if g is None else bufs[3]), h[:, :, 0]


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _group(kind):
    return KEY_GATE_CHUNK_GROUP if kind == "key" else CHUNK_GROUP


@partial(jax.jit, static_argnames=("kind", "C", "scan_backend"))
def linear_attention_chunked(q, k, v, log_decay, s0, kind, C, scan_backend):
    """Chunked form in float32 on validated inputs (``custom_vjp``). ``s0 (B, H, K, V)`` float32.

    Returns ``o (B, L, H, V)`` float32 and the final state ``(B, H, K, V)``.
    """
    L = q.shape[1]
    g = None if kind == "none" else pad_tokens(log_decay, C)
    o, final = _chunked(pad_tokens(q, C), pad_tokens(k, C), pad_tokens(v, C), g, s0, kind, C, scan_backend)
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


def _pallas_probe(q, k, v, log_decay, kind, normalize, C):
    """Compile the Pallas linear attention (its chunk kernels and the Pallas chunk-state scan) for these shapes and
    dtypes; raises if it cannot run (also for a chunk size that is not a power of two)."""
    from algornn.scan_kernels._linear_attention.pallas import linear_attention_pallas

    check_chunk_size(C, power_of_two=True)
    B, _, H, K = q.shape
    V = v.shape[-1] + (1 if normalize else 0)  # the normaliser travels as an extra value column
    vv = jax.ShapeDtypeStruct(v.shape[:-1] + (V,), jnp.float32)
    s0 = jax.ShapeDtypeStruct((B, H, K, V), jnp.float32)
    qa, ka, ga = abstract(q, k, log_decay)
    linear_attention_pallas.lower(qa, ka, vv, ga, s0, kind=kind, chunk_size=C).compile()


def linear_attention(q, k, v, *, log_decay=None, initial_state=None, normalize=False, chunk_size=64, backend=None):
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

    Returns:
      ``o (B, L, H, V)`` in the inputs' dtype and the final state ``(B, H, K, V)`` float32
      (with ``normalize``: the pair ``(S, z)``).
    """
    check_backend(backend)
    B, L, H, K, V = check_qkv(q, k, v)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V, normalize=normalize)
    C = check_chunk_size(chunk_size)
    # auto: Pallas on a GPU where it compiles for these shapes, else XLA (the rule every op shares)
    probe = partial(_pallas_probe, q, k, v, log_decay, kind, normalize, C)
    key = probe_key(q=q, k=k, v=v, log_decay=log_decay, normalize=normalize, chunk_size=C)
    backend = resolve_backend(backend, op="linear_attention", probe=probe, key=key)
    check_chunk_size(C, power_of_two=backend == "pallas")
    if backend == "reference":
        return linear_attention_reference(
            q, k, v, log_decay=log_decay, initial_state=initial_state, normalize=normalize
        )
    vv, s0 = with_normaliser(v, initial_state, normalize, B, H, K)
    if backend == "pallas":
        from algornn.scan_kernels._linear_attention.pallas import linear_attention_pallas

        o, final = linear_attention_pallas(q, k, vv, log_decay, s0, kind=kind, chunk_size=C)
    else:
        o, final = linear_attention_chunked(q, k, vv, log_decay, s0, kind, min(C, L), "xla")
    o, final = split_normaliser(o, final, normalize, V)
    return o.astype(v.dtype), final
