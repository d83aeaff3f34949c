"""DeltaProduct (Siems et al. 2025) as a composition on the public ``delta_rule``, and the public op.

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk; ``n`` sub-steps per token.

    S_{t,0} = exp(g_t) S_{t-1,n},   S_{t,j} = (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ,
    o_t = S_{t,n}ᵀ q_t

A token's ``n`` sub-steps are ``n`` consecutive steps of a (gated) delta rule, whose step is
``S_s = exp(g_s)(I − β_s k_s k_sᵀ) S_{s-1} + β_s k_s v_sᵀ`` (the scalar decay commutes with the Householder
factor, so applying it first, as DeltaProduct does, is the same). So the chunked backends run ``delta_rule`` on
the interleaved sequence of length ``L·n`` (step ``s = t·n + j``):

* keys, values and β in ``(t, j)`` order — a free reshape of ``(B, L, n, H, ·)`` to ``(B, L·n, H, ·)``;
* the log-decay ``g_t`` on sub-step ``j = 0`` and 0 on the others (applied once, before the token's steps);
* the query ``q_t`` on the last sub-step ``j = n − 1`` and zero on the others, and ``o_t`` is the output of
  that sub-step (every ``n``-th output; the others are zero and dropped).

Everything of ``delta_rule`` carries over: the chunked WY/UT XLA form and the Pallas kernels, and the
gradients by its ``custom_vjp`` without per-token states (JAX differentiates only the reshapes, the
concatenations and the slice around it), so backward memory is O(B·L·n·H·(K+V) + (L·n/C)·B·H·K·V).
``chunk_size`` counts sub-steps of the interleaved sequence (C/n tokens per chunk; a chunk may end inside a
token, which is exact). The cost is that of a delta rule of length ``L·n``, plus the ``n − 1`` zero queries of
each token (the output terms of the chunked form are computed for them too).

**Long sequences.** Those constant factors are large: the interleaved queries, outputs and output cotangent
are ``n·L`` long, and the delta rule's residuals (entering states, ``T``, ``U``) are those of ``n·L`` sub-steps,
each the size of an ``(n·L, 64)`` array at K = V = C = 64 — fwd+bwd scratch 0.22 of the per-token states at
L = 16384, n = 2 in one call. Beyond ``SEGMENT_STEPS`` sub-steps the op therefore runs segment by segment
(``_common.segments``; each segment a whole number of chunks, the state carried between them) and recomputes
each segment's forward in the backward: the scratch is one segment's plus the whole-length output and its
cotangent, O(B·L·H·V + SEGMENT_STEPS·B·H·(K+V+C)) — 0.069 of the per-token states at L = 16384 — for one more
forward pass of the sequences that long. Shorter ones run in one call, as before.

**Packed sequences** (``segment_ids (B, L)``): a token's ``n`` sub-steps carry its id (``jnp.repeat``), so the
interleaved sequence packs the same sequences and ``delta_rule``'s packing applies: a sequence starts at its first
token's first sub-step (whose decay ``g_t`` acts on the initial state, as in the recurrence), padding tokens are
``n`` identity steps. On the segmented path a segment starts inside a sequence or at a new one: ``segmented``
carries ``(S, s⁰)``; each segment is entered with the carried state (``s⁰`` where a sequence starts at the segment's
first token) and its later sequences start from ``s⁰`` (``delta_rule``'s ``reset_state``); segment-local ids are
renumbered from the start flags, which travel with the inputs as float flags (the inputs of ``segmented`` are
differentiated; the flags' cotangents are zeros).

This module is where the DeltaProduct folder calls another op: the package's public ``delta_rule``
(docs/architecture.md §scan_kernels layout).
"""

from functools import partial

import jax
import jax.numpy as jnp

from algornn.scan_kernels import delta_rule
from algornn.scan_kernels._common.backend import check_backend
from algornn.scan_kernels._common.fast_weight_checks import check_chunk_size
from algornn.scan_kernels._common.packing import check_segment_ids, sequence_starts
from algornn.scan_kernels._common.segments import segmented
from algornn.scan_kernels._delta_product.reference import check_inputs, delta_product_reference

# Sub-steps per segment of the chunked backends' long-sequence path (``_common.segments``): longer sequences run
# segment by segment, each segment's forward recomputed in the backward, so the scratch is one segment's.
SEGMENT_STEPS = 4096


def interleave(q, k, v, beta, log_decay):
    """The delta-rule sequence of length ``L·n`` that runs DeltaProduct: ``q, k (B, L·n, H, K)``,
    ``v (B, L·n, H, V)``, ``beta (B, L·n, H)``, ``log_decay`` None or ``(B, L·n, H)`` (module docstring)."""
    B, L, n, H, K = k.shape
    flat = lambda x: x.reshape((B, L * n) + x.shape[3:])  # noqa: E731  (t, j) -> s = t·n + j
    q_sub = jnp.concatenate([jnp.zeros((B, L, n - 1, H, K), q.dtype), q[:, :, None]], axis=2)  # q_t on j = n − 1
    g_sub = None
    if log_decay is not None:  # g_t on j = 0
        g_sub = flat(jnp.concatenate([log_decay[:, :, None], jnp.zeros((B, L, n - 1, H), log_decay.dtype)], axis=2))
    return flat(q_sub), flat(k), flat(v), flat(beta), g_sub


