"""The two CPU loop forms behind ``backend="xla"``: the single compensated loop and the two-level chunked loop,
each against a float64 Python loop, for every run count P that divides L (1 run, 2 runs, many short runs),
forward / reverse and with the shifted decays of the backward pass; and the choice between them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.scan_kernels._linear_scan import xla as X
from tests._utils import assert_close
from tests.scan_kernels.test_linear_scan import loop64, make_inputs


def shifted64(a, reverse):
    """The decays the backward pass uses: a_{t-1} (a_{t+1} when reverse), 0 at the first visited step."""
    a = np.asarray(a)
    z = np.zeros_like(a[:, :1])
    return np.concatenate([a[:, 1:], z], 1) if reverse else np.concatenate([z, a[:, :-1]], 1)


@pytest.mark.parametrize("P", [1, 2, 4, 12, 48])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_chunked_scan_matches_float64_loop(P, reverse, shifted, dtype):
    B, L, D = 2, 48, 3
    a, b, h0 = make_inputs(P, B, L, D, dtype)
    got = jax.jit(lambda a, b, h0: X.chunked_scan(a, b, h0, chunks=P, reverse=reverse, shifted=shifted))(a, b, h0)
    a_used = shifted64(a, reverse) if shifted else np.asarray(a)
    want = loop64(jnp.asarray(a_used), b, h0, reverse=reverse)
    assert_close(got, want, dtype=dtype, name=f"chunked P={P}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shifted", [False, True])
def test_sequential_scan_matches_float64_loop(reverse, shifted):
    a, b, h0 = make_inputs(3, 2, 37, 4, jnp.float32)
    got = X.sequential_scan(a, b, h0, reverse=reverse, shifted=shifted)
    a_used = shifted64(a, reverse) if shifted else np.asarray(a)
    assert_close(got, loop64(jnp.asarray(a_used), b, h0, reverse=reverse), dtype=jnp.float32)


@pytest.mark.parametrize(
    "shape, P",
    [
        ((1, 16384, 1024), 128),  # √L runs, a 128 × 1024 slab
        ((1, 1000, 5), 25),  # largest divisor of 1000 up to √1000
        ((1, 4097, 5), 17),  # 4097 = 17 · 241
        ((64, 16384, 1024), 4),  # the slab cap (2^18 elements) leaves 4 runs
        ((1, 7, 5), 1),  # too short: the single loop
        ((1, 65537, 5), 1),  # prime: the single loop
        ((128, 16384, 1024), 1),  # slab cap below 4 runs
    ],
)
def test_cpu_chunk_choice(shape, P):
    assert X.cpu_chunks(*shape) == P


def test_zero_state_with_growing_decay_stays_zero():
    """|a| > 1 over a whole run overflows the run's decay product; a zero state must still read 0, not 0·inf."""
    L = 4096  # 64 runs of 64 steps: 2^64 fits float32 but the product over several runs does not
    a = jnp.full((1, L, 2), 4.0, jnp.float32)
    b = jnp.zeros((1, L, 2), jnp.float32)
    h = sk.linear_scan(a, b, backend="xla")
    assert np.array_equal(np.asarray(h), np.zeros((1, L, 2), np.float32))
