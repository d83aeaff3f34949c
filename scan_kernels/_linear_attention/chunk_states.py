"""Linear attention's chunk-to-chunk state recurrence, handed to the scan core's public ``linear_scan``.

Shape legend: B batch · H heads · K key dim · V value dim · NC chunks.

This is the one place the linear-attention folder calls another op: through the package's public
``algornn.scan_kernels.linear_scan`` (imported after the scan core in ``scan_kernels/__init__.py``), never through
the scan core's private modules (docs/architecture.md §scan_kernels layout).
"""

import jax.numpy as jnp

from algornn.scan_kernels import linear_scan


def scan_chunk_states_diag(decay, delta, s0, backend: str, reverse: bool = False):
    """End-of-chunk states ``S_n = decay_n ⊙ S_{n-1} + delta_n`` through ``linear_scan``.

    ``decay`` broadcastable to ``delta (B, H, NC, K, V)``; ``s0 (B, H, K, V)``. Returns ``(B, H, NC, K, V)``.
    """
    B, H, nc, K, V = delta.shape
    a = jnp.broadcast_to(decay, delta.shape).reshape(B, H, nc, K * V)  # time axis -2: (B, H, NC, K·V)
    b = delta.reshape(B, H, nc, K * V)
    h = linear_scan(a, b, s0.reshape(B, H, K * V), reverse=reverse, backend=backend)
    return h.reshape(B, H, nc, K, V)
