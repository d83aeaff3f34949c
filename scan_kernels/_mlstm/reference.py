"""mLSTM (xLSTM's matrix-memory LSTM, Beck et al. 2024 §2.3): input checks, the single decoding step and the
token-by-token reference.

Shape legend: B batch · L length · H heads · K key dim · V value dim.

Per head, with the stabiliser ``m`` of exponential gating (Beck et al. 2024, §2.3, eqs. 19–27 and App. A):

    m_t = max(log_f_t + m_{t−1}, i_t)
    C_t = exp(log_f_t + m_{t−1} − m_t) C_{t−1} + exp(i_t − m_t) k_t v_tᵀ          C ∈ R^{K×V}
    n_t = exp(log_f_t + m_{t−1} − m_t) n_{t−1} + exp(i_t − m_t) k_t                n ∈ R^K
    o_t = C_tᵀ q_t / max(|n_tᵀ q_t|, exp(−m_t))

``log_f`` is the log forget gate (e.g. ``logsigmoid`` of a pre-activation, ≤ 0), ``i`` the input-gate
pre-activation (exponential gating: the input gate is ``exp(i)``). ``(C, n)`` are the stabilised states: with
the unstabilised ``C̃_t = f_t C̃_{t−1} + exp(i_t) k_t v_tᵀ`` (likewise ñ), ``C_t = exp(−m_t) C̃_t``, and the
output is ``C̃_tᵀ q_t / max(|ñ_tᵀ q_t|, 1)`` — the paper's normaliser, independent of m. No ``1/√K`` scaling
of ``q`` here (the layer does it). The empty memory is ``C = 0, n = 0, m = 0``.
"""

import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.fast_weight_checks import check_qkv
from algornn.scan_kernels._common.packing import check_segment_ids, segment_masks
from algornn.scan_kernels._common.validate import check_inexact, check_shape, describe

F32 = jnp.float32


def check_gates(log_f, i, B, L, H):
    """``log_f`` and ``i`` real floating of shape ``(B, L, H)`` (``(B, H)`` per step, ``L=None``)."""
    want, legend = ((B, H), "B, H") if L is None else ((B, L, H), "B, L, H")
    for name, x in (("log_f", log_f), ("i", i)):
        check_inexact(name, x, allow_complex=False)
        check_shape(name, x, want, f"{legend}: one gate per head and step, as q")


def check_mlstm_state(state, B, H, K, V, *, name="initial_state"):
    """The state triple ``(C (B, H, K, V), n (B, H, K), m (B, H))`` of real floating arrays (None passes)."""
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        is_seq = isinstance(state, (tuple, list))
        got = f"a {type(state).__name__} of length {len(state)}" if is_seq else describe(state)
        raise ValueError(f"{name} must be a triple (C (B, H, K, V), n (B, H, K), m (B, H)), got {got}")
    for j, (x, shape, legend) in enumerate(
        zip(state, ((B, H, K, V), (B, H, K), (B, H)), ("C: B, H, K, V", "n: B, H, K", "m: B, H"))
    ):
        check_inexact(f"{name}[{j}]", x, allow_complex=False)
        check_shape(f"{name}[{j}]", x, shape, legend)


def check_inputs(q, k, v, log_f, i, state, *, time_axis=True, state_name="initial_state"):
    """Validate a call; returns ``(B, L, H, K, V)`` (``L`` None per step)."""
    B, L, H, K, V = check_qkv(q, k, v, time_axis=time_axis)
    check_gates(log_f, i, B, L, H)
    check_mlstm_state(state, B, H, K, V, name=state_name)
    return B, L, H, K, V


def zero_state(B, H, K, V):
    """The empty memory ``(C, n, m) = (0, 0, 0)`` in float32."""
    return jnp.zeros((B, H, K, V), F32), jnp.zeros((B, H, K), F32), jnp.zeros((B, H), F32)


def as_f32_state(state):
    return tuple(x.astype(F32) for x in state)


def _step(state, q, k, v, log_f, i):
    """One step in float32, literally as written above. ``q, k (B, H, K)``, ``v (B, H, V)``, gates ``(B, H)``."""
    C, n, m = state
    q, k, v, log_f, i = (x.astype(F32) for x in (q, k, v, log_f, i))
    m_new = jnp.maximum(log_f + m, i)
    a = jnp.exp(log_f + m - m_new)  # forget factor, exponent ≤ 0
    b = jnp.exp(i - m_new)  # input factor, exponent ≤ 0
    C = a[..., None, None] * C + b[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = a[..., None] * n + b[..., None] * k
    num = jnp.einsum("bhk,bhkv->bhv", q, C, precision=lax.Precision.HIGHEST)
    den = jnp.maximum(jnp.abs(jnp.sum(q * n, axis=-1)), jnp.exp(-m_new))
    return (C, n, m_new), num / den[..., None]


def mlstm_step(state, q_t, k_t, v_t, log_f_t, i_t):
    """One decoding step ``(state, q_t, k_t, v_t, log_f_t, i_t) -> (state, o_t)``.

    ``state = (C (B, H, K, V), n (B, H, K), m (B, H))`` (float32; ``(0, 0, 0)`` is the empty memory),
    ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)`` (float32 or bfloat16, one dtype), ``log_f_t, i_t (B, H)``.
    ``o_t (B, H, V)`` has the dtype of ``v_t``; the new state is float32.
    """
    if state is None:
        raise ValueError(
            "state must be given: a triple (C (B, H, K, V), n (B, H, K), m (B, H)); zeros are the empty memory"
        )
    check_inputs(q_t, k_t, v_t, log_f_t, i_t, state, time_axis=False, state_name="state")
    state, o = _step(as_f32_state(state), q_t, k_t, v_t, log_f_t, i_t)
    return state, o.astype(v_t.dtype)


def mlstm_reference(q, k, v, log_f, i, *, initial_state=None, segment_ids=None):
    """Token-by-token ``lax.scan`` in float32 implementing the recurrence literally (stabiliser included) —
    the oracle for the chunked and Pallas forms; differentiated by JAX autodiff (through the max as well).

    ``q, k (B, L, H, K)``, ``v (B, L, H, V)``, ``log_f, i (B, L, H)`` -> ``(o (B, L, H, V) in v's dtype,
    (C (B, H, K, V), n (B, H, K), m (B, H)) float32)``. ``segment_ids (B, L)`` int (packed sequences, 0 = padding):
    at a sequence start the state ``(C, n, m)`` is replaced by the initial state before the step; padding steps keep
    the state and output 0.
    """
    B, L, H, K, V = check_inputs(q, k, v, log_f, i, initial_state)
    s0 = zero_state(B, H, K, V) if initial_state is None else as_f32_state(initial_state)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_f, i))  # (L, B, H, ·)
    if segment_ids is None:
        final, o = lax.scan(lambda s, x: _step(s, *x), s0, xs)
        return jnp.moveaxis(o, 0, 1).astype(v.dtype), final
    starts, pad = segment_masks(check_segment_ids(segment_ids, B, L))

    def pick(m, a, b):  # per batch row: a where m, else b
        return tuple(jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 1)), x, y) for x, y in zip(a, b))

    def body(state, x):
        *x, r, p = x
        new, o = _step(pick(r, s0, state), *x)
        return pick(p, state, new), jnp.where(p[:, None, None], 0.0, o)

    final, o = lax.scan(body, s0, xs + (starts.T, pad.T))
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final
