"""``solve``: batched dense linear solve ``M X = R`` in plain XLA ops (Gauss–Jordan with partial pivoting).

Why not ``jnp.linalg.solve``: on CPU it calls jaxlib's LAPACK kernels, which split a batch of systems over
XLA's intra-op thread pool and block until the pieces finish. When two such calls run at once on pool workers
(two layers' discretisations, or forward and backward solves, scheduled concurrently) they can occupy every
worker of the pool and wait for each other's pieces forever: the intermittent hang of LSSL training on 2 CPU
cores (jaxlib 0.10.2; native stacks: both workers in ``lapack_strsm_ffi`` → ``ParallelBatchMap`` →
``BlockingCounter::Wait``). Elimination written as array ops runs as ordinary XLA fusions, which never wait on
the pool. Cost O(N³) per system like LU; N is the state size (≤ a few hundred here).

The gradient is the implicit one (custom VJP, one more solve with Mᵀ): for ``X = M⁻¹ R``,
``R̄ = M⁻ᵀ X̄`` and ``M̄ = −R̄ Xᵀ`` (JAX's transpose convention, no conjugation, also for complex).
Shape legend: ``...`` batch dims · N system size · K right-hand sides.
"""

import jax
import jax.numpy as jnp
from jax import lax


def _eliminate(M, R):
    """Gauss–Jordan on ``[M | R]`` with row pivoting on the largest ``|M[i, j]|``, i ≥ j: returns ``M⁻¹ R``."""
    N = M.shape[-1]
    aug = jnp.concatenate([M, R], axis=-1)  # (..., N, N + K)
    rows = jnp.broadcast_to(jnp.arange(N), M.shape[:-1])  # (..., N): the row index (argmax's integer dtype)

    def pivot_step(j, aug):
        j = j.astype(rows.dtype)
        size = jnp.where(rows >= j, jnp.abs(aug[..., :, j]), -1.0)  # rows above j are already pivots
        p = jnp.argmax(size, axis=-1)  # (...,)
        row_j = aug[..., j, :]
        row_p = jnp.take_along_axis(aug, p[..., None, None], axis=-2)[..., 0, :]
        aug = jnp.where((rows == p[..., None])[..., None], row_j[..., None, :], aug)  # row p <- row j
        pivot_row = row_p / row_p[..., j, None]
        factor = aug[..., :, j].at[..., j].set(0)  # (..., N): what to remove from every other row
        aug = aug - factor[..., :, None] * pivot_row[..., None, :]
        return aug.at[..., j, :].set(pivot_row)

    aug = lax.fori_loop(0, N, pivot_step, aug)
    return aug[..., N:]


@jax.custom_vjp
def solve(M, R):
    """``X = M⁻¹ R`` for ``M (..., N, N)``, ``R (..., N, K)`` of one floating dtype (real or complex), batch dims
    equal; ``X (..., N, K)``. No check for singular ``M`` (it gives inf/nan like LAPACK's ``gesv``)."""
    return _eliminate(M, R)


def _solve_fwd(M, R):
    X = _eliminate(M, R)
    return X, (M, X)


def _solve_bwd(res, X_bar):
    M, X = res
    R_bar = _eliminate(jnp.swapaxes(M, -1, -2), X_bar)
    return -R_bar @ jnp.swapaxes(X, -1, -2), R_bar


solve.defvjp(_solve_fwd, _solve_bwd)
