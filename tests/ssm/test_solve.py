"""ssm._solve.solve (elimination in XLA ops) against numpy's LAPACK solve in float64, its gradient against
jnp.linalg.solve's, and the concurrency regression: batched bilinear discretisations computed at once (forward and
backward) must not hang the CPU thread pool."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algornn.ssm._solve import solve


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("N, K", [(1, 1), (2, 5), (7, 3), (33, 34)])
@pytest.mark.parametrize("complex_", [False, True])
def test_solve_matches_numpy_and_its_gradient_matches_lapack(batch, N, K, complex_):
    with jax.enable_x64(True):
        rng = np.random.default_rng(N * 10 + K + len(batch))
        M, R = rng.normal(size=batch + (N, N)), rng.normal(size=batch + (N, K))
        if complex_:
            M, R = M + 1j * rng.normal(size=M.shape), R + 1j * rng.normal(size=R.shape)
        X = np.asarray(solve(jnp.asarray(M), jnp.asarray(R)))
        ref = np.linalg.solve(M, R)
        assert np.abs(X - ref).max() <= 1e-11 * np.abs(ref).max()
        if N > 1:  # pivoting: a zero leading entry (elimination without pivoting would divide by 0)
            P = M.copy()
            P[..., 0, 0] = 0
            ref_p = np.linalg.solve(P, R)
            assert np.abs(np.asarray(solve(jnp.asarray(P), jnp.asarray(R))) - ref_p).max() < 1e-9 * np.abs(ref_p).max()
        cot = rng.normal(size=ref.shape) + (1j * rng.normal(size=ref.shape) if complex_ else 0)
        _, vjp = jax.vjp(solve, jnp.asarray(M), jnp.asarray(R))
        _, vjp_ref = jax.vjp(jnp.linalg.solve, jnp.asarray(M), jnp.asarray(R))
        for g, g_ref in zip(vjp(jnp.asarray(cot)), vjp_ref(jnp.asarray(cot))):
            g, g_ref = np.asarray(g), np.asarray(g_ref)
            assert np.abs(g - g_ref).max() <= 1e-10 * max(1.0, np.abs(g_ref).max())


_CONCURRENT_SCRIPT = """
import os
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:2]))  # the pool of a 2-core machine (CI)
import jax, jax.numpy as jnp
from algornn.ssm import discretize, hippo
A, B = (jnp.asarray(x, jnp.float32) for x in hippo.transition("legs", 64))
dt = jnp.linspace(1e-3, 0.1, 64)
def loss(As):  # independent batched discretisations (four LSSL layers, both rules), forward and backward
    out = [discretize.bilinear(a, B, dt) for a in As] + [discretize.zoh(As[0], B, dt)]
    return sum(jnp.sum(Ab) ** 2 + jnp.sum(Bb) ** 2 for Ab, Bb in out)
grad = jax.jit(jax.grad(loss))
for _ in range(30):
    float(grad([A, 1.01 * A, 0.99 * A, 1.02 * A])[0][0, 0])
print("ok")
"""


def test_concurrent_batched_discretisations_do_not_hang():
    # With jnp.linalg.solve for the batch (jaxlib 0.10.2) this hung in about half the runs of 3 iterations: two
    # LAPACK kernels on the pool's two workers each wait for pieces queued behind the other.
    proc = subprocess.run([sys.executable, "-c", _CONCURRENT_SCRIPT], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
