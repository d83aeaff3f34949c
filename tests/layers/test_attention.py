"""``layers.Attention`` (the softmax-attention baseline): the call against a float64 NumPy transcription of the
formulas (projections, rotate-half RoPE, causal softmax), ``step`` (its key/value cache) against the call, packed
rows against each sequence alone, gradients, the name ``"attention"`` in a model, and bad input.

These run Flax modules (nnx.Linear), hence ``loose_promotion``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal
from tests.layers._common import run_steps
from tests.layers.test_packed import SEGMENTS, check_packed_equals_alone

pytestmark = pytest.mark.loose_promotion


def _reference(layer, x, positions=None):
    """float64 NumPy: ``softmax(q kᵀ/√K + causal mask) v`` per head with q, k turned by ``t·base^(−2i/K)``."""
    w_qkv = np.asarray(layer.qkv_proj.kernel.get_value(), np.float64)
    w_o = np.asarray(layer.o_proj.kernel.get_value(), np.float64)
    x = np.asarray(x, np.float64)
    B, L, _ = x.shape
    H, K = layer.heads, layer.head_dim
    q, k, v = np.split(x @ w_qkv, 3, axis=-1)
    q, k, v = (a.reshape(B, L, H, K) for a in (q, k, v))
    if layer.options.rope:
        t = np.arange(L) if positions is None else positions
        angle = t[:, None] * layer.options.rope_base ** (-2.0 * np.arange(K // 2) / K)  # (L, K/2)
        c, s = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]

        def turn(a):
            a1, a2 = a[..., : K // 2], a[..., K // 2 :]
            return np.concatenate([a1 * c - a2 * s, a1 * s + a2 * c], axis=-1)

        q, k = turn(q), turn(k)
    out = np.zeros((B, L, H, K))
    for b in range(B):
        for h in range(H):
            scores = q[b, :, h] @ k[b, :, h].T / np.sqrt(K)
            scores[np.triu_indices(L, 1)] = -np.inf
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[b, :, h] = (p / p.sum(axis=1, keepdims=True)) @ v[b, :, h]
    return out.reshape(B, L, H * K) @ w_o


@pytest.mark.parametrize(
    "d_model,options",
    [(12, {"num_heads": 3}), (12, {"num_heads": 3, "rope": False}), (10, {"num_heads": 2, "head_dim": 6})],
)
def test_call_matches_float64_reference(d_model, options):
    layer = layers.Attention(d_model, rngs=nnx.Rngs(0), **options)
    x = normal(0, (2, 13, d_model))
    assert_close(layer(x), _reference(layer, x), rtol=1e-5, name="attention output")


def test_rope_makes_outputs_depend_on_relative_position_only():
    """Without padding in between, a sequence placed later in a packed row gives the same outputs (RoPE restarts
    per sequence), and the reference confirms the positions are 0, 1, ... within each sequence."""
    layer = layers.Attention(8, num_heads=2, rngs=nnx.Rngs(1))
    x = normal(2, (1, 9, 8))
    seg = jnp.asarray([[1] * 4 + [2] * 5], jnp.int32)
    y = layer(x, segment_ids=seg)
    assert_close(y[:, 4:], _reference(layer, x[:, 4:]), rtol=1e-5, name="second sequence")
    shifted = _reference(layer, x[:, 4:], positions=np.arange(4, 9))
    assert_close(shifted, _reference(layer, x[:, 4:]), rtol=1e-5, name="RoPE scores: relative positions")


def test_step_equals_call_and_a_full_cache_gives_nan():
    layer = layers.Attention(8, num_heads=2, max_len=20, rngs=nnx.Rngs(3))
    x = normal(4, (3, 20, 8))
    assert_close(run_steps(layer, x), layer(x), rtol=1e-5, name="step vs call")
    state = layer.init_state(3)
    for t in range(21):
        state, y = layer.step(state, x[:, t % 20])
        assert np.isfinite(np.asarray(y)).all() == (t < 20), t
    assert np.asarray(state["t"]).tolist() == [21] * 3


def test_packed_row_equals_each_sequence_alone():
    check_packed_equals_alone(layers.Attention(8, num_heads=2, rngs=nnx.Rngs(5)), SEGMENTS, rtol=1e-5)


def test_every_parameter_gets_a_finite_nonzero_gradient_in_a_model_named_attention():
    model = layers.SequenceModel(
        d_model=8, n_layers=2, num_classes=3, vocab_size=11, mixer="attention", pooling="last", rngs=nnx.Rngs(0)
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 9)), jnp.int32)
    grads = nnx.grad(lambda m: jnp.sum(m(tokens) ** 2))(model)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
        g = np.asarray(g)
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "build,call,match",
    [
        (dict(d_model=10, num_heads=3), None, "not divisible by num_heads=3"),
        (dict(d_model=12, num_heads=4), None, "head_dim=3 must be even for rope=True"),
        (dict(d_model=8, rope_base=0.5), None, r"rope_base=0.5 must be a number in \(1.0"),
        (dict(d_model=8, max_len=0), None, "max_len=0 must be an integer >= 1"),
        (dict(d_model=8), lambda m: m(jnp.ones((2, 5, 6))), r"x must have shape \(B, L, D=8\)"),
        (dict(d_model=8), lambda m: m(jnp.ones((2, 5, 8)), dt_scale=2.0), "dt_scale=2.0 is not supported"),
        (dict(d_model=8), lambda m: m(jnp.ones((2, 5, 8)), segment_ids=jnp.ones((2, 4), jnp.int32)), "segment_ids"),
        (dict(d_model=8), lambda m: m.step(m.init_state(3), jnp.ones((2, 8))), "state does not match"),
    ],
)
def test_bad_input_raises_value_error(build, call, match):
    with pytest.raises(ValueError, match=match):
        layer = layers.Attention(**build, rngs=nnx.Rngs(0))
        call(layer)


def test_attention_is_a_baseline_not_a_mixer():
    assert layers.BASELINES == {"attention": layers.Attention} and "attention" not in layers.MIXERS
    with pytest.raises(ValueError, match="'attention'"):
        layers.SequenceBlock(8, mixer="attentio", rngs=nnx.Rngs(0))
