"""Parameter tagging and the optax label tree (docs/layers.md §SSM parameter tagging).

SSM parameters (Δ, A/Λ, B, P) are ordinary ``nnx.Param`` with metadata ``tag="ssm"``: they stay in the
``params`` collection (also through ``flax.nnx.bridge.ToLinen``, where an ``nnx.Param`` subclass would land in a
collection of its own and silently not train), and an optimizer can still give them their own learning rate and no
weight decay through ``ssm_param_labels``. Complex quantities are stored as pairs of real arrays
(``Lambda_re``/``Lambda_im``, ``B_re``/``B_im``) so optimizers and checkpoints see no complex leaves.
Parameters are stored in the layer's ``param_dtype``; the SSM math reads them as float32 (``f32``).
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

SSM_TAG = "ssm"


def ssm_param(value, dtype=jnp.float32) -> nnx.Param:
    """An ``nnx.Param`` tagged as an SSM parameter (own learning rate, no weight decay), stored in ``dtype``."""
    return nnx.Param(jnp.asarray(value, dtype), tag=SSM_TAG)


def param(value, dtype=jnp.float32) -> nnx.Param:
    """An untagged ``nnx.Param`` stored in ``dtype``."""
    return nnx.Param(jnp.asarray(value, dtype))


def has_ssm_tag(var_type, metadata) -> bool:
    """The one test of the SSM tag: an ``nnx.Param`` (sub)type whose metadata has ``tag == "ssm"``."""
    return isinstance(var_type, type) and issubclass(var_type, nnx.Param) and metadata.get("tag") == SSM_TAG


def is_ssm_param(variable) -> bool:
    return isinstance(variable, nnx.Variable) and has_ssm_tag(type(variable), variable.get_metadata())


def _label_variable(v) -> str:
    return SSM_TAG if is_ssm_param(v) else "default"


def _label_linen(params):
    """Labels for a Linen params dict made by ``nnx.bridge.ToLinen`` (module docstring of ``ssm_param_labels``)."""
    is_meta = lambda v: isinstance(v, bridge.NNXMeta)  # noqa: E731
    found = []

    def label(v):
        if is_meta(v):
            found.append(v)
            return SSM_TAG if has_ssm_tag(v.var_type, v.metadata) else "default"
        if not hasattr(v, "shape"):
            raise ValueError(
                f"ssm_param_labels: a Linen params tree must hold arrays or NNXMeta boxes; got a leaf "
                f"of type {type(v).__name__}"
            )
        return "default"

    labels = jax.tree.map(label, params, is_leaf=is_meta)
    if not found:
        raise ValueError(
            "ssm_param_labels: this params tree holds only plain arrays, so it carries no SSM tags to "
            "read (they live in the NNXMeta boxes that nnx.bridge.ToLinen.init returns). Pass "
            "variables['params'] as init returned it, before flax.linen.meta.unbox or any other "
            "transformation that drops the boxes"
        )
    return labels


def ssm_param_labels(model):
    """Static label tree of ``"ssm"`` / ``"default"`` leaves for ``optax.multi_transform``.

    ``model`` is one of

    * an ``nnx.Module`` (or an ``nnx.State`` of its variables): the labels have the structure of
      ``nnx.state(model, nnx.Param)``; use them with ``nnx.Optimizer(model, tx, wrt=nnx.Param)``;
    * a Linen params dict of a model that contains layers wrapped by ``flax.nnx.bridge.ToLinen``: pass
      ``variables["params"]`` as ``init`` returned it. Tagged parameters arrive there in ``NNXMeta`` boxes (the tag
      is their metadata), other parameters as plain arrays; each box gets one label, so the tree is a prefix of
      the boxed params (and matches them exactly after ``flax.linen.meta.unbox``), which is what optax accepts.

    A tree that cannot be labelled (plain arrays only, the boxes dropped; anything else) raises ``ValueError``.
    It is a tree, not a callable: a callable label function sees Variables in ``init`` but raw arrays in ``update``
    and labels them differently.
    """
    if isinstance(model, nnx.Module):
        return jax.tree.map(_label_variable, nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable))
    if isinstance(model, nnx.State):
        variables = jax.tree.leaves(model, is_leaf=lambda v: isinstance(v, nnx.Variable))
        if not variables or not all(isinstance(v, nnx.Variable) for v in variables):
            raise ValueError(
                "ssm_param_labels: an nnx.State must hold nnx.Variable leaves (nnx.state(model, "
                "nnx.Param)); this one holds plain values, so there are no SSM tags to read"
            )
        return jax.tree.map(_label_variable, model, is_leaf=lambda v: isinstance(v, nnx.Variable))
    if isinstance(model, Mapping) and model:
        return _label_linen(model)
    raise ValueError(
        f"ssm_param_labels: expected an nnx.Module, an nnx.State of its parameters or a Linen params "
        f"dict made by nnx.bridge.ToLinen; got {type(model).__name__}"
    )


def f32(p) -> jax.Array:
    """A parameter's value as float32 (parameters may be stored in another ``param_dtype``)."""
    return jnp.asarray(p[...], jnp.float32)


def complex_of(re, im):
    """Join two real parameter arrays into a complex64 array."""
    return jax.lax.complex(f32(re), f32(im))


def normal(key, shape, std) -> jax.Array:
    """Gaussian init with standard deviation ``std`` (float32)."""
    return std * jax.random.normal(key, shape, jnp.float32)


def dt_bias_param(key, size: int, dt_min: float, dt_max: float, dtype=jnp.float32) -> nnx.Param:
    """The bias ``b_Δ (size,)`` of a softplus step size, ``Δ = softplus(· + b_Δ)``, initialised so that Δ starts
    log-uniform in ``[dt_min, dt_max]`` (Mamba's init, Gu & Dao 2023 §3.6): ``b_Δ = softplus⁻¹(Δ₀)
    = Δ₀ + log(−expm1(−Δ₀))``; an ``ssm``-tagged parameter stored in ``dtype``."""
    dt = jnp.exp(jax.random.uniform(key, (size,), jnp.float32, math.log(dt_min), math.log(dt_max)))
    return ssm_param(dt + jnp.log(-jnp.expm1(-dt)), dtype)
