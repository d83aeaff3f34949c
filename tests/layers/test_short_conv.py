"""ShortConv: the full call against a direct NumPy convolution, and the step state against the full call."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn.layers._short_conv import ShortConv
from tests._utils import assert_close


def _numpy_conv(u, w, b):
    """``y[b, t, e] = Σ_j w[j, e] u[b, t − W + 1 + j, e] + b[e]`` with zeros before t = 0, float64."""
    W, (B, L, _) = w.shape[0], u.shape
    y = np.tile(b.astype(np.float64), (B, L, 1))
    for t in range(L):
        for j in range(W):
            s = t - W + 1 + j
            if s >= 0:
                y[:, t] += w[j] * u[:, s]
    return y


@pytest.mark.parametrize("width,activation", [(1, None), (4, None), (3, "silu")])
def test_short_conv_full_and_steps_match_numpy(width, activation):
    B, L, E = 2, 11, 5
    conv = ShortConv(E, width, activation=activation, rngs=nnx.Rngs(0))
    conv.conv_b[...] = jnp.asarray(np.random.default_rng(1).normal(size=E), jnp.float32)
    u = np.random.default_rng(0).normal(size=(B, L, E)).astype(np.float32)
    expected = _numpy_conv(u, np.asarray(conv.conv_w[...]), np.asarray(conv.conv_b[...]))
    if activation == "silu":
        expected = expected / (1 + np.exp(-expected))
    assert_close(conv(jnp.asarray(u)), expected)
    buf = jnp.zeros(conv.state_spec(B).shape, jnp.float32)
    ys = []
    for t in range(L):
        buf, y = conv.step(buf, jnp.asarray(u[:, t]))
        ys.append(y)
    assert_close(jnp.stack(ys, axis=1), expected)
    assert buf.shape == (B, width - 1, E)
    np.testing.assert_allclose(np.asarray(buf), u[:, L - width + 1 :] if width > 1 else u[:, :0])


def test_short_conv_bad_options():
    with pytest.raises(ValueError, match="width"):
        ShortConv(4, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation"):
        ShortConv(4, 3, activation="gelu", rngs=nnx.Rngs(0))
