"""Initializers for SSM parameters, as ``(key, shape, ...)`` functions returning jax arrays.

Shape legend (docs/shapes.md): D channels, N state size; diagonal SSMs store the conjugate half
``(..., N/2)`` (``shape[-1]`` is N/2 and N = 2·shape[-1]); Im Λ >= 0 (as ``ssm.hippo.nplr``).
Deterministic initializers accept and ignore ``key`` so every initializer has the same signature;
leading dims of ``shape`` repeat the same values.

- S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal SSMs", §4):
  ``s4d_lin`` Λ_n = −1/2 + iπn;  ``s4d_inv`` Λ_n = −1/2 + i(N/π)(N/(2n+1) − 1);
  ``s4d_legs`` Λ of the LegS NPLR form (with ``s4d_legs_B`` its B̃ = Vᴴ B);  ``s4d_real`` Λ_n = −(n+1).
- S5 (Smith et al. 2023, §4.1 / App. B): ``s5_hippo_n`` block-diagonal HiPPO-N (normal part of LegS),
  diagonalised, with B and C drawn in the real basis and moved into the eigenbasis.
- LRU (Orvieto et al. 2023, §3.2-3.3): ``lru_ring`` — |λ|² uniform on [r_min², r_max²], phase
  uniform on [0, max_phase], in the exponential parameterisation λ = exp(−exp(ν_log) + i exp(θ_log)),
  and the normaliser γ = √(1 − |λ|²).
- Step size: ``log_dt`` — log Δ uniform on [log dt_min, log dt_max] (S4 default [1e-3, 1e-1]).
"""

import jax
import jax.numpy as jnp
import numpy as np

from algornn.scan_kernels._common.validate import check_float, check_int
from algornn.ssm import hippo


def _check_shape(shape, name="shape", min_ndim=1):
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of ints, got {shape!r}") from None
    if len(shape) < min_ndim or any(s < 1 for s in shape):
        raise ValueError(f"{name} must have >= {min_ndim} positive dims, got {shape}")
    return shape


def _repeat(values, shape, dtype):
    return jnp.broadcast_to(jnp.asarray(values, dtype=dtype), shape)


def s4d_lin(key, shape, dtype=jnp.complex64):
    """S4D-Lin Λ ``shape (..., N/2)``: Λ_n = −1/2 + iπn."""
    shape = _check_shape(shape)
    n = np.arange(shape[-1])
    return _repeat(-0.5 + 1j * np.pi * n, shape, dtype)


def s4d_inv(key, shape, dtype=jnp.complex64):
    """S4D-Inv Λ ``shape (..., N/2)``: Λ_n = −1/2 + i(N/π)(N/(2n+1) − 1), N = 2·shape[-1]."""
    shape = _check_shape(shape)
    N, n = 2 * shape[-1], np.arange(shape[-1])
    return _repeat(-0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1), shape, dtype)


def s4d_legs(key, shape, dtype=jnp.complex64):
    """S4D-LegS Λ ``shape (..., N/2)``: eigenvalues of the normal part of HiPPO-LegS (Re = −1/2)."""
    shape = _check_shape(shape)
    return _repeat(hippo.nplr("legs", 2 * shape[-1])[0], shape, dtype)


def s4d_legs_B(key, shape, dtype=jnp.complex64):
    """B̃ = Vᴴ B of HiPPO-LegS in its NPLR eigenbasis, ``shape (..., N/2)`` (pairs with ``s4d_legs``)."""
    shape = _check_shape(shape)
    return _repeat(hippo.nplr("legs", 2 * shape[-1])[2], shape, dtype)


def s4d_real(key, shape, dtype=jnp.complex64):
    """S4D-Real Λ ``shape (..., N/2)``: Λ_n = −(n+1) (real; complex dtype for the same kernel code)."""
    shape = _check_shape(shape)
    return _repeat(-(np.arange(shape[-1]) + 1.0) + 0j, shape, dtype)


def complex_normal(key, shape, variance=1.0, dtype=jnp.complex64):
    """Complex normal with E|z|² = ``variance`` (real and imaginary parts each variance/2)."""
    shape = _check_shape(shape)
    kr, ki = jax.random.split(key)
    rdt = jnp.float64 if dtype == jnp.complex128 else jnp.float32
    s = float(np.sqrt(variance / 2.0))
    return jax.lax.complex(s * jax.random.normal(kr, shape, rdt), s * jax.random.normal(ki, shape, rdt)).astype(dtype)


