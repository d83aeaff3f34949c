"""Irregularly sampled sequences: per-step elapsed times ``dt (B, L)`` in the continuous-time mixers.

* ZOH layers (S4D, S5, LSSL, LMU) against a float64 simulation of their continuous-time system, solved exactly
  over each random gap by the matrix exponential of ``[[A, B], [0, 0]]`` (scipy), input held over the gap;
* S4 (bilinear) and SelectiveSSM against float64 numpy loops of their own recurrences with Δ_t = dt_t · Δ;
* ``dt = 2`` everywhere equals ``dt_scale=2``; ``dt`` all ones equals no ``dt``; ``step`` with ``dt_t`` equals
  the call; bidirectional branches cross the next gap;
* parameter gradients are finite and equal those of a plain per-step loop (autodiff through jnp);
* bad ``dt`` raises ``ValueError`` naming it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from algornn import layers, ssm
from tests._utils import assert_close, normal, rel_rms_error

pytestmark = pytest.mark.loose_promotion

D, L, BATCH = 3, 12, 2
FAST = {"dt_min": 0.1, "dt_max": 1.0}  # step sizes at which a gap of a few grid steps changes the state visibly
OPTIONS = {
    "s4": {"d_state": 6, **FAST},
    "s4d": {"d_state": 6, **FAST},
    "s5": {"d_state": 6, **FAST},
    "lssl": {"d_state": 4, **FAST},
    "lmu": {"order": 4, "theta": 10.0},
    "hippo_rnn": {"d_state": 4, "measure": "legt", "dt": 0.2},
    "selective_ssm": {"d_state": 4, **FAST},
}
BIDIRECTIONAL = ("s4", "s4d", "s5", "lssl", "selective_ssm")
slow = pytest.mark.slow
# The default run keeps one or two mixers per property (eager per-step loops and float64 simulations cost seconds
# each); ``-m slow`` runs every mixer.
DEFAULT = ("s5", "hippo_rnn")


def _mixers(names, default=DEFAULT):
    return [n if n in default else pytest.param(n, marks=slow) for n in names]


def _x(seed=0):
    return normal(seed, (BATCH, L, D))


def _dt(seed=1, shape=(BATCH, L)):
    """Random sample gaps: exponential (mean 1) plus 0.05, so some are tiny and some several grid steps."""
    return jnp.asarray(0.05 + np.random.default_rng(seed).exponential(1.0, shape), jnp.float32)


def _np(p):
    return np.asarray(p[...], np.float64)


def _make(name, seed=0, **over):
    return layers.MIXERS[name](D, rngs=nnx.Rngs(seed), **{**OPTIONS[name], **over})


def _steps(m, x, dt, **kw):
    """``step`` over time with per-step ``dt_t`` (``lax.scan``)."""

    def body(state, inp):
        return m.step(state, inp[0], dt_t=inp[1], **kw)

    _, ys = jax.lax.scan(body, m.init_state(x.shape[0]), (jnp.moveaxis(x, 1, 0), jnp.moveaxis(dt, 1, 0)))
    return jnp.moveaxis(ys, 0, 1)


def zoh_simulation(A, Bm, u, gaps):
    """Float64 solution of x' = A x + B u with u held at ``u[k]`` over gap k: ``A (n, n)``, ``Bm (n, m)``,
    ``u (L, m)``, ``gaps (L,)`` -> states at the sample times ``(L, n)`` (complex128). One matrix exponential of
    ``[[A, B], [0, 0]]·g`` per gap gives both exp(A g) and ∫_0^g exp(A s) ds B."""
    n, m = Bm.shape
    M = np.zeros((n + m, n + m), complex)
    M[:n, :n], M[:n, n:] = A, Bm
    x, out = np.zeros(n, complex), []
    for k in range(len(gaps)):
        E = scipy.linalg.expm(M * float(gaps[k]))
        x = E[:n, :n] @ x + E[:n, n:] @ u[k]
        out.append(x)
    return np.stack(out)


def _reference(name, m, x, dt):
    """Float64 continuous-time (ZOH) output of layer ``m`` for samples ``x`` at gaps ``dt`` (module docstring)."""
    u, g = np.asarray(x, np.float64), np.asarray(dt, np.float64)
    y = np.zeros(u.shape)
    if name == "s4d":
        lam = np.minimum(_np(m.Lambda_re), -1e-4) + 1j * _np(m.Lambda_im)
        Bc, C, step = _np(m.B_re) + 1j * _np(m.B_im), _np(m.C_re) + 1j * _np(m.C_im), np.exp(_np(m.log_dt))
        for b in range(u.shape[0]):
            for d in range(D):  # Δ_d scales time: A = Λ Δ_d, B = B Δ_d in grid units
                h = zoh_simulation(np.diag(lam[d] * step[d]), (Bc[d] * step[d])[:, None], u[b, :, d, None], g[b])
                y[b, :, d] = 2 * np.real(h @ C[d])
    elif name == "s5":
        lam = np.minimum(_np(m.Lambda_re), -1e-4) + 1j * _np(m.Lambda_im)
        Bc, C, step = _np(m.B_re) + 1j * _np(m.B_im), _np(m.C_re) + 1j * _np(m.C_im), np.exp(_np(m.log_step))
        for b in range(u.shape[0]):  # one timescale per state p: A = diag(λ_p s_p), B = diag(s_p) B̃
            h = zoh_simulation(np.diag(lam * step), step[:, None] * Bc, u[b], g[b])
            y[b] = 2 * np.real(h @ C.T)
    elif name == "lssl":
        A, Bv, C, step = _np(m.A), _np(m.B), _np(m.C), np.exp(_np(m.log_dt))
        for b in range(u.shape[0]):
            for d in range(D):
                h = zoh_simulation(A * step[d], (Bv * step[d])[:, None], u[b, :, d, None], g[b])
                y[b, :, d] = np.real(h @ C[d])
    elif name == "lmu":  # hidden_cell="dense": y = tanh(W_x x + b + W_m m), memory A/θ, B/θ per channel
        A, Bv = ssm.hippo.transition("lmu", m.options.n)
        theta = m.options.theta
        um = u @ _np(m.encoder_x.kernel)  # (B, L, M)
        for b in range(u.shape[0]):
            mem = [
                np.real(zoh_simulation(A / theta, (Bv / theta)[:, None], um[b, :, j, None], g[b]))
                for j in range(m.options.memory_d)
            ]
            mem = np.concatenate(mem, axis=-1)  # (L, M·N), memory channel major
            pre = u[b] @ _np(m.W_x.kernel) + _np(m.W_x.bias) + mem @ _np(m.W_m.kernel)
            y[b] = np.tanh(pre)
        return y
    return y + u * _np(m.D)


ZOH = [
    pytest.param("s4d", {"mode": "scan"}, id="s4d-scan"),
    pytest.param("s4d", {"mode": "conv"}, id="s4d-conv", marks=slow),
    pytest.param("s5", {}, id="s5"),
    pytest.param("lssl", {"discretization": "zoh", "mode": "scan"}, id="lssl-scan", marks=slow),
    pytest.param("lssl", {"discretization": "zoh", "mode": "conv"}, id="lssl-conv", marks=slow),
    pytest.param("lmu", {"hidden_cell": "dense", "memory_d": 2}, id="lmu", marks=slow),
]


@pytest.mark.parametrize("name,over", ZOH)
def test_output_at_random_sample_times_equals_the_float64_matrix_exponential_simulation(name, over):
    m = _make(name, seed=3, **over)
    x, dt = _x(2), _dt(4)
    y = m(x, dt=dt)
    assert_close(y, _reference(name, m, x, dt), rtol=1e-5, name=f"{name} {over} vs expm simulation")
    # the gaps matter: the same samples read as a regular grid give another output
    assert rel_rms_error(m(x), y) > 1e-2


@slow
def test_s4_recurrence_with_gaps_equals_a_float64_bilinear_loop_of_its_dense_real_form():
    """S4 is bilinear: x_t = (I − Δ_t/2 A)⁻¹((I + Δ_t/2 A) x_{t-1} + Δ_t B u_t) with the dense A of its DPLR
    parameters, solved in float64 numpy per gap."""
    m = _make("s4", seed=5)
    x, dt = _x(6), _dt(7)
    lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
    P, Bc = jax.lax.complex(m.P_re[...], m.P_im[...]), jax.lax.complex(m.B_re[...], m.B_im[...])
    C = jax.lax.complex(m.C_re[...], m.C_im[...])
    A, Br, Cr = (np.asarray(v, np.float64) for v in ssm.kernels.dplr_real_form(lam, P, Bc, C))
    u, g, step = np.asarray(x, np.float64), np.asarray(dt, np.float64), np.exp(_np(m.log_dt))
    ref = np.zeros(u.shape)
    eye = np.eye(A.shape[-1])
    for b in range(BATCH):
        for d in range(D):
            h = np.zeros(A.shape[-1])
            for t in range(L):
                delta = g[b, t] * step[d]
                h = np.linalg.solve(eye - delta / 2 * A[d], (eye + delta / 2 * A[d]) @ h + delta * Br[d] * u[b, t, d])
                ref[b, t, d] = Cr[d] @ h + _np(m.D)[d] * u[b, t, d]
    assert_close(m(x, dt=dt), ref, rtol=1e-5, name="S4 with gaps")


@slow
def test_selective_ssm_multiplies_its_learned_step_by_the_gap():
    """Δ_t = dt_t · softplus(δ W_Δ + b_Δ): a float64 numpy loop of Mamba's recurrence with that Δ."""
    m = _make("selective_ssm", seed=8)
    x, dt = _x(9), _dt(10)
    u, g = np.asarray(x, np.float64), np.asarray(dt, np.float64)
    E, N, R = m.inner, m.options.d_state, m.rank
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    uz = u @ _np(m.in_proj.kernel)
    v, z = uz[..., :E], uz[..., E:]
    w = _np(m.conv_w)
    vp = np.concatenate([np.zeros((BATCH, w.shape[0] - 1, E)), v], axis=1)
    vc = silu(sum(vp[:, j : j + L] * w[j] for j in range(w.shape[0])) + _np(m.conv_b))
    dbc = vc @ _np(m.x_proj.kernel)
    delta = g[..., None] * np.log1p(np.exp(dbc[..., :R] @ _np(m.dt_proj.kernel) + _np(m.dt_bias)))
    Bt, Ct, A = dbc[..., R : R + N], dbc[..., R + N : R + 2 * N], -np.exp(_np(m.A_log))
    h, ys = np.zeros((BATCH, E, N)), []
    for t in range(L):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * vc[:, t])[..., None] * Bt[:, t, None, :]
        ys.append(np.einsum("ben,bn->be", h, Ct[:, t]) + _np(m.D) * vc[:, t])
    ref = (np.stack(ys, axis=1) * silu(z)) @ _np(m.out_proj.kernel)
    assert_close(m(x, dt=dt), ref, rtol=1e-5, name="SelectiveSSM with gaps")


