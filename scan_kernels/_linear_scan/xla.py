"""Pure-XLA forms of the diagonal linear scan ``h_t = a_t ⊙ h_{t-1} + b_t`` on ``(B, L, D)`` arrays.

* CPU (docs/backends.md §CPU measurements): sequential loops over time (2–4× faster than
  ``lax.associative_scan`` on 2 cores) that
  slice rows of the ``(B, L, D)`` arrays in place: no ``(L, B, D)`` transposes, which a ``lax.scan`` over
  ``moveaxis``-ed inputs pays for (~2× the time at L=16384, D=1024). For real inputs whose L has a divisor
  P in 4…√L, :func:`chunked_scan` runs P pieces of the sequence side by side (two passes, P times fewer
  loop steps): up to ~3× faster than one loop for few channels and ~1.3× at D=1024, and a long sum's
  rounding grows over one piece, not the whole length. Otherwise (complex, short or prime L)
  :func:`sequential_scan`, one loop whose carry is a compensated sum (Knuth's TwoSum, TAOCP vol. 2 §4.2.2;
  Kahan 1965). The backward pass reads the decays one step shifted (``shifted=True``), so no shifted copy
  of ``a`` is made.
* GPU: ``lax.associative_scan`` with ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)`` (Blelloch 1990), whose
  pairwise tree is also accurate for long sums.

Shape legend: B batch · L length · D channels.
"""

import math

import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common import backend as _backend
from algornn.scan_kernels._common.numerics import two_sum


def _row(x, t):
    """Row ``t`` of ``x (B, L, D)`` as ``(B, D)``."""
    return lax.dynamic_index_in_dim(x, t, axis=1, keepdims=False)


def _put(out, t, v):
    return lax.dynamic_update_index_in_dim(out, v, t, axis=1)


def sequential_scan(a, b, h0, *, reverse: bool = False, shifted: bool = False):
    """Compensated sequential scan over axis 1 of ``a, b (B, L, D)`` from ``h0 (B, D)``.

    ``shifted=True`` uses the decay of the step visited *before* t (``a_{t-1}``; ``a_{t+1}`` when
    ``reverse``) and 0 at the first visited step: the recurrence of the backward pass, without a shifted copy
    of ``a``. (Carrying that row in the loop state instead was measured ~5x slower at D=64.)
    """
    L = b.shape[1]

    def body(i, carry):
        h, c, out = carry  # true state ≈ h + c
        t = L - 1 - i if reverse else i
        if shifted:
            a_t = _row(a, jnp.clip(t + 1 if reverse else t - 1, 0, L - 1))
            a_t = jnp.where(i == 0, jnp.zeros_like(a_t), a_t)
        else:
            a_t = _row(a, t)
        h, c = two_sum(a_t * h, a_t * c + _row(out, t))  # row t of out still holds b_t
        return h, c, _put(out, t, h)

    # h overwrites b row by row in one buffer: XLA reuses b's buffer when b is dead afterwards (e.g. computed
    # in the same jit), else copies it once; measured faster than a zero-initialised output in both cases.
    return lax.fori_loop(0, L, body, (h0, jnp.zeros_like(h0), b))[2]


