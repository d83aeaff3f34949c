"""Two-level Vandermonde products 2·Re Σ_n w_n a_n^l for l < L (private; S4D kernel, DPLR via FFT).

Shape legend (docs/shapes.md): N/2 conjugate-half states, L length, Q stacked weight vectors.
Split l = j·m + i with m ≈ √L: a^l = a^{jm} · a^i, so the sum is one real matmul per channel of
``(Q·J, N)`` outer powers (weights folded in) by ``(N, m)`` inner powers, with re/im planes stacked
on the contraction axis. Memory O(N·√L + Q·L) instead of the O(N·L) Vandermonde matrix; powers
are exp(l·log a) evaluated directly, never by repeated multiplication.
"""

import jax.numpy as jnp
import numpy as np


def split_length(L):
    """(m, J) with J·m >= L, m ≈ √L."""
    m = max(1, int(np.ceil(np.sqrt(L))))
    return m, -(-L // m)


def vandermonde_2re(w, log_a, L):
    """``2 Re Σ_n w[..., q, n] exp(l·log_a[..., n])`` -> ``(..., Q, L)`` real.

    ``w (..., Q, N/2)`` and ``log_a (..., N/2)`` complex with equal leading dims.
    """
    m, J = split_length(L)
    lead = log_a.shape[:-1]
    rdt = jnp.real(log_a).dtype
    ones = (1,) * len(lead)
    i = jnp.arange(m, dtype=rdt).astype(log_a.dtype).reshape(ones + (1, m))
    j = (jnp.arange(J, dtype=rdt) * m).astype(log_a.dtype).reshape(ones + (1, J, 1))
    inner = jnp.exp(log_a[..., :, None] * i)  # (..., N/2, m): a^i
    outer = w[..., :, None, :] * jnp.exp(j * log_a[..., None, None, :])  # (..., Q, J, N/2): w a^{jm}
    Q = w.shape[-2]
    lhs = jnp.concatenate([jnp.real(outer), -jnp.imag(outer)], axis=-1)  # (..., Q, J, N)
    lhs = lhs.reshape(lead + (Q * J, lhs.shape[-1]))  # (..., Q·J, N)
    rhs = jnp.concatenate([jnp.real(inner), jnp.imag(inner)], axis=-2)  # (..., N, m)
    s = 2.0 * (lhs @ rhs)  # (..., Q·J, m)
    return s.reshape(lead + (Q, J * m))[..., :L]
