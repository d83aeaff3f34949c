"""Packed sequences (issue 15 §1) at the layer level: for every mixer that takes ``segment_ids``, a packed row equals
each of its sequences run alone (forward, the input gradient and every parameter gradient), padding outputs are
exactly 0; ``causal_conv`` / ``ShortConv`` taps stop at sequence boundaries; ``SequenceModel`` threads the ids to its
blocks and pools per sequence; bad ids raise ``ValueError``.

"Alone" is the mixer without ``segment_ids`` on a batch holding one sequence per row, at the start of the row: the
mixers here are causal, so what follows a sequence in its row cannot change its outputs.
These run the mixers through Flax modules (nnx.Linear etc.), hence ``loose_promotion``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from algornn.layers._short_conv import ShortConv, causal_conv
from tests._utils import assert_close, normal, sequences
from tests.layers._common import D_MODEL, make_mixer

pytestmark = pytest.mark.loose_promotion

# The mixers of the scan family (pack-scan); the fast-weight mixers join once they take segment_ids.
PACKED_MIXERS = ["s4", "s4d", "s5", "lru", "lmu", "hippo_rnn", "lssl", "selective_ssm", "hawk"]

L = 24
# row 0: a 7-token sequence, a one-token one, padding between, id 1 again after the padding (a new sequence),
# padding at the end; row 1: two sequences, no padding, the boundary not at a multiple of 4 or 8.
SEGMENTS = np.array([[1] * 7 + [2] + [0] * 2 + [1] * 9 + [0] * 5, [4] * 11 + [9] * 13], np.int32)


def _alone_batch(x, seqs):
    """One sequence per row, at its start, zeros after it: ``(len(seqs), L, D)``."""
    rows = [jnp.zeros_like(x[0]).at[: e - s].set(x[r, s:e]) for r, s, e in seqs]
    return jnp.stack(rows)


def _value_and_grads(mixer, x, w, **kwargs):
    """``y`` and the gradients of ``Σ y ⊙ w`` w.r.t. the mixer's parameters and ``x``, in one jitted call."""

    graphdef, params, rest = nnx.split(mixer, nnx.Param, ...)

    def loss(params, x):
        y = nnx.merge(graphdef, params, rest)(x, **kwargs)
        return jnp.sum(y * w), y

    (g_params, g_x), y = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return y, g_params, g_x


def check_packed_equals_alone(mixer, seg=SEGMENTS, rtol=1e-4):
    seg = jnp.asarray(seg)
    B = seg.shape[0]
    x = normal(0, (B, L, D_MODEL))
    w = normal(1, (B, L, D_MODEL)) * (seg != 0)[..., None]  # the loss reads real positions only
    seqs = sequences(seg)
    y, g_params, g_x = _value_and_grads(mixer, x, w, segment_ids=seg)
    x_alone, w_alone = _alone_batch(x, seqs), _alone_batch(w, seqs)
    y1, g1_params, g1_x = _value_and_grads(mixer, x_alone, w_alone)
    pad = np.asarray(seg) == 0
    assert np.all(np.asarray(y)[pad] == 0), "padding positions must output exactly 0"
    packed = jnp.concatenate([y[r, s:e] for r, s, e in seqs])
    alone = jnp.concatenate([y1[i, : e - s] for i, (r, s, e) in enumerate(seqs)])
    assert_close(packed, alone, rtol=rtol, name="outputs")
    gx_packed = jnp.concatenate([g_x[r, s:e] for r, s, e in seqs])
    gx_alone = jnp.concatenate([g1_x[i, : e - s] for i, (r, s, e) in enumerate(seqs)])
    assert_close(gx_packed, gx_alone, rtol=rtol, name="input gradient")
    assert np.all(np.asarray(g_x)[pad] == 0), "padding inputs must get no gradient"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_params), jax.tree_util.tree_leaves(g1_params)):
        assert_close(a, b, rtol=rtol, name=f"gradient of {jax.tree_util.keystr(path)}")


# One mixer per op by default (linear_scan, dense_linear_scan, rg_lru + ShortConv, selective_scan + causal_conv);
# every mixer with -m slow.
DEFAULT = ["s4d", "lssl", "hawk", "selective_ssm"]


@pytest.mark.parametrize("name", DEFAULT)
def test_packed_row_equals_each_sequence_alone(name):
    check_packed_equals_alone(make_mixer(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PACKED_MIXERS if n not in DEFAULT])
def test_packed_row_equals_each_sequence_alone_every_mixer(name):
    check_packed_equals_alone(make_mixer(name))


BIDIRECTIONAL = ["s4d", "s4", "s5", "lru", "lssl", "selective_ssm"]


def check_bidirectional(mixer):
    """A bidirectional mixer (no causality to lean on): each sequence alone at its own length, forward."""
    seg = jnp.asarray(SEGMENTS)
    x = normal(2, (seg.shape[0], L, D_MODEL))
    y = nnx.jit(lambda m, x: m(x, segment_ids=seg))(mixer, x)
    assert np.all(np.asarray(y)[SEGMENTS == 0] == 0)
    for r, s, e in sequences(seg):
        assert_close(y[r, s:e], mixer(x[r : r + 1, s:e])[0], rtol=1e-4, name=f"sequence ({r}, {s}:{e})")


