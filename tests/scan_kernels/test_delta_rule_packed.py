"""Packed sequences (``segment_ids``) in ``delta_rule`` and ``delta_product``: a packed row equals each of its
sequences run alone, on every backend, forward and gradients.

Oracles: the forward against a float64 NumPy loop run on each sequence alone (from the row's initial state);
the gradients of a random linear functional of the outputs and the final state against the same functional of
every sequence run alone as its own row (``delta_rule_reference`` without packing, sequences right-padded with
steps that cannot touch the state: zero key, β and log-gate) — packing never enters the oracle.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close

F32 = jnp.float32


def runs(ids_row):
    """The sequences of one row as ``(start, stop)`` pairs: maximal runs of one non-zero id."""
    out, t, L = [], 0, len(ids_row)
    while t < L:
        stop = t + 1
        while stop < L and ids_row[stop] == ids_row[t]:
            stop += 1
        if ids_row[t] != 0:
            out.append((t, stop))
        t = stop
    return out


def packings(L, C):
    """Two rows of ``segment_ids (2, L)``: row 0 a long sequence, a one-token sequence, padding between, a sequence
    ending in a chunk's middle and padding at the end; row 1 a boundary at every position of its second chunk
    (ids reused after padding, as packing may do), then a sequence to the end."""
    ids = np.zeros((2, L), np.int32)
    a = L // 3
    ids[0, :a] = 1
    ids[0, a] = 2  # one token
    ids[0, a + 3 : L - 4] = 3  # padding before and after
    ids[0, L - 4 : L - 3] = 0
    ids[1, :C] = 5
    ids[1, C : 2 * C] = 10 + np.arange(C)  # a new sequence at every position of chunk 1
    ids[1, 2 * C + 1 :] = 5  # one padding token, then the id of the first sequence again: a new sequence
    return ids


def make_inputs(seed, B, L, H, K, V, gate, n=None, dtype=F32):
    """q, k (unit keys, as the layers feed them), v, β ∈ (0, 2), log-decay (none, per head or per key), state;
    with ``n`` the DeltaProduct layout ``k (B, L, n, H, K)``."""
    rng = np.random.default_rng(seed)
    sub = () if n is None else (n,)
    q = rng.normal(size=(B, L, H, K))
    k = rng.normal(size=(B, L) + sub + (H, K))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(B, L) + sub + (H, V))
    b = 2.0 * rng.uniform(size=(B, L) + sub + (H,))
    g = {"none": None, "scalar": (B, L, H), "key": (B, L, H, K)}[gate]
    g = None if g is None else -1.5 * rng.uniform(size=g)
    s0 = rng.normal(size=(B, H, K, V))
    f = lambda x: None if x is None else jnp.asarray(x, F32)  # noqa: E731
    return f(q).astype(dtype), f(k).astype(dtype), f(v).astype(dtype), f(b), f(g), f(s0)


def numpy_delta_rule(q, k, v, beta, g, s0):
    """One sequence, float64: ``S ← (I − β k kᵀ) diag(exp(g)) S + β k vᵀ``, ``o = Sᵀ q``; ``q, k (T, H, K)``."""
    T, H, K = q.shape
    S = np.array(s0, np.float64)
    o = np.zeros((T, H, v.shape[-1]))
    for t in range(T):
        for h in range(H):
            d = np.ones(K) if g is None else np.exp(np.broadcast_to(g[t, h], (K,)))
            kt, bt = k[t, h], beta[t, h]
            S[h] = (np.eye(K) - bt * np.outer(kt, kt)) @ (d[:, None] * S[h]) + bt * np.outer(kt, v[t, h])
            o[t, h] = S[h].T @ q[t, h]
    return o, S


def numpy_packed(ids, q, k, v, beta, g, s0):
    """Each sequence of each row alone through ``numpy_delta_rule`` from the row's initial state; outputs 0 on
    padding; the final state that of the row's last sequence (the initial state if the row has none)."""
    q, k, v, beta, s0 = (np.asarray(x, np.float64) for x in (q, k, v, beta, s0))
    g = None if g is None else np.asarray(g, np.float64)
    o = np.zeros(v.shape)
    final = s0.copy()
    for r in range(ids.shape[0]):
        for a, z in runs(ids[r]):
            gs = None if g is None else g[r, a:z]
            o[r, a:z], final[r] = numpy_delta_rule(q[r, a:z], k[r, a:z], v[r, a:z], beta[r, a:z], gs, s0[r])
    return o, final


