"""The delta rule's chunk-to-chunk state recurrence, handed to the scan core's public ``dense_linear_scan``.

Shape legend: B batch · H heads · K key dim · V value dim · NC chunks.

This is the one place the delta-rule folder calls another op: through the package's public
``algornn.scan_kernels.dense_linear_scan`` (imported after the scan core in ``scan_kernels/__init__.py``), never
through the scan core's private modules (docs/architecture.md §scan_kernels layout).
"""

import jax
import jax.numpy as jnp

from algornn.scan_kernels import dense_linear_scan


def scan_chunk_states_dense(M, delta, s0, backend: str, reverse: bool = False):
    """End-of-chunk states ``S_n = M_n S_{n-1} + delta_n`` through ``dense_linear_scan``, in the states' own
    layout: ``M (B, H, NC, K, K)``, ``delta (B, H, NC, K, V)``, ``s0 (B, H, K, V)`` -> ``(B, H, NC, K, V)``
    (``scan_state_columns_dense`` with the V columns moved first and back)."""
    cols = scan_state_columns_dense(M, jnp.moveaxis(delta, -1, 0), jnp.moveaxis(s0, -1, 0), backend, reverse)
    return jnp.moveaxis(cols, 0, -1)


def scan_state_columns_dense(M, cols, s0_cols, backend: str, reverse: bool = False):
    """``S_n = M_n S_{n-1} + Δ_n`` through ``dense_linear_scan`` with the V columns of the state leading:
    ``cols (V, B, H, NC, K)``, ``s0_cols (V, B, H, K)``, ``M (B, H, NC, K, K)``; returns ``(V, B, H, NC, K)``.

    The V columns are independent vectors sharing ``M``: ``vmap`` over the leading axis (no copy of M, and no
    transposed copy of Δ or of the result, as a batched loop carries its mapped axis first).
    """
    V, B, H, nc, K = cols.shape
    A = M.reshape(B * H, nc, K, K)
    scan = jax.vmap(lambda bb, hh: dense_linear_scan(A, bb, hh, reverse=reverse, backend=backend))
    return scan(cols.reshape(V, B * H, nc, K), s0_cols.reshape(V, B * H, K)).reshape(V, B, H, nc, K)
