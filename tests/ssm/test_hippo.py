"""ssm.hippo: defining properties of the HiPPO operators, checked against independent math.

Online function approximation is checked by integrating the ODEs with scipy and comparing the state
with Legendre projections computed by Gauss–Legendre quadrature (scipy.special.eval_legendre).
"""

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import eval_legendre

from algornn.ssm import hippo

FUNCS = {
    "sin": lambda s: np.sin(2 * np.pi * s) + 0.5 * np.cos(5 * s),
    "exp": lambda s: np.exp(-2 * s) * s,
    "bump": lambda s: 1.0 / (1.0 + 4.0 * (s - 0.6) ** 2),
}


def _legendre_coeffs(u, a, b, N, n_quad=200):
    """c_n = (1/(b-a)) ∫_a^b u(s) g_n(s) ds with g_n(s) = √(2n+1) P_n(2(s-a)/(b-a) - 1)."""
    x, w = np.polynomial.legendre.leggauss(n_quad)
    s = a + (x + 1) * (b - a) / 2
    n = np.arange(N)[:, None]
    g = np.sqrt(2 * n + 1) * eval_legendre(n, x[None])
    return 0.5 * (g * (w * u(s))[None]).sum(axis=1)


def _reconstruct(c, a, b, s):
    n = np.arange(len(c))[:, None]
    x = 2 * (s - a) / (b - a) - 1
    return (c[:, None] * np.sqrt(2 * n + 1) * eval_legendre(n, x[None])).sum(axis=0)


# ---------------------------------------------------------------- transition: conventions and errors


def test_transition_legs_small_by_hand():
    A, B = hippo.transition("legs", 3)
    r = np.sqrt([1.0, 3.0, 5.0])
    expect = np.array([[-1, 0, 0], [-r[1] * r[0], -2, 0], [-r[2] * r[0], -r[2] * r[1], -3]])
    np.testing.assert_allclose(A, expect, rtol=1e-15)
    np.testing.assert_allclose(B, r, rtol=1e-15)
    assert A.dtype == np.float64 and B.shape == (3,)


def test_transition_lagt_fout_structure():
    A, B = hippo.transition("lagt", 4)
    np.testing.assert_allclose(np.diag(A), -0.5)
    np.testing.assert_allclose(A[np.tril_indices(4, -1)], -1.0)
    np.testing.assert_allclose(A[np.triu_indices(4, 1)], 0.0)
    A, B = hippo.transition("fout", 6)
    np.testing.assert_allclose(B, [1, 0, np.sqrt(2), 0, np.sqrt(2), 0])
    A0 = A + np.outer(B, B)  # rotation part: frequencies 0, 0, 1, 2 (·2π/2)
    np.testing.assert_allclose(A0 + A0.T, 0.0, atol=1e-15)
    np.testing.assert_allclose([A0[3, 2], A0[5, 4]], [np.pi, 2 * np.pi])


@pytest.mark.parametrize(
    "args, match",
    [
        (("legx", 4), "measure='legx' is not one of"),
        (("legs", 0), "N=0 must be an integer >= 1"),
        (("fout", 5), "even"),
        (("legs", 2.5), "N=2.5 must be an integer"),
    ],
)
def test_transition_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        hippo.transition(*args)


# ---------------------------------------------------------------- online approximation (defining ODEs)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_legs_state_is_legendre_projection(name):
    """Scale-invariant LegS x' = (1/t)(A x + B u): x(T) = coefficients of u on [0, T] (HiPPO §3, App. D.3).

    In τ = log t the ODE is time-invariant, dx/dτ = A x + B u(e^τ); start at t0 = 1e-4·T from the exact
    projection on [0, t0] and integrate finely with DOP853.
    """
    u, T, errs = FUNCS[name], 1.5, []
    for N in (4, 8, 16, 32):
        A, B = hippo.transition("legs", N)
        t0 = 1e-4 * T
        sol = solve_ivp(
            lambda tau, x, A=A, B=B: A @ x + B * u(np.exp(tau)),
            (np.log(t0), np.log(T)),
            _legendre_coeffs(u, 0.0, t0, N),
            method="DOP853",
            rtol=1e-11,
            atol=1e-12,
        )
        x_T = sol.y[:, -1]
        proj = _legendre_coeffs(u, 0.0, T, N)
        np.testing.assert_allclose(x_T, proj, rtol=0, atol=1e-7 * max(1.0, np.abs(proj).max()))
        s = np.linspace(0, T, 301)
        errs.append(np.sqrt(np.mean((_reconstruct(x_T, 0.0, T, s) - u(s)) ** 2)) / np.sqrt(np.mean(u(s) ** 2)))
    assert all(b < a or b < 1e-9 for a, b in zip(errs, errs[1:])), errs  # falls until round-off
    assert errs[-1] < 1e-4, errs


def _drive_window(A, B, u, theta, T, scale):
    """Integrate x' = (scale/θ)(A x + B u) from x(0) = 0 with u = 0 before 0 (smooth onset)."""
    sol = solve_ivp(
        lambda t, x: (scale / theta) * (A @ x + B * u(t)),
        (0.0, T),
        np.zeros(len(B)),
        method="DOP853",
        rtol=1e-10,
        atol=1e-12,
    )
    return sol.y[:, -1]


def _onset(s):
    return np.where(s > 0, s**3 * np.exp(-s), 0.0) * np.cos(3 * s)


