"""Packed sequences (``segment_ids``) in ``delta_rule`` and ``delta_product``: a packed row equals each of its
sequences run alone, on every backend, forward and gradients.

Oracle: a float64 NumPy loop run on each sequence alone (from the row's initial state) — packing never enters it.
Forward: outputs and final state against it. Gradients (``jax.grad`` of a random linear functional F of the outputs
and the final state): their projections on random directions against float64 central differences of F computed by
the same loop (no compiled oracle, and independent of every JAX code path).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._delta_product.op import delta_product_composed
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
    """Four rows of ``segment_ids (4, L)``: row 0 a long sequence, a one-token sequence, padding between, a sequence
    ending in a chunk's middle and padding at the end; row 1 a boundary at every position of its second chunk
    (ids reused after padding, as packing may do), then a sequence to the end; row 2 padding first, then one
    sequence; row 3 all padding (its final state is the initial state)."""
    ids = np.zeros((4, L), np.int32)
    ids[2, 3:] = 1
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


def numpy_packed(ids, q, k, v, beta, g, s0, loop=numpy_delta_rule):
    """Each sequence of each row alone through ``loop`` from the row's initial state; outputs 0 on padding; the
    final state that of the row's last sequence (the initial state if the row has none)."""
    q, k, v, beta, s0 = (np.asarray(x, np.float64) for x in (q, k, v, beta, s0))
    g = None if g is None else np.asarray(g, np.float64)
    o = np.zeros(q.shape[:3] + v.shape[-1:])
    final = s0.copy()
    for r in range(ids.shape[0]):
        for a, z in runs(ids[r]):
            gs = None if g is None else g[r, a:z]
            o[r, a:z], final[r] = loop(q[r, a:z], k[r, a:z], v[r, a:z], beta[r, a:z], gs, s0[r])
    return o, final


def functional(seed, o_shape, s_shape):
    rng = np.random.default_rng(seed)
    return rng.normal(size=o_shape), rng.normal(size=s_shape)


def value_and_grads(f, args, do, dS):
    """One compiled call of ``f`` under ``jax.value_and_grad``: its outputs (the residual-saving forward of the
    ``custom_vjp``) and the gradients of ``<o, do> + <final, dS>`` with respect to every array argument."""
    argnums = tuple(i for i, x in enumerate(args) if x is not None)
    dof, dSf = jnp.asarray(do, F32), jnp.asarray(dS, F32)

    def loss(*a):
        o, S = f(*a)
        return jnp.sum(o.astype(F32) * dof) + jnp.sum(S * dSf), (o, S)

    (_, (o, S)), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(*args)
    return o, S, dict(zip(argnums, grads))


def numpy_delta_product(q, k, v, beta, g, s0):
    """One sequence, float64: per token ``S ← exp(g) S``, then ``S ← (I − β_j k_j k_jᵀ) S + β_j k_j v_jᵀ`` for its
    sub-steps j, then ``o = Sᵀ q``; ``q (T, H, K)``, ``k (T, n, H, K)``."""
    T, n, H, K = k.shape
    S = np.array(s0, np.float64)
    o = np.zeros((T, H, v.shape[-1]))
    for t in range(T):
        for h in range(H):
            if g is not None:
                S[h] = np.exp(g[t, h]) * S[h]
            for j in range(n):
                kt, bt = k[t, j, h], beta[t, j, h]
                S[h] = (np.eye(K) - bt * np.outer(kt, kt)) @ S[h] + bt * np.outer(kt, v[t, j, h])
            o[t, h] = S[h].T @ q[t, h]
    return o, S


NAMES = ["q", "k", "v", "beta", "log_decay", "initial_state"]


