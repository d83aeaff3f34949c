"""mLSTM (xLSTM, Beck et al. 2024 §2.3): the public op, a composition on the public ``linear_attention``.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk.

The recurrence (``reference.py``; per head, ``C ∈ R^{K×V}``, ``n ∈ R^K``, scalar stabiliser ``m``):

    m_t = max(log_f_t + m_{t−1}, i_t)
    C_t = exp(log_f_t + m_{t−1} − m_t) C_{t−1} + exp(i_t − m_t) k_t v_tᵀ,   n_t likewise with k_t for k_t v_tᵀ
    o_t = C_tᵀ q_t / max(|n_tᵀ q_t|, exp(−m_t))

Chunked form in three steps, every exponent ≤ 0:

1. **The stabiliser for every token, exactly, by a max-plus scan.** ``m_t = φ_t(m_{t−1})`` with
   ``φ_t(x) = max(log_f_t + x, i_t)``. Maps ``x ↦ max(a + x, b)`` are closed under composition — ``φ_1`` then
   ``φ_2`` is ``(a_1 + a_2, max(a_2 + b_1, b_2))`` — and composition is associative, so with the prefix maps
   ``(A_t, B_t)`` of ``(log_f_s, i_s)_{s≤t}``, ``m_t = max(A_t + m_0, B_t)``. ``stabilisers`` composes in two
   levels (the prefix maps inside each chunk of C tokens, all chunks at once, then the stabiliser entering each
   chunk), sequential depth C + NC, cheap to compile and to differentiate. ``B_t`` is a max whose terms include
   ``i_t`` itself, so ``i_t − m_t ≤ 0`` holds exactly in floating point.
2. **Linear attention on rescaled keys.** With ``g_t = log_f_t + m_{t−1} − m_t`` (≤ 0 up to rounding, as
   ``m_t ≥ log_f_t + m_{t−1}``) and ``k'_t = exp(i_t − m_t) k_t``, the stabilised states obey
   ``[C_t | n_t] = exp(g_t) [C_{t−1} | n_{t−1}] + k'_t [v_t | 1]ᵀ``: ``linear_attention`` with the scalar log-decay
   ``g`` per head, values ``[v | 1]`` (V + 1 columns; the last column of its state is ``n``) and initial state
   ``[C_0 | n_0]``. It brings its chunked XLA form, its Pallas kernels and its ``custom_vjp`` without per-token
   states.
3. **The normaliser.** Linear attention returns ``[C_tᵀ q_t | n_tᵀ q_t]``; ``o_t`` divides the first V columns by
   ``max(|n_tᵀ q_t|, exp(−m_t))``.

So ``i`` up to +30 and ``log_f`` down to −20 stay finite: nothing is exponentiated with a positive exponent
except ``exp(−m_t) ≤ exp(−i_t)`` (finite for ``i_t > −88``).

**Gradients.** Write ``C̃_t = exp(m_t) C_t``, ``ñ_t = exp(m_t) n_t`` (the unstabilised states:
``C̃_t = exp(log_f_t) C̃_{t−1} + exp(i_t) k_t v_tᵀ``). Then ``o_t = C̃_tᵀ q_t / max(|ñ_tᵀ q_t|, 1)``: the output does
not depend on ``m_1 … m_L`` at all, and steps 2–3 compute it exactly for *any* fixed sequence ``m_1 … m_L``.
Hence ``m_1 … m_L`` enter steps 2–3 through ``lax.stop_gradient`` and the gradients stay exact (tested against
autodiff of float64 loops). ``m_0`` (the initial state's) is not stopped: ``o`` depends on it through
``C̃_0 = exp(m_0) C_0``, and it enters ``g_1`` live. The final state ``(C_L, n_L) = exp(−m_L)(C̃_L, ñ_L)`` does
depend on ``m_L``: it is returned as linear attention's final state times ``exp(sg(m_L) − m_L)``, with ``m_L``
from the (differentiable) max-plus scan — the factor is exactly 1 in value and carries ``∂/∂m_L = −(C_L, n_L)``.
``m_L`` is piecewise linear in ``log_f``, ``i`` and ``m_0`` (a max of sums), and its derivative is the one JAX's
autodiff gives the literal loop (at exact ties of the max, JAX's balanced subgradient). So cotangents of the
final ``C``, ``n`` and ``m`` all flow, as they do through ``mlstm_reference``.

**Packed sequences** (``segment_ids``; ``_composed_packed``). Every sequence starts from the initial state
``(C_0, n_0, m_0)``, its stabiliser included: in the max-plus scan a start is the constant map
``(−∞, max(log_f_t + m_0, i_t))`` and padding the identity ``(0, −∞)``, and ``g_t`` takes ``m_0`` for ``m_{t−1}`` at
a start. ``linear_attention`` runs every sequence from zero (``segment_ids``), and the state each sequence starts
from enters by linearity (``S_t = P_t + exp(γ̂_t) S_start``, ``γ̂`` the log-decay since that start, a ``linear_scan``
that restarts at every start): the row's initial state for sequences that start in the call, the state carried into
it for the one open at its start (a segment of the long-sequence path carries ``(C, n, m)`` and the row's initial
state beside it). Padding outputs 0.

**Memory.** The backward of one call: linear attention's, O(B·L·H·(K+V) + NC·B·H·K·V) with NC = ceil(L / C), plus
O(B·L·H·(K+V)) for the elementwise maps and the scalar scan; no per-token ``K×V`` state. The constant is large:
the rescaled keys, the ``[v | 1]`` values (and the ``V + 1``-column outputs, chunk states and cotangents) come on
top of linear attention's own scratch, 0.16 of the per-token states at L = 16384 (K = V = C = 64) in one call. So
beyond ``SEGMENT_TOKENS`` tokens the op runs segment by segment (``_common.segments``; whole chunks, the state
``(C, n, m)`` carried, which is exact: the stabiliser of every token is still the recurrence's ``m_t``) and
recomputes each segment's forward in the backward: the scratch is one segment's plus the whole-length output and
its cotangent — 0.070 of the per-token states at L = 16384 — for one more forward pass of sequences that long.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels import linear_attention, linear_scan
from algornn.scan_kernels._common.backend import check_backend, probe_key, resolve_backend
from algornn.scan_kernels._common.fast_weight_checks import check_chunk_size
from algornn.scan_kernels._common.packing import check_segment_ids, segment_masks
from algornn.scan_kernels._common.segments import segmented
from algornn.scan_kernels._mlstm.reference import F32, as_f32_state, check_inputs, mlstm_reference, zero_state

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)

# Tokens per segment of the chunked backends' long-sequence path (``_common.segments``): longer sequences run
# segment by segment, each segment's forward recomputed in the backward, so the scratch is one segment's.
SEGMENT_TOKENS = 4096


def _max_plus(first, second):
    """``x ↦ max(a_1 + x, b_1)`` then ``x ↦ max(a_2 + x, b_2)`` is ``x ↦ max(a_1 + a_2 + x, max(a_2 + b_1, b_2))``."""
    a1, b1 = first
    a2, b2 = second
    return a1 + a2, jnp.maximum(a2 + b1, b2)


def stabilisers(log_f, i, m0, C):
    """``m_t = max(log_f_t + m_{t−1}, i_t)`` for t = 1 … L, by a two-level max-plus scan over chunks of C tokens.

    ``log_f, i (B, L, H)``, ``m0 (B, H)`` float32 -> ``m (B, L, H)``; differentiable (max and sums).
    Level 1: every chunk's prefix maps ``(A_t, B_t)`` from the identity ``(0, −∞)``, C steps vectorised over
    the chunks. Level 2: the stabiliser entering each chunk, ``m⁰_{n+1} = max(A_C,n + m⁰_n, B_C,n)``, NC steps.
    Then ``m_t = max(A_t + m⁰_n, B_t)``. Time is padded with identity steps ``(0, −∞)``.
    """
    B, L, H = log_f.shape
    nc = -(-L // C)
    pad = ((0, 0), (0, nc * C - L), (0, 0))
    # (C, B, NC, H): the in-chunk position leads, for the scan over it
    chunked = lambda x, fill: jnp.moveaxis(jnp.pad(x, pad, constant_values=fill).reshape(B, nc, C, H), 2, 0)
    ident = (jnp.zeros((B, nc, H), F32), jnp.full((B, nc, H), -jnp.inf, F32))

    def within(carry, x):
        carry = _max_plus(carry, x)
        return carry, carry

    (a_end, b_end), (A, Bmax) = lax.scan(within, ident, (chunked(log_f, 0.0), chunked(i, -jnp.inf)))

    def across(m_in, ab):
        return jnp.maximum(ab[0] + m_in, ab[1]), m_in

    _, m_enter = lax.scan(across, m0, (jnp.moveaxis(a_end, 1, 0), jnp.moveaxis(b_end, 1, 0)))  # (NC, B, H)
    m = jnp.maximum(A + jnp.moveaxis(m_enter, 0, 1)[None], Bmax)  # (C, B, NC, H)
    return jnp.moveaxis(m, 0, 2).reshape(B, nc * C, H)[:, :L]


def _composed(xs, state, *, chunk_size, backend):
    """Steps 1–3 of the module docstring on validated float32 inputs ``xs = (q, k, v, log_f, i)`` from
    ``state = (C0, n0, m0)``; ``backend`` is "xla" or "pallas" (``linear_attention``'s). Returns
    ``o (B, L, H, V)`` float32 and ``(C, n, m)``."""
    q, k, v, log_f, i = xs
    C0, n0, m0 = state
    V = v.shape[-1]
    m = stabilisers(log_f, i, m0, min(chunk_size, log_f.shape[1]))  # (B, L, H)
    m_sg = lax.stop_gradient(m)
    m_prev = jnp.concatenate([m0[:, None], m_sg[:, :-1]], axis=1)  # m_0 stays live: o depends on it
    g = log_f + m_prev - m_sg  # ≤ 0
    k_in = k * jnp.exp(i - m_sg)[..., None]  # exponent ≤ 0
    v_in = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), F32)], axis=-1)  # [v | 1]: n is the last column
    s0 = jnp.concatenate([C0, n0[..., None]], axis=-1)  # (B, H, K, V + 1)
    o, s = linear_attention(q, k_in, v_in, log_decay=g, initial_state=s0, chunk_size=chunk_size, backend=backend)
    o = o[..., :V] / jnp.maximum(jnp.abs(o[..., V]), jnp.exp(-m_sg))[..., None]
    m_last = m[:, -1]
    rescale = jnp.exp(m_sg[:, -1] - m_last)  # 1 in value; carries ∂(C_L, n_L)/∂m_L = −(C_L, n_L)
    return o, (s[..., :V] * rescale[..., None, None], s[..., V] * rescale[..., None], m_last)


def _composed_packed(xs, state, *, chunk_size, backend):
    """Steps 1–3 for packed sequences (module docstring, §Packed sequences) on validated float32 inputs
    ``xs = (q, k, v, log_f, i, starts, pad)`` (the last two float 0/1 ``(B, L)``) from ``state = (C, n, m)`` entering
    the call followed by the row's initial state ``(C0, n0, m0)`` (which sequences starting here start from, and
    which is passed on unchanged). Returns ``o (B, L, H, V)`` float32 (0 on padding) and the state's six parts."""
    q, k, v, log_f, i, starts, pad = xs
    C_in, n_in, m_in, C0, n0, m0 = state
    r, p = lax.stop_gradient(starts)[..., None] > 0.5, lax.stop_gradient(pad)[..., None] > 0.5  # (B, L, 1)
    V = v.shape[-1]
    log_f, i = jnp.where(p, 0.0, log_f), jnp.where(p, -jnp.inf, i)  # padding: the identity map (0, −∞)
    # a sequence start is the constant map x ↦ max(log_f_t + m0, i_t): its m does not depend on m_{t−1}
    a = jnp.where(r, -jnp.inf, log_f)
    b = jnp.where(r, jnp.maximum(log_f + m0[:, None], i), i)
    m = stabilisers(a, b, m_in, min(chunk_size, log_f.shape[1]))  # (B, L, H)
    m_sg = lax.stop_gradient(m)
    m_prev = jnp.where(r, m0[:, None], jnp.concatenate([m_in[:, None], m_sg[:, :-1]], axis=1))  # m0, m_in live
    g = log_f + m_prev - m_sg  # ≤ 0; 0 on padding
    k_in = k * jnp.exp(i - m_sg)[..., None]  # exponent ≤ 0; 0 on padding (i = −∞)
    v_in = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), F32)], axis=-1)
    # linear attention with every sequence from zero (ids: a new one at each start, 0 on padding) ...
    ids = jnp.where(p[..., 0], 0, jnp.cumsum(r[..., 0].astype(jnp.int32), axis=1) + 1)
    o, s = linear_attention(q, k_in, v_in, log_decay=g, chunk_size=chunk_size, backend=backend, segment_ids=ids)
    # ... plus, by linearity, what is left of the state each token's sequence started from: the state entering the
    # call for the sequence open at its start, the row's initial state for the sequences that start in it
    # (γ̂: log-decay since that start, a scan that restarts at every start)
    gam = linear_scan(jnp.broadcast_to(1.0 - r.astype(F32), g.shape), g, backend="xla")  # (B, L, H)
    still_open = (jnp.cumsum(r[..., 0].astype(jnp.int32), axis=1) == 0)[..., None]  # (B, L, 1)
    e = jnp.exp(gam)
    s_in, s0 = (jnp.concatenate([c, n[..., None]], axis=-1) for c, n in ((C_in, n_in), (C0, n0)))
    qd = q * e[..., None]
    for mask, init in ((still_open, s_in), (~still_open, s0)):
        o = o + _mm("blhk,bhkv->blhv", qd * mask[..., None].astype(F32), init)
    s = s + e[:, -1][..., None, None] * jnp.where(still_open[:, -1][..., None, None], s_in, s0)
    den = jnp.where(p, 1.0, jnp.maximum(jnp.abs(o[..., V]), jnp.exp(-m_sg)))
    o = jnp.where(p[..., None], 0.0, o[..., :V] / den[..., None])
    m_last = m[:, -1]
    rescale = jnp.exp(m_sg[:, -1] - m_last)  # 1 in value; carries ∂(C_L, n_L)/∂m_L = −(C_L, n_L)
    return o, (s[..., :V] * rescale[..., None, None], s[..., V] * rescale[..., None], m_last, C0, n0, m0)


