"""Parameter tagging and the optax label tree (docs/layers.md §SSM parameter tagging).

SSM parameters (Δ, A/Λ, B, P) are ordinary ``nnx.Param`` with metadata ``tag="ssm"``: they stay in the
``params`` collection (also through ``flax.nnx.bridge.ToLinen``, where an ``nnx.Param`` subclass would land in a
collection of its own and silently not train), and an optimizer can still give them their own learning rate and no
weight decay through ``ssm_param_labels``. Complex quantities are stored as pairs of real arrays
(``Lambda_re``/``Lambda_im``, ``B_re``/``B_im``) so optimizers and checkpoints see no complex leaves.
"""

import jax
import jax.numpy as jnp
from flax import nnx

SSM_TAG = "ssm"


def ssm_param(value) -> nnx.Param:
    """An ``nnx.Param`` tagged as an SSM parameter (own learning rate, no weight decay)."""
    return nnx.Param(jnp.asarray(value), tag=SSM_TAG)


def is_ssm_param(variable) -> bool:
    return isinstance(variable, nnx.Param) and variable.get_metadata().get("tag") == SSM_TAG


def ssm_param_labels(model):
    """Static label tree with the structure of ``nnx.state(model, nnx.Param)``: leaves ``"ssm"`` / ``"default"``.

    Use it with ``optax.multi_transform({"ssm": ..., "default": ...}, ssm_param_labels(model))`` and
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)``. It is a tree, not a callable: a callable label function sees
    Variables in ``init`` but raw arrays in ``update`` and labels them differently.
    """
    return jax.tree.map(
        lambda v: SSM_TAG if is_ssm_param(v) else "default",
        nnx.state(model, nnx.Param),
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


def complex_of(re, im):
    """Join two real parameter arrays into a complex64 array."""
    return jax.lax.complex(jnp.asarray(re[...], jnp.float32), jnp.asarray(im[...], jnp.float32))


def normal(key, shape, std) -> jax.Array:
    """Gaussian init with standard deviation ``std`` (float32)."""
    return std * jax.random.normal(key, shape, jnp.float32)
