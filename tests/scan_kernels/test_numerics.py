"""The shared arithmetic helpers: ``two_sum`` against exact rational arithmetic, ``cmul`` against complex128."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algornn.scan_kernels._common.numerics import cmul, two_sum

F32 = np.float32
TINY = float(np.finfo(F32).smallest_subnormal)


def adversarial_pairs():
    """float32 pairs whose sum rounds: absorbed addends, ties, cancellation, subnormals, wide exponent gaps."""
    eps = float(np.finfo(F32).eps)
    pairs = [
        (1.0, 2.0**-30),  # y vanishes entirely in fl(x + y)
        (2.0**24, 1.0),  # exactly halfway: ties-to-even drops the 1
        (2.0**24 + 2, 1.0),  # halfway the other way: rounds up
        (1.0, -(1.0 - eps / 2)),  # catastrophic cancellation (exact by Sterbenz)
        (1.0 + eps, -1.0),
        (3.0, 2.0**-23 * 3),
        (1e30, -1e-30),
        (TINY, TINY),  # subnormals
        (TINY * 3, -1e-38),
        (-(2.0**100), 2.0**76 + 2.0**75),
        (0.1, 0.2),
        (-0.0, 0.0),
        (F32(np.pi), F32(np.e) * 2.0**-20),
    ]
    rng = np.random.default_rng(0)
    m = rng.uniform(1, 2, (200, 2)) * rng.choice([-1, 1], (200, 2))
    e = rng.integers(-40, 40, (200, 2))
    pairs += [tuple(r) for r in (m * 2.0**e)]
    x, y = (np.asarray(v, F32) for v in zip(*pairs))
    return np.concatenate([x, y]), np.concatenate([y, x])  # both orders: no |x| >= |y| precondition


def _assert_exact(x, y, s, e):
    s, e = np.asarray(s), np.asarray(e)
    assert s.dtype == np.float32 and e.dtype == np.float32
    np.testing.assert_array_equal(s, x + y)  # s is the rounded sum
    for xi, yi, si, ei in zip(x, y, s, e):
        assert Fraction(float(si)) + Fraction(float(ei)) == Fraction(float(xi)) + Fraction(float(yi)), (xi, yi)


def test_two_sum_is_exact_against_rationals():
    x, y = adversarial_pairs()
    s, e = two_sum(x, y)
    _assert_exact(x, y, s, e)
    assert np.count_nonzero(e) > 100  # most pairs do round: the errors are real
    # Under jit on CPU, XLA flushes subnormals to zero, so the identity holds wherever nothing is subnormal.
    normal = np.finfo(F32).tiny
    keep = [i for i in range(len(x)) if all(v == 0 or abs(v) >= normal for v in (x[i], y[i], s[i], e[i]))]
    assert len(keep) > 400
    _assert_exact(x[keep], y[keep], *jax.jit(two_sum)(jnp.asarray(x[keep]), jnp.asarray(y[keep])))


def test_two_sum_keeps_what_naive_summation_loses():
    """Adding 2^-25 to 1.0 in float32: the plain sum never moves; the compensated sum (the scans' carry) is exact."""
    small, steps = F32(2.0**-25), 64
    naive, s, c = F32(1.0), F32(1.0), F32(0.0)
    for _ in range(steps):
        naive = naive + small
        s, c = two_sum(s, small + c)
    assert naive == F32(1.0)
    assert Fraction(float(s)) + Fraction(float(c)) == 1 + Fraction(steps, 2**25)


def _planes(z, dtype):
    return (np.real(z).astype(dtype), np.imag(z).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cmul_matches_complex128(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64,)) * 10.0 ** rng.integers(-3, 3, 64) + 1j * rng.normal(size=(64,))
    y = rng.normal(size=(64,)) + 1j * rng.normal(size=(64,)) * 10.0 ** rng.integers(-3, 3, 64)
    xp, yp = _planes(x, dtype), _planes(y, dtype)
    xc = np.asarray(xp[0], np.float64) + 1j * np.asarray(xp[1], np.float64)
    yc = np.asarray(yp[0], np.float64) + 1j * np.asarray(yp[1], np.float64)
    exact = xc * yc  # complex128
    # normwise bound of the textbook formula, |err| <= sqrt(5) u |x| |y| (Higham, ASNA §3.6); doubled because
    # the complex128 product has its own rounding (negligible for float32 planes, equal for float64 ones)
    bound = 2 * np.sqrt(5) * (np.finfo(dtype).eps / 2) * np.abs(exact)
    results = [cmul(xp, yp)]
    if dtype == np.float32:  # as inside the kernels: traced jax arrays
        results.append(jax.jit(cmul)(tuple(map(jnp.asarray, xp)), tuple(map(jnp.asarray, yp))))
    for re, im in results:
        assert re.dtype == dtype and im.dtype == dtype
        got = np.asarray(re, np.float64) + 1j * np.asarray(im, np.float64)
        assert np.all(np.abs(got - exact) <= bound), np.max(np.abs(got - exact) / bound)
    assert np.max(np.abs(xc * np.conj(yc) - exact) / bound) > 1e3  # a wrong formula would not pass the bound


def test_cmul_real_planes_and_broadcasting():
    a = (np.array([[2.0], [3.0]]),)
    b = (np.array([1.0, -4.0, 0.5]),)
    (p,) = cmul(a, b)
    np.testing.assert_array_equal(p, [[2.0, -8.0, 1.0], [3.0, -12.0, 1.5]])
    re, im = cmul((np.array(0.0), np.array(1.0)), (np.array(0.0), np.array(1.0)))  # i · i = -1
    assert (re, im) == (-1.0, 0.0)


def test_cmul_refuses_mixed_planes():
    with pytest.raises(ValueError, match="got 1 and 2 planes"):
        cmul((1.0,), (1.0, 2.0))
