"""Discretization of x'(t) = A x(t) + B u(t) into x_k = Ā x_{k-1} + B̄ u_k.

Shape legend (docs/shapes.md): N state size; ``...`` leading batch dims (e.g. D channels, or B, L, D
for per-step sizes). Single-input (SISO) systems: ``B`` is a vector ``(..., N)``; for an input matrix
``(N, M)`` (S5) use the diagonal forms with ``B = 1`` and multiply the returned coefficient.

Step size ``dt``: a scalar, per channel ``(D,)``, or per time step ``(B, L, D)`` (irregular sampling) —
any shape that broadcasts with the batch dims of ``A`` and ``B``. The outputs carry the broadcast
batch shape: ``Ā (*batch, N, N)`` / ``(*batch, N)``, ``B̄ (*batch, N)``.

Formulas (LSSL, Gu et al. 2021, §2 / App. C; S4D, Gu et al. 2022, §3):

- ZOH:      Ā = exp(Δ A),  B̄ = ∫_0^Δ exp(s A) ds B  (= A^-1 (Ā - I) B when A is invertible).
  Dense form via one matrix exponential of [[A, B], [0, 0]]·Δ (valid for singular A);
  diagonal form B̄ = (exp(ΔΛ) - 1)/Λ · B, equal to Δ B at Λ = 0.
- bilinear: Ā = (I - Δ/2 A)^-1 (I + Δ/2 A),  B̄ = (I - Δ/2 A)^-1 Δ B.
- euler (forward): Ā = I + Δ A,  B̄ = Δ B.

Dense functions take ``A (..., N, N)`` (real or complex), diagonal ones ``Lambda (..., N)`` (real or
complex; S4D's conjugate half). Results are float32 / complex64 (float64 / complex128 under x64).
"""

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

from algornn.scan_kernels._common.validate import as_array, check_choice, check_inexact, check_ndim
from algornn.ssm import _checks as ck
from algornn.ssm._solve import solve


def _prepare(A, B, dt, *, diagonal):
    a_name = "Lambda" if diagonal else "A"
    A, B, dt = as_array(a_name, A), as_array("B", B), as_array("dt", dt)
    for x, name in ((A, a_name), (B, "B")):
        check_inexact(name, x, allow_complex=True)
    check_inexact("dt", dt, allow_complex=False)
    if diagonal:
        check_ndim(a_name, A, 1, "(..., N)", at_least=True)
        N, a_batch = A.shape[-1], A.shape[:-1]
    else:
        check_ndim(a_name, A, 2, "(..., N, N)", at_least=True)
        if A.shape[-1] != A.shape[-2]:
            raise ValueError(f"A must be square (..., N, N), got shape {A.shape}")
        N, a_batch = A.shape[-1], A.shape[:-2]
    check_ndim("B", B, 1, "(..., N)", at_least=True)
    if B.shape[-1] != N:
        raise ValueError(f"B must have shape (..., N) with N={N} from {a_name} {A.shape}, got {B.shape}")
    batch = ck.batch_shape([(a_name, a_batch), ("B", B.shape[:-1]), ("dt", dt.shape)])
    rdt = ck.real_dtype(A, B, dt)
    cplx = jnp.iscomplexobj(A) or jnp.iscomplexobj(B)
    wdt = ck.complex_dtype(rdt) if cplx else rdt
    A = ck.bcast(A.astype(wdt), batch + A.shape[len(a_batch) :])
    B = ck.bcast(B.astype(wdt), batch + (N,))
    dt = ck.bcast(dt.astype(rdt), batch).astype(wdt)
    return A, B, dt, N


# ----------------------------------------------------------------------------- dense (N, N)


