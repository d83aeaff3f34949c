"""Packed sequences in ``mlstm`` (``segment_ids``): a packed row equals each of its sequences run alone, forward and
gradients, the stabiliser ``m`` restarting from the initial state's at every sequence start.

Oracle: the recurrence as a float64 ``lax.scan`` (``test_mlstm._loop64``, itself checked against a NumPy loop and
finite differences there), run on every sequence alone — one row per sequence, padded at the end with identity steps
(``log_f = 0``, ``i = −∞``, zero q, k, v) — and differentiated by JAX. Packings as in
``test_linear_attention_packed`` (a one-token sequence, padding at the start, between sequences and at the end, an id
reused after padding, a boundary at every position of one chunk of 8).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._common.packing import segment_masks
from algornn.scan_kernels._mlstm.op import mlstm_chunked
from tests._utils import assert_close
from tests.scan_kernels.test_linear_attention_packed import PACKING, _alone_layout
from tests.scan_kernels.test_mlstm import _loop64, make_inputs

B, L = PACKING.shape
H, K, V = 2, 4, 3


def _alone_loss(q, k, v, log_f, i, C0, n0, m0, cts):
    """``<o, do> + <C, dC> + <n, dn> + <m, dm>`` with every sequence run alone through the float64 loop."""
    rows, pos, valid, last = _alone_layout()
    m = jnp.asarray(valid)[..., None]  # (n_seq, maxlen, 1)

    def take(x, fill=0.0):
        return jnp.where(m[..., None] if x.ndim == 4 else m, x[rows, pos], fill)

    r0 = rows[:, 0]
    o, (C, n, mm) = _loop64(
        take(q), take(k), take(v), take(log_f), take(i, -jnp.inf), C0[r0], n0[r0], m0[r0]
    )  # fmt: skip
    do, dC, dn, dm = cts
    total = jnp.sum(jnp.where(m[..., None], o, 0.0) * take(do))
    for b in range(B):
        fin = (C0[b], n0[b], m0[b]) if last[b] < 0 else (C[last[b]], n[last[b]], mm[last[b]])
        total = total + sum(jnp.sum(x * c[b]) for x, c in zip(fin, (dC, dn, dm)))
    return total


@jax.jit
def _oracle_grads(args, state, cts):
    return jax.grad(_alone_loss, argnums=tuple(range(8)))(*args, *state, cts)


def alone_oracle(args, state, cts):
    """Forward ``(o, C, n, m)`` (padding 0) and the 8 input gradients of every sequence alone, float64 NumPy."""
    with jax.enable_x64(True):
        to64 = lambda xs: tuple(jnp.asarray(np.asarray(x, np.float64)) for x in xs)  # noqa: E731
        args64, state64, cts64 = to64(args), to64(state), to64(cts)
        rows, pos, valid, last = _alone_layout()
        mask = jnp.asarray(valid)[..., None]
        take = lambda x, fill=0.0: jnp.where(mask[..., None] if x.ndim == 4 else mask, x[rows, pos], fill)  # noqa: E731
        q, k, v, log_f, i = args64
        r0 = rows[:, 0]
        C0, n0, m0 = state64
        o_s, (C, n, m) = jax.jit(_loop64)(
            take(q), take(k), take(v), take(log_f), take(i, -jnp.inf), C0[r0], n0[r0], m0[r0]
        )  # fmt: skip
        o = np.zeros((B, L, H, V))
        o[rows[valid], pos[valid]] = np.asarray(o_s)[valid]
        fin = [np.array(x) for x in state64]
        for b in range(B):
            if last[b] >= 0:
                for f, x in zip(fin, (C, n, m)):
                    f[b] = np.asarray(x[last[b]])
        grads = _oracle_grads(args64, state64, cts64)
        return (o, *fin), tuple(np.asarray(g) for g in grads)


def _loss(fn, cts):
    def loss(*a):
        o, fin = fn(*a)
        return sum(jnp.sum(x * c) for x, c in zip((o, *fin), cts))

    return loss


@partial(jax.jit, static_argnames=("backend", "chunk_size", "segment"))
def packed_with_grads(args, state, cts, *, backend, chunk_size, segment=None):
    """Forward without differentiation and the 8 input gradients of ``mlstm(segment_ids=PACKING)``; with ``segment``
    the chunked form's long-sequence path (segments of ``segment`` tokens, each forward recomputed in the backward)."""
    ids = jnp.asarray(PACKING)

    def fn(q, k, v, log_f, i, C0, n0, m0):
        if segment is None:
            kw = dict(initial_state=(C0, n0, m0), chunk_size=chunk_size, backend=backend, segment_ids=ids)
            return sk.mlstm(q, k, v, log_f, i, **kw)
        starts, pad = segment_masks(ids)
        kw = dict(chunk_size=chunk_size, backend=backend, segment=segment, starts=starts, pad=pad)
        return mlstm_chunked(q, k, v, log_f, i, C0, n0, m0, **kw)

    out = fn(*args, *state)
    return (out[0], *out[1]), jax.grad(_loss(fn, cts), argnums=tuple(range(8)))(*args, *state)


