"""``sequence_parallel``: the time axis sharded over 4 host CPU devices (tests/conftest.py sets
``--xla_force_host_platform_device_count=4``) gives the one-device results of ``linear_scan``, ``linear_attention``,
``delta_rule`` and ``selective_scan``, forward and gradients, and the forward agrees with float64 NumPy loops.

Default run: L = 65536 for ``linear_scan``, L = 4096 for the others, small widths; ``-m slow`` adds the normaliser,
the other decay kinds and the other ops at L = 65536."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import algornn.scan_kernels as sk
from tests._utils import assert_close, normal

RTOL = 2e-5  # float32 sharded vs one device: the same sums in another order (relative RMS)


@pytest.fixture(scope="module")
def seq4():
    if len(jax.devices()) < 4:
        pytest.fail(f"expected >= 4 host devices from XLA_FLAGS, got {len(jax.devices())}")
    return jax.make_mesh((4,), ("seq",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])


def _uniform(seed, shape, low, high):
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _fwd_and_grads(f, args):
    """``f(*args)`` and the gradients w.r.t. every arg of ``Σ Re(out) · w`` (a fixed random cotangent ``w``) plus
    ``Σ |final|²`` for the remaining outputs (final states), under one ``jit``."""

    def loss(*xs):
        out = f(*xs)
        first, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        w = jnp.asarray(np.random.default_rng(99).standard_normal(first.shape), jnp.float32)
        total = jnp.sum(jnp.real(first) * w)
        for r in jax.tree.leaves(rest):
            total = total + jnp.sum(jnp.abs(r) ** 2)
        return total, out

    grad = jax.grad(loss, argnums=tuple(range(len(args))), has_aux=True)
    grads, out = jax.jit(grad)(*args)
    return out, grads


def _check(mesh, op, names, args, call, rtol=RTOL):
    """``call(op_like, *args)`` through ``sequence_parallel(op)`` on ``mesh`` equals it through ``op`` itself,
    outputs and the gradients of every arg (``names`` for messages). Returns the sharded outputs."""
    sp = sk.sequence_parallel(op, "seq", mesh=mesh)
    want, want_g = _fwd_and_grads(lambda *xs: call(op, *xs), args)
    got, got_g = _fwd_and_grads(lambda *xs: call(sp, *xs), args)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for i, (x, y) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        assert x.dtype == y.dtype and x.shape == y.shape, (i, x.dtype, y.dtype, x.shape, y.shape)
        assert_close(x, y, rtol=rtol, name=f"output {i}")
    for name, x, y in zip(names, got_g, want_g):
        assert_close(x, y, rtol=rtol, name="d" + name)
    return got


# ------------------------------------------------------------------------------------------- float64 loops
def _scan64(a, b, h0, reverse=False):
    b = np.asarray(b, np.complex128)
    a = np.broadcast_to(np.asarray(a, np.complex128), b.shape)
    h = np.asarray(h0, np.complex128).copy()
    out = np.empty_like(b)
    for t in range(b.shape[1])[::-1] if reverse else range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


def _la64(q, k, v, g, s0):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    S = np.asarray(s0, np.float64).copy()
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[1]):
        d = np.exp(np.asarray(g[:, t], np.float64))
        S = (d[..., None, None] if d.ndim == 2 else d[..., None]) * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhkv,bhk->bhv", S, q[:, t])
    return o, S


def _dr64(q, k, v, beta, g, s0):
    """S ← (I − β k kᵀ) exp(g) S + β k vᵀ with explicit matrices, o = Sᵀ q."""
    q, k, v, beta, g = (np.asarray(x, np.float64) for x in (q, k, v, beta, g))
    S = np.asarray(s0, np.float64).copy()
    K = q.shape[-1]
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[1]):
        kt = k[:, t]
        A = np.eye(K) - beta[:, t, :, None, None] * kt[..., :, None] * kt[..., None, :]
        S = np.einsum("bhij,bhjv->bhiv", A, np.exp(g[:, t])[..., None, None] * S)
        S = S + beta[:, t, :, None, None] * kt[..., :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhkv,bhk->bhv", S, q[:, t])
    return o, S


def _ss64(u, delta, A, Bm, Cm, D, h0, reverse=False):
    u, delta, A, Bm, Cm, D = (np.asarray(x, np.float64) for x in (u, delta, A, Bm, Cm, D))
    h = np.asarray(h0, np.float64).copy()
    y = np.zeros(u.shape)
    for t in range(u.shape[1])[::-1] if reverse else range(u.shape[1]):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]
        y[:, t] = np.einsum("ben,bn->be", h, Cm[:, t]) + D * u[:, t]
    return y, h


# ------------------------------------------------------------------------------------------------- tests
def _scan_case(L):
    a = _uniform(0, (2, L, 3), 0.95, 1.0)
    return a, normal(1, (2, L, 3)), normal(2, (2, 3))


def test_linear_scan_65536(seq4):
    """Time-varying decays, an initial state, L = 65536 on 4 devices; the forward also against float64."""
    a, b, h0 = _scan_case(65536)
    h = _check(seq4, sk.linear_scan, "abh", (a, b, h0), lambda f, a, b, h0: f(a, b, h0))
    assert_close(h, _scan64(a, b, h0), rtol=1e-5, name="h vs float64")


def test_linear_scan_reverse_complex_time_invariant(seq4):
    """``reverse=True`` (the summaries fold from the last slice) with a complex time-invariant decay ``(D,)`` (as
    S4D's scan mode passes it, replicated on every device) and an initial state."""
    L = 4096
    a = jnp.exp(jnp.asarray(-0.01 + 0.3j * np.arange(1, 4), jnp.complex64))
    b = jax.lax.complex(normal(3, (2, L, 3)), normal(4, (2, L, 3)))
    h0 = jax.lax.complex(normal(5, (2, 3)), normal(6, (2, 3)))
    h = _check(seq4, sk.linear_scan, "abh", (a, b, h0), lambda f, a, b, h0: f(a, b, h0, reverse=True))
    assert_close(h, _scan64(a, b, h0, reverse=True), rtol=1e-5, name="h vs float64")


def _la_case(L, per_key):
    B, H, K, V = 1, 2, 8, 8
    q, k, v = normal(5, (B, L, H, K)), normal(6, (B, L, H, K)) / 3, normal(7, (B, L, H, V))
    g = _uniform(8, (B, L, H, K) if per_key else (B, L, H), -0.3, 0.0)
    return q, k, v, g, normal(9, (B, H, K, V))


def _run_la(mesh, L, per_key):
    args = _la_case(L, per_key)
    call = lambda f, q, k, v, g, s0: f(q, k, v, log_decay=g, initial_state=s0, chunk_size=32)  # noqa: E731
    o, final = _check(mesh, sk.linear_attention, ("q", "k", "v", "log_decay", "initial_state"), args, call)
    o64, s64 = _la64(*args)
    assert_close(o, o64, rtol=1e-5, name="o vs float64")
    assert_close(final, s64, rtol=1e-5, name="final vs float64")


def test_linear_attention_per_head_4096(seq4):
    _run_la(seq4, 4096, False)


def _la_normalize_no_decay(seq4):
    """The normaliser (the state a pair ``(S, z)``) and no decay at all."""
    L, B, H, K, V = 4096, 1, 2, 4, 4
    q, k = (jax.nn.elu(normal(s, (B, L, H, K))) + 1.0 for s in (10, 11))
    v, S0 = normal(12, (B, L, H, V)), normal(13, (B, H, K, V))
    z0 = jnp.abs(normal(14, (B, H, K)))
    call = lambda f, q, k, v, S0, z0: f(q, k, v, initial_state=(S0, z0), normalize=True)  # noqa: E731
    _check(seq4, sk.linear_attention, ("q", "k", "v", "S0", "z0"), (q, k, v, S0, z0), call)


def _dr_case(L):
    B, H, K, V = 1, 2, 8, 8
    q = normal(20, (B, L, H, K))
    k = normal(21, (B, L, H, K))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    beta = _uniform(23, (B, L, H), 0.1, 1.5)
    return q, k, normal(22, (B, L, H, V)), beta, _uniform(24, (B, L, H), -0.1, 0.0), normal(25, (B, H, K, V))


def _run_dr(mesh, L):
    args = _dr_case(L)
    call = lambda f, q, k, v, b, g, s0: f(q, k, v, b, log_decay=g, initial_state=s0, chunk_size=32)  # noqa: E731
    o, final = _check(mesh, sk.delta_rule, ("q", "k", "v", "beta", "log_decay", "initial_state"), args, call)
    o64, s64 = _dr64(*args)
    assert_close(o, o64, rtol=1e-5, name="o vs float64")
    assert_close(final, s64, rtol=1e-5, name="final vs float64")


def test_delta_rule_4096(seq4):
    _run_dr(seq4, 4096)


def _ss_case(L):
    B, E, N = 1, 4, 4
    u, z = normal(30, (B, L, E)), normal(31, (B, L, E))
    delta = _uniform(32, (B, L, E), 0.001, 0.1)
    A = -_uniform(33, (E, N), 0.5, 2.0)
    return u, delta, A, normal(34, (B, L, N)), normal(35, (B, L, N)), normal(36, (E,)), z, normal(37, (B, E, N))


def _run_ss(mesh, L, reverse):
    u, delta, A, Bm, Cm, D, z, h0 = _ss_case(L)

    def call(f, u, delta, A, Bm, Cm, D, h0):
        return f(u, delta, A, Bm, Cm, D=D, h0=h0, reverse=reverse)

    y, h = _check(mesh, sk.selective_scan, ("u", "delta", "A", "B", "C", "D", "h0"), (u, delta, A, Bm, Cm, D, h0), call)
    y64, h64 = _ss64(u, delta, A, Bm, Cm, D, h0, reverse)
    assert_close(y, y64, rtol=1e-5, name="y vs float64")
    assert_close(h, h64, rtol=1e-5, name="h_last vs float64")
    # the gate z is elementwise after the scan: one forward check that it is applied on every slice
    sp = sk.sequence_parallel(sk.selective_scan, "seq", mesh=mesh)
    got = jax.jit(lambda *xs: sp(*xs[:5], D=D, z=xs[5], reverse=reverse)[0])(u, delta, A, Bm, Cm, z)
    assert_close(got, sk.selective_scan(u, delta, A, Bm, Cm, D=D, z=z, reverse=reverse)[0], rtol=RTOL, name="y(z)")


def test_selective_scan_4096(seq4):
    _run_ss(seq4, 4096, False)


SLOW_CASES = {
    "linear_attention_per_key_4096": lambda m: _run_la(m, 4096, True),
    "linear_attention_normalize_no_decay_4096": _la_normalize_no_decay,
    "selective_scan_reverse_4096": lambda m: _run_ss(m, 4096, True),
    "linear_attention_per_head_65536": lambda m: _run_la(m, 65536, False),
    "linear_attention_per_key_65536": lambda m: _run_la(m, 65536, True),
    "delta_rule_65536": lambda m: _run_dr(m, 65536),
    "selective_scan_65536": lambda m: _run_ss(m, 65536, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_more_cases_and_65536(seq4, case):
    SLOW_CASES[case](seq4)


def test_data_and_sequence_mesh():
    """A 2-D mesh, batch over ``"data"`` (left automatic inside) and time over ``"seq"``: same values and gradients."""
    mesh = jax.make_mesh((2, 2), ("data", "seq"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:4])
    a, b, h0 = _scan_case(1024)
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "seq"))
    a, b = jax.device_put(a, sh), jax.device_put(b, sh)
    want, want_g = _fwd_and_grads(sk.linear_scan, (a, b, h0))
    got, got_g = _fwd_and_grads(sk.sequence_parallel(sk.linear_scan, "seq", mesh=mesh), (a, b, h0))
    assert got.sharding.spec[:2] == ("data", "seq"), got.sharding
    for name, x, y in zip(("h", "da", "db", "dh0"), (got,) + got_g, (want,) + want_g):
        assert_close(x, y, rtol=RTOL, name=name)


def test_context_mesh_and_no_mesh(seq4):
    """``mesh=None`` takes the mesh of ``jax.set_mesh``; without one (or without the axis) the op runs as is."""
    a, b, h0 = _scan_case(64)
    want = sk.linear_scan(a, b, h0)
    sp = sk.sequence_parallel(sk.linear_scan, "seq")
    with jax.set_mesh(seq4):
        jaxpr = str(jax.make_jaxpr(sp)(a, b, h0))
        assert_close(jax.jit(sp)(a, b, h0), want, rtol=RTOL, name="context mesh")
    assert "all_gather" in jaxpr and "shard_map" in jaxpr
    assert "shard_map" not in str(jax.make_jaxpr(sp)(a, b, h0))
    assert_close(sp(a, b, h0), want, rtol=0, name="no mesh")
    other = sk.sequence_parallel(sk.linear_scan, "time")
    with jax.set_mesh(seq4):
        assert "shard_map" not in str(jax.make_jaxpr(other)(a, b, h0))


def test_errors(seq4):
    with pytest.raises(ValueError, match=r"op='mlstm' is not one of the supported ops"):
        sk.sequence_parallel(sk.mlstm, "seq")
    with pytest.raises(ValueError, match=r"axis=3 must be the name of a mesh axis"):
        sk.sequence_parallel(sk.linear_scan, 3)
    with pytest.raises(ValueError, match=r"mesh='seq' must be a jax.sharding.Mesh"):
        sk.sequence_parallel(sk.linear_scan, "seq", mesh="seq")
    a, b, _ = _scan_case(66)
    with pytest.raises(ValueError, match=r"axis='time' is not an axis of the mesh, whose axes are \('seq',\)"):
        sk.sequence_parallel(sk.linear_scan, "time", mesh=seq4)(a, b)
    with pytest.raises(ValueError, match=r"time axis of b \(shape \(2, 66, 3\) dtype float32\) has L=66 .* of 4"):
        sk.sequence_parallel(sk.linear_scan, mesh=seq4)(a, b)
    with pytest.raises(ValueError, match=r"h0"):  # the op's own checks run first, on the whole arrays
        sk.sequence_parallel(sk.linear_scan, mesh=seq4)(a, b, jnp.zeros((2, 4)))