def chunked_scan(a, b, h0, *, chunks: int, reverse: bool = False, shifted: bool = False):
    """Two-level sequential scan: ``L`` split into ``chunks`` (P, dividing L) runs of ``T = L / P`` steps, each
    loop step advancing all P runs at once on a ``(B, P, D)`` slab, so the loop has P times fewer, P times wider
    iterations than :func:`sequential_scan` (the chunked scan of Blelloch 1990 §1.4, sequential inside the runs
    and across them).

    Pass 1 scans every run from zero, keeping its end state and the product of its decays (reads a, b); a
    ``lax.scan`` over the P runs turns those into each run's incoming state ``H_in``; pass 2 scans every run
    again from its ``H_in``, writing h over ``b`` in place (reads a, b, writes h). Rounding therefore grows
    over one run of T steps, not over L: a float32 cumulative sum of 10^6 terms (T = 1000) is ~1e-4 relative,
    against ~1e-2 for the single plain loop. ``shifted`` as in :func:`sequential_scan`; at a run's first
    visited step the decay of the step before lives in the neighbouring run.
    """
    B, L, D = b.shape
    P = chunks
    T = L // P
    a4, b4 = a.reshape(B, P, T, D), b.reshape(B, P, T, D)  # free reshapes: run p = rows p*T ... p*T + T - 1

    def row(x, t):  # (B, P, D): step t of every run
        return lax.dynamic_index_in_dim(x, t, axis=2, keepdims=False)

    if shifted:  # the decay each run's first visited step needs: the neighbouring run's edge row (0 at the end)
        zero = jnp.zeros_like(a4[:, :1, 0])
        edge = jnp.concatenate([a4[:, 1:, 0], zero], 1) if reverse else jnp.concatenate([zero, a4[:, :-1, T - 1]], 1)

    def step_index(i):
        return T - 1 - i if reverse else i

    def decay(i, t):
        if not shifted:
            return row(a4, t)
        inner = row(a4, jnp.clip(t + 1 if reverse else t - 1, 0, T - 1))
        return jnp.where(i == 0, edge, inner)

    def pass1(i, carry):
        h, prod = carry
        t = step_index(i)
        a_t = decay(i, t)
        return a_t * h + row(b4, t), prod * a_t

    zeros = jnp.zeros((B, P, D), b.dtype)
    ones = jnp.ones((B, P, D), b.dtype)
    h_end, prod = lax.fori_loop(0, T, pass1, (zeros, ones))

    def across(h_in, x):  # runs in visiting order: state entering run p, then the state leaving it
        prod_p, h_end_p = x
        return jnp.where(h_in == 0, 0, prod_p * h_in) + h_end_p, h_in  # 0·inf (Π|a| > 1 overflowed) stays 0

    runs_first = lambda x: jnp.moveaxis(x, 1, 0)  # (P, B, D)
    _, h_in = lax.scan(across, h0, (runs_first(prod), runs_first(h_end)), reverse=reverse)
    h_in = jnp.moveaxis(h_in, 0, 1)  # (B, P, D)

    def pass2(i, carry):
        h, out = carry
        t = step_index(i)
        h = decay(i, t) * h + row(out, t)  # row t of out still holds b_t
        return h, lax.dynamic_update_index_in_dim(out, h, t, axis=2)

    return lax.fori_loop(0, T, pass2, (h_in, b4))[1].reshape(B, L, D)


def associative_scan(a, b, h0, *, reverse: bool = False):
    """Parallel (log-depth) scan over axis 1; ``h0`` folded into the first step's input."""

    def combine(left, right):  # left earlier in scan order
        a1, b1 = left
        a2, b2 = right
        return a2 * a1, a2 * b1 + b2

    t = -1 if reverse else 0
    b = b.at[:, t].add(a[:, t] * h0)
    _, h = lax.associative_scan(combine, (a, b), axis=1, reverse=reverse)
    return h


def shift_decays(a, *, reverse: bool):
    """``a`` moved one step so that step t sees the decay of the step visited before it (0 at the first):
    ``a_{t-1}`` for a forward scan, ``a_{t+1}`` for a reverse one (the backward pass's recurrence)."""
    zero = jnp.zeros_like(a[:, :1])
    return jnp.concatenate([a[:, 1:], zero], 1) if reverse else jnp.concatenate([zero, a[:, :-1]], 1)


def linear_scan_xla(a, b, h0, *, reverse: bool = False, shifted: bool = False):
    """The fastest pure-XLA form for this device (see module docstring)."""
    if _backend.on_gpu():
        a = shift_decays(a, reverse=reverse) if shifted else a
        return associative_scan(a, b, h0, reverse=reverse)
    # complex: the single compensated loop measured faster than the chunked one (1.5x in place at 16384 x 1024)
    P = 1 if jnp.iscomplexobj(b) else cpu_chunks(*b.shape)
    if P > 1:
        return chunked_scan(a, b, h0, chunks=P, reverse=reverse, shifted=shifted)
    return sequential_scan(a, b, h0, reverse=reverse, shifted=shifted)


def cpu_chunks(B: int, L: int, D: int) -> int:
    """Runs P for :func:`chunked_scan` on CPU, or 1 for the single loop.

    The largest divisor of L up to ``min(1024, √L)`` whose ``(B, P, D)`` slab stays within 2^18 elements
    (1 MiB in float32, cache-sized), or 1 if that is below 4 (few runs gain nothing; a prime L also lands
    here). Chosen from ``python -m algornn.experiments.benchmarks.scan`` and a P sweep on 2 cores: P in 16–256 was
    within noise of the best at L ≥ 1024, up to 2.9× faster than the single loop for D = 64.
    """
    cap = min(1024, math.isqrt(L), (1 << 18) // max(B * D, 1))
    P = next((p for p in range(cap, 3, -1) if L % p == 0), 1)
    return P
