"""Packed sequences in ``linear_attention`` (``segment_ids``): a packed row equals each of its sequences run alone.

Forward (outputs and final state) against a float64 NumPy loop run on every sequence by itself; gradients of a random
linear functional of the outputs and the final state against ``jax.grad`` of the unpacked reference loop run on every
sequence by itself. Packings cover a one-token sequence, padding at the start, between sequences and at the end, an
id reused after padding (a new sequence), sequences crossing chunk boundaries and a sequence boundary at every
position of one chunk; every gate kind, the normaliser, with and without an initial state, and every backend (the
XLA chunked form with and without differentiation, Pallas in interpret mode, the reference loop).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close
from tests.scan_kernels.test_linear_attention import F32, make_inputs, numpy_loop


def _row(*runs):
    """Segment ids from ``(id, length)`` runs."""
    return sum(([i] * n for i, n in runs), [])


# L = 40; with chunks of 8: row 1 starts a sequence at every position of chunk 1 (t = 8 … 15).
PACKING = np.array(
    [
        _row((1, 1), (0, 2), (2, 11), (3, 6), (4, 9), (0, 3), (4, 5), (0, 3)),  # id 4 again after padding: new
        _row((1, 8), *((10 + j, 1) for j in range(8)), (20, 13), (21, 11)),
        _row((0, 3), (5, 30), (6, 7)),  # leading padding
    ],
    np.int32,
)
B, L = PACKING.shape


def sequences(ids_row):
    """``[(start, end)]`` of the sequences in one row of segment ids (padding excluded)."""
    out, t = [], 0
    while t < len(ids_row):
        e = t + 1
        while e < len(ids_row) and ids_row[e] == ids_row[t]:
            e += 1
        if ids_row[t] != 0:
            out.append((t, e))
        t = e
    return out


def numpy_packed(q, k, v, g, s0, normalize, z0):
    """Every sequence alone through the float64 loop; padding outputs 0; the final state after the row's last
    sequence (the initial state where a row has none)."""
    o = np.zeros(v.shape)
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    S_fin = np.zeros((B, H, K, V)) if s0 is None else np.asarray(s0, np.float64).copy()
    z_fin = np.zeros((B, H, K)) if z0 is None else np.asarray(z0, np.float64).copy()
    part = lambda x, b, t=slice(None): None if x is None else np.asarray(x)[b : b + 1, t]  # noqa: E731
    for b in range(B):
        for s, e in sequences(PACKING[b]):
            t = slice(s, e)
            o_s, S, z = numpy_loop(*(part(x, b, t) for x in (q, k, v, g)), part(s0, b), normalize, part(z0, b))
            o[b, s:e], S_fin[b], z_fin[b] = o_s[0], S[0], z[0]
    return o, S_fin, z_fin


def _alone_layout():
    """Every sequence of ``PACKING`` as a row of its own, zero-padded at the end: ``(rows, positions, valid)``
    ``(n_seq, maxlen)`` gather indices, and for each packed row the index of its last sequence (−1: none)."""
    seqs = [(b, s, e) for b in range(B) for s, e in sequences(PACKING[b])]
    n = max(e - s for _, s, e in seqs)
    rows = np.array([[b] * n for b, _, _ in seqs])
    pos = np.array([[min(s + t, L - 1) for t in range(n)] for _, s, e in seqs])
    valid = np.array([[t < e - s for t in range(n)] for _, s, e in seqs])
    last = [max([i for i, (b_, _, _) in enumerate(seqs) if b_ == b], default=-1) for b in range(B)]
    return rows, pos, valid, last


def alone_loss(q, k, v, g, s, do, dS, normalize):
    """``<o, do> + <S_final, dS>`` with every sequence run alone through the unpacked reference loop (one row per
    sequence; its trailing zero inputs are identity steps of the loop)."""
    rows, pos, valid, last = _alone_layout()
    m = jnp.asarray(valid)[..., None, None]
    take = lambda x: None if x is None else jnp.where(m if x.ndim == 4 else m[..., 0], x[rows, pos], 0.0)  # noqa: E731
    init = s[rows[:, 0]]
    init = (init[..., :-1], init[..., -1]) if normalize else init
    o, fin = sk.linear_attention_reference(
        take(q), take(k), take(v), log_decay=take(g), initial_state=init, normalize=normalize
    )
    fin = jnp.concatenate([fin[0], fin[1][..., None]], -1) if normalize else fin
    total = jnp.sum(o * take(do))
    for b in range(B):
        total = total + jnp.sum((s[b] if last[b] < 0 else fin[last[b]]) * dS[b])
    return total


def packed_loss(backend, C, normalize, initial):
    def loss(q, k, v, g, s, do, dS):
        init = None
        if initial:
            init = (s[..., :-1], s[..., -1]) if normalize else s
        o, fin = sk.linear_attention(
            q, k, v, log_decay=g, initial_state=init, normalize=normalize, chunk_size=C, backend=backend,
            segment_ids=jnp.asarray(PACKING),
        )  # fmt: skip
        fin = jnp.concatenate([fin[0], fin[1][..., None]], -1) if normalize else fin
        return jnp.sum(o * do) + jnp.sum(fin * dS)

    return loss


def check_packed(backend, gate, C, *, normalize=False, initial=True, strength=1.0, rtol=1e-5, grad_rtol=3e-5):
    H, K, V = 2, 8, 6
    q, k, v, g, s0 = make_inputs(31, B, L, H, K, V, gate, strength, positive=normalize)
    z0 = jnp.abs(s0[..., 0]) if normalize else None
    s0 = (jnp.abs(s0) if normalize else s0) if initial else None
    init = None if s0 is None else ((s0, z0) if normalize else s0)
    ids = jnp.asarray(PACKING)
    # forward, not differentiated (XLA: the residual-free no-grad path)
    o, fin = sk.linear_attention(
        q, k, v, log_decay=g, initial_state=init, normalize=normalize, chunk_size=C, backend=backend, segment_ids=ids
    )
    o_np, S_np, z_np = numpy_packed(q, k, v, g, s0, normalize, z0 if initial else None)
    assert_close(o, o_np, rtol=rtol, name="o")
    pad = PACKING == 0
    assert np.all(np.asarray(o)[pad] == 0.0), "padding outputs must be exactly 0"
    assert_close(fin[0] if normalize else fin, S_np, rtol=rtol, name="final S")
    if normalize:
        assert_close(fin[1], z_np, rtol=rtol, name="final z")
    # gradients (XLA: the custom_vjp forward that keeps chunk states, then the chunked backward)
    s_in = jnp.zeros((B, H, K, V + normalize), F32) if s0 is None else s0
    if normalize and s0 is not None:
        s_in = jnp.concatenate([s0, z0[..., None]], -1)
    rng = np.random.default_rng(7)
    do = jnp.asarray(rng.normal(size=v.shape), F32)
    dS = jnp.asarray(rng.normal(size=s_in.shape), F32)
    argnums = (0, 1, 2) + (() if g is None else (3,)) + ((4,) if initial else ())
    got = jax.jit(jax.grad(packed_loss(backend, C, normalize, initial), argnums))(q, k, v, g, s_in, do, dS)
    want = jax.jit(jax.grad(alone_loss, argnums), static_argnums=7)(q, k, v, g, s_in, do, dS, normalize)
    for i, a, b in zip(argnums, got, want):
        assert_close(a, b, rtol=grad_rtol, name=["dq", "dk", "dv", "dg", "dS0"][i])


# Default: a scalar decay with the normaliser and an initial state, chunks of 8 (a start at every position of
# chunk 1); per-key gates (costlier to compile), the other kinds, chunk sizes and strong decay: slow.
def test_xla_packed_equals_sequences_alone():
    check_packed("xla", "scalar", 8, normalize=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "gate,C,initial,normalize",
    [
        ("none", 8, True, False),
        ("none", 16, False, True),
        ("scalar", 4, True, False),
        ("scalar", 64, False, False),  # one chunk for the whole row
        ("key", 16, False, False),
        ("key", 8, True, False),
        ("key", 8, True, True),
    ],
)
def test_xla_packed_more_cases(gate, C, initial, normalize):
    check_packed("xla", gate, C, initial=initial, normalize=normalize)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_xla_packed_strong_decay(gate):
    """g down to −20 per step: every exponent stays ≤ 0 inside a sequence, nothing overflows across a boundary."""
    check_packed("xla", gate, 8, strength=20.0, grad_rtol=1e-4)


@pytest.mark.parametrize("gate", ["scalar", pytest.param("none", marks=pytest.mark.slow)])
def test_pallas_packed_equals_sequences_alone(gate):  # the kernels in interpret mode
    check_packed("pallas", gate, 16)


@pytest.mark.slow
@pytest.mark.parametrize("gate,normalize,initial", [("scalar", True, True), ("key", False, False), ("key", True, True)])
def test_pallas_packed_more_cases(gate, normalize, initial):
    check_packed("pallas", gate, 16, normalize=normalize, initial=initial)


@pytest.mark.slow
def test_reference_packed_equals_sequences_alone():
    check_packed("reference", "scalar", 8, normalize=True)


@pytest.mark.slow
def test_one_sequence_per_row_equals_unpacked():
    """Segment ids of one sequence per row give the unpacked op's result."""
    q, k, v, g, s0 = make_inputs(32, 2, 37, 2, 8, 8, "scalar", 1.0)
    ones = jnp.ones((2, 37), jnp.int32)
    kw = dict(log_decay=g, initial_state=s0, chunk_size=8, backend="xla")
    o, S = sk.linear_attention(q, k, v, **kw)
    o_p, S_p = sk.linear_attention(q, k, v, **kw, segment_ids=ones)
    assert_close(o_p, o, name="o")
    assert_close(S_p, S, name="S")


