"""SSM layers against independent math: kernels from their own discretized matrices (float64 numpy, repeated
products), conv == scan, bidirectional forms, the Δ-scale sampling-rate property, S4's accurate step mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, rel_rms_error
from tests.layers._common import run_call, run_steps

pytestmark = pytest.mark.loose_promotion

D = 4


def _np(p):
    return np.asarray(p[...], np.float64)


def _x(B, L, d=D, seed=0):
    return normal(seed, (B, L, d))


# -- kernels against float64 repeated products ---------------------------------------------------------------
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_kernel_equals_powers_of_its_discretized_matrices(discretization):
    m = layers.S4D(D, rngs=nnx.Rngs(0), d_state=8, init="lin", discretization=discretization)
    L = 77
    lam = np.minimum(_np(m.Lambda_re), -1e-4) + 1j * _np(m.Lambda_im)
    B = _np(m.B_re) + 1j * _np(m.B_im)
    C = _np(m.C_re) + 1j * _np(m.C_im)
    dt = np.exp(_np(m.log_dt))[:, None]
    if discretization == "zoh":
        Ab = np.exp(dt * lam)
        Bb = (Ab - 1.0) / lam * B
    else:
        Ab = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        Bb = dt / (1 - dt * lam / 2) * B
    K = np.zeros((D, L))
    x = Bb.copy()
    for ell in range(L):
        K[:, ell] = 2 * np.real(np.sum(C * x, axis=-1))
        x = Ab * x
    assert_close(m.kernel(L)[0], K, rtol=1e-5, name="S4D kernel")


@pytest.mark.parametrize("measure", ["legs", "fout"])
def test_s4_kernel_equals_powers_of_its_dense_bilinear_matrix(measure):
    """Full N-dim complex system A = diag(Λ_f) − P_f P_fᴴ in float64, Ā by inversion, K_l = C_fᵀ Ā^l B̄_f."""
    N, L = 16, 200
    m = layers.S4(D, rngs=nnx.Rngs(1), d_state=N, measure=measure)
    lam = np.minimum(_np(m.Lambda_re), -1e-4) + 1j * _np(m.Lambda_im)
    P = _np(m.P_re) + 1j * _np(m.P_im)
    B = _np(m.B_re) + 1j * _np(m.B_im)
    C = _np(m.C_re) + 1j * _np(m.C_im)
    dt = np.exp(_np(m.log_dt))
    K = np.zeros((D, L))
    for d in range(D):
        lam_f = np.concatenate([lam[d], lam[d].conj()])
        P_f = np.concatenate([P[d], P[d].conj()], axis=-1)  # (rank, N)
        A = np.diag(lam_f) - P_f.T @ P_f.conj()
        inv = np.linalg.inv(np.eye(N) - dt[d] / 2 * A)
        Ab, Bb = inv @ (np.eye(N) + dt[d] / 2 * A), inv @ (dt[d] * np.concatenate([B[d], B[d].conj()]))
        c = np.concatenate([C[d], C[d].conj()])
        x = Bb
        for ell in range(L):
            K[d, ell] = np.real(c @ x)
            x = Ab @ x
    # float32 Cauchy + Woodbury vs float64; FouT has undamped modes (Re Λ = 0, clipped to -1e-4)
    assert_close(m.kernel(L)[0], K, rtol={"legs": 2e-5, "fout": 3e-4}[measure], name=f"S4 {measure} kernel")


@pytest.mark.parametrize("discretization", ["bilinear", "zoh"])
def test_lssl_kernel_equals_powers_of_its_discretized_matrix(discretization):
    N, L = 6, 90
    m = layers.LSSL(D, rngs=nnx.Rngs(2), d_state=N, measure="legt", discretization=discretization)
    A, B, C, dt = _np(m.A), _np(m.B), _np(m.C), np.exp(_np(m.log_dt))
    K = np.zeros((D, L))
    for d in range(D):
        if discretization == "bilinear":
            inv = np.linalg.inv(np.eye(N) - dt[d] / 2 * A)
            Ab, Bb = inv @ (np.eye(N) + dt[d] / 2 * A), inv @ (dt[d] * B)
        else:
            E = scipy.linalg.expm(dt[d] * np.block([[A, B[:, None]], [np.zeros((1, N + 1))]]))
            Ab, Bb = E[:N, :N], E[:N, N]
        x = Bb
        for ell in range(L):
            K[d, ell] = C[d] @ x
            x = Ab @ x
    assert_close(m.kernel(L)[0], K, rtol=1e-5, name="LSSL kernel")


def test_lmu_memory_is_scipy_zoh_of_the_legendre_system():
    theta, order = 30.0, 6
    m = layers.LMU(D, rngs=nnx.Rngs(0), order=order, theta=theta)
    n = np.arange(order)
    R = (2 * n + 1)[:, None]
    A = np.where(n[:, None] < n[None, :], -1.0, (-1.0) ** (n[:, None] - n[None, :] + 1)) * R  # Voelker 2019 eq. 2
    B = ((-1.0) ** n * (2 * n + 1))[:, None]
    Ad, Bd, *_ = scipy.signal.cont2discrete((A / theta, B / theta, np.eye(order), np.zeros((order, 1))), dt=1.0)
    Ab, Bb = m.discretized()
    assert_close(Ab, Ad, rtol=1e-5, name="LMU Ā")
    assert_close(Bb, Bd[:, 0], rtol=1e-5, name="LMU B̄")
    H = np.stack([np.linalg.matrix_power(Ad, ell) @ Bd[:, 0] for ell in range(50)], axis=1)
    assert_close(m.impulse_response(50), H, rtol=1e-5, name="LMU impulse response")


# -- mode equivalence --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,opts,bidirectional",
    [
        (layers.S4D, {"d_state": 8, "init": "inv"}, False),
        (layers.S4D, {"d_state": 6, "init": "legs", "discretization": "bilinear"}, True),
        (layers.LSSL, {"d_state": 5, "measure": "legs"}, True),
    ],
)
def test_conv_equals_scan_forward_and_gradients(cls, opts, bidirectional):
    conv = cls(D, rngs=nnx.Rngs(3), mode="conv", bidirectional=bidirectional, **opts)
    scan = cls(D, rngs=nnx.Rngs(3), mode="scan", bidirectional=bidirectional, **opts)
    x = _x(2, 67, seed=4)
    w = normal(5, x.shape)
    assert_close(run_call(scan, x), run_call(conv, x), rtol=1e-5, name="conv vs scan")
    grad = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * w), argnums=(0, 1)))
    (gc, gxc), (gs, gxs) = grad(conv, x), grad(scan, x)
    assert_close(gxs, gxc, rtol=1e-4, name="dx")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(nnx.state(gs, nnx.Param)), jax.tree.leaves(nnx.state(gc, nnx.Param))
    ):
        assert_close(a, b, rtol=1e-4, name=f"d{jax.tree_util.keystr(path)}")


def test_lmu_parallel_memory_equals_recurrent_cell():
    """The convolution path (no feedback into the memory) against the full-cell scan of the same weights."""
    par = layers.LMU(D, rngs=nnx.Rngs(0), order=8, theta=25.0, memory_d=2)
    x = _x(2, 300, seed=1)
    y_par = run_call(par, x)
    Abar, Bbar = par.discretized()
    _, ys = jax.lax.scan(lambda s, xt: par._cell(Abar, Bbar, s, xt), par.init_state(2), jnp.moveaxis(x, 1, 0))
    assert_close(jnp.moveaxis(ys, 0, 1), y_par, rtol=1e-4, name="LMU conv vs scan")


@pytest.mark.parametrize(
    "cls,opts",
    [
        (layers.LMU, {"order": 5, "theta": 20.0, "hidden_to_memory": True, "memory_to_memory": True}),
        (layers.LMU, {"order": 5, "theta": 20.0, "hidden_cell": "dense"}),
        (layers.HiPPORNN, {"d_state": 5, "measure": "legt", "dt": 0.05}),
        (layers.S4D, {"d_state": 6, "mode": "scan", "init": "real"}),
        (layers.S5, {"d_state": 8, "blocks": 2, "conj_sym": False, "discretization": "bilinear"}),
        (layers.S4, {"d_state": 64}),
        (layers.S4, {"d_state": 16, "measure": "legt"}),
    ],
)
def test_more_configurations_step_equals_call(cls, opts):
    m = cls(D, rngs=nnx.Rngs(6), **opts)
    x = _x(2, 160, seed=2)
    assert_close(run_steps(m, x), run_call(m, x), rtol=1e-4, name=f"{cls.__name__} {opts}")


# -- bidirectional -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["s4", "s5", "lru", "selective_ssm"])
def test_bidirectional_sees_the_future_and_the_causal_part_is_unchanged(name):
    opts = {
        "s4": {"d_state": 8},
        "s4d": {"d_state": 8},
        "s5": {"d_state": 8},
        "lru": {"d_state": 6},
        "lssl": {"d_state": 6},
        "selective_ssm": {"d_state": 4},
    }[name]
    bi = layers.MIXERS[name](D, rngs=nnx.Rngs(0), bidirectional=True, **opts)
    x = _x(2, 64)
    y = run_call(bi, x)
    y2 = run_call(bi, x.at[:, 40].add(1.0))
    assert rel_rms_error(y2[:, :40], y[:, :40]) > 1e-4, "past outputs must depend on a future input"
    with pytest.raises(ValueError, match="bidirectional"):
        bi.init_state(2)


def test_lru_bidirectional_matches_a_numpy_loop():
    m = layers.LRU(D, rngs=nnx.Rngs(0), d_state=5, bidirectional=True)
    x = np.asarray(_x(1, 40), np.float64)[0]
    lam = np.exp(-np.exp(_np(m.nu_log)) + 1j * np.exp(_np(m.theta_log)))
    Bn = (_np(m.B_re) + 1j * _np(m.B_im)) * np.exp(_np(m.gamma_log))[:, None]
    C, C2 = _np(m.C_re) + 1j * _np(m.C_im), _np(m.C2_re) + 1j * _np(m.C2_im)
    L = x.shape[0]
    hf, hb = np.zeros((L, 5), complex), np.zeros((L, 5), complex)
    h = np.zeros(5, complex)
    for t in range(L):
        h = lam * h + Bn @ x[t]
        hf[t] = h
    h = np.zeros(5, complex)
    for t in reversed(range(L)):
        h = lam * h + Bn @ x[t]
        hb[t] = h
    y = np.real(hf @ C.T) + np.real(hb @ C2.T) + x * _np(m.D)
    assert_close(run_call(m, jnp.asarray(x[None], jnp.float32))[0], y, rtol=1e-5, name="LRU bidirectional")


# -- sampling-rate change ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,opts",
    [
        ("s4", {"d_state": 16}),
        ("s4d", {"d_state": 16}),
        ("s5", {"d_state": 16}),
        ("lssl", {"d_state": 8, "measure": "legt"}),
        ("lmu", {"order": 8, "theta": 50.0, "hidden_cell": "dense"}),
    ],
)
def test_dt_scale_half_at_twice_the_sampling_rate_gives_nearly_the_same_output(name, opts):
    """x(t) sampled every 1 and every 1/2 (with Δ/2): outputs agree at the common times; without Δ/2 they don't.

    (SelectiveSSM also takes ``dt_scale`` but its short causal convolution counts samples, not time, so it has
    no such invariance and is not tested here.)
    """
    extra = {} if name == "lmu" else {"dt_min": 0.02, "dt_max": 0.2}
    m = layers.MIXERS[name](D, rngs=nnx.Rngs(0), **opts, **extra)
    L = 120
    freqs = np.array([0.7, 1.3, 2.1, 0.4]) * 2 * np.pi / 100.0

    def signal(n, step):
        t = np.arange(n) * step
        return jnp.asarray(np.sin(freqs[None] * t[:, None] + np.arange(D)[None])[None], jnp.float32)

    coarse, fine = signal(L, 1.0), signal(2 * L, 0.5)
    y_coarse = run_call(m, coarse)
    y_fine = run_call(m, fine, dt_scale=0.5)[:, 1::2]
    y_wrong = run_call(m, fine)[:, 1::2]
    err, wrong = rel_rms_error(y_fine[:, 10:], y_coarse[:, 10:]), rel_rms_error(y_wrong[:, 10:], y_coarse[:, 10:])
    assert err < 0.05, f"{name}: Δ/2 at twice the rate differs by {err:.3f}"
    assert wrong > 3 * err, f"{name}: the test cannot tell Δ apart ({wrong:.3f} vs {err:.3f})"


# -- SelectiveSSM's A init ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a_scale", [1.0, 0.01])
def test_selective_a_scale_sets_the_s4d_real_init(a_scale):
    """A_n = −a_scale·(n + 1) for every channel (Mamba's S4D-Real at a_scale = 1); the layer's output changes."""
    m = layers.SelectiveSSM(D, d_state=3, a_scale=a_scale, rngs=nnx.Rngs(0))
    A = -np.exp(_np(m.A_log))
    assert A.shape == (D, 3)
    np.testing.assert_allclose(A, np.broadcast_to(-a_scale * np.arange(1, 4), (D, 3)), rtol=1e-6)
    if a_scale != 1.0:
        ref = layers.SelectiveSSM(D, d_state=3, rngs=nnx.Rngs(0))
        x = _x(2, 16)
        assert rel_rms_error(m(x), ref(x)) > 1e-3


@pytest.mark.parametrize("a_scale", [0.0, -1.0, True, "1"])
def test_selective_a_scale_must_be_positive(a_scale):
    with pytest.raises(ValueError, match="a_scale"):
        layers.SelectiveSSM(D, a_scale=a_scale, rngs=nnx.Rngs(0))
