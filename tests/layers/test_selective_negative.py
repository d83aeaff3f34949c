"""SelectiveSSM with ``negative_eigenvalues=True`` (decays 2 exp(ΔA) − 1 ∈ (−1, 1), Grazzi et al. 2025 §4) against a
float64 NumPy loop from the layer's own parameters (causal and bidirectional), with decays < 0 shown to occur;
step == call; gradients; the default keeps today's parameters and outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, param64, rel_rms_error, silu64
from tests.layers._common import run_call, run_steps

pytestmark = pytest.mark.loose_promotion

D = 4
OPTS = {"d_state": 3, "expand": 2, "dt_min": 0.1, "dt_max": 1.0}  # Δ·(n+1) often > log 2: negative decays


def _x(B, L, seed=0):
    return normal(seed, (B, L, D))


def _make(seed=0, **over):
    return layers.SelectiveSSM(D, rngs=nnx.Rngs(seed), **{**OPTS, **over})


def selective_loop(m, x):
    """Mamba's selective SSM (signed decays with the option), token by token in float64.

    Returns ``(y (B, L, D), decays (B, L, E, N))``."""
    x = np.asarray(x, np.float64)
    Bsz, L, _ = x.shape
    E, N, R = m.inner, m.options.d_state, m.rank
    uz = x @ param64(m.in_proj.kernel)
    u, z = uz[..., :E], uz[..., E:]
    w, b = param64(m.conv_w), param64(m.conv_b)
    pad = np.concatenate([np.zeros((Bsz, w.shape[0] - 1, E)), u], axis=1)
    u = silu64(sum(w[j] * pad[:, j : j + L] for j in range(w.shape[0])) + b)
    dbc = u @ param64(m.x_proj.kernel)
    delta = np.logaddexp(0.0, dbc[..., :R] @ param64(m.dt_proj.kernel) + param64(m.dt_bias))  # (B, L, E)
    Bt = dbc[..., R : R + N]
    A = -np.exp(param64(m.A_log))  # (E, N)
    a = np.exp(delta[..., None] * A)  # (B, L, E, N)
    if m.options.negative_eigenvalues:
        a = 2.0 * a - 1.0
    y = param64(m.D) * u
    n_dir = 1 + m.options.bidirectional
    for d in range(n_dir):
        C = dbc[..., R + (d + 1) * N : R + (d + 2) * N]
        h = np.zeros((Bsz, E, N))
        order = range(L) if d == 0 else range(L - 1, -1, -1)
        for t in order:  # h_t = ā_t h_{t∓1} + Δ_t u_t B_t;  y_t += h_t C_t
            h = a[:, t] * h + (delta[:, t] * u[:, t])[..., None] * Bt[:, t, None, :]
            y[:, t] += np.einsum("ben,bn->be", h, C[:, t])
    return (y * silu64(z)) @ param64(m.out_proj.kernel), a


@pytest.mark.parametrize("bidirectional", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_call_matches_a_float64_loop_with_negative_decays(bidirectional):
    m = _make(seed=1, negative_eigenvalues=True, bidirectional=bidirectional)
    x = _x(2, 30, seed=2)
    ref, a = selective_loop(m, x)
    assert 0.2 < np.mean(a < 0) < 0.95 and a.min() > -1 and a.max() < 1, np.mean(a < 0)
    assert_close(run_call(m, x), ref, rtol=2e-5, name=f"SelectiveSSM signed bidirectional={bidirectional}")


def test_step_equals_call_at_length_300_with_negative_decays():
    m = _make(seed=3, negative_eigenvalues=True)
    x = _x(2, 300, seed=4)
    assert_close(run_steps(m, x), run_call(m, x), rtol=1e-4, name="SelectiveSSM signed step vs call")


def test_default_is_unchanged_and_the_option_matters():
    pos, neg = _make(seed=5), _make(seed=5, negative_eigenvalues=True)
    assert pos.options == layers.SelectiveSSMOptions(**OPTS)
    for p, q in zip(jax.tree.leaves(nnx.state(pos, nnx.Param)), jax.tree.leaves(nnx.state(neg, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    x = _x(2, 30, seed=6)
    assert rel_rms_error(selective_loop(neg, x)[0], selective_loop(pos, x)[0]) > 0.05
    with pytest.raises(ValueError, match=r"negative_eigenvalues='yes' must be True or False"):
        _make(negative_eigenvalues="yes")


@pytest.mark.slow
def test_every_parameter_gets_a_gradient_with_negative_eigenvalues():
    m = _make(seed=7, negative_eigenvalues=True)
    x = _x(2, 17, seed=8)
    w = jnp.asarray(np.random.default_rng(9).standard_normal(x.shape), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda mm: jnp.sum(mm(x) * w)))(m)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
