"""mLSTM (xLSTM, Beck et al. 2024 §2.3): the reference against a float64 NumPy loop; every backend against float64
loops written here — forward, final state (C, n, m) and the gradients of all inputs and of the initial state —
with random cotangents on the output and on all three parts of the final state; extreme gates, bfloat16,
step-by-step decoding, backend fallback and input errors.

Gradient oracle: the same recurrence written here as a float64 ``lax.scan`` (under ``jax.enable_x64``) and
differentiated by JAX, itself checked against central finite differences of the NumPy loop.

Conditioning: ``o_t = C̃_tᵀ q_t / max(|ñ_tᵀ q_t|, 1)`` divides by a dot product that can cancel to ~0 (with random
signs some token has ``q_t ⟂ n_t``), where every float32 method loses digits in ``o_t`` and ``∂o_t/∂q_t``. The
float64 comparisons therefore use keys with positive entries and queries with one sign per head (heads of both
signs, so ``|·|`` is exercised), except one case with fully random signs and moderate gates.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import algornn.scan_kernels as sk
from algornn.scan_kernels._common import backend as _backend
from algornn.scan_kernels._mlstm.op import mlstm_chunked
from tests._utils import assert_close

F32 = jnp.float32
# One shape (B, L, H, K, V) and chunk for most tests, so their compiled functions are shared (jit caches).
SHAPE, CHUNK = (2, 63, 4, 8, 6), 16
SLOW = pytest.mark.slow
ARGNAMES = ("q", "k", "v", "log_f", "i", "C0", "n0", "m0")


def make_inputs(seed, B, L, H, K, V, *, gates="moderate", signed=False, dtype=F32):
    """Inputs ``(q, k, v, log_f, i)``, an initial state ``(C0, n0, m0)`` and cotangents ``(do, dC, dn, dm)``,
    float32 arrays drawn with NumPy (``q, k, v`` cast to ``dtype``).

    ``gates="moderate"``: ``log_f = logsigmoid(2 + N(0, 1))``, ``i ~ N(0, 1)``. ``"extreme"``: ``i ~ U(−30, 30)``
    with every 7th and the last step at +30; half the heads forget hard (``log_f ~ U(−20, 0)``, every 5th step
    −20), the other half hardly at all (``log_f = logsigmoid(U(3, 6))``), so ``m`` stays near +30 for long.
    """
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    q, k, v = normal((B, L, H, K)) * K**-0.5, normal((B, L, H, K)), normal((B, L, H, V))
    state = [normal((B, H, K, V)), normal((B, H, K)), normal((B, H))]
    if not signed:  # positive keys, one query sign per head: |n_tᵀ q_t| never cancels
        sign = np.where(np.arange(H) % 2 == 0, 1.0, -1.0)[:, None]
        q, k, state[1] = np.abs(q) * sign, np.abs(k), np.abs(state[1])
    logsigmoid = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
    if gates == "moderate":
        log_f, i = logsigmoid(2.0 + normal((B, L, H))), normal((B, L, H))
    else:
        hard = rng.uniform(-20.0, 0.0, (B, L, H))
        hard[:, ::5] = -20.0
        log_f = np.where(np.arange(H) < (H + 1) // 2, hard, logsigmoid(rng.uniform(3.0, 6.0, (B, L, H))))
        i = rng.uniform(-30.0, 30.0, (B, L, H))
        i[:, ::7] = i[:, -1:] = 30.0
    cts = (normal((B, L, H, V)), normal((B, H, K, V)), normal((B, H, K)), normal((B, H)))
    f32 = lambda xs: tuple(jnp.asarray(x, F32) for x in xs)  # noqa: E731
    return tuple(x.astype(dtype) for x in f32((q, k, v))) + f32((log_f, i)), f32(state), f32(cts)


# ------------------------------------------------------------------------------------------ float64 oracles
def numpy_loop(q, k, v, log_f, i, state=None):
    """The recurrence step by step in float64 NumPy: ``(o (B, L, H, V), (C, n, m))``."""
    q, k, v, f, i = (np.asarray(x, np.float64) for x in (q, k, v, log_f, i))
    B, L, H, K = q.shape
    if state is None:
        C, n, m = np.zeros((B, H, K, v.shape[-1])), np.zeros((B, H, K)), np.zeros((B, H))
    else:
        C, n, m = (np.asarray(x, np.float64) for x in state)
    o = np.zeros(v.shape)
    for t in range(L):
        m_new = np.maximum(f[:, t] + m, i[:, t])
        a, b = np.exp(f[:, t] + m - m_new), np.exp(i[:, t] - m_new)
        C = a[..., None, None] * C + b[..., None, None] * np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        n = a[..., None] * n + b[..., None] * k[:, t]
        m = m_new
        den = np.maximum(np.abs(np.einsum("bhk,bhk->bh", n, q[:, t])), np.exp(-m))
        o[:, t] = np.einsum("bhkv,bhk->bhv", C, q[:, t]) / den[..., None]
    return o, (C, n, m)


def _loop64(q, k, v, log_f, i, C0, n0, m0):
    """The same recurrence as a float64 ``lax.scan`` (called under x64), for JAX autodiff."""

    def step(state, x):
        C, n, m = state
        qt, kt, vt, ft, it = x
        m_new = jnp.maximum(ft + m, it)
        a, b = jnp.exp(ft + m - m_new), jnp.exp(it - m_new)
        C = a[..., None, None] * C + b[..., None, None] * kt[..., :, None] * vt[..., None, :]
        n = a[..., None] * n + b[..., None] * kt
        den = jnp.maximum(jnp.abs(jnp.sum(n * qt, -1)), jnp.exp(-m_new))
        return (C, n, m_new), jnp.einsum("bhkv,bhk->bhv", C, qt) / den[..., None]

    final, o = lax.scan(step, (C0, n0, m0), tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_f, i)))
    return jnp.moveaxis(o, 0, 1), final


def _loss(fn, cts):
    def loss(*a):
        o, (C, n, m) = fn(*a)
        out = (o.astype(F32) if o.dtype == jnp.bfloat16 else o, C, n, m)
        return sum(jnp.sum(x * c) for x, c in zip(out, cts)), out

    return loss


@jax.jit
def _oracle64(args, state, cts):
    return jax.value_and_grad(_loss(_loop64, cts), argnums=tuple(range(8)), has_aux=True)(*args, *state)


def float64_oracle(args, state, cts):
    """``((o, C, n, m), grads of the 8 inputs)`` of the float64 loop, as NumPy float64 arrays."""
    with jax.enable_x64(True):
        to64 = lambda xs: tuple(jnp.asarray(np.asarray(x, np.float64)) for x in xs)  # noqa: E731
        (_, out), grads = _oracle64(to64(args), to64(state), to64(cts))
        return tuple(np.asarray(x) for x in out), tuple(np.asarray(g) for g in grads)


@partial(jax.jit, static_argnames=("backend", "chunk_size"))
def op_with_grads(args, state, cts, *, backend, chunk_size=64):
    """``((o, C, n, m), grads of the 8 inputs)`` of ``mlstm`` in one compiled call."""

    def fn(q, k, v, log_f, i, C0, n0, m0):
        return sk.mlstm(q, k, v, log_f, i, initial_state=(C0, n0, m0), chunk_size=chunk_size, backend=backend)

    (_, out), grads = jax.value_and_grad(_loss(fn, cts), argnums=tuple(range(8)), has_aux=True)(*args, *state)
    return out, grads


def check_against_oracle(out, grads, want_out, want_grads, *, rtol=1e-5, grad_rtol=3e-5):
    """Relative RMS errors; ``dm0`` is measured on the scale of ``dlog_f``: m_0 enters the computation only through
    the first log-decay ``g_1 = log_f_1 + m_0 − m_1`` (and the final ``m``), so its rounding error is that of
    ``dlog_f_1`` — and its true value vanishes where the gates forget the initial state (extreme gates)."""
    for name, a, b in zip(("o", "C", "n", "m"), out, want_out):
        assert_close(a, b, rtol=rtol, name=name)
    scale = {"m0": max(1e-6, float(np.sqrt(np.mean(want_grads[3] ** 2))))}
    for name, a, b in zip(ARGNAMES, grads, want_grads):
        assert bool(jnp.all(jnp.isfinite(a))), f"d{name} is not finite"
        assert_close(a, b, rtol=grad_rtol, floor=scale.get(name, 1e-6), name=f"d{name}")


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("gates,with_state", [("moderate", False), ("extreme", True)])
def test_reference_matches_numpy_loop(gates, with_state):
    args, state, _ = make_inputs(0, 2, 9, 2, 3, 4, gates=gates, signed=gates == "moderate")
    state = state if with_state else None
    o_np, (C_np, n_np, m_np) = numpy_loop(*args, state)
    o, (C, n, m) = sk.mlstm_reference(*args, initial_state=state)
    assert o.dtype == F32 and C.dtype == n.dtype == m.dtype == F32
    for name, a, b in (("o", o, o_np), ("C", C, C_np), ("n", n, n_np), ("m", m, m_np)):
        assert_close(a, b, name=name)


def test_float64_gradient_oracle_matches_finite_differences():
    """The gradient oracle (JAX autodiff of the float64 scan) against central differences of the NumPy loop,
    along a random direction in all eight inputs, through the max of the stabiliser included."""
    args, state, cts = make_inputs(1, *SHAPE, signed=True)
    out, grads = float64_oracle(args, state, cts)
    np.testing.assert_allclose(out[0], numpy_loop(*args, state)[0], rtol=1e-12)
    xs = [np.asarray(x, np.float64) for x in args + state]
    rng = np.random.default_rng(0)
    dirs = [rng.standard_normal(x.shape) for x in xs]

    def loss(eps):
        o, fin = numpy_loop(*[x + eps * d for x, d in zip(xs, dirs)][:5], [x + eps * d for x, d in zip(xs, dirs)][5:])
        return sum(np.sum(a * np.asarray(c, np.float64)) for a, c in zip((o, *fin), cts))

    eps = 1e-6
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    ad = sum(np.sum(g * d) for g, d in zip(grads, dirs))
    np.testing.assert_allclose(ad, fd, rtol=1e-6)


def test_reference_gradients_match_float64():
    args, state, cts = make_inputs(2, *SHAPE)
    out, grads = op_with_grads(args, state, cts, backend="reference", chunk_size=CHUNK)
    check_against_oracle(out, grads, *float64_oracle(args, state, cts))


# ------------------------------------------------------------------------------------------ chunked backends
# (backend, B, L, H, K, V, C, signed): lengths 1/63/500/1000 (none a multiple of C), heads 1 and 4, K != V.
CASES = [
    ("xla", 1, 1, 1, 4, 3, 16, False),
    ("xla", *SHAPE, CHUNK, False),
    ("xla", 1, 500, 1, 16, 8, 64, False),
    ("xla", *SHAPE, CHUNK, True),  # random signs of q and k, moderate gates
    ("pallas", *SHAPE, CHUNK, False),
    ("pallas", 1, 1, 1, 4, 3, 16, False),
    ("pallas", 1, 500, 1, 16, 8, 64, False),
    ("xla", 1, 1000, 4, 16, 8, 64, False),
    ("pallas", 1, 1000, 4, 16, 8, 64, False),
]


@pytest.mark.parametrize("backend,B,L,H,K,V,C,signed", CASES)
def test_chunked_matches_float64(backend, B, L, H, K, V, C, signed):
    args, state, cts = make_inputs(3, B, L, H, K, V, signed=signed)
    out, grads = op_with_grads(args, state, cts, backend=backend, chunk_size=C)
    check_against_oracle(out, grads, *float64_oracle(args, state, cts))


@pytest.mark.parametrize("backend", ["xla", "pallas", "reference"])
def test_extreme_gates_match_float64_and_stay_finite(backend):
    """i up to +30 and log_f down to −20 (unstabilised, exp(30)·L would be near float32's range and exp(i) of a
    few steps beyond it): every exponent the op takes is ≤ 0, so nothing is inf or NaN, forward or backward."""
    args, state, cts = make_inputs(4, *SHAPE, gates="extreme")
    assert float(jnp.max(args[4])) == 30.0 and float(jnp.min(args[3])) == -20.0
    out, grads = op_with_grads(args, state, cts, backend=backend, chunk_size=CHUNK)
    assert float(jnp.max(out[3])) == 30.0  # the final stabiliser is the largest input gate
    check_against_oracle(out, grads, *float64_oracle(args, state, cts))


@pytest.mark.parametrize("gates", ["extreme", pytest.param("moderate", marks=SLOW)])
def test_segmented_long_sequence_path_matches_float64(gates):
    """Sequences longer than ``SEGMENT_TOKENS`` run segment by segment, the state ``(C, n, m)`` carried and each
    segment's forward recomputed in the backward; here segments of one chunk (16 tokens: three in the loop and a
    tail of 15), against the float64 loop: forward, final state and every gradient, through extreme gates too."""
    args, state, cts = make_inputs(10, *SHAPE, gates=gates)

    @jax.jit
    def run(args, state):
        def fn(*a):
            return mlstm_chunked(*a, chunk_size=CHUNK, backend="xla", segment=CHUNK)

        (_, out), grads = jax.value_and_grad(_loss(fn, cts), argnums=tuple(range(8)), has_aux=True)(*args, *state)
        return out, grads

    check_against_oracle(*run(args, state), *float64_oracle(args, state, cts))


def test_default_initial_state_is_zero_with_m0_zero():
    args, _, _ = make_inputs(5, *SHAPE)
    o_np, (C_np, n_np, m_np) = numpy_loop(*args)
    o, (C, n, m) = sk.mlstm(*args, chunk_size=CHUNK, backend="xla")
    for name, a, b in (("o", o, o_np), ("C", C, C_np), ("n", n, n_np), ("m", m, m_np)):
        assert_close(a, b, name=name)


def test_bfloat16_inputs():
    """bfloat16 q, k, v and gates: computed in float32 (states float32), o returned in bfloat16."""
    args, state, _ = make_inputs(6, *SHAPE, dtype=jnp.bfloat16)
    args = args[:3] + tuple(g.astype(jnp.bfloat16) for g in args[3:])
    o_np, (C_np, n_np, m_np) = numpy_loop(*(np.asarray(x.astype(F32)) for x in args), state)
    for backend in ("xla", "reference"):
        o, (C, n, m) = sk.mlstm(*args, initial_state=state, chunk_size=CHUNK, backend=backend)
        assert o.dtype == jnp.bfloat16 and C.dtype == n.dtype == m.dtype == F32
        assert_close(o, o_np, dtype=jnp.bfloat16, name=f"{backend} o")
        for name, a, b in (("C", C, C_np), ("n", n, n_np), ("m", m, m_np)):
            assert_close(a, b, rtol=1e-5, name=f"{backend} {name}")  # float32 accumulation of bf16 values


def test_step_decoding_equals_full_call():
    args, state, _ = make_inputs(7, *SHAPE, gates="extreme")
    o_full, final = sk.mlstm(*args, initial_state=state, chunk_size=CHUNK, backend="xla")
    step = jax.jit(sk.mlstm_step)
    outs = []
    for t in range(args[0].shape[1]):
        state, o_t = step(state, *(x[:, t] for x in args))
        outs.append(o_t)
    assert outs[0].dtype == F32 and state[0].dtype == F32
    assert_close(jnp.stack(outs, 1), o_full, name="o")
    for name, a, b in zip("Cnm", state, final):
        assert_close(a, b, name=name)


def test_empty_sequence_returns_the_initial_state():
    args, state, _ = make_inputs(8, 1, 0, 2, 3, 4)
    for backend in ("xla", "reference"):
        o, final = sk.mlstm(*args, initial_state=state, backend=backend)
        assert o.shape == (1, 0, 2, 4)
        for a, b in zip(final, state):
            np.testing.assert_array_equal(a, b)


@SLOW
def test_backward_memory_stores_no_per_token_states():
    """Backward scratch memory stays far below the per-token (K, V) states that autodiff of a loop would keep:
    the composition adds only O(B·L·H·(K+V)) to linear attention's chunk states."""
    B, L, H, K, V = 1, 2048, 1, 64, 64
    S = jax.ShapeDtypeStruct
    shapes = [S((B, L, H, K), F32)] * 2 + [S((B, L, H, V), F32)] + [S((B, L, H), F32)] * 2

    def loss(q, k, v, log_f, i):
        o, (C, n, m) = sk.mlstm(q, k, v, log_f, i, chunk_size=64, backend="xla")
        return jnp.sum(o) + jnp.sum(C) + jnp.sum(n) + jnp.sum(m)

    temp = jax.jit(jax.grad(loss, tuple(range(5)))).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
    per_token = B * L * H * K * V * 4
    assert temp < 0.25 * per_token, (temp, per_token)


