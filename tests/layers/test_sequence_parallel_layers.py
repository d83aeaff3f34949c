"""Mixers with ``sequence_axis="seq"`` under ``jax.set_mesh`` of 4 CPU devices (time sharded): S4D (scan mode, causal
and bidirectional), DeltaNet and GatedDeltaNet give their unsharded outputs and parameter gradients; the option is
refused where there is no scan to shard."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from algornn.layers import S4D, DeltaNet, DeltaProduct, GatedDeltaNet
from tests._utils import assert_close, normal

pytestmark = pytest.mark.loose_promotion  # Flax layers


@pytest.fixture(scope="module")
def seq4():
    return jax.make_mesh((4,), ("seq",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])


def _value_and_param_grads(layer, x):
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params, x):
        y = nnx.merge(graphdef, params, rest)(x)
        w = jnp.asarray(normal(7, y.shape))
        return jnp.sum(y * w), y

    (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, x)
    return y, g


CASES = {
    "s4d": (S4D, dict(d_state=8, mode="scan")),
    "s4d_bidirectional": (S4D, dict(d_state=8, mode="scan", bidirectional=True)),
    "deltanet": (DeltaNet, dict(num_heads=2, chunk_size=16)),
    "gated_deltanet": (GatedDeltaNet, dict(num_heads=2, chunk_size=16)),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c == "gated_deltanet" else c for c in sorted(CASES)]
)
def test_sharded_time_matches_one_device(seq4, case):
    cls, opts = CASES[case]
    plain = cls(8, **opts, rngs=nnx.Rngs(0))
    sharded = cls(8, **opts, sequence_axis="seq", rngs=nnx.Rngs(0))
    x = normal(1, (2, 256, 8))
    want_y, want_g = _value_and_param_grads(plain, x)
    with jax.set_mesh(seq4):
        xs = jax.device_put(x, NamedSharding(seq4, P(None, "seq")))
        y, g = _value_and_param_grads(sharded, xs)
        jaxpr = str(jax.make_jaxpr(lambda x: sharded(x))(xs))
    assert "shard_map" in jaxpr
    assert_close(y, want_y, rtol=2e-5, name="y")
    for (path, got), (_, want) in zip(jax.tree.leaves_with_path(g), jax.tree.leaves_with_path(want_g)):
        assert_close(got, want, rtol=2e-5, name=jax.tree_util.keystr(path))
    assert_close(sharded(x), want_y, rtol=2e-5, name="no mesh: unsharded")


def test_sequence_axis_refused_without_a_scan():
    with pytest.raises(ValueError, match=r"sequence_axis='seq' needs a scan over time: S4D shards time only in mode="):
        S4D(8, d_state=8, sequence_axis="seq", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"sequence_axis='seq' needs a scan over time: DeltaProduct has no"):
        DeltaProduct(8, num_heads=2, sequence_axis="seq", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"sequence_axis=3 must be None or the name of a mesh axis"):
        DeltaNet(8, num_heads=2, sequence_axis=3, rngs=nnx.Rngs(0))