def test_pallas_packed_kernels_lower_for_cuda(monkeypatch):
    """The packed kernels (start flags as one more row input) use only ops that lower for CUDA (Triton)."""
    import algornn.scan_kernels._linear_attention.pallas as lap
    from algornn.scan_kernels._common import pallas_config as _pallas_config
    from tests.scan_kernels.test_pallas_scan import lower_for_cuda

    orig = _pallas_config.pallas_call_kwargs
    no_interp = lambda **kw: orig(**{**kw, "interpret": False})  # noqa: E731
    monkeypatch.setattr(_pallas_config, "pallas_call_kwargs", no_interp)
    monkeypatch.setattr(lap, "pallas_call_kwargs", no_interp)
    Bc, Lc, H, K, V = 1, 100, 2, 64, 32
    S = jax.ShapeDtypeStruct
    args = (S((Bc, Lc, H, K), F32), S((Bc, Lc, H, K), F32), S((Bc, Lc, H, V), F32), S((Bc, Lc, H, K), F32))
    f = jax.jit(lambda q, k, v, g, s0, r: lap._forward(q, k, v, g, s0, "key", 64, r))
    assert "triton" in lower_for_cuda(f, *args, S((Bc, H, K, V), F32), S((Bc, Lc, H), F32))


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.ones((B, L), np.float32), "segment_ids must be an integer array"),
        (np.ones((B, L), bool), "segment_ids must be an integer array"),
        (np.ones((B, L - 1), np.int32), r"segment_ids must have shape \(B, L\) = \(3, 40\)"),
        (np.ones((L,), np.int32), r"segment_ids must have shape"),
        ([[1] * L] * B, "segment_ids must be a jax or numpy array"),
    ],
)
def test_bad_segment_ids_raise(bad, match):
    q, k, v, _, _ = make_inputs(33, B, L, 1, 4, 4)
    for backend in ("xla", "reference"):
        with pytest.raises(ValueError, match=match):
            sk.linear_attention(q, k, v, backend=backend, segment_ids=bad)
