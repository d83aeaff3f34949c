"""Linear attention: Pallas kernels for the chunk computations, and their ``custom_vjp``.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC chunks ·
Kp, Vp padded dims (see ``_common.fast_weight_pallas``).

Pipeline (the chunk form of ``_linear_attention.op``; fla's ``chunk_fwd_h`` / ``chunk_fwd_o`` split):

1. ``_state_kernel`` — grid ``(B·H, NC)``: each chunk's own contribution Δ = (K ⊙ exp(γ_C − γ))ᵀ V.
2. the scan core's ``linear_scan`` (Pallas backend) passes states between chunks: S_n = exp(γ_C) S_{n-1} + Δ_n.
3. ``_output_kernel`` — grid ``(B·H, NC)``: O = (Q Kᵀ ⊙ exp(γ_i − γ_j) ⊙ [i ≥ j]) V + (Q ⊙ exp(γ)) S⁰.

Per-key gates (GLA) cannot factor exp(γ_ik − γ_jk) into a matmul without overflow; the output kernel
accumulates the masked scores one key dimension at a time (``fori_loop`` over K of (C, C) tiles).

Packed sequences: the sequence-start flags travel as one more ``(C, 1)`` row input; both kernels build the masks of
``op.Segments`` from their running count (scores within one sequence, the carried state read by the sequence open
at the chunk start only, the end state from the keys of the sequence open at the chunk end), and a chunk with a start
passes no carried state on (decay 0 in the chunk-state scan).

Gradients: ``custom_vjp`` whose backward differentiates the chunked **XLA** form (``_linear_attention.op``);
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
from algornn.scan_kernels._linear_attention.chunk_states import scan_chunk_states_diag


def _refs(refs, kind, packed):
    """Split the refs after a kernel's q/k/v row refs, ``([g], [r], *rest)``, into ``(g or None, r or None, rest)``."""
    g_ref = refs[0] if kind != "none" else None
    refs = refs[1:] if kind != "none" else refs
    r_ref = refs[0] if packed else None
    return g_ref, r_ref, refs[1:] if packed else refs


def _starts(r_ref):
    """Packed sequences: ``R (C, 1)``, the running count of sequence starts in the chunk, and its total ``(1, 1)``."""
    r = r_ref[...]
    return jnp.cumsum(r, axis=0), jnp.sum(r, axis=0, keepdims=True)


def _state_kernel(k_ref, v_ref, *refs, kind, packed):
    """Δ = (K ⊙ exp(γ_C − γ))ᵀ V for one chunk. Refs: k (C, Kp), v (C, Vp), [g (C, 1|Kp)], [r (C, 1)] -> Δ (Kp, Vp).
    Packed (start flags r): only the keys of the sequence open at the chunk end."""
    g_ref, r_ref, (delta_ref,) = _refs(refs, kind, packed)
    k = k_ref[...]
    if g_ref is not None:
        g = g_ref[...]
        gam = jnp.cumsum(g, axis=0)
        k = k * jnp.exp(jnp.sum(g, axis=0, keepdims=True) - gam)  # γ_C − γ ≤ 0
    if r_ref is not None:
        R, total = _starts(r_ref)
        k = k * (R == total).astype(F32)
    delta_ref[...] = dot_tn(k, v_ref[...])


def _output_kernel(q_ref, k_ref, v_ref, *refs, kind, packed):
    """O for one chunk. Refs: q, k (C, Kp), v (C, Vp), [g (C, 1|Kp)], [r (C, 1)], S⁰ (Kp, Vp) -> o (C, Vp).
    Packed (start flags r): scores within one sequence only, and S⁰ read only by the sequence open at the start."""
    g_ref, r_ref, (s_ref, o_ref) = _refs(refs, kind, packed)
    q = q_ref[...]
    C, Kp = q.shape
    incl = causal(C)
    if r_ref is not None:
        R, _ = _starts(r_ref)
        incl = incl & (R == jnp.transpose(R))
    if kind == "none":
        scores = jnp.where(incl, dot_nt(q, k_ref[...]), 0.0)
        qd = q
    elif kind == "scalar":
        gam = jnp.cumsum(g_ref[...], axis=0)  # (C, 1)
        scores = dot_nt(q, k_ref[...]) * decay_matrix(gam, incl)
        qd = q * jnp.exp(gam)
    else:
        qd = q * jnp.exp(jnp.cumsum(g_ref[...], axis=0))

        def add_key_dim(d, acc):  # Σ_d q_id k_jd exp(γ_id − γ_jd), one key dimension at a time
            col = pl.ds(d, 1)
            gam = jnp.cumsum(g_ref[:, col], axis=0)  # (C, 1)
            return acc + (q_ref[:, col] * jnp.transpose(k_ref[:, col])) * decay_matrix(gam, incl)

        scores = lax.fori_loop(0, Kp, add_key_dim, jnp.zeros((C, C), F32))
    if r_ref is not None:
        qd = qd * (R == 0.0).astype(F32)
    o_ref[...] = dot(scores, v_ref[...]) + dot(qd, s_ref[...])