@slow
def test_hippo_legs_uses_the_gap_over_the_elapsed_time():
    """LegS: Δ_k/t_k = dt_k / Σ_{j<=k} dt_j (bilinear, float64 numpy); a uniform gap c changes nothing
    (timescale invariance, HiPPO Prop. 3) while random gaps do."""
    m = _make("hippo_rnn", seed=11, measure="legs")
    dt = _dt(12)
    t = np.cumsum(np.asarray(dt, np.float64), axis=1)
    Ab, Bb = m.transitions(jnp.asarray(t, jnp.float32), 1.0, dt)
    A, B = ssm.hippo.transition("legs", 4)
    r = np.asarray(dt, np.float64) / t
    eye = np.eye(4)
    for b, k in [(0, 0), (0, 5), (1, L - 1)]:
        lhs = eye - r[b, k] / 2 * A
        assert_close(Ab[b, k], np.linalg.solve(lhs, eye + r[b, k] / 2 * A), rtol=1e-5, name=f"legs Ā {b},{k}")
        assert_close(Bb[b, k], np.linalg.solve(lhs, r[b, k] * B), rtol=1e-5, name=f"legs B̄ {b},{k}")
    x = _x(13)
    assert_close(m(x, dt=jnp.full((BATCH, L), 3.0)), m(x), rtol=1e-6, name="legs uniform gap")
    assert rel_rms_error(m(x, dt=dt), m(x)) > 1e-3