def check_packed(backend, C, *, gates="moderate", segment=None, rtol=1e-5, grad_rtol=3e-5):
    args, state, cts = make_inputs(41, B, L, H, K, V, gates=gates)
    out, grads = packed_with_grads(args, state, cts, backend=backend, chunk_size=C, segment=segment)
    want_out, want_grads = alone_oracle(args, state, cts)
    assert np.all(np.asarray(out[0])[PACKING == 0] == 0.0), "padding outputs must be exactly 0"
    for name, a, b in zip(("o", "C", "n", "m"), out, want_out):
        assert_close(a, b, rtol=rtol, name=name)
    scale = {"m0": max(1e-6, float(np.sqrt(np.mean(want_grads[3] ** 2))))}  # as in test_mlstm.check_against_oracle
    for name, a, b in zip(("q", "k", "v", "log_f", "i", "C0", "n0", "m0"), grads, want_grads):
        assert bool(jnp.all(jnp.isfinite(a))), f"d{name} is not finite"
        assert_close(a, b, rtol=grad_rtol, floor=scale.get(name, 1e-6), name=f"d{name}")


@pytest.mark.slow
def test_xla_packed_equals_sequences_alone():
    check_packed("xla", 8)


def test_segmented_path_packed_equals_sequences_alone():  # default: the one-call path is each segment's function
    """Segments of 8 tokens (the long-sequence path): sequences continue across segments from the carried state,
    the ones starting inside a segment from the row's initial state."""
    check_packed("xla", 8, segment=8)


@pytest.mark.slow
def test_reference_packed_equals_sequences_alone():
    check_packed("reference", 8)


@pytest.mark.slow
@pytest.mark.parametrize("backend,C,segment", [("xla", 16, None), ("pallas", 16, None), ("xla", 16, 16)])
def test_packed_extreme_gates(backend, C, segment):
    """``i`` up to +30, ``log_f`` down to −20: the stabiliser restarts at every start and nothing overflows."""
    check_packed(backend, C, gates="extreme", segment=segment, grad_rtol=1e-4)


@pytest.mark.slow
def test_pallas_packed_equals_sequences_alone():
    check_packed("pallas", 16)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.ones((B, L), np.float32), "segment_ids must be an integer array"),
        (np.ones((B, L + 1), np.int32), r"segment_ids must have shape \(B, L\) = \(3, 40\)"),
    ],
)
def test_bad_segment_ids_raise(bad, match):
    args, state, _ = make_inputs(42, B, L, H, K, V)
    for backend in ("xla", "reference"):
        with pytest.raises(ValueError, match=match):
            sk.mlstm(*args, backend=backend, segment_ids=bad)
