"""rg_lru (Griffin/Hawk RG-LRU): the reference against an independent float64 numpy loop; rg_lru on every fast
backend of linear_scan against the reference, forward and all gradients with random cotangents; a → 1 accuracy
of the √(1 − a²) scale; bfloat16 inputs; step-by-step decoding; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close


def _sigmoid64(z):
    return 1.0 / (1.0 + np.exp(-z))


def loop64(x, r, i, log_a, c=8.0, h0=None, reverse=False):
    """The RG-LRU as written in the paper, token by token in float64: a_t = σ(Λ)^(c σ(r_t)), the input scaled by
    √(1 − a_t²) σ(i_t) (the naive form, exact enough in float64)."""
    x, r, i, log_a = (np.asarray(v, np.float64) for v in (x, r, i, log_a))
    B, L, D = x.shape
    h = np.zeros((B, D)) if h0 is None else np.asarray(h0, np.float64).copy()
    out = np.zeros((B, L, D))
    base = np.exp(log_a)  # a = σ(Λ)
    for t in reversed(range(L)) if reverse else range(L):
        a_t = base ** (c * _sigmoid64(r[:, t]))
        h = a_t * h + np.sqrt(1.0 - a_t**2) * (_sigmoid64(i[:, t]) * x[:, t])
        out[:, t] = h
    return out


def make_inputs(seed, B, L, D, dtype=jnp.float32, with_h0=True, log_a=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, L, D))
    r = 2.0 * rng.normal(size=(B, L, D))
    i = 2.0 * rng.normal(size=(B, L, D))
    if log_a is None:  # Λ spread so that a = σ(Λ) covers 0.1 … 0.9999 (the paper's init: a^c in [0.9, 0.999])
        log_a = -np.log1p(np.exp(-rng.uniform(-2.0, 9.0, D)))  # log σ(Λ)
    h0 = rng.normal(size=(B, D)) if with_h0 else None
    cast = lambda v: None if v is None else jnp.asarray(v, dtype)  # noqa: E731
    return cast(x), cast(r), cast(i), cast(np.asarray(log_a)), cast(h0)


@pytest.mark.parametrize(
    "L, reverse, with_h0, c",
    [
        (1, False, True, 8.0),
        (63, False, False, 8.0),
        (63, True, True, 8.0),
        (500, False, True, 8.0),
        (500, True, False, 2.5),
        (1000, False, True, 8.0),
    ],
)
def test_reference_matches_float64_loop(L, reverse, with_h0, c):
    x, r, i, log_a, h0 = make_inputs(L, 2, L, 5, with_h0=with_h0)
    h = sk.rg_lru_reference(x, r, i, log_a, c=c, h0=h0, reverse=reverse)
    assert h.dtype == jnp.float32 and h.shape == (2, L, 5)
    assert_close(h, loop64(x, r, i, log_a, c, h0, reverse), name="rg_lru_reference")


@pytest.mark.parametrize("backend", ["xla", "pallas"])
@pytest.mark.parametrize("L, reverse", [(1, False), (63, True), (500, False), (1000, True)])
def test_forward_and_gradients_match_reference(backend, L, reverse):
    x, r, i, log_a, h0 = make_inputs(100 + L, 2, L, 6)
    h = sk.rg_lru(x, r, i, log_a, h0=h0, reverse=reverse, backend=backend)
    assert h.dtype == jnp.float32
    assert_close(h, loop64(x, r, i, log_a, 8.0, h0, reverse), name="rg_lru vs float64")
    assert_close(h, sk.rg_lru_reference(x, r, i, log_a, h0=h0, reverse=reverse), name="rg_lru vs reference")

    ct = jnp.asarray(np.random.default_rng(L).normal(size=h.shape), jnp.float32)  # random cotangent

    def loss(f, *args):
        return jnp.sum(f(*args[:4], h0=args[4], reverse=reverse) * ct)

    args = (x, r, i, log_a, h0)
    fast = jax.grad(lambda *a: loss(lambda *b, **k: sk.rg_lru(*b, **k, backend=backend), *a), argnums=range(5))(*args)
    ref = jax.grad(lambda *a: loss(sk.rg_lru_reference, *a), argnums=range(5))(*args)
    for name, g, gr in zip(("x", "r", "i", "log_a", "h0"), fast, ref):
        assert g.shape == gr.shape
        assert_close(g, gr, rtol=2e-5, name=f"d{name}")


def test_gradients_match_finite_differences_of_float64_loop():
    """The reference's autodiff gradients (which the fast backends match above) against central differences of
    the independent float64 loop, along a random direction in every input."""
    x, r, i, log_a, h0 = make_inputs(7, 2, 9, 3)
    rng = np.random.default_rng(1)
    ct = rng.normal(size=(2, 9, 3))
    dirs = [rng.normal(size=v.shape) for v in (x, r, i, log_a, h0)]
    grads = jax.grad(
        lambda *a: jnp.sum(sk.rg_lru_reference(*a[:4], h0=a[4]) * jnp.asarray(ct, jnp.float32)), argnums=range(5)
    )(x, r, i, log_a, h0)
    base = [np.asarray(v, np.float64) for v in (x, r, i, log_a, h0)]
    eps = 1e-6
    for k, name in enumerate(("x", "r", "i", "log_a", "h0")):
        plus = [b + eps * d if j == k else b for j, (b, d) in enumerate(zip(base, dirs))]
        minus = [b - eps * d if j == k else b for j, (b, d) in enumerate(zip(base, dirs))]
        fd = (np.sum(loop64(*plus[:4], h0=plus[4]) * ct) - np.sum(loop64(*minus[:4], h0=minus[4]) * ct)) / (2 * eps)
        ad = float(np.sum(np.asarray(grads[k], np.float64) * dirs[k]))
        assert abs(ad - fd) <= 1e-4 * max(1.0, abs(fd)), (name, ad, fd)


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_bfloat16_inputs_accumulate_in_float32(backend):
    x, r, i, log_a, h0 = make_inputs(3, 2, 63, 4, dtype=jnp.bfloat16)
    h = sk.rg_lru(x, r, i, log_a, h0=h0, backend=backend)
    assert h.dtype == jnp.float32
    # the exact recurrence of the bf16 values: only float32 rounding separates them
    assert_close(h, loop64(x, r, i, log_a, 8.0, h0), rtol=1e-5, name="bf16 inputs")
    g = jax.grad(lambda x_: jnp.sum(sk.rg_lru(x_, r, i, log_a, h0=h0, backend=backend)))(x)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


@pytest.mark.parametrize("log_a_value", [-1e-4, -1e-6, -1e-8])
def test_scale_is_accurate_as_a_tends_to_one(log_a_value):
    """L = 1, h0 = 0: h_1 = √(1 − a²) σ(i) x exactly, so h measures the scale itself. In float32 the naive
    1 − a² loses most digits here (a = exp(−8e−8) rounds to 1 − 6e−8); −expm1(2 log a) keeps them."""
    x, r, i, _, _ = make_inputs(11, 3, 1, 5, with_h0=False)
    log_a = jnp.full((5,), log_a_value, jnp.float32)
    expected = loop64(x, r, i, log_a)
    for f in (sk.rg_lru_reference, lambda *a: sk.rg_lru(*a, backend="xla")):
        h = f(x, r, i, log_a)
        assert_close(h, expected, rtol=1e-6, name=f"log_a={log_a_value}")
    # the naive float32 form is measurably worse at these decays (so the check above can fail)
    a = jnp.exp(8.0 * jax.nn.sigmoid(r) * log_a[None, None])
    naive = jnp.sqrt(1.0 - a * a) * jax.nn.sigmoid(i) * x
    if log_a_value <= -1e-6:
        with pytest.raises(AssertionError):
            assert_close(naive, expected, rtol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "xla", "pallas"])
def test_no_nan_at_a_equal_one(backend):
    """log_a = 0 (a = 1: the scale is 0, the derivative of √u at 0 is infinite) and log_a ≈ 0: forward and every
    gradient finite; where a = 1 the channel just carries h0."""
    x, r, i, _, h0 = make_inputs(5, 2, 40, 4)
    log_a = jnp.asarray([0.0, -1e-30, -1e-9, -0.5], jnp.float32)
    h = sk.rg_lru(x, r, i, log_a, h0=h0, backend=backend)
    assert bool(jnp.all(jnp.isfinite(h)))
    np.testing.assert_array_equal(np.asarray(h[:, :, 0]), np.broadcast_to(np.asarray(h0[:, None, 0]), (2, 40)))
    grads = jax.grad(lambda *a: jnp.sum(sk.rg_lru(*a[:4], h0=a[4], backend=backend) ** 2), argnums=range(5))(
        x, r, i, log_a, h0
    )
    for name, g in zip(("x", "r", "i", "log_a", "h0"), grads):
        assert bool(jnp.all(jnp.isfinite(g))), name


def test_step_by_step_equals_full_call():
    x, r, i, log_a, h0 = make_inputs(9, 2, 17, 5)
    full = sk.rg_lru(x, r, i, log_a, h0=h0, c=6.0, backend="xla")
    h, steps = h0, []
    for t in range(17):
        h = sk.rg_lru_step(h, x[:, t], r[:, t], i[:, t], log_a, c=6.0)
        steps.append(h)
    assert_close(jnp.stack(steps, axis=1), full, name="steps")


def test_jit_and_empty_length():
    x, r, i, log_a, h0 = make_inputs(2, 2, 10, 3)
    f = jax.jit(lambda *a: sk.rg_lru(*a[:4], h0=a[4]))  # auto backend, under jit
    assert_close(f(x, r, i, log_a, h0), sk.rg_lru_reference(x, r, i, log_a, h0=h0), name="jit")
    e = jnp.zeros((2, 0, 3), jnp.float32)
    assert sk.rg_lru(e, e, e, log_a).shape == (2, 0, 3)


def _bad_calls():
    x, r, i, log_a, h0 = make_inputs(0, 2, 6, 3)
    return [
        (lambda: sk.rg_lru(x[0], r, i, log_a), "x must have shape (B, L, D)"),
        (lambda: sk.rg_lru(x, r[:, :5], i, log_a), "r must have shape (2, 6, 3)"),
        (lambda: sk.rg_lru(x, r, i[..., :2], log_a), "i must have shape (2, 6, 3)"),
        (lambda: sk.rg_lru(x, r, i, log_a[:2]), "log_a must have shape (3,)"),
        (lambda: sk.rg_lru(x, r, i, jnp.zeros((2, 3))), "log_a must have shape (3,)"),
        (lambda: sk.rg_lru(x, r, i, log_a, h0=h0[:1]), "h0 must have shape (2, 3)"),
        (lambda: sk.rg_lru(x.astype(jnp.complex64), r, i, log_a), "x must have a real float dtype"),
        (lambda: sk.rg_lru(x, r.astype(jnp.int32), i, log_a), "r must have"),
        (lambda: sk.rg_lru(x, r, i, log_a, c=0.0), "c=0.0"),
        (lambda: sk.rg_lru(x, r, i, log_a, backend="triton"), "backend='triton'"),
        (lambda: sk.rg_lru(x, r, i, log_a, reverse=1), "reverse=1"),
        (lambda: sk.rg_lru_reference(x, r, i, log_a, h0=h0.T), "h0 must have shape (2, 3)"),
        (lambda: sk.rg_lru_step(h0, x[:, 0], r[:, 0], i, log_a), "i must have shape (2, 3)"),
        (lambda: sk.rg_lru_step(None, x[:, 0], r[:, 0], i[:, 0], log_a), "h must be the previous state"),
        (lambda: sk.rg_lru_step(h0[:1], x[:, 0], r[:, 0], i[:, 0], log_a), "h must have shape (2, 3)"),
    ]


@pytest.mark.parametrize("call, msg", _bad_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_raises_value_error_naming_the_argument(call, msg):
    with pytest.raises(ValueError) as info:
        call()
    assert msg in str(info.value), str(info.value)
