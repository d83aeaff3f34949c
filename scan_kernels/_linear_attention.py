"""Linear attention (decayed / gated): chunkwise-parallel XLA form and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,      o_t = S_tᵀ q_t           (per head, S ∈ R^{K×V})

Chunkwise form (GLA paper, Yang et al. 2024, §3–4; Mamba-2 SSD): with γ the cumulative log-gate inside
a chunk and S⁰ the state entering it,

    O      = (Q Kᵀ ⊙ exp(γ_i − γ_j) ⊙ [i ≥ j]) V  +  (Q ⊙ exp(γ)) S⁰          intra + inter
    S_end  = exp(γ_C) S⁰ + (K ⊙ exp(γ_C − γ))ᵀ V                           passed by ``linear_scan``

All exponents are ≤ 0. Gradients: autodiff of this form (the chunk scan is the scan core's custom_vjp);
residuals are O(B·L·H·(K+V+C) + NC·B·H·K·V) — no per-token K×V state is ever formed.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from scan_kernels._backend import resolve_backend
from scan_kernels._chunk_utils import (
    causal_masks,
    from_chunks,
    key_segment_decay,
    previous_states,
    scan_chunk_states_diag,
    segment_decay,
    to_chunks,
)
from scan_kernels._fast_weight_checks import check_chunk_size, check_log_decay, check_qkv, check_state
from scan_kernels._linear_attention_reference import linear_attention_reference, safe_denominator

# Per-key gates: chunks processed per step of the rematerialised map (bounds the (C, C, K) temporaries).
_KEY_GATE_CHUNKS_PER_STEP = 2


def _intra_key_gate(qc, kc, gam):
    """``A_ij = Σ_k q_ik k_jk exp(γ_ik − γ_jk)`` for i ≥ j, chunk by chunk: ``(B, H, NC, C, K)`` -> ``(B, H, NC, C, C)``.

    The exponents cannot be split into a q-factor and a k-factor without overflow, so the ``(C, C, K)``
    tensor is formed — a few chunks at a time and rematerialised in the backward pass.
    """
    C = qc.shape[3]
    incl, _ = causal_masks(C)

    @jax.checkpoint
    def one(x):
        q, k, g = x  # (B, H, C, K)
        return jnp.sum(q[..., :, None, :] * k[..., None, :, :] * key_segment_decay(g, incl), axis=-1)

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (qc, kc, gam))  # (NC, B, H, C, K)
    nc = xs[0].shape[0]
    A = lax.map(one, xs, batch_size=min(nc, _KEY_GATE_CHUNKS_PER_STEP))  # (NC, B, H, C, C)
    return jnp.moveaxis(A, 0, 2)


def chunk_local(qc, kc, vc, gc, kind):
    """Everything inside a chunk that does not need the incoming state.

    ``qc, kc (B, H, NC, C, K)``, ``vc (B, H, NC, C, V)``, ``gc`` log-gates ``(B, H, NC, C[, K])`` or None.
    Returns ``o_intra (B, H, NC, C, V)``, ``delta (B, H, NC, K, V)`` (the chunk's own state contribution),
    ``decay`` (total chunk decay, broadcastable to ``delta``) and ``qd = Q ⊙ exp(γ)`` for the inter part.
    """
    C = qc.shape[3]
    incl, _ = causal_masks(C)
    if kind == "none":
        A = jnp.where(incl, jnp.einsum("bhnik,bhnjk->bhnij", qc, kc), 0.0)
        return A @ vc, jnp.einsum("bhnck,bhncv->bhnkv", kc, vc), None, qc
    gam = jnp.cumsum(gc, axis=3)  # γ, local to the chunk
    if kind == "scalar":
        A = jnp.einsum("bhnik,bhnjk->bhnij", qc, kc) * segment_decay(gam, incl)
        last = gam[:, :, :, -1:]  # (B, H, NC, 1)
        kd = kc * jnp.exp(last - gam)[..., None]
        qd = qc * jnp.exp(gam)[..., None]
        decay = jnp.exp(last)[..., None]  # (B, H, NC, 1, 1)
    else:
        A = _intra_key_gate(qc, kc, gam)
        last = gam[:, :, :, -1:, :]  # (B, H, NC, 1, K)
        kd = kc * jnp.exp(last - gam)
        qd = qc * jnp.exp(gam)
        decay = jnp.exp(last).transpose(0, 1, 2, 4, 3)  # (B, H, NC, K, 1)
    return A @ vc, jnp.einsum("bhnck,bhncv->bhnkv", kd, vc), decay, qd


@partial(jax.jit, static_argnames=("kind", "C", "scan_backend"))
def linear_attention_chunked(q, k, v, log_decay, s0, kind, C, scan_backend):
    """Chunked forward in float32 on validated inputs. ``s0 (B, H, K, V)`` float32.

    Returns ``o (B, L, H, V)`` float32 and the final state ``(B, H, K, V)``.
    """
    L = q.shape[1]
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)
    gc = None if kind == "none" else to_chunks(log_decay, C)
    o_intra, delta, decay, qd = chunk_local(qc, kc, vc, gc, kind)
    s_end = scan_chunk_states_diag(jnp.ones((), jnp.float32) if decay is None else decay, delta, s0, scan_backend)
    o = o_intra + jnp.einsum("bhnck,bhnkv->bhncv", qd, previous_states(s_end, s0))
    return from_chunks(o, L), s_end[:, :, -1]


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
    backend = resolve_backend(backend)
    B, L, H, K, V = check_qkv(q, k, v)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V, normalize=normalize)
    C = check_chunk_size(chunk_size, power_of_two=backend == "pallas")
    if backend == "reference":
        return linear_attention_reference(q, k, v, log_decay=log_decay, initial_state=initial_state, normalize=normalize)
    vv, s0 = with_normaliser(v, initial_state, normalize, B, H, K)
    if backend == "pallas":
        from scan_kernels._linear_attention_pallas import linear_attention_pallas

        o, final = linear_attention_pallas(q, k, vv, log_decay, s0, kind=kind, chunk_size=C)
    else:
        o, final = linear_attention_chunked(q, k, vv, log_decay, s0, kind, min(C, L), "xla")
    o, final = split_normaliser(o, final, normalize, V)
    return o.astype(v.dtype), final
