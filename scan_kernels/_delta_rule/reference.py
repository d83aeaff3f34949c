"""Delta rule (fast weight programmers): the single decoding step and the token-by-token reference.

Shape legend: B batch · L length · H heads · K key dim · V value dim.

Per head, with fast-weight state ``S ∈ R^{K×V}`` (Schlag, Irie & Schmidhuber 2021; DeltaNet, Yang et al.
2024; gated DeltaNet, Yang, Kautz & Hatamizadeh 2025; per-key gates as in Kimi Delta Attention):

    S_t = (I − β_t k_t k_tᵀ) diag(exp(g_t)) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

computed in this order: ``S ← diag(exp(g)) S;  u = β (v − Sᵀ k);  S ← S + k uᵀ`` (the rows of S decay first,
then the "delta" u replaces the value the memory currently returns for k). ``beta (B, L, H)`` in (0, 2);
``log_decay`` g ≤ 0 is None, one scalar per head and step ``(B, L, H)`` (``diag(exp(g)) = exp(g) I``) or one
per key dimension ``(B, L, H, K)``.
"""

import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.fast_weight_checks import check_beta, check_log_decay, check_qkv, check_state
from algornn.scan_kernels._common.packing import check_segment_ids, sequence_starts


def _step(S, q_t, k_t, v_t, beta_t, g_t):
    """One step in float32: ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)``, ``beta_t (B, H)``, ``g_t`` None, ``(B, H)``
    or ``(B, H, K)``."""
    q, k, v, beta = (x.astype(jnp.float32) for x in (q_t, k_t, v_t, beta_t))
    if g_t is not None:  # decay the rows of S first: a scalar per head, or diag(exp(g_t)) per key
        a = jnp.exp(g_t.astype(jnp.float32))
        S = (a[..., None] if a.ndim == 3 else a[..., None, None]) * S
    u = beta[..., None] * (v - jnp.einsum("bhk,bhkv->bhv", k, S))  # (B, H, V)
    S = S + k[..., :, None] * u[..., None, :]
    return S, jnp.einsum("bhk,bhkv->bhv", q, S)


def delta_rule_step(state, q_t, k_t, v_t, beta_t, *, log_decay=None):
    """One decoding step ``(state, q_t, k_t, v_t, beta_t) -> (state, o_t)``.

    ``state (B, H, K, V)`` float32, ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)``, ``beta_t (B, H)``,
    ``log_decay`` None, ``(B, H)`` or ``(B, H, K)`` (per key). Order: ``S ← diag(e^g) S; u = β (v − Sᵀ k);
    S ← S + k uᵀ; o = Sᵀ q``. ``o_t (B, H, V)`` has the dtype of ``v_t``.
    """
    B, _, H, K, V = check_qkv(q_t, k_t, v_t, time_axis=False)
    check_beta(beta_t, B, None, H)
    check_log_decay(log_decay, B, None, H, K, per_key_ok=True)
    if state is None:
        raise ValueError("state must be given; use jnp.zeros((B, H, K, V), jnp.float32) for an empty memory")
    check_state(state, B, H, K, V, name="state")
    S, o = _step(state.astype(jnp.float32), q_t, k_t, v_t, beta_t, log_decay)
    return S, o.astype(v_t.dtype)


def delta_rule_reference(q, k, v, beta, *, log_decay=None, initial_state=None, segment_ids=None, reset_state=None):
    """Token-by-token ``lax.scan`` in float32 — the oracle for the chunked and Pallas forms.

    ``q, k (B, L, H, K)``, ``v (B, L, H, V)``, ``beta (B, L, H)``, ``log_decay`` None, ``(B, L, H)`` or
    ``(B, L, H, K)`` -> ``(o (B, L, H, V), final (B, H, K, V))``. Packed sequences (``segment_ids (B, L)``, as in
    ``delta_rule``): at a sequence start the state is replaced by the reset state (``reset_state``, default
    ``initial_state``) before the step; a padding step keeps the state and outputs 0.
    """
    B, L, H, K, V = check_qkv(q, k, v)
    check_beta(beta, B, L, H)
    kind = check_log_decay(log_decay, B, L, H, K, per_key_ok=True)
    check_state(initial_state, B, H, K, V)
    check_segment_ids(segment_ids, B, L)
    check_state(reset_state, B, H, K, V, name="reset_state")
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    s0r = s0 if reset_state is None else reset_state.astype(jnp.float32)
    xs = [jnp.moveaxis(x, 1, 0) for x in (q, k, v, beta)]  # (L, B, H, ·)
    g = None if kind == "none" else jnp.moveaxis(log_decay, 1, 0)
    packed = None
    if segment_ids is not None:  # (valid, starts at t > 0), time first; t = 0 starts from s0 = initial_state
        valid, starts = sequence_starts(segment_ids)
        packed = (jnp.moveaxis(valid, 1, 0), jnp.moveaxis(starts.at[:, 0].set(False), 1, 0))

    def body(S, inp):
        qt, kt, vt, bt, gt, pt = inp
        if pt is None:
            return _step(S, qt, kt, vt, bt, gt)
        valid, start = (m[:, None, None, None] for m in pt)  # (B, 1, 1, 1)
        S_new, ot = _step(jnp.where(start, s0r, S), qt, kt, vt, bt, gt)
        return jnp.where(valid, S_new, S), jnp.where(valid[..., 0], ot, 0.0)

    final, o = lax.scan(body, s0, (*xs, g, packed))
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final
