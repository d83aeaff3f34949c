"""Hawk's recurrent block (De et al. 2024, §2.4) against a float64 NumPy loop built from the layer's parameters;
the RG-LRU initialisation range; step == call at L = 300; gradients; bad options; a training step.

(The generic mixer tests, bfloat16 and API checks cover ``hawk`` through ``SMALL_OPTIONS``.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from algornn import layers
from tests._utils import assert_close
from tests.layers._common import run_call, run_steps
from tests.layers._train_check import train_steps

pytestmark = pytest.mark.loose_promotion

D = 8
TINY = {"expand": 1.5, "gate_blocks": 3}  # W = 12 recurrence channels, 3 gate blocks of 4


def _np(p):
    return np.asarray(p[...], np.float64)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _x(B, L, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((B, L, D)), jnp.float32)


def _make(seed=0, **over):
    return layers.Hawk(D, rngs=nnx.Rngs(seed), **{**TINY, **over})


def hawk_loop(m, x):
    """The recurrent block token by token in float64."""
    x = np.asarray(x, np.float64)
    Bsz, L, _ = x.shape
    W, G, c = m.width, m.options.gate_blocks, m.options.c
    g = x @ _np(m.gate_proj.kernel) + _np(m.gate_proj.bias)
    g = 0.5 * g * (1.0 + scipy.special.erf(g / np.sqrt(2.0)))  # exact GeLU
    u = x @ _np(m.in_proj.kernel) + _np(m.in_proj.bias)
    w, b = _np(m.conv.conv_w), _np(m.conv.conv_b)
    pad = np.concatenate([np.zeros((Bsz, w.shape[0] - 1, W)), u], axis=1)
    u = sum(w[j] * pad[:, j : j + L] for j in range(w.shape[0])) + b  # no activation
    blocks = u.reshape(Bsz, L, G, W // G)
    r = np.einsum("blgi,gij->blgj", blocks, _np(m.a_w)).reshape(Bsz, L, W) + _np(m.a_b)
    i = np.einsum("blgi,gij->blgj", blocks, _np(m.x_w)).reshape(Bsz, L, W) + _np(m.x_b)
    a_base = _sigmoid(_np(m.Lambda))
    h, hs = np.zeros((Bsz, W)), []
    for t in range(L):  # a_t = a^{c σ(r_t)};  h_t = a_t h_{t-1} + √(1 − a_t²) σ(i_t) u_t
        a = a_base ** (c * _sigmoid(r[:, t]))
        h = a * h + np.sqrt(1.0 - a * a) * _sigmoid(i[:, t]) * u[:, t]
        hs.append(h)
    y = g * np.stack(hs, axis=1)
    return y @ _np(m.out_proj.kernel) + _np(m.out_proj.bias)


def test_call_matches_a_float64_loop_of_the_recurrent_block():
    m = _make(seed=1)
    x = _x(2, 40, seed=2)
    assert_close(run_call(m, x), hawk_loop(m, x), rtol=2e-5, name="Hawk vs loop")


def test_dense_gates_and_other_temperature_match_the_loop():
    m = _make(seed=3, gate_blocks=1, c=4.0, d_conv=2, expand=1.0)
    x = _x(2, 30, seed=4)
    assert m.width == D and m.a_w.shape == (1, D, D)
    assert_close(run_call(m, x), hawk_loop(m, x), rtol=2e-5, name="Hawk dense gates vs loop")


def test_step_equals_call_at_length_300():
    m = _make(seed=5)
    x = _x(2, 300, seed=6)
    assert_close(run_steps(m, x), run_call(m, x), rtol=1e-4, name="Hawk step vs call")


def test_lambda_init_puts_a_to_the_c_in_the_papers_range():
    m = layers.Hawk(48, rngs=nnx.Rngs(0))
    assert m.width == 64  # round(4/3 · 48)
    ac = _sigmoid(_np(m.Lambda)) ** m.options.c
    assert np.all((ac >= 0.9 - 1e-6) & (ac <= 0.999 + 1e-6)) and ac.max() - ac.min() > 0.05
    assert jax.tree.map(lambda s: s.shape, m.init_state(2)) == ((2, 3, 64), (2, 64))


def test_every_parameter_gets_a_gradient():
    m = _make(seed=7)
    x = _x(2, 21, seed=8)
    w = jnp.asarray(np.random.default_rng(9).standard_normal(x.shape), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda mm: jnp.sum(mm(x) * w)))(m)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == 13
    for path, g in leaves:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"gate_blocks": 5}, r"round\(expand·d_model\) = 12 is not divisible by gate_blocks=5"),
        ({"gate_blocks": 0}, r"gate_blocks=0"),
        ({"expand": 0.0}, r"expand=0.0 must be a number"),
        ({"c": -1.0}, r"c=-1.0 must be a number"),
        ({"d_conv": 0}, r"d_conv=0"),
        ({"backend": "cuda"}, r"backend='cuda'"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        layers.Hawk(D, rngs=nnx.Rngs(0), **{**TINY, **bad})


def test_a_few_training_steps_in_a_sequence_model_reduce_the_loss():
    losses, moved = train_steps("hawk", TINY)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert moved == 1.0
