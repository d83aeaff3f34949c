"""Mamba2 against a float64 NumPy loop of the SSD recurrence (Dao & Gu 2024, §7) built from the layer's own
parameters, with and without negative eigenvalues (Grazzi et al. 2025: the sign folded into q/k must be exact);
step == call at L = 300 with signed decays and irregular dt; gradients; bad options; a few training steps.

(Step == call and gradients with the default options, bfloat16 compute and the API checks are the generic mixer
tests, which cover ``mamba2`` through ``SMALL_OPTIONS``.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, param64, rel_rms_error, silu64
from tests.layers._common import run_call
from tests.layers._train_check import train_steps

pytestmark = pytest.mark.loose_promotion

D = 8
TINY = {"d_state": 4, "head_dim": 4, "chunk_size": 8}  # E = 16, H = 4 heads, 5 chunks at L = 40
FAST = {"dt_min": 0.1, "dt_max": 1.0}  # Δ·exp(A_log) often > log 2: signed decays are mostly negative


def _x(B, L, seed=0):
    return normal(seed, (B, L, D))


def _make(seed=0, **over):
    return layers.Mamba2(D, rngs=nnx.Rngs(seed), **{**TINY, **over})


def mamba2_loop(m, x, *, dt=None, dt_scale=1.0):
    """The Mamba-2 block token by token in float64: returns ``(y (B, L, D), decays a (B, L, H))``."""
    x = np.asarray(x, np.float64)
    Bsz, L, _ = x.shape
    E, N, H, P = m.inner, m.options.d_state, m.heads, m.options.head_dim
    zxbcdt = x @ param64(m.in_proj.kernel)
    z, xbc, dt_in = zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * N], zxbcdt[..., 2 * E + 2 * N :]
    w, b = param64(m.conv.conv_w), param64(m.conv.conv_b)
    W = w.shape[0]
    pad = np.concatenate([np.zeros((Bsz, W - 1, xbc.shape[-1])), xbc], axis=1)
    xbc = silu64(sum(w[j] * pad[:, j : j + L] for j in range(W)) + b)
    xs, Bt, Ct = xbc[..., :E].reshape(Bsz, L, H, P), xbc[..., E : E + N], xbc[..., E + N :]
    delta = np.logaddexp(0.0, dt_in + param64(m.dt_bias)) * dt_scale  # softplus
    if dt is not None:
        delta = delta * np.asarray(dt, np.float64)[..., None]
    a = np.exp(-delta * np.exp(param64(m.A_log)))
    if m.options.negative_eigenvalues:
        a = 2.0 * a - 1.0
    S, ys = np.zeros((Bsz, H, N, P)), []
    for t in range(L):  # S_t = a_t S_{t-1} + B_t (Δ_t x_t)ᵀ;  y_t = S_tᵀ C_t + D x_t
        S = a[:, t, :, None, None] * S + Bt[:, t, None, :, None] * (delta[:, t, :, None] * xs[:, t])[:, :, None, :]
        ys.append(np.einsum("bhnp,bn->bhp", S, Ct[:, t]) + param64(m.D)[:, None] * xs[:, t])
    y = np.stack(ys, axis=1).reshape(Bsz, L, E) * silu64(z)
    y = y / np.sqrt(np.mean(y * y, axis=-1, keepdims=True) + m.norm.epsilon) * param64(m.norm.scale)
    return y @ param64(m.out_proj.kernel), a


@pytest.mark.parametrize("negative", [False, True])
def test_call_matches_a_float64_loop_of_the_ssd_recurrence(negative):
    m = _make(seed=1, negative_eigenvalues=negative, **FAST)
    x = _x(2, 40, seed=2)
    ref, a = mamba2_loop(m, x)
    # Mamba-2's initialisation: exp(A_log) ~ U[1, 16], Δ = softplus(b_Δ) log-uniform in [dt_min, dt_max]
    A, delta0 = np.exp(param64(m.A_log)), np.logaddexp(0.0, param64(m.dt_bias))
    assert np.all((A >= 1) & (A <= 16)) and np.all((delta0 >= 0.1 * 0.999) & (delta0 <= 1.0 * 1.001))
    if negative:  # signed decays really occur, of both signs, and flip the state
        assert 0.2 < np.mean(a < 0) < 0.95 and a.min() > -1 and a.max() < 1, np.mean(a < 0)
        # the option adds no parameter and changes none: the default layer is today's
        default = _make(seed=1, **FAST)
        for p, q in zip(jax.tree.leaves(nnx.state(default, nnx.Param)), jax.tree.leaves(nnx.state(m, nnx.Param))):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
        assert rel_rms_error(mamba2_loop(default, x)[0], ref) > 0.05  # and the signs matter at these Δ
    else:
        assert a.min() > 0
    assert_close(run_call(m, x), ref, rtol=2e-5, name=f"Mamba2 negative={negative} vs loop")


@pytest.mark.slow
def test_irregular_dt_matches_the_loop_and_dt_two_is_dt_scale_two():
    m = _make(seed=5, negative_eigenvalues=True)
    x = _x(2, 40, seed=6)
    dt = jnp.asarray(0.05 + np.random.default_rng(7).exponential(1.0, (2, 40)), jnp.float32)
    ref, _ = mamba2_loop(m, x, dt=dt, dt_scale=1.5)
    call = nnx.jit(lambda mm, x, dt: mm(x, dt=dt, dt_scale=1.5))
    assert_close(call(m, x, dt), ref, rtol=2e-5, name="Mamba2 with dt")
    assert_close(call(m, x, jnp.full((2, 40), 2.0)), mamba2_loop(m, x, dt_scale=3.0)[0], rtol=2e-5, name="dt=2")


def test_step_equals_call_at_length_300_with_signed_decays_and_dt():
    """The step applies the sign to its state, the call folds the running sign product into q and k."""
    m = _make(seed=8, negative_eigenvalues=True, chunk_size=16, **FAST)
    x = _x(2, 300, seed=9)
    dt = jnp.asarray(0.05 + np.random.default_rng(10).exponential(1.0, (2, 300)), jnp.float32)

    @nnx.jit
    def steps(mm, x, dt):
        def body(s, inp):
            return mm.step(s, inp[0], dt_t=inp[1])

        return jnp.moveaxis(jax.lax.scan(body, mm.init_state(2), (jnp.moveaxis(x, 1, 0), dt.T))[1], 0, 1)

    assert_close(steps(m, x, dt), run_call(m, x, dt=dt), rtol=1e-4, name="Mamba2 signed step with dt_t vs call")


@pytest.mark.slow  # by default the training step below shows every parameter moving with negative_eigenvalues
def test_gradients_with_negative_eigenvalues_reach_every_parameter_and_equal_the_step_loops():
    """The sign-folded chunked call and the token loop of ``step`` (sign applied to the state) give the same
    parameter gradients."""
    m = _make(seed=11, negative_eigenvalues=True, **FAST)
    x = _x(2, 21, seed=12)
    w = jnp.asarray(np.random.default_rng(13).standard_normal(x.shape), jnp.float32)

    def by_steps(mm, x):
        def body(s, x_t):
            return mm.step(s, x_t)

        return jnp.moveaxis(jax.lax.scan(body, mm.init_state(2), jnp.moveaxis(x, 1, 0))[1], 0, 1)

    grads = nnx.jit(nnx.grad(lambda mm: jnp.sum(mm(x) * w)))(m)
    grads_loop = nnx.jit(nnx.grad(lambda mm: jnp.sum(by_steps(mm, x) * w)))(m)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == 8
    for (path, g), g_loop in zip(leaves, jax.tree.leaves(nnx.state(grads_loop, nnx.Param))):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
        assert_close(g, g_loop, rtol=1e-4, name=f"gradient {jax.tree_util.keystr(path)}")


def test_shapes_and_state():
    m = nnx.eval_shape(lambda: layers.Mamba2(D, rngs=nnx.Rngs(0), d_state=8, head_dim=2))  # no eager init
    assert (m.inner, m.heads) == (16, 8) and m.A_log.shape == (8,) and m.in_proj.kernel.shape == (8, 2 * 16 + 16 + 8)
    assert m.options == layers.Mamba2Options(d_state=8, head_dim=2)
    assert jax.tree.map(lambda s: s.shape, m.state_spec(3)) == ((3, 3, 32), (3, 8, 8, 2))


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"head_dim": 5}, r"not divisible by head_dim=5"),
        ({"d_state": 0}, r"d_state=0"),
        ({"expand": 1.5}, r"expand=1.5"),
        ({"d_conv": -1}, r"d_conv=-1"),
        ({"chunk_size": 0}, r"chunk_size=0"),
        ({"negative_eigenvalues": 1}, r"negative_eigenvalues=1 .*True or False"),
        ({"dt_min": 0.5, "dt_max": 0.1}, r"dt_min=0.5 must be <= dt_max=0.1"),
        ({"backend": "cuda"}, r"backend='cuda'.*'reference', 'xla', 'pallas'"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        layers.Mamba2(D, rngs=nnx.Rngs(0), **{**TINY, **bad})


def test_bad_dt_raises():
    m = _make()
    with pytest.raises(ValueError, match=r"Mamba2: dt must be a real array of shape \(B, L\)"):
        m(_x(2, 5), dt=jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"Mamba2.step: dt_t must hold finite elapsed times > 0"):
        m.step(m.init_state(2), _x(2, 1)[:, 0], dt_t=jnp.array([1.0, -1.0]))


@pytest.mark.slow  # one training step of the mixer runs by default in test_train_presets (its mqar preset)
def test_a_few_training_steps_in_a_sequence_model_reduce_the_loss():
    losses, moved = train_steps("mamba2", {**TINY, "negative_eigenvalues": True})
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert moved == 1.0
