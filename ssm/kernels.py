"""SSM convolution kernels K_l = C Ā^l B̄ (l = 0..L-1) and the FFT convolutions that apply them.

Shape legend (docs/shapes.md): D channels, N state size (N/2 for the conjugate half), L length,
B batch. ``...`` are leading batch dims (typically ``(D,)``); they broadcast between all arguments,
including ``dt``. **Kernel layout: channel-first ``K (..., L)``**, e.g. ``(D, L)``; ``causal_conv``
takes ``u (B, L, D)`` and ``K (D, L)``.

Conventions for layers:

- ``dense_kernel``: real ``A (..., N, N)``, ``B, C (..., N)``; ``K_l = C·Ā^l B̄`` (no factor 2).
- ``diag_kernel`` / ``dplr_kernel``: **conjugate-half convention** (S4D §3, S4 §3): ``Lambda, B, C``
  are complex ``(..., N/2)`` and stand for the N-dim system with the conjugate entries appended, so
  ``K_l = 2·Re(Σ_n C_n (Ā^l B̄)_n)`` is real. ``C`` is used as is (no conjugation). For DPLR the
  state matrix is ``A = diag(Λ_f) - P_f P_fᴴ`` over the full conjugate-closed basis
  (``Λ_f = [Λ, Λ̄]``, ``P_f = [P, P̄]``), exactly the real system ``dplr_real_form`` returns.
- ``dt`` is a step size per batch entry: scalar or ``(D,)`` for ``(D, N/2)`` parameters. It is *not*
  per state (S4's untied Δ): broadcast Λ instead (``dt·Λ`` is all that matters for ZOH).
- The skip ``D·u`` is not part of any kernel; ``causal_conv(u, K, D)`` adds it.
- Outputs are float32 (float64 under x64). The kernel does not include the skip or any C scaling.
"""

import jax.numpy as jnp

from algornn.scan_kernels._common.validate import as_array, check_inexact, check_int, check_ndim
from algornn.ssm import _checks as ck
from algornn.ssm import discretize as disc
from algornn.ssm._conv import bidirectional_conv as bidirectional_conv
from algornn.ssm._conv import causal_conv as causal_conv
from algornn.ssm._conv import causal_conv_reference as causal_conv_reference
from algornn.ssm._conv import two_sided_kernel as two_sided_kernel
from algornn.ssm._dplr import dplr_kernel as dplr_kernel
from algornn.ssm._dplr import dplr_kernel_reference as dplr_kernel_reference
from algornn.ssm._dplr import dplr_real_form as dplr_real_form
from algornn.ssm._vandermonde import split_length, vandermonde_2re

__all__ = [
    "dense_kernel",
    "diag_kernel",
    "diag_kernel_reference",
    "dplr_kernel",
    "dplr_kernel_reference",
    "dplr_real_form",
    "causal_conv",
    "causal_conv_reference",
    "bidirectional_conv",
    "two_sided_kernel",
]


def _matrix_power_columns(Abar, x, m):
    """``[x, Ā x, ..., Ā^{m-1} x]`` as ``(..., N, m)`` by doubling (log2 m matrix products)."""
    cols, P = x[..., :, None], Abar
    while cols.shape[-1] < m:
        cols = jnp.concatenate([cols, P @ cols], axis=-1)
        if cols.shape[-1] < m:
            P = P @ P
    return cols[..., :m]


@ck.jit(static_argnames=("L", "discretization"))
def dense_kernel(A, B, C, dt, L, discretization="bilinear"):
    """Kernel of a dense SISO system: ``A (..., N, N)``, ``B, C (..., N)``, ``dt`` batch -> ``K (..., L)``.

    ``K_l = C·Ā^l B̄`` with ``(Ā, B̄) = discretize.<discretization>(A, B, dt)``. Computed by a two-level
    split l = j·m + i: ``K = (C Ā^{jm})_j · (Ā^i B̄)_i`` — O(N²√L + NL) per channel, O(N√L) memory.
    """
    L = check_int("L", L)
    C = as_array("C", C)
    check_inexact("C", C, allow_complex=True)
    Abar, Bbar = disc.dense(discretization, A, B, dt)
    N = Abar.shape[-1]
    if C.ndim < 1 or C.shape[-1] != N:
        raise ValueError(f"C must have shape (..., N) with N={N}, got {C.shape}")
    batch = ck.batch_shape([("Ā", Abar.shape[:-2]), ("C", C.shape[:-1])])
    Abar = ck.bcast(Abar, batch + (N, N))
    Bbar = ck.bcast(Bbar, batch + (N,))
    if jnp.iscomplexobj(C) and not jnp.iscomplexobj(Abar):
        cdt = ck.complex_dtype(Abar.dtype)
        Abar, Bbar = Abar.astype(cdt), Bbar.astype(cdt)
    C = ck.bcast(C.astype(Abar.dtype), batch + (N,))
    m, J = split_length(L)
    inner = _matrix_power_columns(Abar, Bbar, m)  # (..., N, m): Ā^i B̄
    Am = jnp.linalg.matrix_power(Abar, m) if m > 1 else Abar
    outer = jnp.swapaxes(_matrix_power_columns(jnp.swapaxes(Am, -1, -2), C, J), -1, -2)  # (..., J, N): C Ā^{jm}
    K = (outer @ inner).reshape(batch + (J * m,))
    return K[..., :L]


