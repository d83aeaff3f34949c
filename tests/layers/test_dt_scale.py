"""``dt_scale`` on the continuous-time mixers: ``dt_scale=2`` equals the same parameters discretised with 2Δ by
hand (``algornn.ssm.discretize`` plus a float64 numpy recurrence) or a layer built with Δ doubled; ``step`` with
``dt_scale`` equals ``__call__`` with it; a traced ``dt_scale`` under ``nnx.jit`` works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers, ssm
from tests._utils import assert_close, normal, rel_rms_error
from tests.layers._common import run_call, run_steps

pytestmark = pytest.mark.loose_promotion

D, L, S = 4, 24, 2.0
CONTINUOUS = {
    "s4": {"d_state": 8},
    "s4d": {"d_state": 8},
    "s5": {"d_state": 8},
    "lssl": {"d_state": 6},
    "lmu": {"order": 6, "theta": 20.0},
    "hippo_rnn": {"d_state": 5, "measure": "legt", "dt": 0.1},
    "selective_ssm": {"d_state": 4},
}


def _x(seed=0, B=2):
    return normal(seed, (B, L, D))


def _np(p):
    return np.asarray(p[...], np.float64)


def _loop(Abar, Bbar_u, readout):
    """``h_t = Ā h_{t-1} + (B̄ u)_t`` in numpy (complex128); ``Ā`` diagonal ``(..., N)`` or dense ``(..., N, N)``."""
    h = np.zeros(Bbar_u.shape[:1] + Bbar_u.shape[2:], complex)
    ys = []
    for t in range(Bbar_u.shape[1]):
        h = (Abar * h if Abar.ndim == h.ndim - 1 else np.einsum("...nm,b...m->b...n", Abar, h)) + Bbar_u[:, t]
        ys.append(readout(h))
    return np.stack(ys, axis=1)


def _hand(name, m, x):
    """The layer's output for dt_scale = S from its parameters discretised with S·Δ by ``algornn.ssm``."""
    u = np.asarray(x, np.float64)
    Dskip = u * _np(m.D)
    if name == "s4d":
        lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
        Bc = jax.lax.complex(m.B_re[...], m.B_im[...])
        Ab, Bb = ssm.discretize.diagonal("zoh", lam, Bc, S * jnp.exp(m.log_dt[...]))  # (D, N/2)
        Ab, Bb = np.asarray(Ab, complex), np.asarray(Bb, complex)
        C = _np(m.C_re) + 1j * _np(m.C_im)
        y = _loop(Ab, u[..., None] * Bb, lambda h: 2 * np.real(np.sum(C * h, -1)))
    elif name == "s4":
        lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
        P = jax.lax.complex(m.P_re[...], m.P_im[...])
        Bc = jax.lax.complex(m.B_re[...], m.B_im[...])
        C = jax.lax.complex(m.C_re[...], m.C_im[...])
        A, Br, Cr = ssm.kernels.dplr_real_form(lam, P, Bc, C)
        Ab, Bb = ssm.discretize.bilinear(A, Br, S * jnp.exp(m.log_dt[...]))  # (D, N, N), (D, N)
        Cr = np.asarray(Cr, np.float64)
        y = _loop(
            np.asarray(Ab, np.float64), u[..., None] * np.asarray(Bb, np.float64), lambda h: np.real(np.sum(Cr * h, -1))
        )
    elif name == "s5":
        lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
        Ab, coef = ssm.discretize.diagonal(
            "zoh", lam[:, None], jnp.ones_like(lam)[:, None], S * jnp.exp(m.log_step[...])
        )
        Bb = np.asarray(coef, complex) * (_np(m.B_re) + 1j * _np(m.B_im))  # (P, D)
        C = _np(m.C_re) + 1j * _np(m.C_im)  # (D, P)
        y = _loop(np.asarray(Ab, complex)[:, 0], np.einsum("bld,pd->blp", u, Bb), lambda h: 2 * np.real(h @ C.T))
    elif name == "lssl":
        Ab, Bb = ssm.discretize.dense("bilinear", m.A[...], m.B[...], S * jnp.exp(m.log_dt[...]))
        C = _np(m.C)
        y = _loop(
            np.asarray(Ab, np.float64), u[..., None] * np.asarray(Bb, np.float64), lambda h: np.real(np.sum(C * h, -1))
        )
    elif name == "selective_ssm":
        return _selective_reference(m, u)
    return y + Dskip