def check_packed(f, loop, ids, args, grads=True, eps=1e-5):
    """``f(q, k, v, β, g, s0)`` on rows packed as ``ids`` against ``loop`` run on each sequence alone in float64:
    outputs and final state of the no-grad call and of the differentiated call; with ``grads``, the gradients of
    ``F = <o, do> + <final, dS>`` (random ``do``, ``dS``) projected on two random directions per argument against
    central differences of F along them (``numpy_packed`` in float64); gradients on padding exactly 0."""
    o_np, S_np = numpy_packed(ids, *args, loop=loop)
    o, S = jax.jit(f)(*args)  # no differentiation: the no-grad forward of the chunked backends
    assert_close(o, o_np, name="o")
    assert_close(S, S_np, name="final state")
    assert np.all(np.asarray(o)[ids == 0] == 0.0), "padding outputs must be exactly 0"
    if not grads:
        return
    do, dS = functional(1, o.shape, S.shape)
    o_g, S_g, got = value_and_grads(f, args, do, dS)
    assert_close(o_g, o_np, name="o (differentiated forward)")
    assert_close(S_g, S_np, name="final state (differentiated forward)")
    x64 = [None if x is None else np.asarray(x, np.float64) for x in args]

    def F(xs):
        o, S = numpy_packed(ids, *xs, loop=loop)
        return np.sum(o * do) + np.sum(S * dS)

    rng = np.random.default_rng(2)
    for i, g in got.items():
        g = np.asarray(g, np.float64)
        if i < 5:  # per-token inputs: nothing flows to padding
            assert np.all(g[ids == 0] == 0.0), f"d{NAMES[i]} must be 0 on padding"
        for _ in range(2):
            u = rng.normal(size=g.shape)
            plus, minus = list(x64), list(x64)
            plus[i], minus[i] = x64[i] + eps * u, x64[i] - eps * u
            fd = (F(plus) - F(minus)) / (2 * eps)
            assert_close(np.sum(g * u), fd, rtol=2e-4, name=f"d{NAMES[i]} along a random direction")


def check_delta_rule(backend, gate, C, L=None, H=2, K=4, V=3, seed=0, grads=True):
    L = L or 3 * C + 5
    ids = packings(L, C)
    args = make_inputs(seed, ids.shape[0], L, H, K, V, gate)
    idj = jnp.asarray(ids)

    def f(q, k, v, b, g, s0):
        kw = dict(log_decay=g, initial_state=s0, segment_ids=idj, chunk_size=C, backend=backend)
        return sk.delta_rule(q, k, v, b, **kw)

    check_packed(f, numpy_delta_rule, ids, args, grads)


slow = pytest.mark.slow


@pytest.mark.parametrize(
    "backend,gate",
    [
        ("xla", "key"),
        pytest.param("reference", "scalar", marks=slow),
        pytest.param("xla", "none", marks=slow),
        pytest.param("xla", "scalar", marks=slow),
        pytest.param("reference", "none", marks=slow),
        pytest.param("reference", "key", marks=slow),
    ],
)
def test_delta_rule_packed_equals_sequences_alone(backend, gate):
    """C = 8: sequences end inside chunks, one chunk has a boundary at every position (``packings``)."""
    check_delta_rule(backend, gate, C=8)


@pytest.mark.parametrize(
    "gate,grads",
    [("scalar", False), pytest.param("none", True, marks=slow), pytest.param("scalar", True, marks=slow)]
    + [pytest.param("key", True, marks=slow)],
)
def test_delta_rule_packed_pallas_interpret(gate, grads):
    """The Pallas kernels in interpret mode (their backward is the packed XLA form's, tested above)."""
    check_delta_rule("pallas", gate, C=16, L=40, grads=grads)


@slow
@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_delta_rule_packed_strong_decay(gate):
    """g up to −20 per step: masked cross-sequence pairs and the sequence-local decays stay finite and exact."""
    C, L = 16, 45
    ids = packings(L, C)
    q, k, v, b, g, s0 = make_inputs(5, ids.shape[0], L, 2, 4, 3, gate)
    args = (q, k, v, b, g * (20.0 / 1.5), s0)

    def f(q, k, v, b, g, s0):
        return sk.delta_rule(q, k, v, b, log_decay=g, initial_state=s0, segment_ids=jnp.asarray(ids), chunk_size=C)

    check_packed(f, numpy_delta_rule, ids, args)


