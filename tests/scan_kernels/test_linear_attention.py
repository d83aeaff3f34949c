"""Linear attention (decayed / gated): every backend against the token-by-token reference, forward and
gradients; the reference against an independent float64 numpy loop and the quadratic masked form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import algornn.scan_kernels as sk
from tests._utils import assert_close

F32 = jnp.float32


def make_inputs(seed, B, L, H, K, V, gate="none", strength=1.0, dtype=F32, positive=False, state=True):
    """Random q, k, v, log-decay ``-strength * U(0, 1)`` and initial state.

    Drawn with NumPy: ``jax.random`` compiles a program per new shape (~2 s each on the 2-core CI machine)."""
    rng = np.random.default_rng(seed)
    f32 = lambda x: jnp.asarray(x, F32)  # noqa: E731
    q = f32(rng.normal(size=(B, L, H, K)))
    k = f32(rng.normal(size=(B, L, H, K)) * K**-0.5)
    v = f32(rng.normal(size=(B, L, H, V)))
    if positive:  # feature-mapped queries/keys (elu + 1 style) for the normaliser
        q, k = jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0
    g = None
    if gate == "scalar":
        g = f32(-strength * rng.uniform(size=(B, L, H)))
    elif gate == "key":
        g = f32(-strength * rng.uniform(size=(B, L, H, K)))
    s0 = f32(rng.normal(size=(B, H, K, V))) if state else None
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), g, s0


def numpy_loop(q, k, v, g, s0, normalize=False, z0=None):
    """Independent float64 oracle: the recurrence written out step by step in numpy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, H, K = q.shape
    S = np.zeros((B, H, K, v.shape[-1])) if s0 is None else np.asarray(s0, np.float64).copy()
    z = np.zeros((B, H, K)) if z0 is None else np.asarray(z0, np.float64).copy()
    o = np.zeros(v.shape)
    for t in range(L):
        if g is not None:
            a = np.exp(np.asarray(g, np.float64)[:, t])
            a = a[..., None] if a.ndim == 2 else a  # (B, H, 1 | K)
            S = a[..., None] * S
            z = a * z
        for b in range(B):
            for h in range(H):
                S[b, h] += np.outer(k[b, t, h], v[b, t, h])
                z[b, h] += k[b, t, h]
                o[b, t, h] = S[b, h].T @ q[b, t, h]
                if normalize:
                    o[b, t, h] /= q[b, t, h] @ z[b, h]
    return o, S, z


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
@pytest.mark.parametrize("normalize", [False, True])
def test_reference_matches_numpy_loop(gate, normalize):
    q, k, v, g, s0 = make_inputs(0, 2, 9, 2, 3, 4, gate, 2.0, positive=normalize)
    z0 = jnp.abs(jax.random.normal(jax.random.PRNGKey(9), (2, 2, 3))) if normalize else None
    o_np, S_np, z_np = numpy_loop(q, k, v, g, s0, normalize, z0)
    init = (s0, z0) if normalize else s0
    o, final = sk.linear_attention_reference(q, k, v, log_decay=g, initial_state=init, normalize=normalize)
    assert_close(o, o_np, name="o")
    assert_close(final[0] if normalize else final, S_np, name="S")
    if normalize:
        assert_close(final[1], z_np, name="z")


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
def test_quadratic_form_matches_reference(gate):
    q, k, v, g, s0 = make_inputs(1, 2, 63, 2, 8, 6, gate, 1.0)
    o_r, s_r = sk.linear_attention_reference(q, k, v, log_decay=g, initial_state=s0)
    o_q, s_q = sk.linear_attention_quadratic(q, k, v, log_decay=g, initial_state=s0)
    assert_close(o_q, o_r, rtol=2e-5, name="o")
    assert_close(s_q, s_r, rtol=2e-5, name="state")


def run_with_grads(fn, args, argnums, do, dS):
    """One compiled call: outputs and the gradients of ``<o, do> + <S, dS>`` (S flattened to one array)."""

    def loss(*a):
        o, S = fn(*a)
        S = jnp.concatenate([S[0], S[1][..., None]], -1) if isinstance(S, tuple) else S
        return jnp.sum(o.astype(F32) * do) + jnp.sum(S * dS), (o, S)

    (_, (o, S)), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(*args)
    return o, S, grads


def check_against_reference(backend, q, k, v, g, s0, C, *, normalize=False, rtol=1e-5, grad_rtol=3e-5):
    """Forward, final state and the gradients of q, k, v, g and the initial state, random cotangents."""

    def call(op, **kw):
        def f(q, k, v, g, s):
            init = (s[..., :-1], s[..., -1]) if normalize else s
            return op(q, k, v, log_decay=g, initial_state=init, normalize=normalize, **kw)

        return f

    s_in = jnp.concatenate([s0, jnp.abs(s0[..., :1])], -1) if normalize else s0  # [S | z]
    rng = np.random.default_rng(123)
    do = jnp.asarray(rng.normal(size=v.shape), F32)
    dS = jnp.asarray(rng.normal(size=s_in.shape), F32)
    argnums = (0, 1, 2, 4) if g is None else (0, 1, 2, 3, 4)
    args = (q, k, v, g, s_in)
    o_r, S_r, g_r = run_with_grads(call(sk.linear_attention_reference), args, argnums, do, dS)
    o_f, S_f, g_f = run_with_grads(call(sk.linear_attention, chunk_size=C, backend=backend), args, argnums, do, dS)
    assert o_f.dtype == v.dtype and S_f.dtype == F32
    assert_close(o_f, o_r, rtol=rtol, name="o")
    assert_close(S_f, S_r, rtol=rtol, name="final state")
    names = [["dq", "dk", "dv", "dg", "dS0"][i] for i in argnums]
    for name, a, b in zip(names, g_f, g_r):
        assert_close(a, b, rtol=grad_rtol, name=name)


