"""The one validation module: every check takes ``(name, value, ...)``, returns the value, and its ValueError names
the argument, shows what it got and says what was expected."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algornn.scan_kernels._common import validate as v


@pytest.mark.parametrize(
    "call, ok",
    [
        (lambda: v.check_choice("mode", "b", ("a", "b")), "b"),
        (lambda: v.check_choice("flag", None, (None, "x")), None),
        (lambda: v.check_bool("reverse", True), True),
        (lambda: v.check_bool("reverse", np.bool_(False)), False),
        (lambda: v.check_int("n", np.int64(6), multiple_of=3), 6),
        (lambda: v.check_int("n", 0, minimum=0), 0),
        (lambda: v.check_int("n", 250, minimum=2, maximum=250), 250),
        (lambda: v.check_float("rate", 1), 1),
        (lambda: v.check_float("p", 0.0, low_open=False, high=1.0), 0.0),
    ],
)
def test_scalar_checks_accept_and_return(call, ok):
    out = call()
    assert out == ok and type(out) is type(ok)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: v.check_choice("mode", "c", ("a", "b")), "mode='c' is not one of ['a', 'b']"),
        (lambda: v.check_choice("mode", ["a"], ("a", "b")), "mode=['a'] is not one of ['a', 'b']"),
        (lambda: v.check_bool("reverse", 1), "reverse=1 must be True or False"),
        (lambda: v.check_bool("reverse", "yes"), "reverse='yes' must be True or False"),
        (lambda: v.check_int("n", 0), "n=0 must be an integer >= 1"),
        (lambda: v.check_int("n", True), "n=True must be an integer >= 1"),
        (lambda: v.check_int("n", 2.0), "n=2.0 must be an integer >= 1"),
        (lambda: v.check_int("n", 7, multiple_of=2), "n=7 must be an integer >= 1 and a multiple of 2"),
        (lambda: v.check_int("n", 251, minimum=2, maximum=250), "n=251 must be an integer in [2, 250]"),
        (lambda: v.check_float("rate", 0.0), "rate=0.0 must be a number in (0.0, inf]"),
        (lambda: v.check_float("p", 1.5, high=1.0, low_open=False), "p=1.5 must be a number in [0.0, 1.0]"),
        (lambda: v.check_float("p", "0.5"), "p='0.5' must be a number in (0.0, inf]"),
        (lambda: v.check_float("p", False), "p=False must be a number in (0.0, inf]"),
    ],
)
def test_scalar_checks_name_value_and_expectation(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_describe():
    assert v.describe(np.zeros((2, 3), np.float32)) == "shape (2, 3) dtype float32"
    assert v.describe(jnp.zeros((4,), jnp.bfloat16)) == "shape (4,) dtype bfloat16"
    assert v.describe([1.0, 2.0]) == "a list (not an array)"
    assert v.describe(jax.ShapeDtypeStruct((1, 5), jnp.complex64)) == "shape (1, 5) dtype complex64"


F = jnp.zeros((2, 3), jnp.float32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: v.check_array("a", [1.0]), "a must be a jax or numpy array, got a list (not an array)"),
        (lambda: v.as_array("a", "abc"), "a must be an array, got str"),
        (lambda: v.as_array("a", [[1.0], [1.0, 2.0]]), "a must be an array, got list"),
        (
            lambda: v.check_inexact("b", jnp.zeros((2,), jnp.int32)),
            "b must have a floating or complex dtype, got shape (2,) dtype int32",
        ),
        (
            lambda: v.check_inexact("dt", jnp.zeros((2,), jnp.complex64), allow_complex=False),
            "dt must have a real float dtype, got shape (2,) dtype complex64",
        ),
        (
            lambda: v.check_ndim("x", F, 3, "(B, L, D)"),
            "x must have shape (B, L, D) (3 dims), got shape (2, 3) dtype float32",
        ),
        (
            lambda: v.check_ndim("P", F[0], 2, "(..., rank, N/2)", at_least=True),
            "P must have shape (..., rank, N/2) (at least 2 dims), got shape (3,) dtype float32",
        ),
        (
            lambda: v.check_shape("h0", F, (2, 4), "(B, D)"),
            "h0 must have shape (2, 4) ((B, D)), got shape (2, 3) dtype float32",
        ),
        (
            lambda: v.check_broadcastable("a", F, (5, 2, 4), "b"),
            "a must be broadcastable to b's shape (5, 2, 4), got shape (2, 3) dtype float32",
        ),
        (
            lambda: v.check_broadcastable("a", jnp.zeros((1, 5, 2, 3)), (5, 2, 3), "b"),
            "a must be broadcastable to b's shape (5, 2, 3), got shape (1, 5, 2, 3) dtype float32",
        ),
    ],
)
def test_array_checks_name_shape_dtype_and_expectation(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_array_checks_accept_and_return():
    assert v.check_inexact("x", jnp.zeros(2, jnp.bfloat16), allow_complex=False) is not None
    assert v.check_inexact("x", jnp.zeros(2, jnp.complex64)).dtype == jnp.complex64
    assert v.check_ndim("x", F, 1, "(..., D)", at_least=True) is F
    assert v.check_shape("x", F, (2, 3)) is F
    for shape in [(3,), (1, 3), (2, 3), (4, 1, 3), (4, 2, 1)]:
        v.check_broadcastable("a", jnp.zeros(shape), (4, 2, 3), "b")
    assert v.as_array("x", [[1, 2]]).shape == (1, 2)


def test_array_checks_work_on_tracers():
    """Inside jit the checks see shapes and dtypes of tracers and still raise at trace time."""

    @jax.jit
    def f(x):
        v.check_inexact("x", x)
        v.check_ndim("x", x, 2, "(B, D)")
        return x * 2

    assert f(F).shape == (2, 3)
    with pytest.raises(ValueError, match=re.escape("x must have shape (B, D) (2 dims), got shape (3,)")):
        f(F[0])