def s5_hippo_n(key, shape, *, blocks=1, conj_sym=True, dtype=jnp.complex64):
    """S5 init for ``shape = (D, N)`` (channels, state): returns ``(Lambda (P,), B (P, D), C (D, P))``.

    A = blockdiag of ``blocks`` copies of HiPPO-N (LegS + P Pᵀ, size N/blocks), diagonalised as
    A = V_f diag(Λ_f) V_fᴴ. B_real ~ N(0, 1/D) ``(N, D)`` (LeCun normal), C_real ~ N(0, 1/N) ``(D, N)``;
    B̃ = V_fᴴ B_real, C̃ = C_real V_f. With ``conj_sym`` (P = N/2) only Im Λ >= 0 is kept and the output
    is y = 2 Re(C̃ x); otherwise P = N and y = Re(C̃ x) = C̃ x.
    """
    shape = _check_shape(shape, min_ndim=2)
    if len(shape) != 2:
        raise ValueError(f"shape must be (D, N), got {shape}")
    D, N = shape
    blocks = check_int("blocks", blocks)
    if N % blocks or (N // blocks) % 2:
        raise ValueError(f"blocks={blocks} must divide N={N} into blocks of even size (conjugate pairs)")
    n = N // blocks
    Lam_b, _, _, V_b = hippo.nplr("legs", n)  # normal part of LegS: Λ = −1/2 + iω, V (n, n/2)
    if conj_sym:
        V_blk, Lam_blk = V_b, Lam_b
    else:
        V_blk, Lam_blk = hippo.full_basis(V_b), np.concatenate([Lam_b, Lam_b.conj()])
    Pb = V_blk.shape[1]
    V = np.zeros((N, blocks * Pb), dtype=np.complex128)
    for j in range(blocks):
        V[j * n : (j + 1) * n, j * Pb : (j + 1) * Pb] = V_blk
    Lambda = np.tile(Lam_blk, blocks)
    kb, kc = jax.random.split(key)
    rdt = jnp.float64 if dtype == jnp.complex128 else jnp.float32
    B_real = jax.random.normal(kb, (N, D), rdt) * float(D**-0.5)
    C_real = jax.random.normal(kc, (D, N), rdt) * float(N**-0.5)
    Vj = jnp.asarray(V, dtype)
    B = jnp.conj(Vj).T @ B_real.astype(dtype)  # (P, D)
    C = C_real.astype(dtype) @ Vj  # (D, P)
    return jnp.asarray(Lambda, dtype), B, C


def lru_ring(key, shape, *, r_min=0.0, r_max=1.0, max_phase=2 * np.pi, dtype=jnp.float32):
    """LRU ring init ``(nu_log, theta_log, gamma_log)``, each ``shape``.

    λ = exp(−exp(nu_log) + i·exp(theta_log)): |λ|² ~ U[r_min², r_max²], arg λ ~ U[0, max_phase];
    gamma_log = log √(1 − |λ|²) (the input normaliser, B_norm = B·exp(gamma_log)).
    """
    shape = _check_shape(shape)
    if not (0.0 <= r_min < r_max <= 1.0):
        raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    check_float("max_phase", max_phase)
    r_min, r_max, max_phase = float(r_min), float(r_max), float(max_phase)
    k1, k2 = jax.random.split(key)
    u1 = jax.random.uniform(k1, shape, dtype, minval=jnp.finfo(dtype).tiny)
    u2 = jax.random.uniform(k2, shape, dtype, minval=jnp.finfo(dtype).tiny)  # phase 0 has log −inf
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    mod_sq = jnp.exp(-2.0 * jnp.exp(nu_log))  # |λ|²
    gamma_log = 0.5 * jnp.log1p(-mod_sq)
    return nu_log, theta_log, gamma_log


def log_dt(key, shape, dt_min=1e-3, dt_max=1e-1, dtype=jnp.float32):
    """log Δ ``shape`` with log Δ ~ U[log dt_min, log dt_max] (log-uniform Δ)."""
    shape = _check_shape(shape)
    if not (0 < dt_min < dt_max):
        raise ValueError(f"need 0 < dt_min < dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    return jax.random.uniform(key, shape, dtype, minval=float(np.log(dt_min)), maxval=float(np.log(dt_max)))