def segment_tokens(chunk_size: int, segment: int) -> int:
    """Tokens per segment of the long-sequence path: whole chunks, as many as fit in ``segment``, at least one."""
    return max(1, segment // chunk_size) * chunk_size


@partial(jax.jit, static_argnames=("chunk_size", "backend", "segment"))
def mlstm_chunked(q, k, v, log_f, i, C0, n0, m0, *, chunk_size, backend, segment=SEGMENT_TOKENS, starts=None, pad=None):
    """The chunked backends on validated float32 inputs: steps 1–3 (:func:`_composed`) in one call for up to
    ``segment`` tokens, else segment by segment with each segment's forward recomputed in the backward (module
    docstring, §Memory). ``starts``, ``pad``: None, or the sequence-start and padding masks ``(B, L)`` of packed
    sequences (:func:`_composed_packed`). Returns ``o (B, L, H, V)`` float32 and ``(C, n, m)``."""
    S = segment_tokens(chunk_size, segment)
    if starts is None:
        f = partial(_composed, chunk_size=chunk_size, backend=backend)
        xs, state = (q, k, v, log_f, i), (C0, n0, m0)
    else:  # the row's initial state rides along with the carried one: sequences in any segment start from it
        f = partial(_composed_packed, chunk_size=chunk_size, backend=backend)
        xs, state = (q, k, v, log_f, i, starts.astype(F32), pad.astype(F32)), (C0, n0, m0) * 2
    o, state = f(xs, state) if q.shape[1] <= S else segmented(f, S, xs, state)
    return o, state[:3]


def _pallas_probe(B, L, H, K, V, C, packed=False):
    """Compile ``linear_attention``'s Pallas path for the call ``mlstm`` makes (float32 inputs, scalar log-decay,
    V + 1 value columns; ``packed``: with segment ids); raises if it cannot run here (also for a chunk size that is
    not a power of two)."""
    check_chunk_size(C, power_of_two=True)
    S = jax.ShapeDtypeStruct

    def la(q, k, v, g, s0, ids):
        return linear_attention(
            q, k, v, log_decay=g, initial_state=s0, chunk_size=C, backend="pallas", segment_ids=ids
        )  # fmt: skip

    jax.jit(la).lower(
        S((B, L, H, K), F32),
        S((B, L, H, K), F32),
        S((B, L, H, V + 1), F32),
        S((B, L, H), F32),
        S((B, H, K, V + 1), F32),
        S((B, L), jnp.int32) if packed else None,
    ).compile()


def mlstm(q, k, v, log_f, i, *, initial_state=None, chunk_size=64, backend=None, segment_ids=None):
    """mLSTM (xLSTM, Beck et al. 2024 §2.3): exponentially gated matrix memory with the max stabiliser.

        m_t = max(log_f_t + m_{t−1}, i_t)
        C_t = exp(log_f_t + m_{t−1} − m_t) C_{t−1} + exp(i_t − m_t) k_t v_tᵀ
        n_t = exp(log_f_t + m_{t−1} − m_t) n_{t−1} + exp(i_t − m_t) k_t
        o_t = C_tᵀ q_t / max(|n_tᵀ q_t|, exp(−m_t))

    Args:
      q, k: ``(B, L, H, K)``; v: ``(B, L, H, V)`` — float32 or bfloat16 (one dtype). No ``1/√K`` scaling is
        applied (the layer scales ``q``).
      log_f: ``(B, L, H)`` log forget gate (≤ 0 expected, e.g. ``logsigmoid`` of a pre-activation).
      i: ``(B, L, H)`` input-gate pre-activation (the input gate is ``exp(i)``).
      initial_state: ``(C (B, H, K, V), n (B, H, K), m (B, H))``; default zeros, with ``m_0 = 0`` (the output
        does not depend on ``m_0`` when ``C_0 = n_0 = 0``; the returned ``m`` does).
      chunk_size: C for the chunked backends (a power of two for ``"pallas"``).
      backend: None (auto: Pallas on a GPU where the kernels compile for this call, else XLA) | "reference" |
        "xla" | "pallas" ("xla" and "pallas" are ``linear_attention``'s, see the module docstring).
      segment_ids: None, or packed sequences: an integer ``(B, L)`` array, 0 = padding; t starts a new sequence
        where t = 0 or the id changes. Every sequence starts from ``initial_state`` (its ``C``, ``n`` and ``m``: the
        stabiliser restarts too); padding keeps the state and outputs 0; the final state is the one after the row's
        last position. Each sequence gives what it would alone (forward and gradients).

    Returns:
      ``o (B, L, H, V)`` in ``v``'s dtype and the final state ``(C, n, m)`` float32, stabilised by its ``m``
      (``C̃ = exp(m) C`` is the unstabilised memory). Gradients flow to every input, the initial state's three
      parts included, from cotangents of ``o`` and of all three parts of the final state.
    """
    check_backend(backend)
    B, L, H, K, V = check_inputs(q, k, v, log_f, i, initial_state)
    C = check_chunk_size(chunk_size)
    packed = segment_ids is not None
    if packed:
        check_segment_ids(segment_ids, B, L)
    # auto: Pallas on a GPU where it compiles for these shapes, else XLA (the rule every op shares)
    probe = partial(_pallas_probe, B, L, H, K, V, C, packed)
    key = probe_key(q=q, k=k, v=v, log_f=log_f, i=i, chunk_size=C, packed=packed or None)
    backend = resolve_backend(backend, op="mlstm", probe=probe, key=key)
    check_chunk_size(C, power_of_two=backend == "pallas")
    if backend == "reference":
        return mlstm_reference(q, k, v, log_f, i, initial_state=initial_state, segment_ids=segment_ids)
    state = zero_state(B, H, K, V) if initial_state is None else as_f32_state(initial_state)
    if L == 0:
        return jnp.zeros(v.shape, v.dtype), state
    f32 = tuple(x.astype(F32) for x in (q, k, v, log_f, i))
    flags = dict(zip(("starts", "pad"), segment_masks(segment_ids))) if packed else {}
    o, final = mlstm_chunked(*f32, *state, chunk_size=C, backend=backend, **flags)
    return o.astype(v.dtype), final
