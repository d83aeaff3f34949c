"""Pure-XLA forms of the diagonal linear scan ``h_t = a_t ⊙ h_{t-1} + b_t`` on ``(B, L, D)`` arrays.

* CPU: a sequential ``lax.scan`` over time (measured 2–4× faster than ``lax.associative_scan`` on 2 cores,
  jax_stack §3) carrying a compensated sum: the state is ``h + c`` with ``c`` the rounding error of the
  last addition (Knuth's TwoSum, TAOCP vol. 2 §4.2.2; Kahan 1965), so a cumulative sum of 10^6 float32
  terms keeps ~1e-7 relative error instead of ~1e-2 for the naive loop.
* GPU: ``lax.associative_scan`` with ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)`` (Blelloch 1990), whose
  pairwise tree is also accurate for long sums.

Shape legend: B batch · L length · D channels.
"""

import jax.numpy as jnp
from jax import lax

from scan_kernels import _backend


def two_sum(x, y):
    """``s = fl(x + y)`` and its exact rounding error ``e`` (``x + y == s + e``), branch-free (Knuth)."""
    s = x + y
    bp = s - x
    e = (x - (s - bp)) + (y - bp)
    return s, e


def sequential_scan(a, b, h0, *, reverse: bool = False):
    """Compensated sequential scan over axis 1 of ``a, b (B, L, D)`` with ``h0 (B, D)``."""

    def step(carry, ab):
        h, c = carry  # true state ≈ h + c
        a_t, b_t = ab
        h, c = two_sum(a_t * h, a_t * c + b_t)
        return (h, c), h

    xs = (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0))  # (L, B, D)
    _, h = lax.scan(step, (h0, jnp.zeros_like(h0)), xs, reverse=reverse)
    return jnp.moveaxis(h, 0, 1)


def associative_scan(a, b, h0, *, reverse: bool = False):
    """Parallel (log-depth) scan over axis 1; ``h0`` folded into the first step's input."""

    def combine(left, right):  # left earlier in scan order
        a1, b1 = left
        a2, b2 = right
        return a2 * a1, a2 * b1 + b2

    if reverse:
        b = b.at[:, -1].add(a[:, -1] * h0)
    else:
        b = b.at[:, 0].add(a[:, 0] * h0)
    _, h = lax.associative_scan(combine, (a, b), axis=1, reverse=reverse)
    return h


def linear_scan_xla(a, b, h0, *, reverse: bool = False):
    """The fastest pure-XLA form for this device (see module docstring)."""
    if _backend.on_gpu():
        return associative_scan(a, b, h0, reverse=reverse)
    return sequential_scan(a, b, h0, reverse=reverse)