def _fwdbwd_temp(L, *, B=1, H=1, K=64, V=64, C=64, segment=None):
    """XLA scratch bytes of the compiled forward+backward (all eight inputs) of the chunked path at length L."""
    S = jax.ShapeDtypeStruct
    shapes = [S((B, L, H, K), F32)] * 2 + [S((B, L, H, V), F32)] + [S((B, L, H), F32)] * 2
    shapes += [S((B, H, K, V), F32), S((B, H, K), F32), S((B, H), F32)]
    kw = {} if segment is None else dict(segment=segment)

    def loss(*a):
        o, (C_, n, m) = mlstm_chunked(*a, chunk_size=C, backend="xla", **kw)
        return jnp.sum(o) + jnp.sum(C_) + jnp.sum(n) + jnp.sum(m)

    compiled = jax.jit(jax.grad(loss, tuple(range(8)))).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_segmented_backward_memory_below_tenth_of_states():
    """The issue's memory target at a scaled-down size: with segments of 256 tokens (the default is 4096), the
    forward+backward scratch at L = 2048 (H = 1, K = V = C = 64) is below 1/10 of the per-token states (0.062
    measured; one call without segments: ~0.19 at this size)."""
    temp = _fwdbwd_temp(2048, segment=256)
    assert temp < 0.1 * 2048 * 64 * 64 * 4, temp