@pytest.mark.parametrize("name", _mixers(OPTIONS, ("s5", "s4d")))
def test_dt_two_everywhere_equals_dt_scale_two_and_dt_ones_equals_no_dt(name):
    m = _make(name, seed=14)
    x = _x(15)
    assert_close(m(x, dt=jnp.full((BATCH, L), 2.0)), m(x, dt_scale=2.0), rtol=1e-5, name=f"{name} dt=2")
    ones = m(x, dt=jnp.ones((BATCH, L)))
    if name in ("s5", "selective_ssm"):  # the same arithmetic: bit for bit
        np.testing.assert_array_equal(np.asarray(ones), np.asarray(m(x)))
    else:  # per-step systems (and a scan in place of the convolution) round differently
        assert_close(ones, m(x), rtol=1e-5, name=f"{name} dt=1")


@pytest.mark.parametrize("name", _mixers(BIDIRECTIONAL, ("s5",)))
def test_bidirectional_dt_two_equals_dt_scale_two(name):
    m = _make(name, seed=16, bidirectional=True)
    x = _x(17)
    assert_close(m(x, dt=jnp.full((BATCH, L), 2.0)), m(x, dt_scale=2.0), rtol=1e-5, name=f"{name} bidirectional")
    assert_close(m(x, dt=jnp.ones((BATCH, L))), m(x), rtol=1e-5, name=f"{name} bidirectional dt=1")


