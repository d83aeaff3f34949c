"""SequenceBlock / SequenceModel: pooling with lengths, padding, train/eval, optax labels, Linen bridge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.nnx import bridge

from algornn import layers
from tests._utils import assert_close, rel_rms_error

pytestmark = pytest.mark.loose_promotion

MIXER = "lru"
OPTS = {"d_state": 4}

_call = nnx.jit(lambda m, x, lengths=None: m(x, lengths))
_encode = nnx.jit(lambda m, x, lengths=None: m.encode(x, lengths))


def _model(**kw):
    args = dict(d_model=8, n_layers=2, num_classes=3, mixer=MIXER, mixer_options=OPTS, vocab_size=11,
                rngs=nnx.Rngs(0))
    args.update(kw)
    return layers.SequenceModel(**args)


def _tokens(B=3, L=19, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, L), 1, 11)


def test_mean_and_last_pooling_with_lengths_match_unpadded_sequences():
    """A suffix-padded batch with ``lengths`` gives the same logits as each sequence run on its own."""
    lengths = np.array([19, 7])
    x = np.asarray(_tokens(B=2))
    x_pad = x.copy()
    for b, n in enumerate(lengths):
        x_pad[b, n:] = 0
    for pooling in ("mean", "last"):
        model = _model(pooling=pooling)
        batched = _call(model, jnp.asarray(x_pad), jnp.asarray(lengths))
        assert batched.shape == (2, 3)
        for b, n in enumerate(lengths):
            alone = _call(model, jnp.asarray(x[b:b + 1, :n]))
            assert_close(batched[b:b + 1], alone, rtol=1e-5, name=f"{pooling} b={b}")


def test_mean_pooling_by_hand_and_none_pooling():
    model = _model(pooling="none")
    x = _tokens()
    per_pos = _encode(model, x)
    assert per_pos.shape == (3, 19, 8)
    assert _call(model, x).shape == (3, 19, 3)
    mean_model = _model(pooling="mean")
    nnx.update(mean_model, nnx.state(model))
    assert_close(_encode(mean_model, x), jnp.mean(per_pos, axis=1), name="mean pool")
    lengths = jnp.array([4, 19, 1])
    enc = _encode(mean_model, x, lengths)
    for b in range(3):
        feats = _encode(model, x[b:b + 1, : int(lengths[b])])
        assert_close(enc[b], jnp.mean(feats[0], axis=0), rtol=1e-5, name=f"masked mean b={b}")


def test_float_inputs_postnorm_batchnorm_and_mlp():
    model = layers.SequenceModel(d_model=8, n_layers=2, num_classes=4, mixer=MIXER, mixer_options=OPTS,
                                 input_dim=5, norm="batch", prenorm=False, ff="mlp", dropout=0.1,
                                 rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (4, 13, 5))
    model.train()
    y_train_1 = _call(model, x)
    y_train_2 = _call(model, x)
    assert rel_rms_error(y_train_1, y_train_2) > 0, "dropout should draw new masks in train mode"
    model.eval()
    y_eval = _call(model, x)
    assert_close(_call(model, x), y_eval, name="eval mode is deterministic")
    assert y_eval.shape == (4, 4)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="exactly one of vocab_size"):
        _model(input_dim=4)
    with pytest.raises(ValueError, match="pooling"):
        _model(pooling="max")
    with pytest.raises(ValueError, match="norm"):
        _model(norm="group")
    with pytest.raises(ValueError, match="ff"):
        _model(ff="swiglu")
    with pytest.raises(ValueError, match="mixer="):
        _model(mixer="transformer")
    with pytest.raises(ValueError, match="unknown option"):
        _model(mixer_options={"d_sate": 4})
    model = _model()
    with pytest.raises(ValueError, match="integer tokens"):
        model(jnp.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="lengths"):
        model(_tokens(), lengths=jnp.ones((2,), jnp.int32))


def test_block_with_mixer_class_and_mask():
    block = layers.SequenceBlock(8, layers.LRU, mixer_options={"d_state": 4, "bidirectional": True},
                                 rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 10, 8))
    mask = jnp.array([[1.0] * 6 + [0.0] * 4, [1.0] * 10])
    run = nnx.jit(lambda b, x, mask=None: b(x, mask))
    y = run(block, x, mask)
    # a bidirectional mixer sees the future: the mask must hide the padded suffix
    assert_close(y[0, :6], run(block, x[:1, :6])[0], rtol=1e-5, name="masked prefix")
    assert rel_rms_error(run(block, x)[0, :6], y[0, :6]) > 1e-3
    assert y.shape == x.shape


def test_ssm_labels_drive_optax_multi_transform():
    """SSM params get their own optimizer (here: frozen with lr 0), the rest trains."""
    model = _model()
    labels = layers.ssm_param_labels(model)
    flat = dict(jax.tree_util.tree_leaves_with_path(labels))
    assert {"ssm", "default"} == set(flat.values())
    ssm_paths = {jax.tree_util.keystr(p) for p, v in flat.items() if v == "ssm"}
    assert any("nu_log" in p for p in ssm_paths) and any("B_re" in p for p in ssm_paths)
    assert not any("decoder" in p or "out_proj" in p for p in ssm_paths)
    tx = optax.multi_transform({"ssm": optax.sgd(0.0), "default": optax.adamw(1e-2, weight_decay=0.1)}, labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = nnx.to_pure_dict(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    x, y = _tokens(), jnp.array([0, 1, 2])

    @nnx.jit
    def train_step(m, o):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        o.update(m, nnx.grad(loss)(m))

    train_step(model, opt)
    after = nnx.to_pure_dict(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after))
    label_list = jax.tree.leaves(nnx.to_pure_dict(labels))
    assert len(moved) == len(label_list) == len(flat)
    for lab, mv in zip(label_list, moved):
        assert mv == (lab == "default")
    assert sum(moved) > 0 and sum(not m for m in moved) > 0


@pytest.mark.parametrize("cls,opts,ssm_name", [(layers.LRU, OPTS, "nu_log"),
                                               (layers.S4D, {"d_state": 4}, "Lambda_re")])
def test_linen_bridge_keeps_all_parameters_in_params(cls, opts, ssm_name):
    to_linen = bridge.ToLinen(cls, args=(8,), kwargs=opts)
    x = jax.random.normal(jax.random.key(0), (2, 9, 8))
    variables = jax.jit(to_linen.init)(jax.random.key(1), x)
    assert set(variables) == {"params"}
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}
    assert any(ssm_name in n for n in names)
    n_linen = sum(np.size(v) for v in jax.tree.leaves(variables["params"]))
    native = cls(8, rngs=nnx.Rngs(0), **opts)
    n_nnx = sum(np.size(v) for v in jax.tree.leaves(nnx.state(native, nnx.Param)))
    assert n_linen == n_nnx
    y = jax.jit(to_linen.apply)(variables, x)
    assert y.shape == x.shape

    class Wrapper(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2)(bridge.ToLinen(cls, args=(8,), kwargs=opts)(x))

    w = Wrapper()
    params = jax.jit(w.init)(jax.random.key(2), x)["params"]
    grads = jax.jit(jax.grad(lambda p: jnp.sum(w.apply({"params": p}, x) ** 2)))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    ssm_grads = [g for p, g in jax.tree_util.tree_leaves_with_path(grads) if ssm_name in jax.tree_util.keystr(p)]
    assert ssm_grads and np.any(np.asarray(ssm_grads[0]) != 0)
