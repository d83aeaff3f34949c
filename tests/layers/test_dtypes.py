"""``dtype`` (compute) and ``param_dtype`` (parameters): bfloat16 compute with float32 parameters trains, and
mixers in bfloat16 compute stay within the bfloat16 tolerance of the same parameters in float32 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from algornn import layers
from tests._utils import assert_close, normal, randint, rel_rms_error, tolerance
from tests.layers._common import D_MODEL, make_mixer, run_call, run_steps

pytestmark = pytest.mark.loose_promotion

BF16 = jnp.bfloat16


def _param_dtypes(model):
    return {np.dtype(v.dtype).name for v in jax.tree.leaves(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize(
    "name", ["s4d", "s5", "lssl", "lmu", "deltanet", "gla", "selective_ssm", "mamba2", "hawk", "mlstm"]
)
def test_bfloat16_compute_is_close_to_float32_compute_with_the_same_parameters(name):
    f32 = make_mixer(name, seed=3)
    bf = make_mixer(name, seed=3, dtype=BF16)
    assert _param_dtypes(bf) == {"float32"}
    x = normal(1, (2, 48, D_MODEL))
    y32, ybf = run_call(f32, x), run_call(bf, x)
    assert y32.dtype == jnp.float32 and ybf.dtype == BF16
    assert_close(ybf.astype(jnp.float32), y32, rtol=tolerance("bfloat16"), name=f"{name} bf16 call")
    ybf_step = run_steps(bf, x.astype(BF16))
    assert ybf_step.dtype == BF16
    assert_close(ybf_step.astype(jnp.float32), y32, rtol=tolerance("bfloat16"), name=f"{name} bf16 step")


def test_param_dtype_sets_the_storage_dtype():
    m = make_mixer("s4d", param_dtype=BF16)
    assert _param_dtypes(m) == {"bfloat16"}
    y = run_call(m, jnp.ones((1, 5, D_MODEL)))
    assert y.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize(
    "mixer,options",
    [("s4d", {"d_state": 8}), pytest.param("deltanet", {"num_heads": 2, "chunk_size": 8}, marks=pytest.mark.slow)],
)
def test_bfloat16_training_step_of_sequence_model_with_float32_parameters(mixer, options):
    def build(dtype):
        return layers.SequenceModel(
            d_model=D_MODEL,
            n_layers=2,
            num_classes=3,
            mixer=mixer,
            mixer_options=options,
            vocab_size=11,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        )

    model, ref = build(BF16), build(jnp.float32)
    x = randint(0, (4, 24), 1, 11)
    y = jnp.array([0, 1, 2, 1])
    assert model(x).dtype == BF16 and _param_dtypes(model) == {"float32"}

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x).astype(jnp.float32), y).mean()

    loss_bf, loss_32 = float(nnx.jit(loss_fn)(model)), float(nnx.jit(loss_fn)(ref))
    assert abs(loss_bf - loss_32) <= 2e-2 * abs(loss_32), (loss_bf, loss_32)

    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))

    @nnx.jit
    def train_step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(train_step(model, opt)) for _ in range(3)]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], f"bf16 training does not reduce the loss: {losses}"
    after = nnx.state(model, nnx.Param)
    assert _param_dtypes(model) == {"float32"}
    moved = [rel_rms_error(a, b) > 0 for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
    assert sum(moved) >= 0.9 * len(moved), f"only {sum(moved)} of {len(moved)} parameter arrays changed"