def sequences_as_rows(ids, xs):
    """Every sequence as its own row, right-padded to the longest: ``xs`` arrays ``(B, L, ...)`` -> ``(R, T, ...)``
    (zeros after each sequence), the row each came from, its ``(row, start, stop)`` and whether it is its row's
    last sequence."""
    seqs = [(r, a, z) for r in range(ids.shape[0]) for a, z in runs(ids[r])]
    T = max(z - a for _, a, z in seqs)
    out = []
    for x in xs:
        x = np.asarray(x)
        rows = np.zeros((len(seqs), T) + x.shape[2:], x.dtype)
        for i, (r, a, z) in enumerate(seqs):
            rows[i, : z - a] = x[r, a:z]
        out.append(jnp.asarray(rows))
    last = [i == len(seqs) - 1 or seqs[i + 1][0] != r for i, (r, _, _) in enumerate(seqs)]
    return out, seqs, np.asarray(last)


def functional(seed, o_shape, s_shape):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=o_shape), F32), jnp.asarray(rng.normal(size=s_shape), F32)


def oracle_grads(ids, args, do, dS, run):
    """Gradients of ``<o, do> + <final, dS>`` with every sequence run alone: ``run(*row_args) -> (o, final)`` on
    unpacked rows; ``args = (q, k, v, β, g, s0)`` with the time axis 1 (s0 per row). Returns them in the packed
    layout (zero on padding)."""
    q, k, v, b, g, s0 = args
    xs = [q, k, v, b] + ([] if g is None else [g])
    (rows, seqs, last) = sequences_as_rows(ids, xs + [do])
    owner = np.asarray([r for r, _, _ in seqs])
    d_rows, s0_rows = rows[-1], s0[owner]
    dS_rows = jnp.where(jnp.asarray(last)[:, None, None, None], dS[owner], 0.0)  # only the last one is returned

    def loss(*a):
        g_ = a[4] if g is not None else None
        o, S = run(*a[:4], g_, a[-1])
        return jnp.sum(o * d_rows) + jnp.sum(S * dS_rows)

    nargs = len(xs) + 1
    grads = jax.jit(jax.grad(loss, tuple(range(nargs))))(*rows[:-1], s0_rows)
    out = [np.zeros(np.shape(x), np.float32) for x in xs]
    for i, (r, a, z) in enumerate(seqs):
        for j in range(len(xs)):
            out[j][r, a:z] = np.asarray(grads[j][i, : z - a])
    ds0 = np.zeros(np.shape(s0), np.float32)
    np.add.at(ds0, owner, np.asarray(grads[-1]))
    return out + [ds0]


def packed_grads(fn, args, do, dS):
    q, k, v, b, g, s0 = args
    argnums = (0, 1, 2, 3, 5) if g is None else (0, 1, 2, 3, 4, 5)

    def loss(*a):
        o, S = fn(*a)
        return jnp.sum(o.astype(F32) * do) + jnp.sum(S * dS)

    return jax.jit(jax.grad(loss, argnums))(*args)


def _dr(backend, C, ids, **kw):
    def f(q, k, v, b, g, s0):
        return sk.delta_rule(
            q, k, v, b, log_decay=g, initial_state=s0, segment_ids=ids, chunk_size=C, backend=backend, **kw
        )

    return f


def check_delta_rule(backend, gate, C, L=None, H=2, K=4, V=3, seed=0):
    L = L or 3 * C + 5
    ids = packings(L, C)
    args = make_inputs(seed, 2, L, H, K, V, gate)
    o_np, S_np = numpy_packed(ids, *args)
    f = _dr(backend, C, jnp.asarray(ids))
    o, S = jax.jit(f)(*args)  # no differentiation: the no-grad forward of the chunked backends
    assert_close(o, o_np, name="o")
    assert_close(S, S_np, name="final state")
    assert np.all(np.asarray(o)[ids == 0] == 0.0), "padding outputs must be exactly 0"
    do, dS = functional(1, o.shape, S.shape)
    (o_fwd, S_fwd), _ = jax.vjp(f, *args)  # the residual-saving forward of the custom_vjp
    assert_close(o_fwd, o_np, name="o (vjp forward)")
    assert_close(S_fwd, S_np, name="final state (vjp forward)")
    got = packed_grads(f, args, do, dS)
    ref = lambda q, k, v, b, g, s: sk.delta_rule_reference(q, k, v, b, log_decay=g, initial_state=s)  # noqa: E731
    want = oracle_grads(ids, args, do, dS, ref)
    for name, x, y in zip(["dq", "dk", "dv", "dbeta", "dg", "ds0"] if gate != "none" else ["dq", "dk", "dv", "dbeta", "ds0"], got, want):
        assert_close(x, y, rtol=5e-5, name=name)


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
@pytest.mark.parametrize("backend", ["reference", "xla"])
def test_delta_rule_packed_equals_sequences_alone(backend, gate):
    check_delta_rule(backend, gate, C=8)


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
def test_delta_rule_packed_pallas_interpret(gate):
    check_delta_rule("pallas", gate, C=16, L=40)
