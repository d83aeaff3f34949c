"""``MLSTM`` (xLSTM's mLSTM block): the layer against a float64 NumPy implementation of the whole block, call ==
step for the options the generic tests do not reach, option errors, and a training step in ``SequenceModel``.

The generic mixer tests (test_mixers.py, test_api.py, test_dtypes.py) cover the SMALL_OPTIONS configuration:
call == step at L = 300, gradients of every parameter, bfloat16 compute, state checks. Inputs are drawn with NumPy
(a new jax.random shape costs a compile).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, rel_rms_error
from tests.layers._common import run_call, run_steps

pytestmark = pytest.mark.loose_promotion


def _np_silu(x):
    return x / (1.0 + np.exp(-x))


def _np_block_diag(w, x):
    nb, b, _ = w.shape
    return np.einsum("...ni,nij->...nj", x.reshape(x.shape[:-1] + (nb, b)), w).reshape(x.shape)


def numpy_mlstm_block(p, x, *, heads, width, qk_norm, output_norm=True, output_gate=True):
    """The mLSTM block in float64 NumPy, written out from the paper (token loop with the max stabiliser).

    ``p``: the layer's parameters as float64 arrays (``kernel`` of a Linear is ``(in, out)``); ``x (B, L, D)``.
    ``output_norm`` / ``output_gate`` False: no per-head norm (and no γ) / no silu(z) gate (and no z branch).
    """
    B, L, _ = x.shape
    up = x @ p["up"]
    E = up.shape[-1] // 2 if output_gate else up.shape[-1]
    x_m, z = up[..., :E], up[..., E:]
    if width is None:
        x_c = x_m
    else:  # causal depthwise convolution, zero history, then SiLU
        padded = np.concatenate([np.zeros((B, width - 1, E)), x_m], axis=1)
        conv = np.stack([sum(p["conv_w"][j] * padded[:, t + j] for j in range(width)) for t in range(L)], axis=1)
        x_c = _np_silu(conv + p["conv_b"])
    q, k, v = _np_block_diag(p["wq"], x_c), _np_block_diag(p["wk"], x_c), _np_block_diag(p["wv"], x_m)
    gate_in = np.concatenate([q, k, v], axis=-1)
    i_pre = gate_in @ p["wi"] + p["bi"]  # (B, L, H)
    log_f = -np.log1p(np.exp(-(gate_in @ p["wf"] + p["bf"])))  # logsigmoid
    K = E // heads
    q, k, v = (a.reshape(B, L, heads, K) for a in (q, k, v))
    if qk_norm == "l2":
        q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + 1e-6)
        k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + 1e-6)
    q = q / np.sqrt(K)
    h_tilde = np.zeros((B, L, heads, K))
    for b in range(B):
        for h in range(heads):
            C, n, m = np.zeros((K, K)), np.zeros(K), 0.0
            for t in range(L):
                m_new = max(log_f[b, t, h] + m, i_pre[b, t, h])
                fgate = np.exp(log_f[b, t, h] + m - m_new)
                igate = np.exp(i_pre[b, t, h] - m_new)
                C = fgate * C + igate * np.outer(k[b, t, h], v[b, t, h])
                n = fgate * n + igate * k[b, t, h]
                m = m_new
                h_tilde[b, t, h] = C.T @ q[b, t, h] / max(abs(n @ q[b, t, h]), np.exp(-m))
    if output_norm:
        mean = h_tilde.mean(axis=-1, keepdims=True)
        var = ((h_tilde - mean) ** 2).mean(axis=-1, keepdims=True)
        normed = ((h_tilde - mean) / np.sqrt(var + 1e-5)).reshape(B, L, E) * p["gamma"]
    else:
        normed = h_tilde.reshape(B, L, E)
    out = normed + p["skip"] * x_c
    if output_gate:
        out = out * _np_silu(z)
    return out @ p["down"]


def _randomise(mixer, rng, *, i_bias=(-3.0, 3.0)):
    """Every parameter drawn anew (the zero-initialised gate weights included), the gates in a lively range."""
    state = nnx.state(mixer, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    new = {}
    for path, var in flat.items():
        shape = var[...].shape
        value = rng.normal(0.0, 0.5, shape)
        if path[-2:] == ("i_proj", "bias"):
            value = rng.uniform(*i_bias, shape)
        if path[-2:] == ("f_proj", "bias"):
            value = rng.uniform(-1.0, 4.0, shape)
        if path[-1] in ("norm_scale", "skip"):
            value = 1.0 + 0.3 * rng.normal(size=shape)
        new[path] = value
    for path, value in new.items():
        flat[path][...] = jnp.asarray(value, jnp.float32)
    nnx.update(mixer, nnx.from_flat_state(flat))
    return {"/".join(map(str, path)): np.asarray(v, np.float64) for path, v in new.items()}


def _params_for_numpy(flat, has_conv):
    p = {
        "up": flat["up_proj/kernel"],
        "wq": flat["q_proj"],
        "wk": flat["k_proj"],
        "wv": flat["v_proj"],
        "wi": flat["i_proj/kernel"],
        "bi": flat["i_proj/bias"],
        "wf": flat["f_proj/kernel"],
        "bf": flat["f_proj/bias"],
        "gamma": flat.get("norm_scale"),
        "skip": flat["skip"],
        "down": flat["down_proj/kernel"],
    }
    if has_conv:
        p["conv_w"], p["conv_b"] = flat["conv/conv_w"], flat["conv/conv_b"]
    return p


@pytest.mark.parametrize(
    "options,i_bias",
    [
        ({}, (-3.0, 3.0)),  # the defaults: width-4 conv, blocks of 4, no qk norm
        # no conv, L2-normalised q and k, dense (one block per head) projections, and input-gate
        # pre-activations from 15 to 25: exp(ĩ) up to e^25 is carried by the stabiliser m
        ({"short_conv": None, "qk_norm": "l2", "qkv_block_size": 8}, (15.0, 25.0)),
        ({"output_norm": False, "output_gate": False}, (-3.0, 3.0)),  # the memory probe's lever
        ({"output_norm": False}, (-3.0, 3.0)),
    ],
    ids=["default", "noconv-l2-dense-large-input-gate", "no-output-norm-no-gate", "no-output-norm"],
)
def test_layer_equals_a_float64_numpy_block(options, i_bias):
    """D = 8, E = 16, H = 2, chunk 4 over L = 11 (two full chunks and a partial one), every parameter random."""
    rng = np.random.default_rng(0)
    mixer = layers.MLSTM(8, num_heads=2, chunk_size=4, rngs=nnx.Rngs(0), **options)
    flat = _randomise(mixer, rng, i_bias=i_bias)
    x = rng.normal(size=(2, 11, 8))
    want = numpy_mlstm_block(
        _params_for_numpy(flat, mixer.conv is not None),
        x,
        heads=2,
        width=mixer.options.short_conv,
        qk_norm=mixer.options.qk_norm,
        output_norm=mixer.options.output_norm,
        output_gate=mixer.options.output_gate,
    )
    got = run_call(mixer, jnp.asarray(x, jnp.float32))
    assert_close(got, want, rtol=1e-5, name=f"MLSTM{options} vs float64 NumPy")
    assert_close(run_steps(mixer, jnp.asarray(x, jnp.float32)), want, rtol=1e-5, name="MLSTM step vs NumPy")


@pytest.mark.slow
def test_call_equals_step_without_conv_with_l2_norm_and_gradients():
    """The options SMALL_OPTIONS leaves at their defaults: L = 300, relative RMS error <= 1e-4; every parameter
    (here without a convolution) gets a finite nonzero gradient. (Default twins: the generic call == step and
    gradient tests at SMALL_OPTIONS, and the NumPy block test of this configuration at L = 11, call and step.)"""
    rng = np.random.default_rng(1)
    mixer = layers.MLSTM(8, num_heads=2, short_conv=None, qk_norm="l2", proj_factor=1.5, rngs=nnx.Rngs(2))
    x = jnp.asarray(rng.normal(size=(2, 300, 8)), jnp.float32)
    y = run_call(mixer, x)
    assert_close(run_steps(mixer, x), y, rtol=1e-4, name="MLSTM step vs call")
    assert mixer.inner == 12 and y.shape == (2, 300, 8)
    x, w = x[:, :37], jnp.asarray(rng.normal(size=(2, 37, 8)), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * w)))(mixer)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == 11  # up, q, k, v, i (w, b), f (w, b), norm scale, skip, down
    for path, g in leaves:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_state_holds_the_conv_buffer_and_the_memory():
    mixer = layers.MLSTM(8, num_heads=2, rngs=nnx.Rngs(0))
    buf, (C, n, m) = mixer.init_state(5)
    assert (buf.shape, C.shape, n.shape, m.shape) == ((5, 3, 16), (5, 2, 8, 8), (5, 2, 8), (5, 2))
    assert {a.dtype for a in (buf, C, n, m)} == {jnp.dtype(jnp.float32)}
    no_conv = layers.MLSTM(8, num_heads=2, short_conv=None, rngs=nnx.Rngs(0))
    assert [a.shape for a in no_conv.init_state(5)] == [(5, 2, 8, 8), (5, 2, 8), (5, 2)]
    with pytest.raises(ValueError, match=r"MLSTM.step: state does not match init_state\(batch_size=5\)"):
        mixer.step(no_conv.init_state(5), jnp.zeros((5, 8)))


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"num_heads": 3}, r"E = proj_factor·d_model = 16 is not divisible by num_heads=3"),
        ({"num_heads": 0}, r"num_heads=0 must be an integer >= 1"),
        ({"proj_factor": 1.3}, r"proj_factor=1.3 times d_model=8 .* must be a whole number"),
        ({"proj_factor": 0}, r"proj_factor=0 must be a number in \(0.0, inf\]"),
        ({"short_conv": 0}, r"short_conv=0 must be an integer >= 1"),
        ({"short_conv": 2.0}, r"short_conv=2.0 must be an integer"),
        ({"qkv_block_size": 3}, r"not divisible by qkv_block_size=3"),
        ({"qk_norm": "l1"}, r"qk_norm='l1' is not one of \[None, 'l2'\]"),
        ({"output_norm": "no"}, r"output_norm='no' must be True or False"),
        ({"output_gate": 0}, r"output_gate=0 must be True or False"),
        ({"chunk_size": 0}, r"chunk_size=0 must be an integer >= 1"),
        ({"backend": "cuda"}, r"backend='cuda' is not one of"),
        ({"dtype": "int8"}, r"MLSTM: dtype='int8' is not one of"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        layers.MLSTM(8, rngs=nnx.Rngs(0), **bad)


def test_dt_scale_other_than_one_is_refused():
    mixer = layers.MLSTM(8, num_heads=2, rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 3, 8))
    with pytest.raises(ValueError, match=r"MLSTM: dt_scale=2.0 is not supported: the mLSTM is discrete-time"):
        mixer(x, dt_scale=2.0)
    with pytest.raises(ValueError, match="must be 1"):
        mixer.step(mixer.init_state(1), x[:, 0], dt_scale=0.5)


@pytest.mark.slow
def test_one_training_step_in_sequence_model_on_a_synthetic_task():
    """Label = first token mod 3 (the answer must be carried along the sequence); three Adam steps lower the loss
    and move every parameter array. (Default twin: the one-training-step test of the ``mqar_mlstm`` preset in
    tests/experiments/test_train_presets.py, MLSTM in SequenceModel on MQAR; this one costs ~12 s of compile.)"""
    rng = np.random.default_rng(0)
    model = layers.SequenceModel(
        d_model=8,
        n_layers=1,
        num_classes=3,
        mixer="mlstm",
        mixer_options={"num_heads": 2, "chunk_size": 16},
        vocab_size=10,
        pooling="last",
        rngs=nnx.Rngs(0),
    )
    x = jnp.asarray(rng.integers(1, 10, (8, 16)), jnp.int32)
    y = x[:, 0] % 3

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]

    @nnx.jit
    def train_step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(train_step(model, opt)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    after = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(rel_rms_error(a, b) > 0 for a, b in zip(after, before))


def test_output_options_drop_their_parameters():
    """Without the norm there is no γ; without the gate the up-projection makes x_m only (E, not 2E, channels)."""
    full = layers.MLSTM(8, num_heads=2, rngs=nnx.Rngs(0))
    plain = layers.MLSTM(8, num_heads=2, output_norm=False, output_gate=False, rngs=nnx.Rngs(0))
    assert hasattr(full, "norm_scale") and not hasattr(plain, "norm_scale")
    assert full.up_proj.kernel.shape == (8, 32) and plain.up_proj.kernel.shape == (8, 16)