def _selective_reference(m, u):
    """Mamba's selective recurrence in float64 numpy with Δ_t multiplied by S."""
    E, N, R = m.inner, m.options.d_state, m.rank
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    uz = u @ _np(m.in_proj.kernel)
    v, z = uz[..., :E], uz[..., E:]
    w, b = _np(m.conv_w), _np(m.conv_b)
    W = w.shape[0]
    vp = np.concatenate([np.zeros((u.shape[0], W - 1, E)), v], axis=1)
    vc = silu(sum(vp[:, j : j + u.shape[1]] * w[j] for j in range(W)) + b)
    dbc = vc @ _np(m.x_proj.kernel)
    delta = S * np.log1p(np.exp(dbc[..., :R] @ _np(m.dt_proj.kernel) + _np(m.dt_bias)))  # (B, L, E)
    Bt, Ct = dbc[..., R : R + N], dbc[..., R + N : R + 2 * N]
    A = -np.exp(_np(m.A_log))  # (E, N)
    h = np.zeros((u.shape[0], E, N))
    ys = []
    for t in range(u.shape[1]):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * vc[:, t])[..., None] * Bt[:, t, None, :]
        ys.append(np.einsum("ben,bn->be", h, Ct[:, t]) + _np(m.D) * vc[:, t])
    y = np.stack(ys, axis=1)
    return (y * silu(z)) @ _np(m.out_proj.kernel)


@pytest.mark.parametrize("name", ["s4", "s4d", "s5", "lssl", "selective_ssm"])
def test_dt_scale_two_equals_the_parameters_discretised_with_twice_delta_by_hand(name):
    m = layers.MIXERS[name](D, rngs=nnx.Rngs(1), **CONTINUOUS[name])
    x = _x()
    y = run_call(m, x, dt_scale=S)
    assert_close(y, _hand(name, m, x), rtol=2e-5, name=f"{name} dt_scale={S}")
    assert rel_rms_error(run_call(m, x), y) > 1e-3, "dt_scale had no effect"


@pytest.mark.parametrize("name,field", [("lmu", "theta"), ("hippo_rnn", "dt")])
def test_dt_scale_two_equals_a_layer_built_with_twice_delta(name, field):
    """LMU: Δ = dt_scale/θ, so θ/2 doubles Δ; HiPPORNN (legt): Δ = dt·dt_scale. Same seed, same weights."""
    opts = CONTINUOUS[name]
    m = layers.MIXERS[name](D, rngs=nnx.Rngs(1), **opts)
    changed = opts[field] / S if field == "theta" else opts[field] * S
    doubled = layers.MIXERS[name](D, rngs=nnx.Rngs(1), **{**opts, field: changed})
    x = _x()
    y = run_call(m, x, dt_scale=S)
    assert_close(y, run_call(doubled, x), rtol=1e-5, name=f"{name} dt_scale vs {field}")
    assert rel_rms_error(run_call(m, x), y) > 1e-3, "dt_scale had no effect"


def test_hippo_legs_is_timescale_invariant_so_dt_scale_leaves_it_unchanged():
    """LegS: step k at t = (k+1)s with Δ = s, so Δ/t = 1/(k+1) for every s (HiPPO Prop. 3): the bilinear
    transitions of ``c' = (1/t)(A c + B f)`` built by hand for s = 1 and s = 2 agree, and so does the layer."""
    m = layers.HiPPORNN(D, d_state=5, measure="legs", rngs=nnx.Rngs(0))
    A, B = ssm.hippo.transition("legs", 5)
    k = np.arange(L)
    for s in (1.0, S):
        Ab, Bb = ssm.discretize.bilinear(
            np.asarray(A, np.float32), np.asarray(B, np.float32), np.asarray(s / ((k + 1) * s), np.float32)
        )
        Ab_layer, Bb_layer = m.transitions(jnp.arange(L), dt_scale=s)
        assert_close(Ab_layer, Ab, rtol=1e-6, name=f"legs Ā s={s}")
        assert_close(Bb_layer, Bb, rtol=1e-6, name=f"legs B̄ s={s}")
    x = _x()
    assert_close(run_call(m, x, dt_scale=S), run_call(m, x), rtol=1e-6, name="legs output")


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_step_with_dt_scale_equals_call_with_dt_scale(name):
    m = layers.MIXERS[name](D, rngs=nnx.Rngs(2), **CONTINUOUS[name])
    x = _x(seed=3)
    assert_close(run_steps(m, x, dt_scale=S), run_call(m, x, dt_scale=S), rtol=1e-4, name=f"{name} step")


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_traced_dt_scale_under_jit_equals_the_eager_value(name):
    m = layers.MIXERS[name](D, rngs=nnx.Rngs(4), **CONTINUOUS[name])
    x = _x(seed=5)
    eager = m(x, dt_scale=S)
    traced = nnx.jit(lambda m, x, s: m(x, dt_scale=s))(m, x, jnp.float32(S))
    assert_close(traced, eager, rtol=1e-5, name=f"{name} traced dt_scale")

    @nnx.jit
    def steps(m, x, s):
        def body(state, x_t):
            return m.step(state, x_t, dt_scale=s)

        return jax.lax.scan(body, m.init_state(x.shape[0]), jnp.moveaxis(x, 1, 0))[1]

    assert_close(jnp.moveaxis(steps(m, x, jnp.float32(S)), 0, 1), eager, rtol=1e-4, name=f"{name} traced step")
    with pytest.raises(ValueError, match="positive real scalar"):
        nnx.jit(lambda m, x, s: m(x, dt_scale=s))(m, x, jnp.ones((2,), jnp.float32))