@slow
def test_s4d_reverse_branch_crosses_the_next_gap():
    """Anti-causal part y_t = 2 Re(C2 g_t), g_t = Ā(dt_{t+1}) g_{t+1} + B̄(dt_{t+1}) u_{t+1} (float64 ZOH)."""
    m = _make("s4d", seed=18, bidirectional=True, mode="scan")
    x, dt = _x(19), _dt(20)
    causal = _reference("s4d", m, x, dt) - np.asarray(x, np.float64) * _np(m.D)
    lam = np.minimum(_np(m.Lambda_re), -1e-4) + 1j * _np(m.Lambda_im)
    Bc, C2, step = _np(m.B_re) + 1j * _np(m.B_im), _np(m.C2_re) + 1j * _np(m.C2_im), np.exp(_np(m.log_dt))
    u, g = np.asarray(x, np.float64), np.asarray(dt, np.float64)
    anti = np.zeros(u.shape)
    for b in range(BATCH):
        for d in range(D):
            h = np.zeros(lam.shape[-1], complex)
            for t in range(L - 2, -1, -1):
                z = lam[d] * step[d] * g[b, t + 1]
                h = np.exp(z) * h + (np.exp(z) - 1) / lam[d] * Bc[d] * u[b, t + 1, d]
                anti[b, t, d] = 2 * np.real(C2[d] @ h)
    ref = causal + anti + u * _np(m.D)
    assert_close(m(x, dt=dt), ref, rtol=1e-5, name="S4D bidirectional with gaps")


@pytest.mark.parametrize("name", _mixers(OPTIONS))
def test_step_with_per_step_dt_equals_the_call(name):
    m = _make(name, seed=21)
    x, dt = _x(22), _dt(23)
    stepped = nnx.jit(_steps)(m, x, dt)
    assert_close(stepped, m(x, dt=dt), rtol=2e-5, name=f"{name} step with dt_t")


@slow
def test_lmu_wirings_and_lssl_cache_with_dt():
    """LMU's sequential wiring (memory_to_memory) and LSSL's cached step (dt_scale given) take dt too."""
    x, dt = _x(24), _dt(25)
    m = _make("lmu", seed=26, memory_to_memory=True, hidden_to_memory=True)
    assert_close(_steps(m, x, dt), m(x, dt=dt), rtol=2e-5, name="lmu sequential wiring")
    assert_close(m(x, dt=jnp.full((BATCH, L), 2.0)), m(x, dt_scale=2.0), rtol=1e-5, name="lmu sequential dt=2")
    lssl = _make("lssl", seed=27)
    state = lssl.init_state(BATCH)
    assert_close(_steps(lssl, x, dt, dt_scale=1.5), lssl(x, dt=dt, dt_scale=1.5), rtol=2e-5, name="lssl cache")
    _, cache_a, _ = lssl.step(state, x[:, 0], dt_t=dt[:, 0])[0]
    np.testing.assert_array_equal(np.asarray(cache_a), np.asarray(state[1]))  # the cached system is kept


# ---------------------------------------------------------------------------------------- gradients


def _loop_s4d(m, x, dt):
    """A plain per-step jnp loop (ZOH written out), differentiated by JAX autodiff."""
    lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
    Bc, C = jax.lax.complex(m.B_re[...], m.B_im[...]), jax.lax.complex(m.C_re[...], m.C_im[...])
    h, ys = jnp.zeros((x.shape[0], D, lam.shape[-1]), jnp.complex64), []
    for t in range(x.shape[1]):
        z = lam[None] * (jnp.exp(m.log_dt[...])[None] * dt[:, t, None])[..., None]
        h = jnp.exp(z) * h + (jnp.exp(z) - 1) / lam * Bc * x[:, t, :, None]
        ys.append(2 * jnp.real(jnp.sum(C * h, -1)) + m.D[...] * x[:, t])
    return jnp.stack(ys, 1)


