"""Packed sequences: the ``segment_ids`` argument of the fast-weight ops, checked and turned into masks.

Shape legend: B batch · L length.

``segment_ids (B, L)`` int labels the sequences packed into a row: 0 is padding; a position t starts a new
sequence when t == 0 or ``segment_ids[:, t] != segment_ids[:, t-1]`` (and t is not padding). Every sequence starts
from the op's initial state; padding positions are identity steps (no change of state, output 0), so the state
after a row is the state at the end of its last real sequence.
"""

import jax.numpy as jnp
import numpy as np

from algornn.scan_kernels._common.validate import check_array, describe


def check_segment_ids(segment_ids, B: int, L: int):
    """``segment_ids`` must be None or an integer array of shape ``(B, L)`` (the op's batch and length)."""
    if segment_ids is None:
        return
    check_array("segment_ids", segment_ids)
    if not np.issubdtype(np.dtype(segment_ids.dtype), np.integer):
        raise ValueError(f"segment_ids must have an integer dtype (0 = padding), got {describe(segment_ids)}")
    if tuple(segment_ids.shape) != (B, L):
        raise ValueError(f"segment_ids must have shape (B, L) = {(B, L)} as the inputs, got {describe(segment_ids)}")


def sequence_starts(segment_ids):
    """``(valid, starts)``, both bool ``(B, L)``: ``valid`` marks real tokens (id != 0), ``starts`` the real tokens
    that begin a sequence (t == 0 or a change of id; a padding run never starts one)."""
    valid = segment_ids != 0
    change = jnp.concatenate([jnp.ones_like(valid[:, :1]), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)  # (B, L)
    return valid, valid & change