@SLOW
def test_backward_memory_target_at_benchmark_size():
    """Issue target: fwd+bwd scratch at L = 16384 (B = 1, H = 4, K = V = C = 64) below 1/10 of the per-token states
    (1 GiB) with the default segments (0.070 measured; 0.16 in one call)."""
    temp = _fwdbwd_temp(16384, H=4)
    assert temp < 0.1 * 16384 * 4 * 64 * 64 * 4, temp


# ------------------------------------------------------------------------------------------ backends, errors
def test_auto_falls_back_to_xla_where_the_kernels_do_not_compile(monkeypatch):
    """Declared a GPU, this CPU host cannot compile the Pallas kernels (off a GPU they run only interpreted):
    auto warns, names mlstm and computes with XLA; an explicit "pallas" raises a ValueError naming mlstm."""
    monkeypatch.setattr(_backend, "on_gpu", lambda: True)
    _backend.clear_probe_cache()
    try:
        args, state, _ = make_inputs(9, 1, 10, 2, 3, 4)
        with pytest.warns(
            UserWarning, match="the Pallas mlstm kernel does not compile here for .*auto backend uses XLA"
        ):
            o, _ = sk.mlstm(*args, initial_state=state, chunk_size=4)
        assert_close(o, numpy_loop(*args, state)[0], name="o")
        with pytest.raises(ValueError, match="backend='pallas': the Pallas mlstm kernel does not compile here"):
            sk.mlstm(*args, initial_state=state, chunk_size=4, backend="pallas")
    finally:
        _backend.clear_probe_cache()


