"""Packed sequences: several sequences per batch row, told apart by ``segment_ids`` (docs/ops.md §Packed sequences).

Shape legend: B batch · L length.

``segment_ids (B, L)`` is an integer array; 0 marks padding. Position t starts a new sequence when it is not
padding and t = 0 or ``segment_ids[:, t] != segment_ids[:, t-1]`` (a recurrence run with ``reverse=True`` starts
its sequences at their last positions instead: t = L − 1 or ``segment_ids[:, t] != segment_ids[:, t+1]``). Every
sequence starts from the initial state of its row; padding positions are identity steps whose outputs are 0.

``check_segment_ids``/``sequence_starts`` are the same check and masks in the form the fast-weight ops use.
The masks here are all an op needs: ``start`` (reset the state to the initial state before this step), ``pad``
(identity step, output 0) and ``keep = ~(start | pad)`` (the step reads the previous state).
"""

import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.validate import check_array, describe


def check_segment_ids_shape(segment_ids, shape: tuple, what: str):
    """``segment_ids`` must be an integer array of exactly ``shape`` (``what`` says where that shape comes from,
    e.g. ``"(B, L): the batch and length of b"``). Returns it as a JAX array."""
    dtype = getattr(segment_ids, "dtype", None)
    ok = hasattr(segment_ids, "shape") and dtype is not None and jnp.issubdtype(dtype, jnp.integer)
    if not ok or tuple(segment_ids.shape) != tuple(shape):
        raise ValueError(
            f"segment_ids must be an integer array of shape {tuple(shape)} ({what}; 0 = padding, a change of id "
            f"starts a new sequence), got {describe(segment_ids)}"
        )
    return jnp.asarray(segment_ids)


def segment_masks(segment_ids, *, reverse: bool = False):
    """``(start, pad)`` bool ``(B, L)``: where a sequence starts in the scan's direction, and where padding is."""
    seg = segment_ids
    pad = seg == 0
    if reverse:
        neighbour = jnp.concatenate([seg[:, 1:], seg[:, -1:]], axis=1)  # seg[:, t+1]
        edge = jnp.arange(seg.shape[1]) == seg.shape[1] - 1
    else:
        neighbour = jnp.concatenate([seg[:, :1], seg[:, :-1]], axis=1)  # seg[:, t-1]
        edge = jnp.arange(seg.shape[1]) == 0
    start = ~pad & ((seg != neighbour) | edge[None, :])
    return start, pad


def same_as_next(segment_ids):
    """``(B, L)`` bool: position t + 1 exists and belongs to the same sequence as t (neither is padding)."""
    seg = segment_ids
    nxt = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
    return (seg != 0) & (nxt == seg)


def position_in_segment(segment_ids):
    """``(B, L)`` int32: t minus the first position of t's sequence (undefined, but finite, on padding)."""
    start, _ = segment_masks(segment_ids)
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    first = lax.cummax(jnp.where(start, t, 0), axis=1)  # the latest start at or before t
    return t - first


def sequence_index(segment_ids):
    """``(B, L)`` int32: which sequence of its row token t belongs to (0, 1, … in order of appearance; −1 on
    padding)."""
    start, pad = segment_masks(segment_ids)
    return jnp.where(pad, -1, jnp.cumsum(start, axis=1, dtype=jnp.int32) - 1)


def last_real_index(segment_ids, *, reverse: bool = False):
    """``(index (B,) int32, any (B,) bool)``: the last non-padding position in the scan's direction (the
    smallest one when ``reverse``), and whether the row has any."""
    L = segment_ids.shape[1]
    t = jnp.arange(L, dtype=jnp.int32)[None, :]
    real = segment_ids != 0
    if reverse:
        idx = jnp.min(jnp.where(real, t, L), axis=1)
    else:
        idx = jnp.max(jnp.where(real, t, -1), axis=1)
    return jnp.clip(idx, 0, L - 1), jnp.any(real, axis=1)


def check_segment_ids(segment_ids, B: int, L: int, *, what: str = "the inputs"):
    """``segment_ids`` must be None or an integer array ``(B, L)`` (the batch and length of ``what``); returns it."""
    if segment_ids is None:
        return None
    check_array("segment_ids", segment_ids)
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(
            f"segment_ids must be an integer array (an integer dtype; 0 = padding, a new id starts a new sequence) "
            f"of shape (B, L) = {(B, L)}, got {describe(segment_ids)}"
        )
    if tuple(segment_ids.shape) != (B, L):
        raise ValueError(
            f"segment_ids must have shape (B, L) = {(B, L)}, the batch and length of {what}, "
            f"got {describe(segment_ids)}"
        )
    return segment_ids


def sequence_starts(segment_ids):
    """``(valid, starts)``, both bool ``(B, L)``: ``valid`` marks real tokens (id != 0), ``starts`` the real tokens
    that begin a sequence (t == 0 or a change of id; a padding run never starts one)."""
    start, pad = segment_masks(segment_ids)
    return ~pad, start
