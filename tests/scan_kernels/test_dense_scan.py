"""dense_linear_scan: every backend (and the GPU's associative form, run on CPU) against an explicit float64
loop and a matrix-power closed form; gradients against reference autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._dense_scan import op as _dense_scan
from tests._utils import assert_close

BACKENDS = ("reference", "xla", "pallas")


def make(seed, B, L, N, dtype, A_kind):
    """Transitions with spectral radius < 1 (so long scans stay bounded), inputs and an initial state."""
    rng = np.random.default_rng(seed)
    shape = {"NN": (N, N), "LNN": (L, N, N), "BLNN": (B, L, N, N)}[A_kind]
    cplx = jnp.issubdtype(dtype, jnp.complexfloating)
    A = rng.normal(size=shape) + (1j * rng.normal(size=shape) if cplx else 0)
    A = 0.9 * A / (np.sqrt(2 * N) if cplx else np.sqrt(N)) / 1.5
    b = rng.normal(size=(B, L, N)) + (1j * rng.normal(size=(B, L, N)) if cplx else 0)
    h0 = rng.normal(size=(B, N)) + (1j * rng.normal(size=(B, N)) if cplx else 0)
    return jnp.asarray(A, dtype), jnp.asarray(b, dtype), jnp.asarray(h0, dtype)


def to64(x):
    x = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)
    return x.astype(np.complex128) if np.iscomplexobj(x) else x.astype(np.float64)


def dense_loop64(A, b, h0, reverse=False):
    A, b, h0 = to64(A), to64(b), to64(h0)
    B, L, N = b.shape
    A = np.broadcast_to(A, (B, L, N, N))
    h, out = h0.copy(), np.zeros(np.broadcast_shapes(b.shape, h0[:, None].shape), np.result_type(A, b, h0))
    for t in range(L - 1, -1, -1) if reverse else range(L):
        h = np.einsum("bij,bj->bi", A[:, t], h) + b[:, t]
        out[:, t] = h
    return out


def computed_in(dtype):
    return jnp.complex64 if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.float32


CASES = [  # (B, L, N, dtype, A_kind, reverse)
    (2, 1, 3, jnp.float32, "NN", False),
    (2, 63, 5, jnp.float32, "NN", True),
    (1, 300, 16, jnp.complex64, "NN", False),
    (3, 7, 4, jnp.float32, "BLNN", False),
    (2, 37, 6, jnp.complex64, "BLNN", True),
    (2, 50, 5, jnp.bfloat16, "LNN", False),
]


def case_id(c):
    return f"B{c[0]}-L{c[1]}-N{c[2]}-{jnp.dtype(c[3]).name}-{c[4]}-{'rev' if c[5] else 'fwd'}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_explicit_loop(backend, case):
    B, L, N, dtype, A_kind, reverse = case
    A, b, h0 = make(0, B, L, N, dtype, A_kind)
    h = jax.jit(lambda A, b, h0: sk.dense_linear_scan(A, b, h0, reverse=reverse, backend=backend))(A, b, h0)
    assert h.shape == b.shape and h.dtype == computed_in(dtype)
    assert_close(h, dense_loop64(A, b, h0, reverse), dtype=computed_in(dtype), name=backend)


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=case_id)
def test_associative_form_used_on_gpu(case):
    B, L, N, dtype, A_kind, reverse = case
    A, b, h0 = make(1, B, L, N, dtype, A_kind)
    A_, b_, h0_, _ = _dense_scan._prepare(A, b, h0)
    h = jax.jit(_dense_scan._associative, static_argnums=3)(A_, b_, h0_, reverse)
    assert_close(h, dense_loop64(A, b, h0, reverse), dtype=computed_in(dtype), name="associative")


def test_time_invariant_matches_matrix_power_closed_form():
    """h_t = Σ_{s≤t} A^{t-s} b_s + A^{t+1} h0."""
    A, b, h0 = make(2, 1, 12, 4, jnp.float32, "NN")
    A64, b64, h064 = to64(A), to64(b)[0], to64(h0)[0]
    want = np.stack(
        [
            sum(np.linalg.matrix_power(A64, t - s) @ b64[s] for s in range(t + 1))
            + np.linalg.matrix_power(A64, t + 1) @ h064
            for t in range(12)
        ]
    )
    assert_close(sk.dense_linear_scan(A, b, h0)[0], want, dtype=jnp.float32)


def test_diagonal_transitions_equal_linear_scan():
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.uniform(-1, 1, (2, 40, 5)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2, 40, 5)), jnp.float32)
    A = jax.vmap(jax.vmap(jnp.diag))(a)  # (B, L, N, N)
    for reverse in (False, True):
        assert_close(
            sk.dense_linear_scan(A, b, reverse=reverse), sk.linear_scan(a, b, reverse=reverse), dtype=jnp.float32
        )


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4], CASES[5]], ids=case_id)
@pytest.mark.parametrize("backend", ("xla", "pallas"))
def test_gradients_match_reference_autodiff(backend, case):
    B, L, N, dtype, A_kind, reverse = case
    A, b, h0 = make(4, B, L, N, dtype, A_kind)
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(B, L, N)), computed_in(dtype))

    def loss(backend, vjp):
        def f(A, b, h0):
            h = sk.dense_linear_scan(A, b, h0, reverse=reverse, backend=backend, vjp=vjp)
            return jnp.sum(jnp.real(h * w.astype(h.dtype)))

        return f

    got = jax.jit(jax.grad(loss(backend, "custom"), argnums=(0, 1, 2)))(A, b, h0)
    want = jax.grad(loss("reference", "autodiff"), argnums=(0, 1, 2))(A, b, h0)
    tol_dtype = dtype if dtype == jnp.bfloat16 else computed_in(dtype)
    for name, g, e, x in zip(("dA", "db", "dh0"), got, want, (A, b, h0)):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert_close(g, e, dtype=tol_dtype, rtol=None if tol_dtype == jnp.bfloat16 else 2e-5, name=name)


def test_time_invariant_gradient_against_finite_differences():
    A, b, h0 = make(6, 2, 6, 3, jnp.float32, "NN")
    w = np.random.default_rng(7).normal(size=(2, 6, 3))
    f64 = lambda A_: float(np.sum(dense_loop64(A_, b, h0) * w))
    A0, eps = to64(A), 1e-6
    dA_fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            E = np.zeros((3, 3))
            E[i, j] = eps
            dA_fd[i, j] = (f64(A0 + E) - f64(A0 - E)) / (2 * eps)
    dA = jax.grad(lambda A: jnp.sum(sk.dense_linear_scan(A, b, h0) * jnp.asarray(w, jnp.float32)))(A)
    assert_close(dA, dA_fd, rtol=1e-4, name="dA")
