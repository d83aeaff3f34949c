"""Shared helpers for the layer tests: small per-mixer options and a step-by-step runner."""

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import layers

D_MODEL = 8

# Small but non-trivial options per mixer (state sizes and head counts that are not all equal to D).
SMALL_OPTIONS = {
    "s4": {"d_state": 8},
    "s4d": {"d_state": 8},
    "s5": {"d_state": 8},
    "lru": {"d_state": 6},
    "lmu": {"order": 6, "theta": 40.0, "memory_d": 2},
    "hippo_rnn": {"d_state": 6},
    "lssl": {"d_state": 6},
    "linear_attention": {"num_heads": 2, "chunk_size": 16},
    "deltanet": {"num_heads": 2, "chunk_size": 16},
    "gla": {"num_heads": 2, "chunk_size": 16, "gate_rank": 4},
    "retnet": {"num_heads": 2, "chunk_size": 16},
    "gated_deltanet": {"num_heads": 2, "chunk_size": 16},
    "delta_product": {"num_heads": 2, "chunk_size": 16},
    "selective_ssm": {"d_state": 4},
    "mlstm": {"num_heads": 2, "chunk_size": 16},
    "mamba2": {"d_state": 4, "head_dim": 4, "chunk_size": 16},
    "hawk": {"expand": 1.5, "gate_blocks": 2},
}


def available_mixers():
    return [name for name in SMALL_OPTIONS if name in layers.MIXERS]


def make_mixer(name, seed=0, d_model=D_MODEL, **overrides):
    options = dict(SMALL_OPTIONS[name], **overrides)
    return layers.MIXERS[name](d_model, rngs=nnx.Rngs(seed), **options)


def run_steps(mixer, x, **kwargs):
    """Run ``mixer.step`` over the time axis of ``x (B, L, D)`` with ``lax.scan`` under ``nnx.jit``."""

    @nnx.jit
    def go(m, x):
        def body(state, x_t):
            return m.step(state, x_t, **kwargs)

        _, ys = jax.lax.scan(body, m.init_state(x.shape[0]), jnp.moveaxis(x, 1, 0))
        return jnp.moveaxis(ys, 0, 1)

    return go(mixer, x)


def run_call(mixer, x, **kwargs):
    return nnx.jit(lambda m, x: m(x, **kwargs))(mixer, x)
