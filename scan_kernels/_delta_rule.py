"""Delta rule / gated DeltaNet: chunkwise-parallel XLA form (WY/UT representation) and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk · NC = ceil(L / C).

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

Chunk form (DeltaNet, Yang et al. 2024, §3.2 and App. B; gated DeltaNet §3): inside a chunk with
entering state S⁰ and local cumulative log-gate γ, the per-token deltas ``u_r = β_r (v_r − exp(g_r) S_{r-1}ᵀ k_r)``
solve a unit lower-triangular system (the UT transform):

    (I + A) [Ũ | W] = [β ⊙ V | β ⊙ exp(γ) ⊙ K],     A_ri = β_r exp(γ_r − γ_i) k_rᵀ k_i   (r > i)
    U = Ũ − W S⁰
    O = (Q ⊙ exp(γ)) S⁰ + (Q Kᵀ ⊙ exp(γ_r − γ_i) ⊙ [r ≥ i]) U
    S_end = M S⁰ + Δ,   M = exp(γ_C) I − K̂ᵀ W,   Δ = K̂ᵀ Ũ,   K̂ = K ⊙ exp(γ_C − γ)

so the only sequential part is ``S_n = M_n S_{n-1} + Δ_n`` over chunks, run by the scan core's
``dense_linear_scan`` (a K×K transition per chunk and head). All exponents are ≤ 0.
(I + A)⁻¹ comes from log2(C) rounds of batched matmuls (``unit_lower_inverse``). Gradients: autodiff of
this form (the chunk scan is the scan core's custom_vjp); residuals O(B·L·H·(K+V+C) + NC·B·H·K·(K+V)).
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from scan_kernels._backend import resolve_backend
from scan_kernels._chunk_utils import (
    causal_masks,
    from_chunks,
    map_chunk_groups,
    previous_states,
    scan_chunk_states_dense,
    segment_decay,
    to_chunks,
    unit_lower_inverse,
)
from scan_kernels._delta_rule_reference import delta_rule_reference
from scan_kernels._fast_weight_checks import check_beta, check_chunk_size, check_log_decay, check_qkv, check_state

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)
# Chunks per step of the sequential, rematerialised map over chunk groups (bounds the O(C²) temporaries).
CHUNK_GROUP = 16


def wy_chunk(kc, vc, bc, gam):
    """Per-chunk UT transform and chunk transition (no incoming state needed).

    ``kc (B, H, NC, C, K)``, ``vc (B, H, NC, C, V)``, ``bc (B, H, NC, C)``, ``gam`` cumulative log-gates
    ``(B, H, NC, C)`` or None. Returns ``Ũ (.., C, V)``, ``W (.., C, K)``, ``M (.., K, K)``, ``Δ (.., K, V)``.
    """
    C, K = kc.shape[-2:]
    V = vc.shape[-1]
    _, strict = causal_masks(C)
    kk = _mm("bhnik,bhnjk->bhnij", kc, kc)
    if gam is None:
        A = jnp.where(strict, bc[..., :, None] * kk, 0.0)
        kw, khat, last = kc, kc, None
    else:
        A = bc[..., :, None] * kk * segment_decay(gam, strict)
        kw = kc * jnp.exp(gam)[..., None]
        last = gam[..., -1:]  # (B, H, NC, 1)
        khat = kc * jnp.exp(last - gam)[..., None]
    rhs = bc[..., None] * jnp.concatenate([vc, kw], axis=-1)  # (B, H, NC, C, V + K)
    X = _mm("bhnij,bhnjf->bhnif", unit_lower_inverse(A), rhs)  # (I + A)⁻¹ rhs
    Ut, W = X[..., :V], X[..., V:]
    eye = jnp.eye(K, dtype=jnp.float32)[None, None, None]  # (1, 1, 1, K, K)
    ident = eye if last is None else jnp.exp(last)[..., None] * eye  # exp(γ_C) I
    M = ident - _mm("bhnck,bhncj->bhnkj", khat, W)
    delta = _mm("bhnck,bhncv->bhnkv", khat, Ut)
    return Ut, W, M, delta


def delta_output(qc, kc, Ut, W, gam, s_prev):
    """``O = (Q ⊙ exp(γ)) S⁰ + (Q Kᵀ ⊙ Γ) (Ũ − W S⁰)`` for every chunk, ``s_prev (B, H, NC, K, V)``."""
    C = qc.shape[-2]
    incl, _ = causal_masks(C)
    qk = _mm("bhnik,bhnjk->bhnij", qc, kc)
    if gam is None:
        P, qd = jnp.where(incl, qk, 0.0), qc
    else:
        P, qd = qk * segment_decay(gam, incl), qc * jnp.exp(gam)[..., None]
    U = Ut - _mm("bhnck,bhnkv->bhncv", W, s_prev)
    return _mm("bhnck,bhnkv->bhncv", qd, s_prev) + _mm("bhnij,bhnjv->bhniv", P, U)


@partial(jax.jit, static_argnames=("C", "scan_backend"))
def delta_rule_chunked(q, k, v, beta, log_decay, s0, C, scan_backend):
    """Chunked forward in float32 on validated inputs; returns ``o (B, L, H, V)`` f32 and the final state."""
    L = q.shape[1]
    qc, kc, vc, bc = (to_chunks(x, C) for x in (q, k, v, beta))
    gam = None if log_decay is None else jnp.cumsum(to_chunks(log_decay, C), axis=-1)
    Ut, W, M, delta = map_chunk_groups(wy_chunk, (kc, vc, bc, gam), CHUNK_GROUP)
    s_end = scan_chunk_states_dense(M, delta, s0, scan_backend)
    o = map_chunk_groups(delta_output, (qc, kc, Ut, W, gam, previous_states(s_end, s0)), CHUNK_GROUP)
    return from_chunks(o, L), s_end[:, :, -1]


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
