"""The forward without differentiation (the ``custom_vjp`` primal) of ``linear_attention`` and ``delta_rule``.

Without a gradient the XLA backend runs a residual-free one-pass forward (``_forward_only``: steps of several
sub-chunks, a state recurrence inside each step); with one it runs the ``_fwd`` rule that keeps what the backward
needs. Checked here: the no-gradient path against independent float64 numpy loops on awkward shapes (L neither a
multiple of the chunk nor of a step, K ≠ V, several heads and batch rows, an initial state), with decays per head and
per key; and, from the jaxprs, that it is the path taken without differentiation and not the one taken under it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close

F32 = jnp.float32


def _decay(g, b, t, h, K):
    """``exp(g)`` of head h at step t as a length-K vector (a scalar per head is broadcast); ones without decay."""
    if g is None:
        return np.ones(K)
    return np.exp(np.broadcast_to(np.asarray(g, np.float64)[b, t, h], (K,)))


def la_loop(q, k, v, g, s0):
    """Float64 oracle: ``S ← diag(e^g) S + k vᵀ``, ``o = Sᵀ q``."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, H, K = q.shape
    S, o = np.asarray(s0, np.float64).copy(), np.zeros(v.shape)
    for t in range(L):
        for b in range(B):
            for h in range(H):
                S[b, h] = _decay(g, b, t, h, K)[:, None] * S[b, h] + np.outer(k[b, t, h], v[b, t, h])
                o[b, t, h] = S[b, h].T @ q[b, t, h]
    return o, S


def dr_loop(q, k, v, beta, g, s0):
    """Float64 oracle: ``S ← (I − β k kᵀ) diag(e^g) S + β k vᵀ``, ``o = Sᵀ q``."""
    q, k, v, beta = (np.asarray(x, np.float64) for x in (q, k, v, beta))
    B, L, H, K = q.shape
    S, o = np.asarray(s0, np.float64).copy(), np.zeros(v.shape)
    for t in range(L):
        for b in range(B):
            for h in range(H):
                kt, bt = k[b, t, h], beta[b, t, h]
                decayed = _decay(g, b, t, h, K)[:, None] * S[b, h]
                S[b, h] = (np.eye(K) - bt * np.outer(kt, kt)) @ decayed + bt * np.outer(kt, v[b, t, h])
                o[b, t, h] = S[b, h].T @ q[b, t, h]
    return o, S


def _inputs(seed, B, L, H, K, V, gate):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, L, H, K))
    k = rng.normal(size=(B, L, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(B, L, H, V))
    beta = rng.uniform(0.05, 1.95, size=(B, L, H))
    g = {
        "none": None,
        "head": -rng.uniform(size=(B, L, H)),
        # −20 per step after the first 40: the later steps take the exact (C, C) decays, not the factored ones
        "head_strong": -rng.uniform(size=(B, L, H)) * np.where(np.arange(L) < 40, 1.0, 20.0)[None, :, None],
        "key": -rng.uniform(size=(B, L, H, K)),
    }[gate]
    s0 = rng.normal(size=(B, H, K, V))
    f32 = lambda x: None if x is None else jnp.asarray(x, F32)  # noqa: E731
    return f32(q), f32(k), f32(v), f32(beta), f32(g), f32(s0)


# L = 77: five sub-chunks of 16 (the last one partial) in steps of two; L = 150 with C = 16: five steps.
SHAPES = [(2, 77, 3, 5, 7, 64), (1, 150, 2, 4, 6, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gate", ["none", "head", "head_strong", "key"])
def test_linear_attention_forward_only_matches_float64_loop(shape, gate):
    B, L, H, K, V, C = shape
    q, k, v, _, g, s0 = _inputs(1, B, L, H, K, V, gate)
    o, S = jax.jit(lambda *a: sk.linear_attention(*a[:3], log_decay=a[3], initial_state=a[4], chunk_size=C))(
        q, k, v, g, s0
    )
    o_np, S_np = la_loop(q, k, v, g, s0)
    assert_close(o, o_np, name="o")
    assert_close(S, S_np, name="final state")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gate", ["none", "head", "key"])
def test_delta_rule_forward_only_matches_float64_loop(shape, gate):
    B, L, H, K, V, C = shape
    q, k, v, beta, g, s0 = _inputs(2, B, L, H, K, V, gate)
    o, S = jax.jit(lambda *a: sk.delta_rule(*a[:4], log_decay=a[4], initial_state=a[5], chunk_size=C))(
        q, k, v, beta, g, s0
    )
    o_np, S_np = dr_loop(q, k, v, beta, g, s0)
    assert_close(o, o_np, name="o")
    assert_close(S, S_np, name="final state")


def _jaxpr_texts(op):
    """The jaxprs of ``op``'s XLA backend without and under differentiation (w.r.t. q)."""
    q, k, v, beta, g, s0 = _inputs(3, 1, 40, 2, 4, 4, "head")
    if op == "linear_attention":
        f = lambda q: sk.linear_attention(q, k, v, log_decay=g, initial_state=s0, backend="xla")[0]  # noqa: E731
    else:
        f = lambda q: sk.delta_rule(q, k, v, beta, log_decay=g, initial_state=s0, backend="xla")[0]  # noqa: E731
    loss = lambda q: jnp.sum(f(q))  # noqa: E731
    return str(jax.make_jaxpr(f)(q)), str(jax.make_jaxpr(jax.grad(loss))(q))


@pytest.mark.parametrize("op", ["linear_attention", "delta_rule"])
def test_forward_only_is_the_path_without_differentiation(op):
    plain, grad = _jaxpr_texts(op)
    assert "name=_forward_only" in plain, f"{op}: the forward without gradients does not run _forward_only"
    assert "name=_forward_only" not in grad, f"{op}: _forward_only ran under differentiation (no residuals there)"