def strong_decay_rtol(strength, C):
    """float32 tolerance of the log-space chunk form: decays exp(γ_i − γ_j) come from differences of
    cumulative log-gates of size up to strength·C, which carry an absolute rounding error ~ strength·C·6e-8."""
    return max(1e-5, strength * C * 2e-8)


# Cases cover every axis (length, heads, K = V and K != V, gate kind and strength, chunk) without the
# full cross product: (B, L, H, K, V, gate, strength, C).
CASES = [
    (1, 1, 1, 16, 16, "scalar", 1.0, 16),
    (2, 63, 4, 8, 12, "scalar", 20.0, 16),
    (1, 500, 1, 64, 64, "none", 0.0, 64),
    (1, 1000, 4, 16, 8, "key", 1.0, 32),
    (2, 1000, 2, 8, 8, "scalar", 1.0, 16),  # 63 chunks: full groups of the chunk loop and a shorter tail
    pytest.param(1, 200, 2, 16, 24, "key", 20.0, 16, marks=pytest.mark.slow),  # CI: key/-20 runs in the Pallas twin
]


@pytest.mark.parametrize("B,L,H,K,V,gate,strength,C", CASES)
def test_xla_matches_reference(B, L, H, K, V, gate, strength, C):
    q, k, v, g, s0 = make_inputs(2, B, L, H, K, V, gate, strength)
    check_against_reference("xla", q, k, v, g, s0, C, rtol=strong_decay_rtol(strength, C))


SLOW = pytest.mark.slow


@pytest.mark.parametrize("gate", [pytest.param("none", marks=SLOW), "scalar", pytest.param("key", marks=SLOW)])
def test_normalize_matches_reference(gate):
    q, k, v, g, s0 = make_inputs(3, 2, 70, 2, 8, 8, gate, 0.5, positive=True)
    check_against_reference("xla", q, k, v, g, jnp.abs(s0), 16, normalize=True)


@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_strong_decay_long_sequence_is_finite(gate):
    """g = -20 on every step of a long sequence: exact decay, no inf/nan, forward and backward."""
    B, L, H, K, V = 1, 1000, 1, 8, 8
    q, k, v, _, s0 = make_inputs(4, B, L, H, K, V)
    g = jnp.full((B, L, H) if gate == "scalar" else (B, L, H, K), -20.0, F32)
    o, S = sk.linear_attention(q, k, v, log_decay=g, initial_state=s0, backend="xla")
    # exp(-20) ≈ 2e-9: the state is (to float32 precision) the last outer product only.
    assert_close(S, jnp.einsum("bhk,bhv->bhkv", k[:, -1], v[:, -1]), rtol=1e-6, name="state")
    assert_close(o, jnp.einsum("blhk,blhk->blh", q, k)[..., None] * v, rtol=1e-6, name="o")
    grads = jax.grad(lambda g: jnp.sum(sk.linear_attention(q, k, v, log_decay=g, backend="xla")[0]))(g)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_bfloat16_inputs():
    q, k, v, g, s0 = make_inputs(5, 1, 300, 2, 32, 32, "scalar", 0.5, dtype=jnp.bfloat16)
    o_r, S_r = sk.linear_attention_reference(*(x.astype(F32) for x in (q, k, v)), log_decay=g, initial_state=s0)
    o, S = sk.linear_attention(q, k, v, log_decay=g, initial_state=s0, backend="xla")
    assert o.dtype == jnp.bfloat16 and S.dtype == F32
    assert_close(o, o_r, dtype=jnp.bfloat16, name="o")
    assert_close(S, S_r, rtol=1e-5, name="state")  # state accumulates in float32 from the bf16 inputs


@pytest.mark.parametrize("gate,normalize", [("key", False), ("scalar", True)])
def test_step_decoding_equals_full_call(gate, normalize):
    B, L, H, K, V = 2, 37, 2, 8, 4
    q, k, v, g, s0 = make_inputs(6, B, L, H, K, V, gate, 1.0, positive=normalize)
    init = (s0, jnp.abs(s0[..., 0])) if normalize else s0
    o_full, S_full = sk.linear_attention(
        q, k, v, log_decay=g, initial_state=init, normalize=normalize, chunk_size=16, backend="xla"
    )
    step = jax.jit(lambda s, q, k, v, g: sk.linear_attention_step(s, q, k, v, log_decay=g, normalize=normalize))
    state, outs = init, []
    for t in range(L):
        state, o_t = step(state, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o_t)
    assert_close(jnp.stack(outs, 1), o_full, name="o")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(S_full)):
        assert_close(a, b, name="state")


