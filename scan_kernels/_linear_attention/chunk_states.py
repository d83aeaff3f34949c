"""Linear attention's chunk-to-chunk state recurrence and the per-sequence log-decays of packed sequences, handed
to the scan core's public ``linear_scan``.

Shape legend: B batch · L length · H heads · K key dim · V value dim · NC chunks.

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


def sequence_log_decay(log_decay, starts, backend: str):
    """The log-decay of each position since the start of its packed sequence, ``γ̂_t = g_t + (1 − r_t) γ̂_{t−1}``
    (``γ̂_{−1} = 0``), through ``linear_scan``: the exponent of what is left at t of the sequence's initial state.

    ``log_decay (B, L, H[, K])`` float32, ``starts (B, L)`` bool (``r``). Returns the shape of ``log_decay``.
    """
    B, L = log_decay.shape[:2]
    b = log_decay.reshape(B, L, -1)  # time axis -2: (B, L, H[·K])
    a = jnp.broadcast_to(1.0 - starts.astype(jnp.float32)[..., None], b.shape)
    return linear_scan(a, b, backend=backend).reshape(log_decay.shape)