def _bad_calls():
    (q, k, v, f, i), (C0, n0, m0), _ = make_inputs(10, 2, 5, 3, 4, 6)
    op, step = sk.mlstm, sk.mlstm_step
    s = (C0, n0, m0)
    return [
        (lambda: op(q, k[:, :4], v, f, i), "k must have the shape of q"),
        (lambda: op(q, k, v[:1], f, i), "v must have shape"),
        (lambda: op(q, k.astype(jnp.bfloat16), v, f, i), "share one dtype"),
        (lambda: op(q.astype(jnp.int32), k, v, f, i), "q must be float32 or bfloat16"),
        (lambda: op(q, k, v, f[:, :4], i), r"log_f must have shape \(2, 5, 3\)"),
        (lambda: op(q, k, v, f, i[..., None]), r"i must have shape \(2, 5, 3\)"),
        (lambda: op(q, k, v, f, i.astype(jnp.int32)), "i must have a real float dtype"),
        (lambda: op(q, k, v, f, i, initial_state=C0), "initial_state must be a triple"),
        (lambda: op(q, k, v, f, i, initial_state=(C0, n0)), "initial_state must be a triple .* length 2"),
        (lambda: op(q, k, v, f, i, initial_state=(C0[..., :2], n0, m0)), r"initial_state\[0\] must have shape"),
        (lambda: op(q, k, v, f, i, initial_state=(C0, n0[..., :1], m0)), r"initial_state\[1\] must have shape"),
        (lambda: op(q, k, v, f, i, initial_state=(C0, n0, m0[:1])), r"initial_state\[2\] must have shape"),
        (lambda: op(q, k, v, f, i, chunk_size=0), "chunk_size=0 must be an integer >= 1"),
        (lambda: op(q, k, v, f, i, chunk_size=48, backend="pallas"), "chunk_size=48 must be a power of two"),
        (lambda: op(q, k, v, f, i, backend="cuda"), "backend='cuda' is not one of"),
        (lambda: step(None, q[:, 0], k[:, 0], v[:, 0], f[:, 0], i[:, 0]), "state must be given"),
        (lambda: step(s, q[:, 0], k[:, 0], v[:, 0, :2], f[:, 0], i[:, 0]), "v must have shape"),
        (lambda: step(s, q[:, 0], k[:, 0], v[:, 0], f[:, 0, :1], i[:, 0]), r"log_f must have shape \(2, 3\)"),
        (lambda: step((C0, n0, m0[:1]), q[:, 0], k[:, 0], v[:, 0], f[:, 0], i[:, 0]), r"state\[2\] must have shape"),
        (lambda: sk.mlstm_reference(q, k, v, f, i[:, :2]), "i must have shape"),
    ]


@pytest.mark.parametrize("n", range(20))
def test_bad_input_raises_value_error(n):
    call, match = _bad_calls()[n]
    with pytest.raises(ValueError, match=match):
        call()
