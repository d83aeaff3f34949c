"""Batch-sharded inputs on the 4-device CPU mesh (explicit axes): every backend of linear_scan and
dense_linear_scan runs (Pallas per device under shard_map), keeps the batch sharding, and matches the
unsharded result, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import algornn.scan_kernels as sk
from tests._utils import assert_close


@pytest.mark.parametrize("backend", ("reference", "xla", "pallas"))
def test_batch_sharded_linear_and_dense_scans(mesh4, backend):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-1, 1, (8, 33, 5)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(8, 33, 5)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    A = jnp.asarray(rng.normal(size=(5, 5)) * 0.3, jnp.float32)
    lin = lambda a, b, h0: jnp.sum(sk.linear_scan(a, b, h0, backend=backend) ** 2)
    den = lambda A, b, h0: jnp.sum(sk.dense_linear_scan(A, b, h0, backend=backend) ** 2)
    want_h = sk.linear_scan_reference(a, b, h0)
    want_g = jax.grad(lin, argnums=(0, 1, 2))(a, b, h0)
    want_dense = jax.grad(den, argnums=(0, 1, 2))(A, b, h0)
    with jax.set_mesh(mesh4):
        sh = NamedSharding(mesh4, P("data"))
        a_s, b_s, h0_s = (jax.device_put(x, sh) for x in (a, b, h0))
        h = jax.jit(lambda a, b, h0: sk.linear_scan(a, b, h0, backend=backend))(a_s, b_s, h0_s)
        assert h.sharding.spec[0] == "data"
        g = jax.jit(jax.grad(lin, argnums=(0, 1, 2)))(a_s, b_s, h0_s)
        gd = jax.jit(jax.grad(den, argnums=(0, 1, 2)))(A, b_s, h0_s)
    assert_close(h, want_h, dtype=jnp.float32, name="h")
    for name, x, y in zip(("da", "db", "dh0", "dA", "db dense", "dh0 dense"), g + gd, want_g + want_dense):
        assert_close(x, y, dtype=jnp.float32, name=name)


def test_pallas_refuses_channel_sharding(mesh4):
    b = jnp.ones((4, 6, 8), jnp.float32)
    with jax.set_mesh(mesh4):
        b_s = jax.device_put(b, NamedSharding(mesh4, P(None, None, "data")))
        with pytest.raises(ValueError, match=r"batch\) axis only.*shape \(4, 6, 8\)"):
            jax.jit(lambda b: sk.linear_scan(b, b, backend="pallas"))(b_s)