def test_legt_reconstructs_sliding_window():
    """LegT (window θ, ẋ = (2/θ)(A x + B u) for the halved matrices): x_n ≈ coefficients of u on
    [t−θ, t] in √(2n+1) P_n(2(s−t)/θ + 1); error falls with N."""
    theta, T = 1.0, 3.0
    s = np.linspace(T - theta, T, 201)
    errs = []
    for N in (4, 8, 16, 32):
        A, B = hippo.transition("legt", N)
        x = _drive_window(A, B, _onset, theta, T, scale=2.0)
        rec = _reconstruct(x, T - theta, T, s)
        errs.append(np.sqrt(np.mean((rec - _onset(s)) ** 2)) / np.sqrt(np.mean(_onset(s) ** 2)))
        if N == 32:
            np.testing.assert_allclose(x, _legendre_coeffs(_onset, T - theta, T, N), atol=1e-8)
    assert all(b < a or b < 1e-9 for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-8, errs


def test_lmu_reconstructs_sliding_window():
    """LMU (Voelker 2019): θ ẋ = A x + B u, u(t − θ') ≈ Σ_n x_n P_n(2θ'/θ − 1) (shifted Legendre)."""
    theta, T, N = 2.0, 5.0, 24
    A, B = hippo.transition("lmu", N)
    x = _drive_window(A, B, _onset, theta, T, scale=1.0)
    th = np.linspace(0, theta, 201)
    n = np.arange(N)[:, None]
    rec = (x[:, None] * eval_legendre(n, 2 * th[None] / theta - 1)).sum(0)
    target = _onset(T - th)
    assert np.sqrt(np.mean((rec - target) ** 2)) / np.sqrt(np.mean(target**2)) < 1e-8


def test_lmu_is_legt_in_another_basis():
    for N in (1, 5, 16):
        A_t, B_t = hippo.transition("legt", N)
        A_l, B_l = hippo.transition("lmu", N)
        n = np.arange(N)
        S = np.diag((-1.0) ** n * np.sqrt(2 * n + 1))
        np.testing.assert_allclose(2 * S @ A_t @ np.linalg.inv(S), A_l, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(2 * S @ B_t, B_l, rtol=1e-12)


# ---------------------------------------------------------------- NPLR


@pytest.mark.parametrize("measure, rank", [("legs", 1), ("legt", 2), ("lagt", 1), ("fout", 1), ("legs", 3)])
@pytest.mark.parametrize("N", [8, 64])
def test_nplr_rebuilds_A(measure, rank, N):
    A, B = hippo.transition(measure, N)
    Lam, P, Bt, V = hippo.nplr(measure, N, rank)
    assert Lam.shape == (N // 2,) and P.shape == (rank, N // 2) and Bt.shape == (N // 2,) and V.shape == (N, N // 2)
    Vf = np.concatenate([V, V.conj()], axis=1)
    np.testing.assert_allclose(Vf.conj().T @ Vf, np.eye(N), atol=1e-10)
    Pf = np.concatenate([P, P.conj()], axis=1)  # (rank, N)
    A_rebuilt = Vf @ (np.diag(np.concatenate([Lam, Lam.conj()])) - Pf.T @ Pf.conj()) @ Vf.conj().T
    assert np.abs(A_rebuilt - A).max() <= 1e-9 * max(1.0, np.abs(A).max())
    np.testing.assert_allclose(Vf @ np.concatenate([Bt, Bt.conj()]), B, atol=1e-9 * max(1.0, np.abs(B).max()))
    assert np.all(Lam.imag >= 0) and np.all(np.diff(Lam.imag) >= 0)


def test_legs_eigenvalues_real_part_minus_half():
    N = 64
    A, _ = hippo.transition("legs", N)
    P = np.sqrt(np.arange(N) + 0.5)
    eig = np.linalg.eigvals(A + np.outer(P, P))  # independent of nplr
    np.testing.assert_allclose(eig.real, -0.5, atol=1e-9)
    Lam = hippo.nplr("legs", N)[0]
    np.testing.assert_allclose(Lam.real, -0.5, atol=1e-12)
    np.testing.assert_allclose(np.sort(Lam.imag), np.sort(eig.imag[eig.imag > 0]), rtol=1e-9)
    # small case against known values: −1/2 ± {0.471, 2.468, 10.952} i
    np.testing.assert_allclose(hippo.nplr("legs", 6)[0].imag, [0.4714773, 2.4682410, 10.9515065], rtol=1e-6)


def test_nplr_bad_input():
    with pytest.raises(ValueError, match="measure"):
        hippo.nplr("lmu", 8)
    with pytest.raises(ValueError, match="rank >= 2"):
        hippo.nplr("legt", 8, rank=1)
    with pytest.raises(ValueError, match="even"):
        hippo.nplr("legs", 7)


def test_dplr_builders():
    Lam, P, B = hippo.dplr("lin", 8, rank=2, P_scale=0.5, seed=1)
    np.testing.assert_allclose(Lam, -0.5 + 1j * np.pi * np.arange(4))
    assert P.shape == (2, 4) and np.iscomplexobj(P) and np.all(B == 1)
    np.testing.assert_allclose(hippo.dplr("inv", 8)[0].imag, (8 / np.pi) * (8 / (2 * np.arange(4) + 1) - 1))
    np.testing.assert_allclose(hippo.dplr("real", 8)[0], -(np.arange(4) + 1.0))
    assert np.all(hippo.dplr("lin", 8, P_scale=0.0)[1] == 0)
    Lam, _, B = hippo.dplr("legs", 8)
    np.testing.assert_allclose(Lam, hippo.nplr("legs", 8)[0])
    with pytest.raises(ValueError, match="init"):
        hippo.dplr("foo", 8)
    with pytest.raises(ValueError, match="even"):
        hippo.dplr("lin", 7)
