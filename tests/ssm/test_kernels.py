"""ssm.kernels: dense / diagonal / DPLR kernels against float64 numpy recurrences, and each other.

References are built here independently: unrolled float64 loops x_{l+1} = Ā x_l on the real system,
or on the conjugate-closed complex system for DPLR (complex128), with Ā from numpy / scipy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from algornn.ssm import hippo, kernels
from tests._utils import assert_close


def _discretize_np(A, B, dt, method):
    I = np.eye(A.shape[0])
    if method == "zoh":
        N = A.shape[0]
        M = np.zeros((N + 1, N + 1), dtype=np.result_type(A, B))
        M[:N, :N], M[:N, N] = A, B
        E = expm(M * dt)
        return E[:N, :N], E[:N, N]
    if method == "bilinear":
        return np.linalg.solve(I - dt / 2 * A, I + dt / 2 * A), np.linalg.solve(I - dt / 2 * A, dt * B)
    return I + dt * A, dt * B


def _loop_kernel(A, B, C, dt, L, method="bilinear"):
    """K_l = C Ā^l B̄ by an unrolled float64 (or complex128) loop."""
    Ab, Bb = _discretize_np(A, B, dt, method)
    out, x = np.empty(L, dtype=np.result_type(Ab, Bb, C)), Bb
    for l in range(L):
        out[l] = C @ x
        x = Ab @ x
    return out


def _dplr_full(Lam, P, B, C):
    """Conjugate-closed complex system A = diag(Λ_f) − P_f P_fᴴ, B_f, C_f (complex128, independent)."""
    Lf = np.concatenate([Lam, Lam.conj()])
    Pf = np.concatenate([P, P.conj()], axis=-1)  # (r, N)
    return np.diag(Lf) - Pf.T @ Pf.conj(), np.concatenate([B, B.conj()]), np.concatenate([C, C.conj()])


def _c64(x):
    return jnp.asarray(x, jnp.complex64)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _random_pair_system(rng, N):
    """Real A (N, N) with only complex-conjugate eigenvalue pairs, and its half eigen-decomposition."""
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    R = np.zeros((N, N))
    for j in range(N // 2):
        a, w = -np.exp(rng.uniform(-2, 0.5)), rng.uniform(0.5, 20)
        R[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = [[a, -w], [w, a]]
    A = Q @ R @ Q.T + 0.1 * rng.standard_normal((N, N)) / np.sqrt(N)
    lam, W = np.linalg.eig(A)
    keep = lam.imag > 0
    return A, lam[keep], W[:, keep], np.linalg.inv(W)[keep]


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_dense_kernel_matches_loop(method):
    rng = np.random.default_rng(0)
    A, B = hippo.transition("legs", 8)
    C = rng.standard_normal((3, 8))
    dt = np.array([1e-3, 0.02, 0.1])
    L = 203
    K = kernels.dense_kernel(_f32(A), _f32(B), _f32(C), _f32(dt), L, discretization=method)
    assert K.shape == (3, L) and K.dtype == jnp.float32
    ref = np.stack([_loop_kernel(A, B, C[d], dt[d], L, method) for d in range(3)])
    assert_close(K, ref, rtol=2e-5)


# ----------------------------------------------------------------------------- diagonal


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_diag_kernel_equals_dense_on_equivalent_real_system(method):
    """Eigen-decompose a random real A (numpy, float64); the conjugate half (Λ, W⁻¹B, C W) through
    diag_kernel must give the real dense kernel."""
    rng = np.random.default_rng(1)
    N, L = 12, 1000
    A, lam, W, Winv = _random_pair_system(rng, N)
    B, C = rng.standard_normal(N), rng.standard_normal((2, N))
    dt = np.array([0.01, 0.05])
    K = kernels.diag_kernel(_c64(lam), _c64(Winv @ B), _c64(C @ W), _f32(dt), L, discretization=method)
    Kd = kernels.dense_kernel(_f32(A), _f32(B), _f32(C), _f32(dt), L, discretization=method)
    ref = np.stack([_loop_kernel(A, B, C[d], dt[d], L, method) for d in range(2)])
    assert_close(K, ref, rtol=2e-5, name="diag vs loop")
    assert_close(Kd, ref, rtol=2e-5, name="dense vs loop")


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_diag_kernel_fast_equals_reference_fwd_and_grad(method):
    rng = np.random.default_rng(2)
    D, n2, L = 3, 16, 157
    Lam = _c64(-np.exp(rng.uniform(-3, 0, (D, n2))) + 1j * rng.uniform(0, 30, (D, n2)))
    B = _c64(rng.standard_normal((D, n2)) + 1j * rng.standard_normal((D, n2)))
    C = _c64(rng.standard_normal((D, n2)) + 1j * rng.standard_normal((D, n2)))
    dt = _f32(np.exp(rng.uniform(np.log(1e-3), np.log(5e-2), D)))
    ct = _f32(rng.standard_normal((D, L)))

    def loss(fn, *args):
        return jnp.sum(fn(*args, L, method) * ct)

    f = kernels.diag_kernel(Lam, B, C, dt, L, method)
    r = kernels.diag_kernel_reference(Lam, B, C, dt, L, method)
    assert_close(f, r, rtol=1e-5)
    gf = jax.grad(lambda *a: loss(kernels.diag_kernel, *a), argnums=(0, 1, 2, 3))(Lam, B, C, dt)
    gr = jax.grad(lambda *a: loss(kernels.diag_kernel_reference, *a), argnums=(0, 1, 2, 3))(Lam, B, C, dt)
    for a, b, name in zip(gf, gr, ("Lambda", "B", "C", "dt")):
        assert_close(a, b, rtol=1e-4, name=f"d{name}")


# ----------------------------------------------------------------------------- DPLR


def _legs_case(N, D, seed=3):
    """S4-LegS through nplr: real (A, B, C) and the conjugate-half DPLR (Λ, P, B̃, C̃ = Vᵀ C)."""
    rng = np.random.default_rng(seed)
    A, B = hippo.transition("legs", N)
    Lam, P, Bt, V = hippo.nplr("legs", N)
    C = rng.standard_normal((D, N))
    return A, B, C, (Lam, P, Bt, C @ V)


@pytest.mark.parametrize("L, freq_chunk", [(1000, 128), (4096, 256)])
def test_dplr_kernel_legs_matches_float64_recurrence(L, freq_chunk):
    """N = 64, Δ over [1e-3, 1e-1] (slow modes, truncation correction matters); ≤ 1e-4 rel."""
    N, dts = 64, np.array([1e-3, 1e-2, 1e-1])
    A, B, C, (Lam, P, Bt, Ct) = _legs_case(N, len(dts))
    K = kernels.dplr_kernel(_c64(Lam), _c64(P), _c64(Bt), _c64(Ct), _f32(dts), L, freq_chunk=freq_chunk)
    ref = np.stack([_loop_kernel(A, B, C[d], dts[d], L) for d in range(len(dts))])
    assert K.shape == (3, L)
    for d in range(3):
        assert_close(K[d], ref[d], rtol=1e-4, name=f"dt={dts[d]}")


def test_float64_under_x64():
    """With x64 enabled the kernels compute in float64 and match the float64 loop to ~1e-10."""
    A, B, C, (Lam, P, Bt, Ct) = _legs_case(16, 2)
    dts, L = np.array([1e-3, 1e-1]), 300
    ref = np.stack([_loop_kernel(A, B, C[d], dts[d], L) for d in range(2)])
    with jax.enable_x64(True):
        K = kernels.dplr_kernel(jnp.asarray(Lam), jnp.asarray(P), jnp.asarray(Bt), jnp.asarray(Ct), jnp.asarray(dts), L)
        Kd = kernels.dense_kernel(jnp.asarray(A), jnp.asarray(B), jnp.asarray(C), jnp.asarray(dts), L)
        assert K.dtype == jnp.float64 and Kd.dtype == jnp.float64
        assert_close(K, ref, rtol=1e-10, name="dplr f64")
        assert_close(Kd, ref, rtol=1e-10, name="dense f64")


@pytest.mark.slow
def test_dplr_kernel_legs_long_16384():
    N, dts, L = 64, np.array([1e-3, 1e-1]), 16384
    A, B, C, (Lam, P, Bt, Ct) = _legs_case(N, 2)
    K = kernels.dplr_kernel(_c64(Lam), _c64(P), _c64(Bt), _c64(Ct), _f32(dts), L)
    Kd = kernels.dense_kernel(_f32(A), _f32(B), _f32(C), _f32(dts), L)
    ref = np.stack([_loop_kernel(A, B, C[d], dts[d], L) for d in range(2)])
    Lam_d, _, B_d = hippo.dplr("inv", N)
    Kg = kernels.diag_kernel(_c64(Lam_d), _c64(B_d), _c64(Ct[0]), _f32(dts), L, "zoh")
    for d in range(2):
        assert_close(K[d], ref[d], rtol=1e-4, name=f"dplr dt={dts[d]}")
        assert_close(Kd[d], ref[d], rtol=1e-4, name=f"dense dt={dts[d]}")
        assert_close(Kg[d], _diag_vandermonde_f64(Lam_d, B_d, Ct[0], dts[d], L, "zoh"), rtol=1e-4, name="diag")


@pytest.mark.parametrize("init, rank, L", [("random", 1, 333), ("lin", 2, 1024), ("inv", 3, 517)])
def test_dplr_kernel_random_systems(init, rank, L):
    """Random low-rank terms on S4D-style Λ: kernel equals the complex128 conjugate-closed loop."""
    N = 16
    Lam, P, B = hippo.dplr(init, N, rank, P_scale=0.5, seed=rank)
    rng = np.random.default_rng(rank)
    B = B * (1 + 0.3 * rng.standard_normal(N // 2))
    C = rng.standard_normal(N // 2) + 1j * rng.standard_normal(N // 2)
    dt = 0.03
    Af, Bf, Cf = _dplr_full(Lam, P, B, C)
    ref = _loop_kernel(Af, Bf, Cf, dt, L)
    assert np.abs(ref.imag).max() <= 1e-9 * np.abs(ref).max()  # conjugate-closed ⇒ real kernel
    K = kernels.dplr_kernel(_c64(Lam), _c64(P), _c64(B), _c64(C), jnp.float32(dt), L, freq_chunk=64)
    assert_close(K, ref.real, rtol=1e-4)
    assert_close(
        kernels.dplr_kernel_reference(_c64(Lam), _c64(P), _c64(B), _c64(C), jnp.float32(dt), L), ref.real, rtol=1e-4
    )


def test_legt_rank2_and_fout_dplr():
    """FouT has Λ = 0 exactly, a pole of the Cauchy kernel at ω = 1: like S4 layers, shift Re Λ to
    −1e-4 (the system becomes A − 1e-4·I, which the loop uses too)."""
    for measure, rank, N, L, shift in (("legt", 2, 32, 600, 0.0), ("fout", 1, 16, 301, 1e-4)):
        A, B = hippo.transition(measure, N)
        Lam, P, Bt, V = hippo.nplr(measure, N, rank)
        C = np.random.default_rng(5).standard_normal(N)
        K = kernels.dplr_kernel(_c64(Lam - shift), _c64(P), _c64(Bt), _c64(C @ V), jnp.float32(0.01), L)
        assert_close(K, _loop_kernel(A - shift * np.eye(N), B, C, 0.01, L), rtol=1e-4, name=measure)


def _diag_vandermonde_f64(Lam, B, C, dt, L, method):
    """2 Re Σ_n C_n B̄_n ā_n^l in float64 numpy (closed-form diagonal discretization)."""
    z = dt * Lam
    a, coef = (np.exp(z), np.expm1(z) / Lam) if method == "zoh" else ((1 + z / 2) / (1 - z / 2), dt / (1 - z / 2))
    return 2 * np.real((C * coef * B)[:, None] * a[:, None] ** np.arange(L)[None]).sum(0)


def test_three_kernels_agree_on_a_diagonal_system():
    """N = 64, P = 0: dplr_kernel, bilinear diag_kernel and dense_kernel of the real form are one kernel,
    equal to the float64 closed form; ZOH diag_kernel too."""
    rng = np.random.default_rng(6)
    Lam, _, B = hippo.dplr("inv", 64)
    C = rng.standard_normal(32) + 1j * rng.standard_normal(32)
    dts, L = np.array([0.004, 0.04]), 2049
    dt = _f32(dts)
    zeros_P = jnp.zeros((2, 1, 32), jnp.complex64)
    Kp = kernels.dplr_kernel(_c64(Lam)[None], zeros_P, _c64(B)[None], _c64(C)[None], dt, L)
    Kg = kernels.diag_kernel(_c64(Lam)[None], _c64(B)[None], _c64(C)[None], dt, L, "bilinear")
    A_r, B_r, C_r = kernels.dplr_real_form(_c64(Lam), zeros_P[0], _c64(B), _c64(C))
    Kd = kernels.dense_kernel(A_r, B_r, C_r, dt, L)
    Kz = kernels.diag_kernel(_c64(Lam)[None], _c64(B)[None], _c64(C)[None], dt, L, "zoh")
    for d in range(2):
        ref = _diag_vandermonde_f64(Lam, B, C, dts[d], L, "bilinear")
        assert_close(Kp[d], ref, rtol=1e-4, name="dplr")
        assert_close(Kg[d], ref, rtol=1e-4, name="diag")
        assert_close(Kd[d], ref, rtol=1e-4, name="dense")
        assert_close(Kz[d], _diag_vandermonde_f64(Lam, B, C, dts[d], L, "zoh"), rtol=1e-4, name="diag zoh")


def test_dplr_kernel_grad_matches_reference():
    rng = np.random.default_rng(7)
    D, N, L = 2, 16, 259
    Lam, P, B = hippo.dplr("lin", N, 1, P_scale=0.3, seed=7)
    C = rng.standard_normal((D, N // 2)) + 1j * rng.standard_normal((D, N // 2))
    args = (_c64(Lam), _c64(P), _c64(B), _c64(C), _f32([0.01, 0.1]))
    ct = _f32(rng.standard_normal((D, L)))

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a, L) * ct)

    gr = jax.grad(loss(kernels.dplr_kernel_reference), argnums=range(5))(*args)
    fn = functools.partial(kernels.dplr_kernel, freq_chunk=48)  # several chunks: checkpointed lax.map
    assert_close(fn(*args, L), kernels.dplr_kernel_reference(*args, L), rtol=1e-4)
    gf = jax.grad(loss(fn), argnums=range(5))(*args)
    for a, b, name in zip(gf, gr, ("Lambda", "P", "B", "C", "dt")):
        assert a.shape == b.shape
        assert_close(a, b, rtol=5e-4, name=f"d{name}")


def test_kernel_bad_input():
    z = jnp.zeros((4,), jnp.complex64)
    with pytest.raises(ValueError, match="P must have shape"):
        kernels.dplr_kernel(z, z, z, z, 0.1, 8)
    with pytest.raises(ValueError, match="P must end in N/2=4"):
        kernels.dplr_kernel(z, jnp.zeros((1, 3), jnp.complex64), z, z, 0.1, 8)
    with pytest.raises(ValueError, match="L=0 must be an integer >= 1"):
        kernels.diag_kernel(z, z, z, 0.1, 0)
    with pytest.raises(ValueError, match="share the last dim"):
        kernels.diag_kernel(z, jnp.zeros(3, jnp.complex64), z, 0.1, 8)
    with pytest.raises(ValueError, match="discretization='foo'"):
        kernels.diag_kernel(z, z, z, 0.1, 8, "foo")
    with pytest.raises(ValueError, match="C must have shape"):
        kernels.dense_kernel(jnp.zeros((3, 3)), jnp.zeros(3), jnp.zeros(4), 0.1, 8)
    with pytest.raises(ValueError, match="do not broadcast"):
        kernels.diag_kernel(jnp.zeros((2, 4), jnp.complex64), z, jnp.zeros((3, 4), jnp.complex64), 0.1, 8)
    with pytest.raises(ValueError, match="freq_chunk"):
        kernels.dplr_kernel(z, jnp.zeros((1, 4), jnp.complex64), z, z, 0.1, 8, freq_chunk=0)
    with pytest.raises(ValueError, match="Lambda must be an array"):
        kernels.diag_kernel("legs", z, z, 0.1, 8)
