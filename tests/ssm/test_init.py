"""ssm.init: the initializers give the values and distributions they promise (KS tests, fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.linalg import block_diag

from algornn.ssm import hippo, init

KEY = jax.random.key(0)
P_MIN = 1e-3  # loose KS threshold: a correct sampler fails with probability 1e-3 for a fixed seed


def test_s4d_deterministic_inits():
    n = np.arange(8)
    lin = init.s4d_lin(KEY, (3, 8))
    assert lin.shape == (3, 8) and lin.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(lin[2]), -0.5 + 1j * np.pi * n, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(init.s4d_inv(KEY, (8,))).imag, (16 / np.pi) * (16 / (2 * n + 1) - 1), rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(init.s4d_real(KEY, (8,))), -(n + 1.0))
    legs = np.asarray(init.s4d_legs(KEY, (2, 8)))
    np.testing.assert_allclose(legs.real, -0.5, atol=1e-6)
    A, B = hippo.transition("legs", 16)
    P = np.sqrt(np.arange(16) + 0.5)
    eig = np.linalg.eigvals(A + np.outer(P, P))
    np.testing.assert_allclose(np.sort(legs[0].imag), np.sort(eig.imag[eig.imag > 0]), rtol=1e-5)
    assert init.s4d_legs_B(KEY, (8,)).shape == (8,)


def test_s5_hippo_n_block_diagonal_spectrum_and_eigenbasis_distributions():
    D, N, J = 64, 32, 2
    Lam, Bt, Ct = init.s5_hippo_n(KEY, (D, N), blocks=J)
    assert Lam.shape == (N // 2,) and Bt.shape == (N // 2, D) and Ct.shape == (D, N // 2)
    n = N // J
    A, _ = hippo.transition("legs", n)
    P = np.sqrt(np.arange(n) + 0.5)
    eig = np.linalg.eigvals(block_diag(*[A + np.outer(P, P)] * J))  # independent: HiPPO-N blocks
    np.testing.assert_allclose(np.sort(np.asarray(Lam).imag), np.sort(eig.imag[eig.imag > 1e-9]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(Lam).real, -0.5, atol=1e-6)
    # B_real ~ N(0, 1/D) i.i.d. and V unitary ⇒ B̃ circular complex normal, D·|B̃|² ~ Exp(1)
    assert stats.kstest(D * np.abs(np.asarray(Bt)).ravel() ** 2, "expon").pvalue > P_MIN
    assert stats.kstest(N * np.abs(np.asarray(Ct)).ravel() ** 2, "expon").pvalue > P_MIN
    Lam_full, Bf, Cf = init.s5_hippo_n(KEY, (D, N), blocks=J, conj_sym=False)
    assert Lam_full.shape == (N,) and Bf.shape == (N, D)
    np.testing.assert_allclose(np.sort(np.asarray(Lam_full).imag), np.sort(eig.imag), atol=1e-4)
    with pytest.raises(ValueError, match="blocks"):
        init.s5_hippo_n(KEY, (D, N), blocks=3)


def test_lru_ring_distribution():
    r_min, r_max, max_phase = 0.4, 0.95, np.pi / 3
    nu_log, theta_log, gamma_log = init.lru_ring(KEY, (4000,), r_min=r_min, r_max=r_max, max_phase=max_phase)
    lam = np.exp(-np.exp(np.asarray(nu_log, np.float64)) + 1j * np.exp(np.asarray(theta_log, np.float64)))
    mod, phase = np.abs(lam), np.angle(lam)
    assert mod.min() >= r_min - 1e-6 and mod.max() <= r_max + 1e-6
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-6
    # |λ|² uniform on [r_min², r_max²] (uniform on the annulus); phase uniform on [0, max_phase]
    assert stats.kstest(mod**2, "uniform", args=(r_min**2, r_max**2 - r_min**2)).pvalue > P_MIN
    assert stats.kstest(phase, "uniform", args=(0, max_phase)).pvalue > P_MIN
    np.testing.assert_allclose(np.exp(np.asarray(gamma_log)), np.sqrt(1 - mod**2), rtol=1e-4)
    # the KS test has power: a wrong law (|λ| instead of |λ|² uniform) is rejected
    assert stats.kstest(mod, "uniform", args=(r_min, r_max - r_min)).pvalue < P_MIN
    with pytest.raises(ValueError, match="r_min"):
        init.lru_ring(KEY, (3,), r_min=0.9, r_max=0.5)


def test_log_dt_is_log_uniform():
    x = np.asarray(init.log_dt(KEY, (256, 8)), np.float64)
    assert x.shape == (256, 8)
    lo, hi = np.log(1e-3), np.log(1e-1)
    assert x.min() >= lo and x.max() <= hi
    assert stats.kstest(x.ravel(), "uniform", args=(lo, hi - lo)).pvalue > P_MIN
    assert stats.kstest(np.exp(x.ravel()), "uniform", args=(1e-3, 1e-1 - 1e-3)).pvalue < P_MIN
    with pytest.raises(ValueError, match="dt_min"):
        init.log_dt(KEY, (3,), dt_min=0.1, dt_max=0.01)


def test_complex_normal_variance():
    z = np.asarray(init.complex_normal(KEY, (5000,), variance=0.25))
    assert stats.kstest(np.abs(z) ** 2 / 0.25, "expon").pvalue > P_MIN
    assert stats.kstest(np.angle(z), "uniform", args=(-np.pi, 2 * np.pi)).pvalue > P_MIN


def test_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        init.s4d_lin(KEY, ())
    with pytest.raises(ValueError, match="shape"):
        init.log_dt(KEY, (3, 0))
