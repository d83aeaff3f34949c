"""Every mixer: parallel ``__call__`` == token-by-token ``step`` (L=300), gradients, jit, model, bad input.

These run the mixers through Flax modules (nnx.Linear etc.), hence ``loose_promotion``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, rel_rms_error
from tests.layers._common import D_MODEL, available_mixers, make_mixer, run_call, run_steps

pytestmark = pytest.mark.loose_promotion

MIXERS = available_mixers()


def _x(B, L, seed=0, d=D_MODEL):
    return normal(seed, (B, L, d))


def test_registry_names_are_the_contract():
    assert set(layers.MIXERS) <= {
        "s4",
        "s4d",
        "s5",
        "lru",
        "lmu",
        "hippo_rnn",
        "lssl",
        "linear_attention",
        "deltanet",
        "gla",
        "retnet",
        "selective_ssm",
        "gated_deltanet",
        "delta_product",
        "mlstm",
        "mamba2",
        "hawk",
    }


@pytest.mark.parametrize("name", MIXERS)
def test_call_equals_step(name):
    """Parallel mode == recurrent mode over L = 300, relative RMS error <= 1e-4 in float32."""
    mixer = make_mixer(name)
    x = _x(2, 300)
    y = run_call(mixer, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    y_step = run_steps(mixer, x)
    assert_close(y_step, y, rtol=1e-4, name=f"{name} step vs call")
    # not a trivially-zero map: the output depends on the past (causal mixing), not only on x_t
    assert rel_rms_error(y, jnp.zeros_like(y)) > 0.1
    x2 = x.at[:, :150].set(0.0)
    y2 = run_call(mixer, x2)
    assert rel_rms_error(y2[:, 150:], y[:, 150:]) > 1e-3, "output at t >= 150 ignores inputs before 150"


@pytest.mark.parametrize("name", MIXERS)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    mixer = make_mixer(name, seed=1)
    x = _x(2, 37, seed=1)
    w = normal(7, x.shape)

    def loss(m):
        return jnp.sum(m(x) * w)

    grads = nnx.jit(nnx.grad(loss))(mixer)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert leaves
    for path, g in leaves:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), f"{name}: non-finite gradient at {jax.tree_util.keystr(path)}"
        assert np.any(g != 0), f"{name}: zero gradient at {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", MIXERS)
def test_in_sequence_model_and_jit(name):
    model = layers.SequenceModel(
        d_model=D_MODEL,
        n_layers=1,
        num_classes=3,
        mixer=name,
        mixer_options=_options(name),
        input_dim=3,
        pooling="none",
        rngs=nnx.Rngs(0),
    )
    x = normal(3, (2, 21, 3))
    logits = nnx.jit(lambda m, x: m(x))(model, x)
    assert logits.shape == (2, 21, 3) and np.all(np.isfinite(np.asarray(logits)))
    # autoregressive: step through the model == the per-position logits
    state = model.init_state(2)
    outs = []
    step = nnx.jit(lambda m, s, xt: m.step(s, xt))
    for t in range(x.shape[1]):
        state, lt = step(model, state, x[:, t])
        outs.append(lt)
    assert_close(jnp.stack(outs, axis=1), logits, rtol=1e-4, name=f"{name} model step")


def _options(name):
    from tests.layers._common import SMALL_OPTIONS

    return SMALL_OPTIONS[name]


@pytest.mark.parametrize("name", MIXERS)
def test_bad_input_raises_value_error(name):
    mixer = make_mixer(name)
    with pytest.raises(ValueError, match=r"\(B, L, D"):
        mixer(jnp.zeros((2, 5, D_MODEL + 1), jnp.float32))
    with pytest.raises(ValueError, match=r"\(B, L, D"):
        mixer(jnp.zeros((5, D_MODEL), jnp.float32))
    with pytest.raises(ValueError, match="floating"):
        mixer(jnp.zeros((2, 5, D_MODEL), jnp.int32))
    with pytest.raises(ValueError, match=r"\(B, D"):
        mixer.step(mixer.init_state(2), jnp.zeros((2, 1, D_MODEL), jnp.float32))
    with pytest.raises(TypeError, match="not_an_option"):  # a keyword Python itself refuses
        layers.MIXERS[name](D_MODEL, rngs=nnx.Rngs(0), not_an_option=3)
    cls = layers.MIXERS[name].__name__
    with pytest.raises(ValueError, match=rf"{cls}: unknown option\(s\) \['not_an_option'\]; allowed options are"):
        layers.SequenceBlock(D_MODEL, name, mixer_options={"not_an_option": 3}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="batch_size"):
        mixer.init_state(0)


@pytest.mark.parametrize("name", MIXERS)
def test_step_with_a_wrong_state_names_expected_and_given(name):
    """Wrong batch size, wrong dtype, a state of another layer: ValueError with both descriptions, eager and jit."""
    mixer = make_mixer(name)
    x_t = jnp.zeros((2, D_MODEL), jnp.float32)
    good = mixer.init_state(2)
    mixer.step(good, x_t)  # the right state passes
    wrong_batch = mixer.init_state(3)
    other = "lru" if name != "lru" else "s5"
    wrong_layer = make_mixer(other).init_state(2)
    wrong_dtype = jax.tree.map(lambda s: jnp.real(s).astype(jnp.float16), good)
    step = nnx.jit(lambda m, s, x: m.step(s, x))
    for bad in (wrong_batch, wrong_layer, wrong_dtype, None):
        for run in (mixer.step, lambda s, x: step(mixer, s, x)):
            with pytest.raises(ValueError, match=r"state does not match init_state\(batch_size=2\): expected .*, got"):
                run(bad, x_t)
    with pytest.raises(ValueError, match=r"got .*float16"):
        mixer.step(wrong_dtype, x_t)


@pytest.mark.parametrize(
    "cls,bad,allowed",
    [
        (layers.S4D, {"init": "foo"}, "'lin', 'inv', 'legs', 'real'"),
        (layers.S4D, {"mode": "fft"}, "'conv', 'scan'"),
        (layers.S4, {"measure": "lmu"}, "'legs', 'legt', 'fout', 'lagt'"),
        (layers.S5, {"discretization": "euler"}, "'zoh', 'bilinear'"),
        (layers.LSSL, {"backend": "cuda"}, "'reference', 'xla', 'pallas'"),
        (layers.LMU, {"hidden_cell": "lstm"}, "'rnn', 'dense'"),
        (layers.HiPPORNN, {"measure": "fout"}, "'legs', 'legt', 'lagt'"),
        (layers.LinearAttention, {"normalize": 1}, "True or False"),
        (layers.S4D, {"d_state": 7}, "multiple of 2"),
        (layers.LRU, {"r_min": 0.9, "r_max": 0.5}, "r_min"),
        (layers.S4D, {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        (layers.DeltaNet, {"num_heads": 3}, "not divisible by num_heads"),
    ],
)
def test_bad_option_values_raise_value_error_with_allowed_values(cls, bad, allowed):
    with pytest.raises(ValueError) as info:
        cls(D_MODEL, rngs=nnx.Rngs(0), **bad)
    assert allowed in str(info.value)
