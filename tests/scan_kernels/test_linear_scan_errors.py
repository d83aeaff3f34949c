"""Bad input to linear_scan / dense_linear_scan: a ValueError naming the argument, its shape/dtype and what
was expected (never an XLA trace or a silent broadcast)."""

import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk

F = jnp.float32


def ones(*shape, dtype=F):
    return jnp.ones(shape, dtype)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=ones(4, 3), b=ones(3)), r"b must have shape \(B, L, D\).*shape \(3,\)"),
        (dict(a=ones(5), b=ones(2, 4, 3)), r"a must be broadcastable to b's shape \(2, 4, 3\).*shape \(5,\)"),
        (dict(a=ones(3, 4, 3), b=ones(2, 4, 3)), r"a must be broadcastable.*shape \(3, 4, 3\)"),
        (dict(a=ones(1, 2, 4, 3), b=ones(2, 4, 3)), r"a must be broadcastable.*shape \(1, 2, 4, 3\)"),
        (dict(a=ones(3), b=ones(2, 4, 3), h0=ones(3)), r"h0 must have shape \(2, 3\).*shape \(3,\)"),
        (dict(a=ones(3), b=ones(2, 4, 3), h0=ones(2, 4)), r"h0 must have shape \(2, 3\).*shape \(2, 4\)"),
        (dict(a=ones(3, dtype=jnp.int32), b=ones(2, 4, 3)), r"a must have a floating or complex dtype.*int32"),
        (dict(a=ones(3), b=ones(2, 4, 3, dtype=jnp.int32)), r"b must have a floating or complex dtype.*int32"),
        (dict(a=ones(3), b=ones(2, 4, 3), h0=ones(2, 3, dtype=jnp.bool_)), r"h0 must have a floating.*bool"),
        (dict(a=[1.0, 2.0, 3.0], b=ones(2, 4, 3)), r"a must be a jax or numpy array.*list"),
        (
            dict(a=ones(3), b=ones(2, 4, 3), backend="cuda"),
            r"backend='cuda' is not one of None \(auto\), 'reference', 'xla', 'pallas'",
        ),
        (dict(a=ones(3), b=ones(2, 4, 3), vjp="fd"), r"vjp='fd' is not one of \['custom', 'autodiff'\]"),
        (dict(a=ones(3), b=ones(2, 4, 3), reverse="yes"), r"reverse='yes' must be True or False"),
    ],
)
def test_linear_scan_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.linear_scan(**kwargs)


def test_linear_scan_reference_validates_too():
    with pytest.raises(ValueError, match=r"a must be broadcastable"):
        sk.linear_scan_reference(ones(5), ones(2, 4, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(A=ones(3, 3), b=ones(3)), r"b must have shape \(B, L, N\).*shape \(3,\)"),
        (dict(A=ones(4, 4), b=ones(2, 5, 3)), r"A must be \(N, N\) or \(B, L, N, N\) with N=3.*shape \(4, 4\)"),
        (dict(A=ones(3), b=ones(2, 5, 3)), r"A must be \(N, N\).*shape \(3,\)"),
        (dict(A=ones(4, 5, 3, 3), b=ones(2, 5, 3)), r"A must be broadcastable.*\(2, 5, 3, 3\).*shape \(4, 5, 3, 3\)"),
        (dict(A=ones(3, 3), b=ones(2, 5, 3), h0=ones(2, 4)), r"h0 must have shape \(2, 3\).*shape \(2, 4\)"),
        (dict(A=ones(3, 3, dtype=jnp.int8), b=ones(2, 5, 3)), r"A must have a floating or complex dtype.*int8"),
        (dict(A=ones(3, 3), b=np.ones((2, 5, 3), np.int64)), r"b must have a floating or complex dtype.*int64"),
        (dict(A=ones(3, 3), b=ones(2, 5, 3), backend="triton"), r"backend='triton' is not one of"),
    ],
)
def test_dense_linear_scan_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.dense_linear_scan(**kwargs)
