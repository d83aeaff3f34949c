"""Packed sequences through the fast-weight mixers (``segment_ids``): a packed row equals each sequence run alone.

The oracle runs every sequence by itself through the unpacked mixer, left-aligned in a row of its own and
zero-padded at the end: the mixers are causal, so a sequence's outputs and the gradients with respect to its inputs
do not depend on what follows it. Checked: outputs (exactly 0 on padding) and the gradient of a random linear
functional of the outputs with respect to ``x``, through the projections, the short convolution, the op and the
output path. Mixers whose short convolution or delta-rule op is packed on another branch (``ShortConv`` /
``causal_conv``, ``delta_rule`` / ``delta_product``) pass once those are merged.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests._utils import assert_close, normal
from tests.layers._common import D_MODEL, make_mixer

pytestmark = pytest.mark.loose_promotion  # Flax layers: rank promotion as Flax does it
SLOW = pytest.mark.slow

# (B, L) = (2, 24) with chunks of 8: a one-token sequence, padding between sequences and at both ends, sequences
# across chunk boundaries.
PACKING = np.array(
    [
        [1] * 5 + [0] * 2 + [2] * 9 + [3] + [0] * 3 + [4] * 4,
        [0] + [5] * 12 + [6] * 6 + [7] * 5,
    ],
    np.int32,
)


def _sequences():
    out = []
    for b, row in enumerate(PACKING):
        t = 0
        while t < len(row):
            e = t + 1
            while e < len(row) and row[e] == row[t]:
                e += 1
            if row[t] != 0:
                out.append((b, t, e))
            t = e
    return out


def check_packed(name, **overrides):
    mixer = make_mixer(name, seed=3, **overrides)
    B, L = PACKING.shape
    x = normal(0, (B, L, D_MODEL))
    w = normal(1, (B, L, D_MODEL))
    ids = jnp.asarray(PACKING)
    seqs = _sequences()
    n = max(e - s for _, s, e in seqs)
    rows = np.array([[b] * n for b, _, _ in seqs])
    pos = np.array([[min(s + t, L - 1) for t in range(n)] for _, s, e in seqs])
    valid = np.array([[t < e - s for t in range(n)] for _, s, e in seqs])

    @nnx.jit
    def packed(m, x):
        def loss(x):
            y = m(x, segment_ids=ids)
            return jnp.sum(y * w), y

        (_, y), dx = jax.value_and_grad(loss, has_aux=True)(x)
        return y, dx

    @nnx.jit
    def alone(m, x):
        mask = jnp.asarray(valid)[..., None]

        def loss(x):
            y = m(jnp.where(mask, x[rows, pos], 0.0))
            return jnp.sum(jnp.where(mask, y, 0.0) * w[rows, pos]), y

        (_, y), dx = jax.value_and_grad(loss, has_aux=True)(x)
        return y, dx

    y, dx = packed(mixer, x)
    y_alone, dx_alone = alone(mixer, x)
    y_want = np.zeros((B, L, D_MODEL), np.float32)
    y_want[rows[valid], pos[valid]] = np.asarray(y_alone)[valid]
    assert np.all(np.asarray(y)[PACKING == 0] == 0.0), "padding outputs must be exactly 0"
    assert_close(y, y_want, rtol=2e-5, name="y")
    assert np.all(np.asarray(dx)[PACKING == 0] == 0.0), "padding inputs must get no gradient"
    assert_close(dx, dx_alone, rtol=2e-5, name="dx")


# On linear_attention alone (slow: the ops are tested on their own; the default mixer tests below cover the
# plumbing): GLA (per-key gates, output gate), MLSTM without its convolution (stabiliser restart), LinearAttention
# (normaliser), RetNet (scalar decay).
@pytest.mark.parametrize(
    "name,overrides",
    [
        pytest.param("gla", {}, marks=SLOW),
        pytest.param("mlstm", {"short_conv": None}, marks=SLOW),
        pytest.param("linear_attention", {}, marks=SLOW),
        pytest.param("retnet", {}, marks=SLOW),
    ],
    ids=["gla", "mlstm-noconv", "linear_attention", "retnet"],
)
def test_packed_mixer_on_linear_attention(name, overrides):
    check_packed(name, chunk_size=8, **overrides)


# With a short convolution (packed by ShortConv's segment_ids) and on the delta rule (packed delta_rule /
# delta_product): these pass once those branches are merged.
@pytest.mark.parametrize(
    "name,overrides",
    [
        ("mamba2", {"negative_eigenvalues": True}),
        ("gated_deltanet", {}),
        pytest.param("linear_attention", {"short_conv": 4, "output_gate": True}, marks=SLOW),
        pytest.param("mlstm", {}, marks=SLOW),
        pytest.param("mamba2", {}, marks=SLOW),
        pytest.param("deltanet", {}, marks=SLOW),
        pytest.param("delta_product", {}, marks=SLOW),
    ],
    ids=["mamba2-negative", "gated_deltanet", "linear_attention-conv", "mlstm", "mamba2", "deltanet", "delta_product"],
)
def test_packed_mixer_with_conv_or_delta_rule(name, overrides):
    check_packed(name, chunk_size=8, **overrides)


def test_bad_segment_ids_raise():
    mixer = make_mixer("retnet")
    x = normal(0, (2, 24, D_MODEL))
    shape = r"segment_ids must have shape \(B, L\) = \(2, 24\), the batch and length of x"
    with pytest.raises(ValueError, match=shape):
        mixer(x, segment_ids=jnp.ones((2, 23), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids must be an integer array"):
        mixer(x, segment_ids=jnp.ones((2, 24), jnp.float32))
