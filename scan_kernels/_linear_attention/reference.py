"""Linear attention: the single decoding step, the token-by-token reference and the quadratic form.

Shape legend: B batch · L length · H heads · K key dim · V value dim.

Per head, with fast-weight state ``S ∈ R^{K×V}`` (Katharopoulos et al. 2020; RetNet; GLA, Yang et al. 2024):

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,      o_t = S_tᵀ q_t

``g`` (``log_decay``, ≤ 0) is absent, one scalar per head and step ``(B, L, H)``, or one value per key
dimension ``(B, L, H, K)`` (a diagonal decay on the rows of S). With ``normalize=True`` the output is
divided by ``q_tᵀ z_t``, ``z_t = exp(g_t) z_{t-1} + k_t``, and the state is the pair ``(S, z)``.
"""

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.fast_weight_checks import check_log_decay, check_qkv, check_state
from algornn.scan_kernels._common.packing import check_segment_ids, segment_masks

# |q·z| below this is replaced by ±NORM_EPS (the sign of q·z, + at 0) before dividing.
NORM_EPS = 1e-6


def safe_denominator(d):
    """Guard the normaliser ``q·z`` against division by ~0, keeping its sign."""
    return jnp.where(jnp.abs(d) < NORM_EPS, jnp.where(d < 0, -NORM_EPS, NORM_EPS), d)


def _decay_factor(log_decay, kind):
    """``exp(g)`` shaped to broadcast against a ``(B, H, K, V)`` state (None when there is no decay)."""
    if kind == "none":
        return None
    a = jnp.exp(log_decay.astype(jnp.float32))
    return a[:, :, None, None] if kind == "scalar" else a[:, :, :, None]


def _step(state, q_t, k_t, v_t, log_decay, kind, normalize):
    """One step in float32. ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)``; returns ``(state, o_t (B, H, V))``."""
    S, z = state if normalize else (state, None)
    q, k, v = (x.astype(jnp.float32) for x in (q_t, k_t, v_t))
    a = _decay_factor(log_decay, kind)
    if a is not None:
        S = a * S
    S = S + k[..., :, None] * v[..., None, :]  # (B, H, K, V)
    o = jnp.einsum("bhk,bhkv->bhv", q, S)
    if not normalize:
        return S, o
    if a is not None:
        z = a[..., 0] * z
    z = z + k  # (B, H, K)
    o = o / safe_denominator(jnp.sum(q * z, axis=-1))[..., None]
    return (S, z), o


def zero_state(B, H, K, V, normalize=False):
    S = jnp.zeros((B, H, K, V), jnp.float32)
    return (S, jnp.zeros((B, H, K), jnp.float32)) if normalize else S


def _as_f32_state(state, normalize):
    if normalize:
        return tuple(s.astype(jnp.float32) for s in state)
    return state.astype(jnp.float32)


def linear_attention_step(state, q_t, k_t, v_t, *, log_decay=None, normalize=False):
    """One decoding step ``(state, q_t, k_t, v_t) -> (state, o_t)``.

    ``state (B, H, K, V)`` float32 (with ``normalize``: the pair ``(S (B, H, K, V), z (B, H, K))``);
    ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)``; ``log_decay`` None, ``(B, H)`` or ``(B, H, K)``.
    ``o_t (B, H, V)`` has the dtype of ``v_t``; the state stays float32.
    """
    B, _, H, K, V = check_qkv(q_t, k_t, v_t, time_axis=False)
    kind = check_log_decay(log_decay, B, None, H, K)
    if state is None:
        raise ValueError("state must be given; use zero_state(B, H, K, V) for an empty memory")
    check_state(state, B, H, K, V, name="state", normalize=normalize)
    state, o = _step(_as_f32_state(state, normalize), q_t, k_t, v_t, log_decay, kind, normalize)
    return state, o.astype(v_t.dtype)