@ck.jit
def zoh(A, B, dt):
    """ZOH of a dense system: ``A (..., N, N)``, ``B (..., N)``, ``dt`` batch-shaped -> ``(Ā, B̄)``."""
    A, B, dt, N = _prepare(A, B, dt, diagonal=False)
    batch = A.shape[:-2]
    top = jnp.concatenate([A, B[..., None]], axis=-1)  # (..., N, N+1)
    M = jnp.concatenate([top, jnp.zeros(batch + (1, N + 1), A.dtype)], axis=-2)  # (..., N+1, N+1)
    Mdt = (M * dt[..., None, None]).reshape((-1, N + 1, N + 1))
    # One matrix at a time: jsl.expm solves with LAPACK, whose batched kernels can deadlock the CPU thread pool
    # when two run at once (``ssm/_solve.py``); a single system runs inline.
    E = lax.map(jsl.expm, Mdt).reshape(batch + (N + 1, N + 1))
    return E[..., :N, :N], E[..., :N, N]


@ck.jit
def bilinear(A, B, dt):
    """Bilinear (Tustin) discretization of a dense system; shapes as ``zoh``."""
    A, B, dt, N = _prepare(A, B, dt, diagonal=False)
    eye = ck.bcast(jnp.eye(N, dtype=A.dtype), A.shape)
    half = (0.5 * dt)[..., None, None] * A
    lhs = eye - half
    # One solve with [I + ΔA/2, ΔB] as the right-hand side, by elimination in XLA ops (``ssm/_solve.py``: jaxlib's
    # batched LAPACK solves can deadlock the CPU thread pool when two run at once).
    rhs = jnp.concatenate([eye + half, (dt[..., None] * B)[..., None]], axis=-1)  # (..., N, N + 1)
    sol = solve(lhs, rhs)
    return sol[..., :N], sol[..., N]


@ck.jit
def euler(A, B, dt):
    """Forward-Euler discretization of a dense system; shapes as ``zoh``."""
    A, B, dt, N = _prepare(A, B, dt, diagonal=False)
    return ck.bcast(jnp.eye(N, dtype=A.dtype), A.shape) + dt[..., None, None] * A, dt[..., None] * B


# ----------------------------------------------------------------------------- diagonal (N,)


@ck.jit
def zoh_diag(Lambda, B, dt):
    """ZOH of a diagonal system: ``Lambda, B (..., N)``, ``dt`` batch-shaped -> ``(Ā, B̄) (*batch, N)``."""
    Lambda, B, dt, _ = _prepare(Lambda, B, dt, diagonal=True)
    z = dt[..., None] * Lambda
    zero = z == 0
    z_safe = jnp.where(zero, jnp.ones_like(z), z)
    phi = jnp.where(zero, jnp.ones_like(z), jnp.expm1(z_safe) / z_safe)  # (e^z - 1)/z, -> 1 at z = 0
    return jnp.exp(z), dt[..., None] * phi * B


@ck.jit
def bilinear_diag(Lambda, B, dt):
    """Bilinear discretization of a diagonal system; shapes as ``zoh_diag``."""
    Lambda, B, dt, _ = _prepare(Lambda, B, dt, diagonal=True)
    half = 0.5 * dt[..., None] * Lambda
    inv = 1.0 / (1.0 - half)
    return (1.0 + half) * inv, dt[..., None] * inv * B


@ck.jit
def euler_diag(Lambda, B, dt):
    """Forward-Euler discretization of a diagonal system; shapes as ``zoh_diag``."""
    Lambda, B, dt, _ = _prepare(Lambda, B, dt, diagonal=True)
    return 1.0 + dt[..., None] * Lambda, dt[..., None] * B


DENSE = {"zoh": zoh, "bilinear": bilinear, "euler": euler}
DIAGONAL = {"zoh": zoh_diag, "bilinear": bilinear_diag, "euler": euler_diag}


def dense(method, A, B, dt):
    """Dispatch ``method`` in ``("zoh", "bilinear", "euler")`` for a dense system."""
    check_choice("discretization", method, tuple(DENSE))
    return DENSE[method](A, B, dt)


def diagonal(method, Lambda, B, dt):
    """Dispatch ``method`` in ``("zoh", "bilinear", "euler")`` for a diagonal system."""
    check_choice("discretization", method, tuple(DIAGONAL))
    return DIAGONAL[method](Lambda, B, dt)