def test_bidirectional_packed_row_equals_each_sequence_alone():
    check_bidirectional(make_mixer("s4d", bidirectional=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", BIDIRECTIONAL[1:])
def test_bidirectional_packed_every_mixer(name):
    check_bidirectional(make_mixer(name, bidirectional=True))


def _conv64(u, w, b, seg):
    """Depthwise causal conv per sequence in float64, zero history before each sequence, padding 0."""
    u, w, b = (np.asarray(v, np.float64) for v in (u, w, b))
    W = w.shape[0]
    y = np.zeros_like(u)
    for r, s, e in sequences(seg):
        for t in range(s, e):
            y[r, t] = b + sum(w[j] * u[r, t - W + 1 + j] for j in range(W) if t - W + 1 + j >= s)
    return y


def test_causal_conv_and_short_conv_stop_at_sequence_boundaries():
    u, w, b = normal(3, (2, L, 5)), normal(4, (4, 5)), normal(5, (5,))
    y = causal_conv(u, w, b, segment_ids=jnp.asarray(SEGMENTS))
    assert_close(y, _conv64(u, w, b, SEGMENTS), name="causal_conv")
    assert np.all(np.asarray(y)[SEGMENTS == 0] == 0)
    conv = ShortConv(5, 4, rngs=nnx.Rngs(0))
    y = conv(u, segment_ids=jnp.asarray(SEGMENTS))
    want = _conv64(u, conv.conv_w[...], conv.conv_b[...], SEGMENTS)
    assert_close(y, want / (1.0 + np.exp(-want)), name="ShortConv (SiLU)")
    np.testing.assert_array_equal(causal_conv(u, w, b, segment_ids=None), causal_conv(u, w, b))


def _model(mixer, pooling="mean", **kw):
    return layers.SequenceModel(
        d_model=D_MODEL, n_layers=2, num_classes=3, mixer=mixer, vocab_size=11, pooling=pooling, rngs=nnx.Rngs(0), **kw
    )


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_sequence_model_pools_per_sequence(pooling):
    """Packed logits (B, S, C), sequences numbered by appearance, equal each sequence's logits run alone (a row each,
    padded with id 0 after it: lengths are inferred); rows with fewer sequences have the decoder bias in the rest."""
    model = _model("s4d", pooling, mixer_options={"d_state": 4})
    seg = jnp.asarray(SEGMENTS)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 11, (2, L)), jnp.int32) * (seg != 0)
    logits = nnx.jit(lambda m, x: m(x, segment_ids=seg, num_segments=3))(model, tokens)
    assert logits.shape == (2, 3, 3)
    seqs = sequences(seg)
    alone_tokens = jnp.stack([jnp.zeros((L,), jnp.int32).at[: e - s].set(tokens[r, s:e]) for r, s, e in seqs])
    alone = model(alone_tokens)  # (len(seqs), C)
    order = {}
    for i, (r, _, _) in enumerate(seqs):
        k = order.setdefault(r, 0)
        order[r] += 1
        assert_close(logits[r, k], alone[i], rtol=1e-4, name=f"{pooling} logits of sequence {i}")
    np.testing.assert_allclose(logits[1, 2], model.decoder.bias[...], rtol=1e-6)  # row 1 has two sequences
    eager = model(tokens, segment_ids=seg)  # S from the concrete ids: the most any row holds
    assert eager.shape == (2, 3, 3)


def test_sequence_model_refuses_bad_packing():
    model = _model("s4d", mixer_options={"d_state": 4})
    tokens = jnp.ones((2, L), jnp.int32)
    seg = jnp.asarray(SEGMENTS)
    with pytest.raises(ValueError, match="lengths or segment_ids, not both"):
        model(tokens, jnp.full((2,), L), segment_ids=seg)
    with pytest.raises(ValueError, match=r"segment_ids must be an integer array of shape \(2, 24\)"):
        model(tokens, segment_ids=seg[:, :5])
    with pytest.raises(ValueError, match="more than num_segments=2"):
        model(tokens, segment_ids=seg, num_segments=2)
    with pytest.raises(ValueError, match="num_segments .* must be given"):
        nnx.jit(lambda m, x, s: m(x, segment_ids=s))(model, tokens, seg)


class _NoPacking(nnx.Module):
    """A mixer whose ``__call__`` has no ``segment_ids``."""

    def __init__(self, d_model, *, rngs):
        self.lin = nnx.Linear(d_model, d_model, rngs=rngs)

    def __call__(self, x):
        return self.lin(x)

    def init_state(self, batch_size):
        return jnp.zeros((batch_size,))

    def step(self, state, x_t):
        return state, self.lin(x_t)


def test_a_mixer_without_segment_ids_refuses_packed_input():
    model = _model(_NoPacking)
    with pytest.raises(ValueError, match="_NoPacking does not take segment_ids"):
        model(jnp.ones((2, L), jnp.int32), segment_ids=jnp.asarray(SEGMENTS))
    assert model(jnp.ones((2, L), jnp.int32)).shape == (2, 3)  # unpacked input still runs


@pytest.mark.parametrize("name", ["s4d", "hawk", "hippo_rnn"])
def test_mixers_refuse_bad_segment_ids(name):
    mixer = make_mixer(name)
    x = jnp.zeros((2, 6, D_MODEL), jnp.float32)
    cls = type(mixer).__name__
    with pytest.raises(ValueError, match=rf"{cls}: segment_ids must be an integer array of shape \(2, 6\).*float32"):
        mixer(x, segment_ids=jnp.zeros((2, 6), jnp.float32))
    with pytest.raises(ValueError, match=rf"{cls}: segment_ids must be an integer array of shape \(2, 6\).*\(2, 5\)"):
        mixer(x, segment_ids=jnp.zeros((2, 5), jnp.int32))