def _log_abar(Lambda, B, dt, discretization):
    Abar, Bbar = disc.diagonal(discretization, Lambda, B, dt)
    if discretization == "zoh":  # log Ā = Δ Λ exactly (avoids a log of a rounded exp)
        Lam = ck.bcast(jnp.asarray(Lambda).astype(Abar.dtype), Abar.shape)
        dtb = jnp.asarray(dt).astype(jnp.real(Abar).dtype)
        logA = ck.bcast(dtb.reshape(dtb.shape + (1,)), Abar.shape).astype(Abar.dtype) * Lam
    else:
        logA = jnp.log(Abar)
    return logA, Bbar


def _check_diag(Lambda, B, C):
    Lambda, B, C = as_array("Lambda", Lambda), as_array("B", B), as_array("C", C)
    for x, name in ((Lambda, "Lambda"), (B, "B"), (C, "C")):
        check_inexact(name, x, allow_complex=True)
        check_ndim(name, x, 1, "(..., N/2)", at_least=True)
    if not (Lambda.shape[-1] == B.shape[-1] == C.shape[-1]):
        raise ValueError(f"Lambda, B, C must share the last dim N/2, got {Lambda.shape}, {B.shape}, {C.shape}")
    rdt = ck.real_dtype(Lambda, B, C)
    cdt = ck.complex_dtype(rdt)
    return Lambda.astype(cdt), B.astype(cdt), C.astype(cdt)


@ck.jit(static_argnames=("L", "discretization"))
def diag_kernel(Lambda, B, C, dt, L, discretization="zoh"):
    """S4D kernel ``K_l = 2·Re Σ_n C_n Ā_n^l B̄_n``: ``Lambda, B, C (..., N/2)`` complex -> ``K (..., L)`` real.

    ``discretization`` in ``("zoh", "bilinear", "euler")`` (``discretize.*_diag``). Vandermonde product
    evaluated in two levels (l = j·m + i, m ≈ √L) as one real matmul per channel, so memory is
    O(N√L) instead of the (N, L) Vandermonde matrix.
    """
    L = check_int("L", L)
    Lambda, B, C = _check_diag(Lambda, B, C)
    logA, Bbar = _log_abar(Lambda, B, dt, discretization)  # (*batch, N/2)
    batch = ck.batch_shape([("Ā", logA.shape[:-1]), ("C", C.shape[:-1])])
    n2 = logA.shape[-1]
    logA = ck.bcast(logA, batch + (n2,))
    w = ck.bcast(C, batch + (n2,)) * ck.bcast(Bbar, batch + (n2,))  # (..., N/2): C B̄
    return vandermonde_2re(w[..., None, :], logA, L)[..., 0, :]


@ck.jit(static_argnames=("L", "discretization"))
def diag_kernel_reference(Lambda, B, C, dt, L, discretization="zoh"):
    """Plain Vandermonde ``2 Re(C B̄ · Ā^l)`` with Ā^l = exp(l log Ā) materialised ``(..., N/2, L)``."""
    L = check_int("L", L)
    Lambda, B, C = _check_diag(Lambda, B, C)
    logA, Bbar = _log_abar(Lambda, B, dt, discretization)
    batch = ck.batch_shape([("Ā", logA.shape[:-1]), ("C", C.shape[:-1])])
    n2 = logA.shape[-1]
    w = ck.bcast(C, batch + (n2,)) * ck.bcast(Bbar, batch + (n2,))
    ell = jnp.arange(L, dtype=jnp.real(logA).dtype).astype(logA.dtype)
    V = jnp.exp(ck.bcast(logA, batch + (n2,))[..., None] * ell.reshape((1,) * (len(batch) + 1) + (L,)))  # (..., N/2, L)
    return 2.0 * jnp.real(jnp.sum(w[..., None] * V, axis=-2))
