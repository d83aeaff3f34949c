"""Long sequences segment by segment, with each segment's forward recomputed in the backward.

Shape legend: B batch · L length · S segment length (tokens).

For an op ``f(xs, state) -> (o, state')`` over a time axis (axis 1 of every array of ``xs`` and of ``o``) whose
state carries everything one segment hands the next, ``segmented(f, S, xs, state)`` runs ``f`` on the segments
``[0, S), [S, 2S), …`` (a shorter last one) in sequence, each entered with the state the previous one left. The
result is that of one call on the whole sequence (the recurrence is the same; only where a chunked form starts
its chunks may move, by whole segments).

Gradients (``custom_vjp``): the forward keeps only the inputs and the ``ceil(L / S)`` states entering the
segments; the backward walks the segments in reverse and differentiates each one by ``jax.vjp`` of ``f`` at its
stored entering state (its forward run again), from its output cotangent and the cotangent of the state it
left, writing the input gradients into whole-length buffers in place. So the scratch of a forward+backward is
one segment's scratch plus O(B·L·(inputs)) — the residuals of ``f`` for the other segments never exist — at the
price of one more forward of ``f``. Sequential gradient checkpointing over segments (Chen 2016, "Training Deep
Nets with Sublinear Memory Cost", arXiv:1604.06174), applied to the time axis of a recurrence.

Used by the fast-weight ops that compose on another op (``delta_product``, ``mlstm``): their compositions add
full-length intermediates (interleaved copies, rescaled keys) beside the inner op's residuals.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_tmap = jax.tree_util.tree_map


def _slice(xs, start, size):
    return _tmap(lambda x: lax.dynamic_slice_in_dim(x, start, size, 1), xs)


def _write(bufs, ys, start):
    return _tmap(lambda b, y: lax.dynamic_update_slice_in_dim(b, y.astype(b.dtype), start, 1), bufs, ys)


def _bounds(L: int, S: int):
    """``(n_full, tail)``: the number of whole segments of S and the length of the shorter last one (0: none)."""
    return divmod(L, S)


def _run(f, S, xs, state, keep):
    """Forward over the segments: ``o`` (time axis 1), the final state and, if ``keep``, the states entering
    every segment, stacked on a leading axis (``n_full`` whole segments, then the tail's)."""
    L = jax.tree_util.tree_leaves(xs)[0].shape[1]
    n_full, tail = _bounds(L, S)
    n_seg = n_full + (tail > 0)
    o_seg = jax.eval_shape(f, _slice(xs, 0, min(S, L)), state)[0]
    o = jnp.zeros(o_seg.shape[:1] + (L,) + o_seg.shape[2:], o_seg.dtype)
    entering = _tmap(lambda s: jnp.zeros((n_seg,) + s.shape, s.dtype), state) if keep else None

    def step(i, carry):
        o, state, entering = carry
        if keep:
            entering = _tmap(lambda buf, s: lax.dynamic_update_index_in_dim(buf, s, i, 0), entering, state)
        o_i, state = f(_slice(xs, i * S, S), state)
        return _write(o, o_i, i * S), state, entering

    carry = lax.fori_loop(0, n_full, step, (o, state, entering)) if n_full else (o, state, entering)
    if tail:
        o, state, entering = carry
        if keep:
            entering = _tmap(lambda buf, s: buf.at[n_full].set(s), entering, state)
        o_t, state = f(_slice(xs, n_full * S, tail), state)
        carry = (_write(o, o_t, n_full * S), state, entering)
    return carry


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def segmented(f, S, xs, state):
    """``f(xs, state) -> (o, state')`` over segments of ``S`` steps of axis 1, in sequence (module docstring).

    Args:
      f: a differentiable function of ``(xs, state)``: ``xs`` a pytree of arrays with the time axis 1 (the
        same length L), ``state`` a pytree of arrays; returns ``o`` (one array, time axis 1, as long as its
        segment) and the state after the segment (the pytree structure, shapes and dtypes of ``state``).
      S: the segment length (static).

    Returns:
      ``o`` over the whole sequence and the final state, as one call ``f(xs, state)`` would.
    """
    o, state, _ = _run(f, S, xs, state, keep=False)
    return o, state


def _segmented_fwd(f, S, xs, state):
    o, final, entering = _run(f, S, xs, state, keep=True)
    return (o, final), (xs, entering)


def _segmented_bwd(f, S, res, cts):
    """Segments in reverse: ``jax.vjp`` of ``f`` at the stored entering state, from the segment's output
    cotangent and the cotangent of the state it left; input cotangents go into whole-length buffers."""
    xs, entering = res
    do, d_state = cts
    L = do.shape[1]
    n_full, tail = _bounds(L, S)
    dxs = _tmap(jnp.zeros_like, xs)

    def segment(i, start, size, d_state, dxs):
        s_in = _tmap(lambda buf: buf[i], entering)
        _, vjp = jax.vjp(f, _slice(xs, start, size), s_in)
        dx, d_in = vjp((lax.dynamic_slice_in_dim(do, start, size, 1), d_state))
        return d_in, _write(dxs, dx, start)

    if tail:
        d_state, dxs = segment(n_full, n_full * S, tail, d_state, dxs)

    def step(j, carry):
        i = n_full - 1 - j
        return segment(i, i * S, S, *carry)

    if n_full:
        d_state, dxs = lax.fori_loop(0, n_full, step, (d_state, dxs))
    return dxs, d_state


segmented.defvjp(_segmented_fwd, _segmented_bwd)