def _loop_s5(m, x, dt):
    lam = jax.lax.complex(jnp.minimum(m.Lambda_re[...], -1e-4), m.Lambda_im[...])
    Bc, C = jax.lax.complex(m.B_re[...], m.B_im[...]), jax.lax.complex(m.C_re[...], m.C_im[...])
    h, ys = jnp.zeros((x.shape[0], lam.shape[0]), jnp.complex64), []
    for t in range(x.shape[1]):
        z = lam * jnp.exp(m.log_step[...]) * dt[:, t, None]
        h = jnp.exp(z) * h + (jnp.exp(z) - 1) / lam * (x[:, t].astype(jnp.complex64) @ Bc.T)
        ys.append(2 * jnp.real(h @ C.T) + m.D[...] * x[:, t])
    return jnp.stack(ys, 1)


def _loop_lssl(m, x, dt):
    N = m.options.d_state
    h, ys = jnp.zeros((x.shape[0], D, N)), []
    for t in range(x.shape[1]):
        delta = jnp.exp(m.log_dt[...])[None] * dt[:, t, None]  # (B, D)
        E = jax.scipy.linalg.expm(
            jnp.zeros((x.shape[0], D, N + 1, N + 1))
            .at[..., :N, :N]
            .set(m.A[...] * delta[..., None, None])
            .at[..., :N, N]
            .set(m.B[...] * delta[..., None])
        )
        h = jnp.einsum("bdnm,bdm->bdn", E[..., :N, :N], h) + E[..., :N, N] * x[:, t, :, None]
        ys.append(jnp.einsum("dn,bdn->bd", m.C[...], h) + m.D[...] * x[:, t])
    return jnp.stack(ys, 1)


def _grads(fn, m, x, dt):
    w = normal(99, x.shape)
    return nnx.grad(lambda mm: jnp.sum(w * fn(mm, x, dt)))(m)


def _flat(g):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(g)}


@pytest.mark.parametrize(
    "name,over,loop",
    [
        pytest.param("s4d", {"mode": "scan"}, _loop_s4d, id="s4d", marks=slow),
        pytest.param("s5", {}, _loop_s5, id="s5"),
        pytest.param("lssl", {"discretization": "zoh", "mode": "scan"}, _loop_lssl, id="lssl", marks=slow),
        pytest.param("s4", {}, None, id="s4", marks=slow),
        pytest.param("lmu", {}, None, id="lmu", marks=slow),
        pytest.param("hippo_rnn", {}, None, id="hippo_rnn", marks=slow),
        pytest.param("selective_ssm", {}, None, id="selective_ssm", marks=slow),
    ],
)
def test_parameter_gradients_are_finite_and_match_the_reference_loop(name, over, loop):
    """Written-out ZOH loops for S4D, S5 and LSSL; for the others the reference loop is ``step`` over time."""
    m = _make(name, seed=30, **over)
    x, dt = _x(31)[:, :6], _dt(32, (BATCH, 6))
    got = _flat(_grads(lambda mm, x, dt: mm(x, dt=dt), m, x, dt))
    want = _flat(_grads(loop if loop is not None else _steps, m, x, dt))
    assert set(got) == set(want)
    for k in got:
        assert np.all(np.isfinite(got[k])), f"{name}: non-finite gradient for {k}"
        assert_close(got[k], want[k], rtol=2e-4, floor=1e-4, name=f"{name} d/d{k}")
    assert all(np.abs(v).max() > 0 for k, v in got.items() if "log" in k), "a step size got no gradient"
    assert sum(np.abs(v).max() > 0 for v in got.values()) >= len(got) - 1


# ---------------------------------------------------------------------------------------- bad input


def _with(t, value):
    """Unit gaps with ``value`` at step ``t`` of every sequence."""
    return np.where(np.arange(L) == t, value, 1.0)[None].repeat(BATCH, 0)


