"""FFT convolution of a sequence with SSM kernels: causal and two-sided (bidirectional).

Shape legend (docs/shapes.md): B batch, L length, D channels. Inputs ``u (B, L, D)`` batch-first;
kernels channel-first ``K (D, L)`` (the layout ``ssm.kernels`` returns).

    causal:        y_t = Σ_{s<=t} K[t-s] u_s + D ⊙ u_t
    bidirectional: y_t = Σ_{s<=t} K_fwd[t-s] u_s + Σ_{s>t} K_bwd[s-t-1] u_s + D ⊙ u_t

The backward kernel acts on strictly future inputs (S4's two-sided kernel, ``fftconv.py``).
FFTs run in float32 (JAX's FFT rejects bfloat16) with zero padding to a power of two >= 2L, so the
circular convolution equals the linear one; the result is cast back to ``u``'s dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from algornn.scan_kernels._common.validate import as_array, check_inexact, check_ndim
from algornn.ssm import _checks as ck


def _fft_size(n):
    return 1 << int(np.ceil(np.log2(max(n, 1))))


def _check_conv(u, K, D, k_name="K"):
    u, K = as_array("u", u), as_array(k_name, K)
    check_inexact("u", u, allow_complex=False)
    check_inexact(k_name, K, allow_complex=False)
    check_ndim("u", u, 3, "(B, L, D)")
    if K.ndim != 2 or K.shape[0] != u.shape[2]:
        raise ValueError(f"{k_name} must have shape (D, L_k) with D={u.shape[2]} from u {u.shape}, got {K.shape}")
    if D is not None:
        D = as_array("D", D)
        check_inexact("D", D, allow_complex=False)
        if D.shape != (u.shape[2],):
            raise ValueError(f"D must have shape (D,) = ({u.shape[2]},), got {D.shape}")
    return u, K, D


def _skip(y, u, D):
    if D is not None:
        y = y + u.astype(jnp.float32) * D.astype(jnp.float32)[None, None, :]
    return y.astype(u.dtype)


@jax.custom_vjp
def _fft_conv(u, K):
    """float32 ``u (B, L, D)``, ``K (D, L_k)`` -> causal ``y (B, L, D)`` (zero padding to n >= L + L_k).

    One batch element at a time (``lax.map``): temporaries are O(n·D), not O(B·n·D).
    """
    L, n = u.shape[1], _fft_size(u.shape[1] + K.shape[1])
    kf = jnp.fft.rfft(K, n=n, axis=-1).T  # (n/2+1, D)
    return lax.map(lambda ub: jnp.fft.irfft(jnp.fft.rfft(ub, n=n, axis=0) * kf, n=n, axis=0)[:L], u)


def _fft_conv_fwd(u, K):
    return _fft_conv(u, K), (u, K)


def _fft_conv_bwd(res, ct):
    # Adjoint of a causal convolution = correlation: du_s = Σ_t ct_t K[t-s], dK_j = Σ_{b,t} ct_t u_{t-j}.
    # Spectra are recomputed per batch element, so only (u, K) are kept as residuals.
    u, K = res
    L, Lk, n = u.shape[1], K.shape[1], _fft_size(u.shape[1] + K.shape[1])
    kf_conj = jnp.conj(jnp.fft.rfft(K, n=n, axis=-1).T)  # (n/2+1, D)

    def step(cross, x):
        ub, cb = x  # (L, D) each
        cf = jnp.fft.rfft(cb, n=n, axis=0)
        du = jnp.fft.irfft(cf * kf_conj, n=n, axis=0)[:L]
        return cross + cf * jnp.conj(jnp.fft.rfft(ub, n=n, axis=0)), du

    cross, du = lax.scan(step, jnp.zeros_like(kf_conj), (u, ct))
    dK = jnp.fft.irfft(cross, n=n, axis=0)[:Lk].T  # (D, L_k)
    return du, dK


_fft_conv.defvjp(_fft_conv_fwd, _fft_conv_bwd)


@ck.jit
def causal_conv(u, K, D=None):
    """Causal FFT convolution ``u (B, L, D) * K (D, L_k)`` plus the skip ``D (D,)`` -> ``(B, L, D)``.

    ``L_k`` may differ from L (taps beyond L are ignored, missing taps are zero). The backward pass
    is itself an FFT correlation (custom VJP), so only ``u`` and ``K`` are kept for it.
    """
    u, K, D = _check_conv(u, K, D)
    y = _fft_conv(u.astype(jnp.float32), K.astype(jnp.float32))
    return _skip(y, u, D)


@ck.jit
def two_sided_kernel(K_fwd, K_bwd):
    """Circular two-sided kernel ``(D, 2L)`` from ``K_fwd, K_bwd (D, L)``: lag t-s >= 0 reads K_fwd,
    lag s-t >= 1 reads ``K_bwd[s-t-1]`` (index 2L-1-m of the result holds K_bwd[...]; S4 layout)."""
    K_fwd, K_bwd = as_array("K_fwd", K_fwd), as_array("K_bwd", K_bwd)
    if K_fwd.ndim != 2 or K_fwd.shape != K_bwd.shape:
        raise ValueError(f"K_fwd and K_bwd must both have shape (D, L), got {K_fwd.shape} and {K_bwd.shape}")
    pad = jnp.zeros_like(K_fwd)
    return jnp.concatenate([K_fwd, pad], axis=-1) + jnp.concatenate([pad, K_bwd[:, ::-1]], axis=-1)


@ck.jit
def bidirectional_conv(u, K_fwd, K_bwd, D=None):
    """Two-sided FFT convolution (module docstring): ``u (B, L, D)``, ``K_fwd, K_bwd (D, L)`` -> ``(B, L, D)``."""
    u, K_fwd, D = _check_conv(u, K_fwd, D, "K_fwd")
    _, K_bwd, _ = _check_conv(u, K_bwd, None, "K_bwd")
    L = u.shape[1]
    if K_fwd.shape[1] != L or K_bwd.shape[1] != L:
        raise ValueError(f"K_fwd and K_bwd must have length L={L}, got {K_fwd.shape} and {K_bwd.shape}")
    k2 = two_sided_kernel(K_fwd.astype(jnp.float32), K_bwd.astype(jnp.float32))  # (D, 2L)
    n = 2 * L  # circular length 2L: lags lie in (-L, L), so nothing wraps onto itself
    uf = jnp.fft.rfft(u.astype(jnp.float32), n=n, axis=1)
    kf = jnp.fft.rfft(k2, n=n, axis=-1).T
    y = jnp.fft.irfft(uf * kf[None], n=n, axis=1)[:, :L]
    return _skip(y, u, D)


@ck.jit
def causal_conv_reference(u, K, D=None):
    """Direct O(L²) causal convolution (Toeplitz matmul, float32); same contract as ``causal_conv``."""
    u, K, D = _check_conv(u, K, D)
    L, Lk = u.shape[1], K.shape[1]
    lag = np.arange(L)[:, None] - np.arange(L)[None, :]  # (L, L): t - s
    valid = (lag >= 0) & (lag < Lk)
    T = jnp.where(valid[None], K.astype(jnp.float32)[:, np.clip(lag, 0, Lk - 1)], 0.0)  # (D, L, L)
    y = jnp.einsum("dts,bsd->btd", T, u.astype(jnp.float32))
    return _skip(y, u, D)