def linear_attention_reference(q, k, v, *, log_decay=None, initial_state=None, normalize=False, segment_ids=None):
    """Token-by-token ``lax.scan`` in float32 — the oracle for the chunked and Pallas forms.

    ``q, k (B, L, H, K)``, ``v (B, L, H, V)`` -> ``(o (B, L, H, V) in v's dtype, final_state)``.
    ``segment_ids (B, L)`` int (packed sequences, 0 = padding): at a sequence start the state is replaced by the
    initial state before the step; padding steps keep the state and output 0.
    """
    B, L, H, K, V = check_qkv(q, k, v)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V, normalize=normalize)
    s0 = zero_state(B, H, K, V, normalize) if initial_state is None else _as_f32_state(initial_state, normalize)
    xs = [jnp.moveaxis(x, 1, 0) for x in (q, k, v)]  # (L, B, H, ·)
    g = None if kind == "none" else jnp.moveaxis(log_decay, 1, 0)
    if segment_ids is None:

        def body(state, inp):
            qt, kt, vt, gt = inp
            return _step(state, qt, kt, vt, gt, kind, normalize)

        final, o = lax.scan(body, s0, (*xs, g))
        return jnp.moveaxis(o, 0, 1).astype(v.dtype), final

    starts, pad = segment_masks(check_segment_ids(segment_ids, B, L))
    pick = lambda m, a, b: jax.tree.map(lambda x, y: jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 1)), x, y), a, b)  # noqa: E731

    def packed_body(state, inp):
        qt, kt, vt, gt, rt, pt = inp  # rt, pt (B,): sequence start, padding
        new, o = _step(pick(rt, s0, state), qt, kt, vt, gt, kind, normalize)
        return pick(pt, state, new), jnp.where(pt[:, None, None], 0.0, o)

    final, o = lax.scan(packed_body, s0, (*xs, g, starts.T, pad.T))
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final


def linear_attention_quadratic(q, k, v, *, log_decay=None, initial_state=None, normalize=False):
    """Quadratic masked form, an independent check of the recurrence (O(L²) memory: tests/benchmarks).

        o_t = Σ_{s≤t} (q_tᵀ diag(exp(Σ_{s<r≤t} g_r)) k_s) v_s  +  S_0ᵀ (exp(Σ_{r≤t} g_r) ⊙ q_t)

    Returns ``(o (B, L, H, V) float32, final_state)``.
    """
    B, L, H, K, V = check_qkv(q, k, v)
    kind = check_log_decay(log_decay, B, L, H, K)
    check_state(initial_state, B, H, K, V, normalize=normalize)
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    if normalize:
        v = jnp.concatenate([v, jnp.ones((B, L, H, 1), jnp.float32)], axis=-1)
    s0 = None
    if initial_state is not None:
        s0 = jnp.concatenate([initial_state[0], initial_state[1][..., None]], -1) if normalize else initial_state
        s0 = s0.astype(jnp.float32)
    mask = jnp.arange(L)[:, None] >= jnp.arange(L)[None, :]  # (L, L) t ≥ s
    if kind == "none":
        scores = jnp.einsum("bthk,bshk->bhts", q, k)
        qg, kg = q, k
        last = jnp.ones((B, H, K), jnp.float32)
    else:
        gk = log_decay.astype(jnp.float32)
        gk = gk[..., None] if kind == "scalar" else gk  # (B, L, H, 1|K)
        cum = jnp.cumsum(gk, axis=1)  # Σ_{r≤t} g_r
        diff = cum[:, :, None] - cum[:, None, :]  # (B, t, s, H, 1|K)
        w = jnp.where(mask[None, :, :, None, None], jnp.exp(jnp.where(mask[None, :, :, None, None], diff, 0.0)), 0.0)
        if kind == "scalar":  # (B, t, s, H, 1): one decay matrix per head, a plain matmul
            scores = jnp.einsum("bthk,bshk->bhts", q, k) * w[..., 0].transpose(0, 3, 1, 2)
        else:
            scores = jnp.einsum("bthk,bshk,btshk->bhts", q, k, w)
        qg = q * jnp.exp(cum)
        kg = k * jnp.exp(cum[:, -1:] - cum)
        last = jnp.broadcast_to(jnp.exp(cum[:, -1]), (B, H, K))
    o = jnp.einsum("bhts,bshv->bthv", jnp.where(mask, scores, 0.0), v)
    final = jnp.einsum("bshk,bshv->bhkv", kg, v)
    if s0 is not None:
        o = o + jnp.einsum("bthk,bhkv->bthv", qg, s0)
        final = final + last[..., None] * s0
    if normalize:
        o = o[..., :V] / safe_denominator(o[..., V])[..., None]
        final = (final[..., :V], final[..., V])
    return o, final