def _composed(xs, initial_state, segment_ids=None, reset_state=None, *, chunk_size, backend):
    """``delta_rule`` on :func:`interleave`'s sequence of ``xs = (q, k, v, beta, log_decay)``, then every ``n``-th
    output: ``o (B, L, H, V)`` in v's dtype and the final state ``(B, H, K, V)`` float32. Packed: ``segment_ids``
    ``(B, L)`` repeated over each token's sub-steps, ``reset_state`` as in ``delta_rule``."""
    q, k, v, beta, log_decay = xs
    B, L, n, H, _ = k.shape
    qs, ks, vs, bs, gs = interleave(q, k, v, beta, log_decay)
    kw = dict(log_decay=gs, initial_state=initial_state, chunk_size=chunk_size, backend=backend)
    if segment_ids is not None:
        kw |= dict(segment_ids=jnp.repeat(segment_ids, n, axis=1), reset_state=reset_state)
    o, final = delta_rule(qs, ks, vs, bs, **kw)
    return o.reshape(B, L, n, H, -1)[:, :, -1], final


def _composed_packed_segment(xs, state, *, chunk_size, backend):
    """One segment of a packed row on the segmented path: ``xs = (q, k, v, beta, log_decay, starts, valid)`` with
    float flags ``(B, S)`` (starts of the whole row's sequences, real tokens), ``state = (S, s⁰)``: the carried
    state and the row's initial state (passed on unchanged). Returns the segment's outputs and ``(S', s⁰)``."""
    *ins, starts, valid = xs
    S, s0 = state
    ids = jnp.where(valid > 0, jnp.cumsum(starts, axis=1) + 1, 0).astype(jnp.int32)  # segment-local ids
    enter = jnp.where(starts[:, 0, None, None, None] > 0, s0, S)  # a sequence starting here starts from s⁰
    o, S = _composed(tuple(ins), enter, ids, s0, chunk_size=chunk_size, backend=backend)
    return o, (S, s0)


def segment_tokens(n: int, chunk_size: int, segment_steps: int) -> int:
    """Tokens per segment of :func:`segmented`: a whole number of ``C`` tokens (so a segment is whole chunks of the
    interleaved sequence), as many as fit in ``segment_steps`` sub-steps, at least ``C``."""
    return max(1, segment_steps // (n * chunk_size)) * chunk_size


@partial(jax.jit, static_argnames=("chunk_size", "backend", "segment_steps"))
def delta_product_composed(
    q, k, v, beta, log_decay, initial_state, segment_ids=None, *, chunk_size, backend, segment_steps=SEGMENT_STEPS
):
    """The chunked backends on validated inputs: :func:`_composed` in one call when the sequence fits in one
    segment (:func:`segment_tokens`, at most ``segment_steps`` sub-steps), else segment by segment (module
    docstring). Returns ``o (B, L, H, V)`` in v's dtype and the final state ``(B, H, K, V)`` float32."""
    B, L, n, H, K = k.shape
    f = partial(_composed, chunk_size=chunk_size, backend=backend)
    S = segment_tokens(n, chunk_size, segment_steps)
    if L <= S:
        return f((q, k, v, beta, log_decay), initial_state, segment_ids)
    s0 = jnp.zeros((B, H, K, v.shape[-1]), jnp.float32) if initial_state is None else initial_state
    s0 = s0.astype(jnp.float32)
    if segment_ids is None:
        return segmented(f, S, (q, k, v, beta, log_decay), s0)
    valid, starts = (m.astype(jnp.float32) for m in sequence_starts(segment_ids))
    fp = partial(_composed_packed_segment, chunk_size=chunk_size, backend=backend)
    o, (final, _) = segmented(fp, S, (q, k, v, beta, log_decay, starts, valid), (s0, s0))
    return o, final


def delta_product(q, k, v, beta, *, log_decay=None, initial_state=None, segment_ids=None, chunk_size=64, backend=None):
    """DeltaProduct: each token applies its decay, then ``n`` delta-rule steps (a product of ``n`` generalised
    Householder transitions), then reads:
    ``S_{t,0} = exp(g_t) S_{t-1,n}``, ``S_{t,j} = (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ``,
    ``o_t = S_{t,n}ᵀ q_t``.

    Args:
      q: ``(B, L, H, K)``; k: ``(B, L, n, H, K)`` (keys usually L2-normalised by the layer);
        v: ``(B, L, n, H, V)`` — float32 or bfloat16 (one dtype).
      beta: ``(B, L, n, H)`` writing strengths in (0, 2) (β > 1: negative eigenvalues; not checked).
      log_decay: None or ``(B, L, H)``, g ≤ 0, applied once per token before its ``n`` sub-steps.
      initial_state: ``(B, H, K, V)``; default zeros. With ``segment_ids``, the state every sequence starts from.
      segment_ids: None or int ``(B, L)``: sequences packed into each row, as in ``delta_rule`` (0 = padding, a new
        sequence at t = 0 and where the id changes; padding tokens leave the state and output 0); exact isolation on
        every backend, the segmented long-sequence path included.
      chunk_size: C for the chunked backends, counted in sub-steps of the interleaved sequence of length ``L·n``
        (C/n tokens per chunk); a power of two for ``"pallas"``.
      backend: None (auto: as ``delta_rule`` decides for the interleaved sequence) | ``"reference"`` (the token
        loop :func:`delta_product_reference`) | ``"xla"`` | ``"pallas"`` (``delta_rule``'s chunked XLA form or
        Pallas kernels on the interleaved sequence; module docstring).

    Returns:
      ``o (B, L, H, V)`` in v's dtype and the final state ``(B, H, K, V)`` float32.
    """
    check_backend(backend)
    B, L = check_inputs(q, k, v, beta, log_decay, initial_state)[:2]
    check_segment_ids(segment_ids, B, L)
    C = check_chunk_size(chunk_size)
    if backend == "reference":
        kw = dict(log_decay=log_decay, initial_state=initial_state, segment_ids=segment_ids)
        return delta_product_reference(q, k, v, beta, **kw)
    return delta_product_composed(q, k, v, beta, log_decay, initial_state, segment_ids, chunk_size=C, backend=backend)
