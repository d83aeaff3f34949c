"""linear_scan: every backend against a float64 numpy loop (forward) and against autodiff of the reference
loop (gradients), on awkward shapes; the custom VJP against independent math (transfer matrix, finite
differences); jit / vmap / leading dims; long-sequence accuracy; bad input.

The non-slow cases cover every axis of the issue's matrix (L in {1, 7, 63, 1000, 4097}, D in {1, 5, 128},
float32 / complex64 / bfloat16, reverse, h0, broadcast a) at least once; ``-m slow`` runs the full product.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close

BACKENDS = ("reference", "xla", "pallas")


# ------------------------------------------------------------------------------------------ helpers
def make_inputs(seed, B, L, D, dtype, a_kind="full", with_h0=True):
    """Random ``a`` (|a| in [0.5, 1), random sign/phase) of the requested broadcast shape, ``b``, ``h0``."""
    rng = np.random.default_rng(seed)
    a_shape = {"D": (D,), "LD": (L, D), "full": (B, L, D), "B1D": (B, 1, D)}[a_kind]
    mag = rng.uniform(0.5, 1.0, a_shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        a = mag * np.exp(1j * rng.uniform(-np.pi, np.pi, a_shape))
        b = rng.normal(size=(B, L, D)) + 1j * rng.normal(size=(B, L, D))
        h0 = rng.normal(size=(B, D)) + 1j * rng.normal(size=(B, D))
    else:
        a = mag * rng.choice([-1.0, 1.0], a_shape)
        b = rng.normal(size=(B, L, D))
        h0 = rng.normal(size=(B, D))
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype), (jnp.asarray(h0, dtype) if with_h0 else None)


def loop64(a, b, h0=None, reverse=False):
    """The recurrence as an explicit float64/complex128 Python loop."""
    cplx = any(jnp.issubdtype(x.dtype, jnp.complexfloating) for x in (a, b) + ((h0,) if h0 is not None else ()))
    b = np.asarray(b.astype(jnp.float32) if b.dtype == jnp.bfloat16 else b).astype(np.complex128)
    a = np.asarray(a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a).astype(np.complex128)
    a = np.broadcast_to(a, b.shape)
    h = np.zeros(b.shape[:-2] + b.shape[-1:], np.complex128)
    if h0 is not None:
        h = np.asarray(h0.astype(jnp.float32) if h0.dtype == jnp.bfloat16 else h0).astype(np.complex128)
    out = np.zeros_like(b)
    steps = range(b.shape[-2] - 1, -1, -1) if reverse else range(b.shape[-2])
    for t in steps:
        h = a[..., t, :] * h + b[..., t, :]
        out[..., t, :] = h
    return out if cplx else out.real


def computed_in(dtype):
    """The dtype the scan runs in for inputs of ``dtype`` (bfloat16 accumulates in float32)."""
    return jnp.complex64 if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.float32


def loss_fn(backend, reverse, w, vjp="custom"):
    def loss(a, b, h0):
        h = sk.linear_scan(a, b, h0, reverse=reverse, backend=backend, vjp=vjp)
        return jnp.sum(jnp.real(h * w.astype(h.dtype)))

    return loss


def random_cotangent(shape, dtype, seed=7):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape) + (1j * rng.normal(size=shape) if jnp.issubdtype(dtype, jnp.complexfloating) else 0)
    return jnp.asarray(w, computed_in(dtype))


# (B, L, D, dtype, reverse, a_kind, with_h0): every value of every axis appears at least once.
CASES = [
    (2, 1, 5, jnp.float32, False, "full", True),
    (2, 7, 1, jnp.complex64, True, "D", True),
    (1, 63, 128, jnp.bfloat16, False, "LD", False),
    (2, 1000, 5, jnp.float32, True, "LD", True),
    (1, 4097, 5, jnp.complex64, False, "full", True),  # Pallas auto-selects its two-level variant here
    (3, 63, 128, jnp.complex64, True, "B1D", False),
    (1, 4097, 1, jnp.float32, True, "D", True),
]
GRAD_CASES = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[6]]


def case_id(c):
    B, L, D, dt, rev, ak, h0 = c
    return f"B{B}-L{L}-D{D}-{jnp.dtype(dt).name}-{'rev' if rev else 'fwd'}-a{ak}-{'h0' if h0 else 'noh0'}"


# ------------------------------------------------------------------------------------------ forward
def check_forward(backend, case):
    B, L, D, dtype, reverse, a_kind, with_h0 = case
    a, b, h0 = make_inputs(0, B, L, D, dtype, a_kind, with_h0)
    h = jax.jit(lambda a, b, h0: sk.linear_scan(a, b, h0, reverse=reverse, backend=backend))(a, b, h0)
    assert h.shape == b.shape and h.dtype == computed_in(dtype)
    assert_close(h, loop64(a, b, h0, reverse), dtype=computed_in(dtype), name=f"{backend} h")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_float64_loop(backend, case):
    check_forward(backend, case)


# ------------------------------------------------------------------------------------------ gradients
def check_grads(backend, case):
    B, L, D, dtype, reverse, a_kind, with_h0 = case
    a, b, h0 = make_inputs(1, B, L, D, dtype, a_kind, True)
    w = random_cotangent((B, L, D), dtype)
    got = jax.jit(jax.grad(loss_fn(backend, reverse, w), argnums=(0, 1, 2)))(a, b, h0)
    want = jax.grad(loss_fn("reference", reverse, w, vjp="autodiff"), argnums=(0, 1, 2))(a, b, h0)
    for name, g, e, x in zip(("da", "db", "dh0"), got, want, (a, b, h0)):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        # bfloat16 gradients are rounded to bfloat16 on the way out; others stay in the compute dtype.
        assert_close(g, e, dtype=dtype if dtype == jnp.bfloat16 else computed_in(dtype), name=f"{backend} {name}")


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
@pytest.mark.parametrize("backend", ("xla", "pallas"))
def test_gradients_match_reference_autodiff(backend, case):
    check_grads(backend, case)


@pytest.mark.parametrize("reverse", (False, True))
def test_custom_vjp_against_transfer_matrix_and_finite_differences(reverse):
    """Independent math: h = M b + m h0 with an explicit float64 transfer matrix gives db = Mᵀ w and
    dh0 = mᵀ w; da comes from central finite differences of the float64 loop."""
    L = 9
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, (1, L, 1))
    b = rng.normal(size=(1, L, 1))
    h0 = rng.normal(size=(1, 1))
    w = rng.normal(size=(1, L, 1))
    order = list(range(L - 1, -1, -1)) if reverse else list(range(L))
    M = np.zeros((L, L))  # h_t = Σ_s M_ts b_s + m_t h0
    m = np.zeros(L)
    for i, t in enumerate(order):
        for s in order[: i + 1]:
            M[t, s] = np.prod([a[0, r, 0] for r in order[order.index(s) + 1 : i + 1]])
        m[t] = np.prod([a[0, r, 0] for r in order[: i + 1]])
    f = lambda a_: float(np.sum(loop64(a_, b, h0, reverse) * w))  # numpy float64 throughout
    eps = 1e-6
    da_fd = np.zeros(L)
    for t in range(L):
        ap, am = a.copy(), a.copy()
        ap[0, t, 0] += eps
        am[0, t, 0] -= eps
        da_fd[t] = (f(ap) - f(am)) / (2 * eps)
    args = tuple(jnp.asarray(x, jnp.float32) for x in (a, b, h0))
    for backend in ("xla", "pallas"):
        da, db, dh0 = jax.grad(loss_fn(backend, reverse, jnp.asarray(w, jnp.float32)), argnums=(0, 1, 2))(*args)
        assert_close(db[0, :, 0], M.T @ w[0, :, 0], dtype=jnp.float32, name="db")
        assert_close(dh0[0, 0], m @ w[0, :, 0], dtype=jnp.float32, name="dh0")
        assert_close(da[0, :, 0], da_fd, rtol=1e-4, name="da")  # finite differences limit this one


# ------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("backend", ("xla", "pallas"))
def test_jit_vmap_and_leading_dims(backend):
    a, b, h0 = make_inputs(4, 6, 33, 5, jnp.float32, "full")
    want = loop64(a, b, h0)
    scan = lambda a, b, h0: sk.linear_scan(a, b, h0, backend=backend)
    # vmap over an extra leading axis (each example a (B=2, L, D) problem)
    got = jax.jit(jax.vmap(scan))(a.reshape(3, 2, 33, 5), b.reshape(3, 2, 33, 5), h0.reshape(3, 2, 5))
    assert_close(got.reshape(6, 33, 5), want, dtype=jnp.float32, name="vmap")
    # the same as leading batch dims (..., L, D)
    got = jax.jit(scan)(a.reshape(3, 2, 33, 5), b.reshape(3, 2, 33, 5), h0.reshape(3, 2, 5))
    assert_close(got.reshape(6, 33, 5), want, dtype=jnp.float32, name="leading dims")
    # vmap of the gradient, with a time-invariant a broadcast inside each example
    w = random_cotangent((3, 2, 33, 5), jnp.float32)
    a_d = a[0, 0]  # (D,)
    grad = jax.vmap(jax.grad(lambda a, b, w: jnp.sum(scan(a, b, None) * w)), in_axes=(None, 0, 0))
    got = jax.jit(grad)(a_d, b.reshape(3, 2, 33, 5), w)
    ref = jax.jit(
        jax.vmap(jax.grad(lambda a, b, w: jnp.sum(sk.linear_scan(a, b, vjp="autodiff") * w)), in_axes=(None, 0, 0))
    )(a_d, b.reshape(3, 2, 33, 5), w)
    assert got.shape == (3, 5)
    assert_close(got, ref, dtype=jnp.float32, name="vmap grad da")


def test_two_dim_input_without_batch():
    a, b, h0 = make_inputs(5, 1, 20, 3, jnp.float32)
    got = sk.linear_scan(a[0], b[0], h0[0])
    assert got.shape == (20, 3)
    assert_close(got, loop64(a, b, h0)[0], dtype=jnp.float32)


def test_output_dtypes():
    s = lambda dt: jax.ShapeDtypeStruct((1, 4, 2), dt)
    out = lambda f, *args: jax.eval_shape(f, *args).dtype
    assert out(sk.linear_scan, s(jnp.bfloat16), s(jnp.bfloat16)) == jnp.float32
    assert out(sk.linear_scan, s(jnp.float32), s(jnp.complex64)) == jnp.complex64
    assert out(sk.linear_scan_reference, jax.ShapeDtypeStruct((2,), jnp.float32), s(jnp.bfloat16)) == jnp.float32
    with jax.enable_x64(True):
        assert out(sk.linear_scan, s(jnp.float64), s(jnp.float32)) == jnp.float64


# ------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("backend", ("xla", "pallas"))
def test_million_step_cumsum_is_accurate(backend):
    """a = 1, b = 1e-3: a plain float32 loop drifts by ~1%; the fast paths must match float64 to 1e-3."""
    L = 10**6
    a = jnp.ones((1, L, 1), jnp.float32)
    b = jnp.full((1, L, 1), 1e-3, jnp.float32)
    want = np.cumsum(np.full(L, np.float32(1e-3), np.float64))
    got = np.asarray(sk.linear_scan(a, b, backend=backend))[0, :, 0]
    assert_close(got, want, rtol=1e-3, name=f"{backend} cumsum")
    assert abs(got[-1] - want[-1]) / want[-1] < 1e-3


def test_naive_float32_loop_is_inaccurate_at_a_million_steps():
    """Why the test above needs chunked or compensated sums: the plain reference loop is off by more than 1e-3."""
    L = 10**6
    got = np.asarray(sk.linear_scan_reference(jnp.ones((1, L, 1), jnp.float32), jnp.full((1, L, 1), 1e-3, jnp.float32)))
    assert abs(got[0, -1, 0] - L * float(np.float32(1e-3))) / (L * 1e-3) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_unit_modulus_decays_stay_finite(backend):
    L, D = 3000, 4
    theta = np.linspace(0.0, np.pi, D)
    a_c = jnp.asarray(np.exp(1j * theta), jnp.complex64)  # |a| = 1 exactly (up to rounding)
    b_c = jnp.ones((1, L, D), jnp.complex64)
    h = sk.linear_scan(a_c, b_c, backend=backend)
    assert np.all(np.isfinite(np.asarray(h)))
    a_r = jnp.asarray([-1.0, 1.0, 0.0, 0.999], jnp.float32)
    h = sk.linear_scan(a_r, jnp.full((1, L, D), 1e3, jnp.float32), backend=backend)
    assert np.all(np.isfinite(np.asarray(h)))
    assert_close(h, loop64(a_r, jnp.full((1, L, D), 1e3, jnp.float32)), dtype=jnp.float32)


# ------------------------------------------------------------------------------------------ the full matrix
@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [  # the a broadcast (D,) / (B, L, D) and h0 / no h0 alternate along the product instead of doubling it
        (2, L, D, dt, rev, ("D", "full")[i % 2], i % 3 != 0)
        for i, (L, D, dt, rev) in enumerate(
            itertools.product(
                (1, 7, 63, 1000, 4097), (1, 5, 128), (jnp.float32, jnp.complex64, jnp.bfloat16), (False, True)
            )
        )
    ],
    ids=case_id,
)
@pytest.mark.parametrize("backend", ("xla", "pallas"))
def test_full_matrix_forward_and_gradients(backend, case):
    check_forward(backend, case)
    check_grads(backend, case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_under_x64(backend):
    with jax.enable_x64(True):
        a, b, h0 = make_inputs(8, 2, 100, 3, jnp.float64, "LD")
        h = jax.jit(lambda a, b, h0: sk.linear_scan(a, b, h0, backend=backend))(a, b, h0)
        assert h.dtype == jnp.float64
        assert_close(h, loop64(a, b, h0), dtype=jnp.float64)


@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 5, 3), (2, 5, 0)])
def test_empty_inputs(shape):
    b = jnp.ones(shape, jnp.bfloat16)
    for backend in BACKENDS:
        h = sk.linear_scan(b, b, backend=backend)
        assert h.shape == shape and h.dtype == jnp.float32
        hd = sk.dense_linear_scan(jnp.ones((shape[-1], shape[-1]), jnp.float32), b, backend=backend)
        assert hd.shape == shape and hd.dtype == jnp.float32
