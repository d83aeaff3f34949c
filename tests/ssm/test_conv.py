"""ssm.kernels.causal_conv / bidirectional_conv against direct float64 convolutions (numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algornn.ssm import kernels
from tests._utils import assert_close


def _direct_causal(u, K, D=None):
    Bsz, L, Dch = u.shape
    y = np.zeros((Bsz, L, Dch))
    for d in range(Dch):
        for b in range(Bsz):
            y[b, :, d] = np.convolve(u[b, :, d], K[d])[:L]
    if D is not None:
        y += u * D
    return y


def _direct_bidirectional(u, Kf, Kb, D=None):
    y = _direct_causal(u, Kf, D)
    L = u.shape[1]
    for t in range(L):  # strictly future: y_t += Σ_{s>t} K_bwd[s-t-1] u_s
        for s in range(t + 1, L):
            y[:, t, :] += Kb[:, s - t - 1] * u[:, s, :]
    return y


@pytest.mark.parametrize("L, Lk", [(300, 300), (257, 40), (64, 100)])
def test_causal_conv_matches_direct(L, Lk):
    rng = np.random.default_rng(0)
    u, K, D = rng.standard_normal((2, L, 3)), rng.standard_normal((3, Lk)), rng.standard_normal(3)
    y = kernels.causal_conv(jnp.asarray(u, jnp.float32), jnp.asarray(K, jnp.float32), jnp.asarray(D, jnp.float32))
    assert y.shape == (2, L, 3) and y.dtype == jnp.float32
    assert_close(y, _direct_causal(u, K, D), rtol=1e-5)
    y0 = kernels.causal_conv(jnp.asarray(u, jnp.float32), jnp.asarray(K, jnp.float32))
    assert_close(y0, _direct_causal(u, K), rtol=1e-5)


def test_causal_conv_bfloat16_keeps_dtype():
    rng = np.random.default_rng(1)
    u, K = rng.standard_normal((1, 50, 4)), rng.standard_normal((4, 50)) / 5
    y = kernels.causal_conv(jnp.asarray(u, jnp.bfloat16), jnp.asarray(K, jnp.float32))
    assert y.dtype == jnp.bfloat16
    u_rounded = np.asarray(jnp.asarray(u, jnp.bfloat16).astype(jnp.float32), np.float64)
    assert_close(y.astype(jnp.float32), _direct_causal(u_rounded, K), dtype=jnp.bfloat16)


@pytest.mark.parametrize("Lk", [131, 40, 150])
def test_causal_conv_grads_match_direct_reference(Lk):
    """The custom VJP (FFT correlation) against autodiff of the direct Toeplitz convolution."""
    rng = np.random.default_rng(2)
    L = 131
    u = jnp.asarray(rng.standard_normal((2, L, 3)), jnp.float32)
    K = jnp.asarray(rng.standard_normal((3, Lk)), jnp.float32)
    D = jnp.asarray(rng.standard_normal(3), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((2, L, 3)), jnp.float32)
    assert_close(
        kernels.causal_conv_reference(u, K, D),
        _direct_causal(*(np.asarray(x, np.float64) for x in (u, K, D))),
        rtol=1e-5,
    )
    gf = jax.grad(lambda *a: jnp.sum(kernels.causal_conv(*a) * ct), argnums=(0, 1, 2))(u, K, D)
    gr = jax.grad(lambda *a: jnp.sum(kernels.causal_conv_reference(*a) * ct), argnums=(0, 1, 2))(u, K, D)
    for a, b, name in zip(gf, gr, ("u", "K", "D")):
        assert_close(a, b, rtol=1e-5, name=f"d{name}")


def test_bidirectional_conv_matches_direct():
    rng = np.random.default_rng(3)
    L = 77
    u, Kf, Kb, D = (rng.standard_normal(s) for s in ((2, L, 3), (3, L), (3, L), (3,)))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    y = kernels.bidirectional_conv(f32(u), f32(Kf), f32(Kb), f32(D))
    assert_close(y, _direct_bidirectional(u, Kf, Kb, D), rtol=1e-5)
    k2 = kernels.two_sided_kernel(f32(Kf), f32(Kb))
    assert k2.shape == (3, 2 * L)
    np.testing.assert_allclose(np.asarray(k2[:, :L]), Kf, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(k2[:, L:]), Kb[:, ::-1], rtol=1e-6)


def test_conv_bad_input():
    u = jnp.zeros((2, 10, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"u must have shape \(B, L, D\)"):
        kernels.causal_conv(jnp.zeros((10, 3)), jnp.zeros((3, 10)))
    with pytest.raises(ValueError, match=r"K must have shape \(D, L_k\) with D=3"):
        kernels.causal_conv(u, jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"D must have shape \(D,\)"):
        kernels.causal_conv(u, jnp.zeros((3, 10)), jnp.zeros(4))
    with pytest.raises(ValueError, match="u must have a real float dtype"):
        kernels.causal_conv(jnp.zeros((2, 10, 3), jnp.int32), jnp.zeros((3, 10)))
    with pytest.raises(ValueError, match="length L=10"):
        kernels.bidirectional_conv(u, jnp.zeros((3, 9)), jnp.zeros((3, 9)))