def _forward(q, k, v, g, s0, kind, C, r=None):
    """Pallas forward on float32 ``(B, L, H, ·)`` inputs; returns ``o (B, L, H, V)``, final ``(B, H, K, V)``.
    ``r (B, L, H)``: sequence-start flags of packed sequences (which then start from zero), or None."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    C = pallas_chunk(C, L)
    Kp, Vp = next_pow2(K), next_pow2(V)
    Lp = -(-L // C) * C
    BH = B * H
    grid = grid_of(BH, Lp, C)
    rows = [to_rows(q, Lp, Kp), to_rows(k, Lp, Kp), to_rows(v, Lp, Vp)]
    specs = [row_spec(C, Kp), row_spec(C, Kp), row_spec(C, Vp)]
    if kind != "none":
        Gp = 1 if kind == "scalar" else Kp
        gr = to_rows(g if kind == "key" else g[..., None], Lp, Gp)  # (B·H, Lp, 1|Kp)
        rows.append(gr)
        specs.append(row_spec(C, Gp))
    packed = r is not None
    if packed:
        rr = to_rows(r[..., None], Lp, 1)  # (B·H, Lp, 1); padded steps continue the last sequence
        rows.append(rr)
        specs.append(row_spec(C, 1))
    nc = grid[1]
    delta = pl.pallas_call(
        partial(_state_kernel, kind=kind, packed=packed),
        out_shape=jax.ShapeDtypeStruct((BH, nc, Kp, Vp), F32),
        grid=grid,
        in_specs=specs[1:],
        out_specs=tile_spec(Kp, Vp),
        name="linear_attention_chunk_state",
        **pallas_call_kwargs(),
    )(*rows[1:])
    if kind == "none":
        decay = jnp.ones((), F32)
    else:  # exp(γ_C) per chunk: (B·H, NC, 1|Kp) -> broadcastable to (B·H, 1, NC, Kp, Vp)
        decay = jnp.exp(jnp.sum(gr.reshape(BH, nc, C, gr.shape[-1]), axis=2))
        decay = decay[:, None, :, :, None]
    if packed:  # a chunk in which a sequence starts does not pass the carried state on
        keep = (jnp.sum(rr.reshape(BH, nc, C, 1), axis=2) == 0.0).astype(F32)[:, None, :, :, None]
        decay = decay * keep
    s0p = pad_state(s0, Kp, Vp)[:, 0]  # (B·H, Kp, Vp)
    s_end = scan_chunk_states_diag(decay, delta[:, None], s0p[:, None], "pallas")[:, 0]  # (B·H, NC, Kp, Vp)
    s_prev = previous_states(s_end[:, None], s0p[:, None])[:, 0]
    o = pl.pallas_call(
        partial(_output_kernel, kind=kind, packed=packed),
        out_shape=jax.ShapeDtypeStruct((BH, Lp, Vp), F32),
        grid=grid,
        in_specs=specs + [tile_spec(Kp, Vp)],
        out_specs=row_spec(C, Vp),
        name="linear_attention_chunk_output",
        **pallas_call_kwargs(),
    )(*rows, s_prev)
    final = s_end[:, -1, :K, :V].reshape(B, H, K, V)
    return from_rows(o, B, H, L, V), final


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _pallas_op(q, k, v, g, s0, r, kind, C):
    return _forward(q, k, v, g, s0, kind, C, r)


def _pallas_fwd(q, k, v, g, s0, r, kind, C):
    return _forward(q, k, v, g, s0, kind, C, r), (q, k, v, g, s0, r)


def _pallas_bwd(kind, C, res, cts):
    from algornn.scan_kernels._linear_attention.op import linear_attention_chunked

    q, k, v, g, s0, r = res
    L = q.shape[1]
    _, vjp = jax.vjp(lambda *a: linear_attention_chunked(*a, kind, min(C, L), "xla", r), q, k, v, g, s0)
    return vjp(cts) + (None,)


_pallas_op.defvjp(_pallas_fwd, _pallas_bwd)


@partial(jax.jit, static_argnames=("kind", "chunk_size"))
def linear_attention_pallas(q, k, v, log_decay, s0, *, kind, chunk_size, starts=None):
    """Validated inputs (``v`` may carry the normaliser column); returns ``o`` float32 and the final state.
    ``starts``: None, or the sequence-start flags ``(B, L, H)`` float32 of packed sequences (they start from zero
    here; see ``op.linear_attention_chunked``)."""
    q, k, v = (x.astype(F32) for x in (q, k, v))
    g = None if kind == "none" else log_decay.astype(F32)
    return _pallas_op(q, k, v, g, s0, starts, kind, chunk_size)
