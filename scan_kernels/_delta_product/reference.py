"""DeltaProduct (Siems et al. 2025): input checks, the single decoding step and the token-by-token reference.

Shape legend: B batch · L length · H heads · K key dim · V value dim; ``n`` is the number of delta-rule
sub-steps (Householder factors) per token.

Per head, with fast-weight state ``S ∈ R^{K×V}`` (Siems et al. 2025, the DeltaProduct recurrence; the per-token
decay as in gated DeltaNet, Yang, Kautz & Hatamizadeh 2025), token ``t`` applies its decay once, then ``n`` delta-rule
steps, then reads:

    S_{t,0} = exp(g_t) S_{t-1,n}
    S_{t,j} = (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ      j = 1 … n
    o_t     = S_{t,n}ᵀ q_t

so the state transition of a token is ``exp(g_t) ∏_j (I − β_{t,j} k_{t,j} k_{t,j}ᵀ)``, a product of ``n``
generalised Householder matrices. With unit keys and β ∈ (0, 2) each factor has eigenvalues in (−1, 1]
(β > 1 gives the negative eigenvalue that lets a product represent rotations and state tracking).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from algornn.scan_kernels._common.fast_weight_checks import check_log_decay, check_state
from algornn.scan_kernels._common.packing import check_segment_ids, sequence_starts
from algornn.scan_kernels._common.validate import check_inexact, check_ndim, check_shape, describe

_INPUT_DTYPES = ("float32", "bfloat16")


def check_inputs(q, k, v, beta, log_decay, state, *, step: bool = False, state_name: str = "initial_state"):
    """Validate a call; returns ``(B, L, n, H, K, V)`` (``L`` is None for a step).

    Full call: ``q (B, L, H, K)``, ``k (B, L, n, H, K)``, ``v (B, L, n, H, V)``, ``beta (B, L, n, H)``,
    ``log_decay`` None or ``(B, L, H)``, state None or ``(B, H, K, V)``. ``step=True``: the same without the
    ``L`` axis. Every failure is a ``ValueError`` naming the argument, what it got and what was expected.
    """
    lead = "B" if step else "B, L"
    layout = {
        "q": f"({lead}, H, K)",
        "k": f"({lead}, n, H, K)",
        "v": f"({lead}, n, H, V)",
        "beta": f"({lead}, n, H)",
    }
    t = 0 if step else 1  # number of axes between B and n
    for name, x, rank in (("q", q, 3 + t), ("k", k, 4 + t), ("v", v, 4 + t)):
        check_ndim(name, x, rank, layout[name])
        if np.dtype(x.dtype).name not in _INPUT_DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16, got {describe(x)}")
    if not (np.dtype(q.dtype) == np.dtype(k.dtype) == np.dtype(v.dtype)):
        names = ", ".join(np.dtype(x.dtype).name for x in (q, k, v))
        raise ValueError(f"q, k, v must share one dtype, got {names}")
    qs, ks, vs = tuple(q.shape), tuple(k.shape), tuple(v.shape)
    BL, (H, K) = qs[: 1 + t], qs[1 + t :]
    n = ks[1 + t]
    if ks[: 1 + t] != BL or ks[2 + t :] != (H, K):
        raise ValueError(
            f"k must have shape {layout['k']} with ({lead}) = {BL} and (H, K) = {(H, K)} as in q {qs}, "
            f"got {describe(k)}"
        )
    if n < 1:
        raise ValueError(f"k must have at least one sub-step per token (n >= 1 in {layout['k']}), got {describe(k)}")
    if vs[:-1] != ks[:-1]:
        raise ValueError(
            f"v must have shape {layout['v']} with ({lead}, n, H) = {ks[:-1]} as in k (n = {n} sub-steps), "
            f"got {describe(v)}"
        )
    check_inexact("beta", beta, allow_complex=False)
    check_shape("beta", beta, ks[:-1], f"{layout['beta']} with n = {n} sub-steps as in k")
    B, L, V = qs[0], (None if step else qs[1]), vs[-1]
    check_log_decay(log_decay, B, L, H, K, per_key_ok=False)
    check_state(state, B, H, K, V, name=state_name)
    return B, L, n, H, K, V


def _substep(S, kvb):
    """One delta-rule sub-step ``S ← (I − β k kᵀ) S + β k vᵀ``: ``S (B, H, K, V)``, ``k (B, H, K)``,
    ``v (B, H, V)``, ``β (B, H)``."""
    k, v, beta = kvb
    b = beta[..., None, None]
    kkS = k[..., :, None] * jnp.einsum("bhk,bhkv->bhv", k, S)[..., None, :]  # k kᵀ S
    return S - b * kkS + b * (k[..., :, None] * v[..., None, :]), None


def _token(S, q_t, k_t, v_t, beta_t, g_t):
    """One token in float32, straight from the recurrence: ``S (B, H, K, V)``, ``q_t (B, H, K)``,
    ``k_t (B, n, H, K)``, ``v_t (B, n, H, V)``, ``beta_t (B, n, H)``, ``g_t`` None or ``(B, H)``.
    Returns ``(S_{t,n}, o_t (B, H, V))``."""
    q, k, v, beta = (x.astype(jnp.float32) for x in (q_t, k_t, v_t, beta_t))
    if g_t is not None:
        S = jnp.exp(g_t.astype(jnp.float32))[:, :, None, None] * S  # S_{t,0} = exp(g_t) S_{t-1,n}
    S, _ = lax.scan(_substep, S, tuple(jnp.moveaxis(x, 1, 0) for x in (k, v, beta)))  # j = 1 … n
    return S, jnp.einsum("bhk,bhkv->bhv", q, S)


def delta_product_step(state, q_t, k_t, v_t, beta_t, *, log_decay=None):
    """One decoding step (one token: its decay, its ``n`` sub-steps, then the read)
    ``(state, q_t, k_t, v_t, beta_t) -> (state, o_t)``.

    ``state (B, H, K, V)`` float32 (required; ``jnp.zeros((B, H, K, V), jnp.float32)`` for an empty memory),
    ``q_t (B, H, K)``, ``k_t (B, n, H, K)``, ``v_t (B, n, H, V)``, ``beta_t (B, n, H)``, ``log_decay`` None or
    ``(B, H)``. ``o_t (B, H, V)`` has the dtype of ``v_t``; the state stays float32.
    """
    if state is None:
        raise ValueError("state must be given; use jnp.zeros((B, H, K, V), jnp.float32) for an empty memory")
    check_inputs(q_t, k_t, v_t, beta_t, log_decay, state, step=True, state_name="state")
    S, o = _token(state.astype(jnp.float32), q_t, k_t, v_t, beta_t, log_decay)
    return S, o.astype(v_t.dtype)


def delta_product_reference(q, k, v, beta, *, log_decay=None, initial_state=None, segment_ids=None):
    """Token-by-token ``lax.scan`` in float32 with the ``n`` sub-steps of each token inside the step — the
    oracle for the chunked and Pallas forms (``backend="reference"`` of :func:`delta_product`).

    ``q (B, L, H, K)``, ``k (B, L, n, H, K)``, ``v (B, L, n, H, V)``, ``beta (B, L, n, H)``, ``log_decay`` None
    or ``(B, L, H)``, ``initial_state`` None or ``(B, H, K, V)`` -> ``(o (B, L, H, V)`` in v's dtype,
    ``final (B, H, K, V)`` float32). Packed sequences (``segment_ids (B, L)``, as in ``delta_product``): at a
    sequence start the state is replaced by the initial state before the token; a padding token keeps the state and
    outputs 0.
    """
    B, L, _, H, K, V = check_inputs(q, k, v, beta, log_decay, initial_state)
    check_segment_ids(segment_ids, B, L)
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, beta))  # time first
    g = None if log_decay is None else jnp.moveaxis(log_decay, 1, 0)
    packed = None if segment_ids is None else tuple(jnp.moveaxis(m, 1, 0) for m in sequence_starts(segment_ids))

    def body(S, inp):
        *tok, pt = inp
        if pt is None:
            return _token(S, *tok)
        valid, start = (m[:, None, None, None] for m in pt)  # (B, 1, 1, 1)
        S_new, o_t = _token(jnp.where(start, s0, S), *tok)
        return jnp.where(valid, S_new, S), jnp.where(valid[..., 0], o_t, 0.0)

    final, o = lax.scan(body, s0, (*xs, g, packed))
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final