def _bad_calls():
    q, k, v, g, s0 = make_inputs(7, 2, 5, 3, 4, 6, state=True)
    f = sk.linear_attention
    return [
        (lambda: f(q, k[:, :4], v), "k must have the shape of q"),
        (lambda: f(q, k, v[:1]), "v must have shape"),
        (lambda: f(q, k, v[..., None]), "v must have shape"),
        (lambda: f(q, k.astype(jnp.bfloat16), v), "share one dtype"),
        (lambda: f(q.astype(jnp.int32), k, v), "float32 or bfloat16"),
        (lambda: f(q, k, v, log_decay=jnp.zeros((2, 5, 2))), "log_decay must have shape"),
        (lambda: f(q, k, v, log_decay=jnp.zeros((2, 5, 3, 5))), "log_decay must have shape"),
        (lambda: f(q, k, v, initial_state=jnp.zeros((2, 3, 6, 4))), "initial_state must have shape"),
        (lambda: f(q, k, v, initial_state=s0, normalize=True), "pair"),
        (lambda: f(q, k, v, initial_state=(s0, jnp.zeros((2, 3, 5))), normalize=True), r"initial_state\[1\]"),
        (lambda: f(q, k, v, chunk_size=0), "chunk_size=-?[0-9]+ must be an integer >= 1"),
        (lambda: f(q, k, v, chunk_size=48, backend="pallas"), "power of two"),
        (lambda: f(q, k, v, backend="cuda"), "backend='cuda' is not one of"),
        (lambda: sk.linear_attention_step(s0, q[:, 0], k[:, 0], v[:, 0, :2]), "v must have shape"),
        (lambda: sk.linear_attention_step(s0[:1], q[:, 0], k[:, 0], v[:, 0]), "state must have shape"),
    ]


@pytest.mark.parametrize("i", range(15))
def test_bad_input_raises_value_error(i):
    call, match = _bad_calls()[i]
    with pytest.raises(ValueError, match=match):
        call()


def grad_temp_bytes(loss, args, argnums):
    """Scratch memory XLA allocates for the compiled gradient (``memory_analysis().temp_size_in_bytes``)."""
    compiled = jax.jit(jax.grad(loss, argnums)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
def test_backward_memory_stores_no_per_token_states(gate):
    """Backward memory is O(B·L·H·(K+V+C) + NC·B·H·K·V): doubling V adds a small fraction of what per-token
    (K, V) states would add, and the total stays far below them."""
    B, L, H, K, C = 1, 2048, 1, 64, 64
    S = jax.ShapeDtypeStruct
    temps = []
    for V in (64, 128):
        g = None if gate == "none" else S((B, L, H) if gate == "scalar" else (B, L, H, K), F32)
        args = (S((B, L, H, K), F32), S((B, L, H, K), F32), S((B, L, H, V), F32), g, S((B, H, K, V), F32))

        def loss(q, k, v, g, s):
            o, st = sk.linear_attention(q, k, v, log_decay=g, initial_state=s, chunk_size=C, backend="xla")
            return jnp.sum(o) + jnp.sum(st)

        temps.append(grad_temp_bytes(loss, args, (0, 1, 2, 4) if g is None else (0, 1, 2, 3, 4)))
        fwd_temp = jax.jit(loss).lower(*args).compile().memory_analysis().temp_size_in_bytes
    per_token = lambda V: B * L * H * K * V * 4  # noqa: E731  bytes of float32 per-token states
    assert temps[1] - temps[0] < 0.3 * (per_token(128) - per_token(64)), temps
    assert temps[1] < 0.5 * per_token(128), temps
    assert fwd_temp < 0.1 * per_token(128), fwd_temp


def test_chunk_groups_tile_all_chunks_in_order():
    """``for_chunk_groups`` visits ``[start, start + n)`` groups covering 0..nc-1 once, full groups then the
    tail (reverse: tail first, then the full groups backwards)."""
    from algornn.scan_kernels._common.chunk_utils import for_chunk_groups

    def body(start, n, carry):
        visits, order, step = carry
        visits = lax.dynamic_update_slice(visits, jnp.full((n,), step + 1, jnp.int32), (start,))
        return visits, order.at[step].set(start), step + 1

    for reverse in (False, True):
        init = (jnp.zeros(23, jnp.int32), jnp.full(5, -1, jnp.int32), 0)
        visits, order, steps = jax.jit(lambda c, reverse=reverse: for_chunk_groups(body, c, 23, 5, reverse=reverse))(
            init
        )
        starts = [20, 15, 10, 5, 0] if reverse else [0, 5, 10, 15, 20]
        assert int(steps) == 5 and order.tolist() == starts
        assert visits.tolist() == sum(([starts.index(s) + 1] * min(5, 23 - s) for s in range(0, 23, 5)), [])