@pytest.mark.parametrize(
    "backend,gate,steps",
    [
        ("xla", "scalar", 16),
        pytest.param("xla", "none", None, marks=slow),
        pytest.param("reference", "scalar", None, marks=slow),
        pytest.param("xla", "none", 16, marks=slow),
        pytest.param("pallas", "scalar", None, marks=slow),
    ],
)
def test_delta_product_packed_equals_sequences_alone(backend, gate, steps):
    """n = 2 sub-steps, C = 8 sub-steps (4 tokens) per chunk; ``steps=16``: the segmented path, segments of 8
    tokens, so sequences cross segment boundaries and segments start inside sequences, at new ones and in padding."""
    C, L, n = 8, 32, 2
    ids = packings(L, C // n)
    ids[1, 16:] = 7  # a sequence starting exactly at a segment's first token
    args = make_inputs(3, ids.shape[0], L, 2, 4, 3, gate, n=n)
    idj = jnp.asarray(ids)

    def f(q, k, v, b, g, s0):
        if steps is None:
            kw = dict(log_decay=g, initial_state=s0, segment_ids=idj, chunk_size=C, backend=backend)
            return sk.delta_product(q, k, v, b, **kw)
        return delta_product_composed(q, k, v, b, g, s0, idj, chunk_size=C, backend=backend, segment_steps=steps)

    check_packed(f, numpy_delta_product, ids, args)


@pytest.mark.parametrize(
    "ids,match",
    [
        (np.ones((2, 9), np.float32), "integer dtype"),
        (np.ones((2, 8), np.int32), r"\(B, L\) = \(2, 9\)"),
        (np.ones((9,), np.int32), r"\(B, L\) = \(2, 9\)"),
        ([[1] * 9] * 2, "must be a jax or numpy array"),
    ],
)
def test_bad_segment_ids_raise_value_error(ids, match):
    q, k, v, b, g, s0 = make_inputs(0, 2, 9, 1, 4, 3, "none")
    with pytest.raises(ValueError, match="segment_ids.*" + match):
        sk.delta_rule(q, k, v, b, segment_ids=ids)
    kp, vp, bp = k[:, :, None], v[:, :, None], b[:, :, None]
    with pytest.raises(ValueError, match="segment_ids.*" + match):
        sk.delta_product(q, kp, vp, bp, segment_ids=ids)


def test_reset_state_needs_segment_ids():
    q, k, v, b, g, s0 = make_inputs(0, 1, 5, 1, 4, 3, "none")
    with pytest.raises(ValueError, match="reset_state.*needs segment_ids"):
        sk.delta_rule(q, k, v, b, reset_state=s0)
    with pytest.raises(ValueError, match="reset_state must have shape"):
        sk.delta_rule(q, k, v, b, segment_ids=jnp.ones((1, 5), jnp.int32), reset_state=s0[..., :2])


@pytest.mark.parametrize("gate", ["scalar", pytest.param("none", marks=slow), pytest.param("key", marks=slow)])
def test_packed_pallas_kernels_lower_for_cuda(gate, monkeypatch):
    """Lowering the packed kernels for CUDA (Triton) on a CPU host proves their bodies use only lowerable ops."""
    import algornn.scan_kernels._delta_rule.pallas as drp
    from algornn.scan_kernels._common import pallas_config as _pallas_config
    from tests.scan_kernels.test_pallas_scan import lower_for_cuda

    orig = _pallas_config.pallas_call_kwargs
    no_interp = lambda **kw: orig(**{**kw, "interpret": False})  # noqa: E731
    monkeypatch.setattr(drp, "pallas_call_kwargs", no_interp)
    B, L, H, K, V = 1, 100, 2, 64, 32
    S = jax.ShapeDtypeStruct
    g = {"none": None, "scalar": S((B, L, H), F32), "key": S((B, L, H, K), F32)}[gate]
    qk, v, bs, st = S((B, L, H, K), F32), S((B, L, H, V), F32), S((B, L, H), F32), S((B, L, H), F32)
    state = S((B, H, K, V), F32)
    f = jax.jit(lambda q, k, v, b, g, s0, st, s0r: drp._forward(q, k, v, b, g, s0, 64, st, s0r))
    assert "triton" in lower_for_cuda(f, qk, qk, v, bs, g, state, st, state)