@pytest.mark.parametrize(
    "dt, match",
    [
        (
            np.ones((BATCH, L + 1), np.float32),
            r"dt must be a real array of shape \(B, L\) = \(2, 12\).*\(2, 13\)",
        ),
        (np.ones((BATCH,), np.float32), r"got shape \(2,\)"),
        (np.ones((BATCH, L), bool), r"dtype bool"),
        (np.ones((BATCH, L), np.complex64), r"dtype complex64"),
        (_with(3, 0.0), r"dt must hold finite elapsed times > 0; got 0\.0 at \(0, 3\)"),
        (_with(5, -1.0), r"got -1\.0 at \(0, 5\)"),
        (_with(0, np.nan), r"got nan at \(0, 0\)"),
    ],
)
def test_bad_dt_raises_value_error_naming_it(dt, match, mixers):
    x = _x()
    for m in mixers.values():
        with pytest.raises(ValueError, match=match):
            m(x, dt=dt)
    with pytest.raises(ValueError, match=r"S4D.step: dt_t must be a real array of shape \(B,\) = \(2,\)"):
        mixers["s4d"].step(mixers["s4d"].init_state(BATCH), x[:, 0], dt_t=np.ones((BATCH, 1)))
    with pytest.raises(ValueError, match=r"S5.step: dt_t must hold finite elapsed times > 0; got inf at \(1,\)"):
        mixers["s5"].step(mixers["s5"].init_state(BATCH), x[:, 0], dt_t=np.array([1.0, np.inf]))


@pytest.fixture(scope="module")
def mixers():
    return {name: _make(name) for name in OPTIONS}


def test_dt_under_jit_is_checked_for_shape():
    m = _make("s4d")
    x, dt = _x(), _dt()
    y = nnx.jit(lambda m, x, dt: m(x, dt=dt))(m, x, dt)
    assert_close(y, m(x, dt=dt), rtol=1e-6, name="jit")
    with pytest.raises(ValueError, match=r"dt must be a real array of shape \(B, L\)"):
        nnx.jit(lambda m, x, dt: m(x, dt=dt))(m, x, dt[:, :-1])


# ---------------------------------------------------------------------------------------- models


def test_sequence_model_passes_dt_to_every_block_and_checks_it():
    model = layers.SequenceModel(
        d_model=8,
        n_layers=2,
        num_classes=3,
        mixer="s5",
        mixer_options={"d_state": 4},
        input_dim=2,
        pooling="none",
        rngs=nnx.Rngs(0),
    )
    x = normal(0, (BATCH, 6, 2))
    dt = _dt(40, (BATCH, 6))
    assert_close(model(x, dt=jnp.full((BATCH, 6), 2.0)), _model_with_scale(model, x, 2.0), rtol=1e-5, name="dt=2")
    with pytest.raises(ValueError, match=r"SequenceModel: dt must hold finite elapsed times > 0"):
        model(x, dt=-dt)
    with pytest.raises(ValueError, match=r"SequenceModel.step: dt_t must be a real array of shape \(B,\)"):
        model.step(model.init_state(BATCH), x[:, 0], dt_t=dt)


@slow
def test_sequence_model_step_with_dt_t_equals_the_call():
    model = layers.SequenceModel(
        d_model=8,
        n_layers=2,
        num_classes=3,
        mixer="s4d",
        mixer_options={"d_state": 4, **FAST},
        input_dim=2,
        pooling="none",
        rngs=nnx.Rngs(1),
    )
    x = normal(2, (BATCH, 6, 2))
    dt = _dt(41, (BATCH, 6))
    state, steps = model.init_state(BATCH), []
    for t in range(6):
        state, out = model.step(state, x[:, t], dt_t=dt[:, t])
        steps.append(out)
    assert_close(jnp.stack(steps, 1), model(x, dt=dt), rtol=2e-5, name="model step with dt_t")


def _model_with_scale(model, x, s):
    """The same model with every mixer called with ``dt_scale=s`` (reference for dt = s everywhere)."""
    h = model.encoder(x)
    for block in model.blocks:
        z = block.norm(h)
        h = h + block._feed_forward(block.mixer(z, dt_scale=s))
    return model.decoder(model.final_norm(h))


@pytest.mark.parametrize("mixer", ["lru", pytest.param("linear_attention", marks=slow)])
def test_discrete_time_mixers_refuse_dt(mixer):
    model = layers.SequenceModel(d_model=8, n_layers=1, num_classes=2, mixer=mixer, vocab_size=5, rngs=nnx.Rngs(0))
    tokens = jnp.ones((BATCH, L), jnp.int32)
    with pytest.raises(ValueError, match=r"is discrete-time \(no step size Δ\), so it cannot take per-step elapsed"):
        model(tokens, dt=jnp.ones((BATCH, L)))
