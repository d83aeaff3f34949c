"""Packed sequences: several sequences (and padding) in one row, told apart by ``segment_ids``.

Shape legend: B batch · L length.

``segment_ids (B, L)`` is an integer array; 0 marks padding. Position t starts a new sequence when t = 0 or
``segment_ids[:, t] != segment_ids[:, t-1]`` (and it is not padding). Every sequence starts from the op's
``initial_state`` (per row; zeros when None); padding positions are identity steps (state unchanged, output 0).

``check_segment_ids`` validates the argument; ``segment_flags`` turns it into the two boolean masks the ops work
with: ``starts`` (t begins a sequence) and ``pad`` (t is padding).
"""

import jax.numpy as jnp
import numpy as np

from algornn.scan_kernels._common.validate import check_array, describe


def check_segment_ids(segment_ids, B: int, L: int, *, what: str = "q"):
    """``segment_ids`` must be an integer array ``(B, L)`` (``B``, ``L`` those of ``what``); returns it."""
    check_array("segment_ids", segment_ids)
    if not jnp.issubdtype(np.dtype(segment_ids.dtype), jnp.integer):
        raise ValueError(
            f"segment_ids must be an integer array (B, L) = {(B, L)} (0 = padding, a new id starts a new "
            f"sequence), got {describe(segment_ids)}"
        )
    if tuple(segment_ids.shape) != (B, L):
        raise ValueError(
            f"segment_ids must have shape (B, L) = {(B, L)}, the batch and length of {what}, "
            f"got {describe(segment_ids)}"
        )
    return segment_ids


def segment_flags(segment_ids):
    """``(starts, pad)``, boolean ``(B, L)``: where a sequence begins, and where the row is padding."""
    ids = segment_ids
    first = jnp.ones(ids.shape[:1] + (min(1, ids.shape[1]),), bool)  # (B, 1); (B, 0) for an empty row
    new = jnp.concatenate([first, ids[:, 1:] != ids[:, :-1]], axis=1)
    pad = ids == 0
    return new & ~pad, pad
