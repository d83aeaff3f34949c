"""Linear attention (decayed / gated): chunkwise-parallel XLA form and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,      o_t = S_tᵀ q_t           (per head, S ∈ R^{K×V})

Chunkwise form (GLA paper, Yang et al. 2024, §3–4; Mamba-2 SSD): with γ the cumulative log-gate inside
a chunk and S⁰ the state entering it,

    O      = (Q Kᵀ ⊙ exp(γ_i − γ_j) ⊙ [i ≥ j]) V  +  (Q ⊙ exp(γ)) S⁰          intra + inter
    S_end  = exp(γ_C) S⁰ + (K ⊙ exp(γ_C − γ))ᵀ V                           passed by ``linear_scan``

All exponents are ≤ 0. The intra-chunk work runs on groups of ``CHUNK_GROUP`` chunks in sequence
(``map_chunk_groups``: batched matmuls inside a group, rematerialised in the backward pass).
Gradients: autodiff of this form (the chunk scan is the scan core's custom_vjp); memory is
O(B·L·H·(K+V) + NC·B·H·K·V + group·C²) — no per-token K×V state is ever formed (tested with
``memory_analysis``).
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
    map_chunk_groups,
    previous_states,
    scan_chunk_states_diag,
    segment_decay,
    to_chunks,
)
from scan_kernels._fast_weight_checks import check_chunk_size, check_log_decay, check_qkv, check_state
from scan_kernels._linear_attention_reference import linear_attention_reference, safe_denominator

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)

# Chunks per step of the sequential, rematerialised map over chunk groups (bounds the O(C²) temporaries;
# per-key gates form (C, C, K) tensors, so they take fewer chunks per step).
CHUNK_GROUP = 16
KEY_GATE_CHUNK_GROUP = 2


def _scores(qc, kc, gam, kind):
    """Masked, decayed intra-chunk scores ``(B, H, NC, C, C)``: ``Σ_k q_ik k_jk exp(γ_ik − γ_jk)``, i ≥ j."""
    incl, _ = causal_masks(qc.shape[3])
    if kind == "none":
        return jnp.where(incl, _mm("bhnik,bhnjk->bhnij", qc, kc), 0.0)
    if kind == "scalar":
        return _mm("bhnik,bhnjk->bhnij", qc, kc) * segment_decay(gam, incl)
    # per key: the exponents cannot be split into a q- and a k-factor without overflow -> (C, C, K) tensor
    return _mm("bhnik,bhnjk,bhnijk->bhnij", qc, kc, key_segment_decay(gam, incl))


def chunk_state(kc, vc, gam, kind):
    """Each chunk's own state contribution ``Δ = (K ⊙ exp(γ_C − γ))ᵀ V`` ``(B, H, NC, K, V)`` and its total
    decay ``exp(γ_C)`` (broadcastable to Δ; None without gates). ``gam``: cumulative log-gates or None."""
    if kind == "none":
        return _mm("bhnck,bhncv->bhnkv", kc, vc), None
    if kind == "scalar":
        last = gam[..., -1:]  # (B, H, NC, 1)
        kd, decay = kc * jnp.exp(last - gam)[..., None], jnp.exp(last)[..., None]  # decay (B, H, NC, 1, 1)
    else:
        last = gam[..., -1:, :]  # (B, H, NC, 1, K)
        kd, decay = kc * jnp.exp(last - gam), jnp.swapaxes(jnp.exp(last), -1, -2)  # decay (B, H, NC, K, 1)
    return _mm("bhnck,bhncv->bhnkv", kd, vc), decay


def chunk_output(qc, kc, vc, gam, s_prev, kind):
    """``O = scores V + (Q ⊙ exp(γ)) S⁰`` per chunk, ``s_prev (B, H, NC, K, V)`` the entering states."""
    if kind == "none":
        qd = qc
    else:
        qd = qc * jnp.exp(gam if kind == "key" else gam[..., None])
    return _mm("bhnij,bhnjv->bhniv", _scores(qc, kc, gam, kind), vc) + _mm("bhnck,bhnkv->bhncv", qd, s_prev)


@partial(jax.jit, static_argnames=("kind", "C", "scan_backend"))
def linear_attention_chunked(q, k, v, log_decay, s0, kind, C, scan_backend):
    """Chunked forward in float32 on validated inputs. ``s0 (B, H, K, V)`` float32.

    Returns ``o (B, L, H, V)`` float32 and the final state ``(B, H, K, V)``.
    """
    L = q.shape[1]
    group = KEY_GATE_CHUNK_GROUP if kind == "key" else CHUNK_GROUP
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)
    gam = None if kind == "none" else jnp.cumsum(to_chunks(log_decay, C), axis=3)  # γ, local to each chunk
    delta, decay = map_chunk_groups(lambda kc, vc, gam: chunk_state(kc, vc, gam, kind), (kc, vc, gam), group)
    s_end = scan_chunk_states_diag(jnp.ones((), jnp.float32) if decay is None else decay, delta, s0, scan_backend)
    s_prev = previous_states(s_end, s0)
    o = map_chunk_groups(lambda *a: chunk_output(*a, kind), (qc, kc, vc, gam, s_prev), group)
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
