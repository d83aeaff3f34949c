"""``chunk_cumsum`` (a cumulative sum as a product with a triangle of ones) and ``factor_midpoint`` (when chunk
decays may be split into a query and a key factor) against NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from algornn.scan_kernels._common.chunk_utils import FACTOR_LIMIT, chunk_cumsum, factor_midpoint
from tests._utils import assert_close

SHAPES = [((5,), 0), ((2, 3, 7), -1), ((2, 3, 7, 4), -2), ((3, 6, 2, 5), 1), ((2, 0), -1)]  # last, middle, empty


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_chunk_cumsum_matches_numpy(shape, axis, reverse):
    x = np.random.RandomState(0).randn(*shape)
    want = np.flip(np.cumsum(np.flip(x, axis), axis), axis) if reverse else np.cumsum(x, axis)
    got = chunk_cumsum(jnp.asarray(x, jnp.float32), axis, reverse=reverse)
    assert got.shape == x.shape
    assert_close(got, want, name="cumsum")


def test_factor_midpoint_bounds_every_exponent():
    gam = jnp.asarray(np.cumsum(-np.random.RandomState(1).rand(3, 16), -1), jnp.float32)  # spans below 16
    mid, ok = factor_midpoint(gam)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(mid)[:, 0], (np.asarray(gam).max(-1) + np.asarray(gam).min(-1)) / 2)
    wide = gam.at[0, -1].set(-2.5 * FACTOR_LIMIT)  # one row spans 2.5 limits: |γ − μ| > limit somewhere
    assert not bool(factor_midpoint(wide)[1])
    assert not bool(factor_midpoint(gam.at[1, 3].set(jnp.nan))[1])
    assert not bool(factor_midpoint(gam.at[2, 5].set(-jnp.inf))[1])
