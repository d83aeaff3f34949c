"""Hawk's recurrent block (De et al. 2024, §2.4) against a float64 NumPy loop built from the layer's parameters;
the RG-LRU initialisation range; bad options; a few training steps.

(Step == call at L = 300, gradients to every parameter, bfloat16 compute and the API checks are the generic mixer
tests, which cover ``hawk`` through ``SMALL_OPTIONS``.)
"""

import jax
import numpy as np
import pytest
import scipy.special
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, param64
from tests.layers._common import run_call
from tests.layers._train_check import train_steps

pytestmark = pytest.mark.loose_promotion

D = 8
TINY = {"expand": 1.5, "gate_blocks": 3}  # W = 12 recurrence channels, 3 gate blocks of 4


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _x(B, L, seed=0):
    return normal(seed, (B, L, D))


def _make(seed=0, **over):
    return layers.Hawk(D, rngs=nnx.Rngs(seed), **{**TINY, **over})


def hawk_loop(m, x):
    """The recurrent block token by token in float64."""
    x = np.asarray(x, np.float64)
    Bsz, L, _ = x.shape
    W, G, c = m.width, m.options.gate_blocks, m.options.c
    g = x @ param64(m.gate_proj.kernel) + param64(m.gate_proj.bias)
    g = 0.5 * g * (1.0 + scipy.special.erf(g / np.sqrt(2.0)))  # exact GeLU
    u = x @ param64(m.in_proj.kernel) + param64(m.in_proj.bias)
    w, b = param64(m.conv.conv_w), param64(m.conv.conv_b)
    pad = np.concatenate([np.zeros((Bsz, w.shape[0] - 1, W)), u], axis=1)
    u = sum(w[j] * pad[:, j : j + L] for j in range(w.shape[0])) + b  # no activation
    blocks = u.reshape(Bsz, L, G, W // G)
    r = np.einsum("blgi,gij->blgj", blocks, param64(m.a_w)).reshape(Bsz, L, W) + param64(m.a_b)
    i = np.einsum("blgi,gij->blgj", blocks, param64(m.x_w)).reshape(Bsz, L, W) + param64(m.x_b)
    a_base = _sigmoid(param64(m.Lambda))
    h, hs = np.zeros((Bsz, W)), []
    for t in range(L):  # a_t = a^{c σ(r_t)};  h_t = a_t h_{t-1} + √(1 − a_t²) σ(i_t) u_t
        a = a_base ** (c * _sigmoid(r[:, t]))
        h = a * h + np.sqrt(1.0 - a * a) * _sigmoid(i[:, t]) * u[:, t]
        hs.append(h)
    y = g * np.stack(hs, axis=1)
    return y @ param64(m.out_proj.kernel) + param64(m.out_proj.bias)


def test_call_matches_a_float64_loop_of_the_recurrent_block():
    m = _make(seed=1, c=6.0, d_conv=3)
    x = _x(2, 40, seed=2)
    assert m.a_w.shape == (3, 4, 4)  # 3 diagonal blocks of the 12 channels
    assert_close(run_call(m, x), hawk_loop(m, x), rtol=2e-5, name="Hawk vs loop")
    # Λ initialised so that σ(Λ)^c is uniform in [0.9, 0.999] (§2.4)
    ac = _sigmoid(param64(m.Lambda)) ** m.options.c
    assert np.all((ac >= 0.9 - 1e-6) & (ac <= 0.999 + 1e-6)) and ac.max() - ac.min() > 0.03, ac


def test_width_gate_blocks_and_state_shapes():
    m = nnx.eval_shape(lambda: layers.Hawk(D, rngs=nnx.Rngs(0)))  # shapes only: no eager initialisation
    assert m.width == 11 and m.a_w.shape == (1, 11, 11)  # round(4/3 · 8), dense gates
    assert m.options == layers.HawkOptions()
    assert jax.tree.map(lambda s: s.shape, m.state_spec(2)) == ((2, 3, 11), (2, 11))


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


@pytest.mark.slow  # one training step of the mixer runs by default in test_train_presets (its mqar preset)
def test_a_few_training_steps_in_a_sequence_model_reduce_the_loss():
    losses, moved = train_steps("hawk", TINY)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert moved == 1.0
