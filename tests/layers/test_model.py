"""SequenceBlock / SequenceModel: pooling with lengths, padding, train/eval, optax labels, Linen bridge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.nnx import bridge

from algornn import layers
from tests._utils import assert_close, normal, randint, rel_rms_error

pytestmark = pytest.mark.loose_promotion

MIXER = "lru"
OPTS = {"d_state": 4}

_call = nnx.jit(lambda m, x, lengths=None: m(x, lengths))
_encode = nnx.jit(lambda m, x, lengths=None: m.encode(x, lengths))


def _model(**kw):
    args = dict(d_model=8, n_layers=2, num_classes=3, mixer=MIXER, mixer_options=OPTS, vocab_size=11, rngs=nnx.Rngs(0))
    args.update(kw)
    return layers.SequenceModel(**args)


def _tokens(B=3, L=19, seed=0):
    return randint(seed, (B, L), 1, 11)


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
            alone = _call(model, jnp.asarray(x[b : b + 1, :n]))
            assert_close(batched[b : b + 1], alone, rtol=1e-5, name=f"{pooling} b={b}")


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
        feats = _encode(model, x[b : b + 1, : int(lengths[b])])
        assert_close(enc[b], jnp.mean(feats[0], axis=0), rtol=1e-5, name=f"masked mean b={b}")


def test_float_inputs_postnorm_batchnorm_and_mlp():
    model = layers.SequenceModel(
        d_model=8,
        n_layers=2,
        num_classes=4,
        mixer=MIXER,
        mixer_options=OPTS,
        input_dim=5,
        norm="batch",
        prenorm=False,
        ff="mlp",
        dropout=0.1,
        rngs=nnx.Rngs(1),
    )
    x = normal(0, (4, 13, 5))
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
    with pytest.raises(ValueError, match=r"LRU: unknown option\(s\) \['d_sate'\]; allowed options are .*'d_state'"):
        _model(mixer_options={"d_sate": 4})
    model = _model()
    with pytest.raises(ValueError, match="integer tokens"):
        model(jnp.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="lengths"):
        model(_tokens(), lengths=jnp.ones((2,), jnp.int32))


def test_block_with_mixer_class_and_mask():
    block = layers.SequenceBlock(8, layers.LRU, mixer_options={"d_state": 4, "bidirectional": True}, rngs=nnx.Rngs(0))
    x = normal(0, (2, 10, 8))
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


@pytest.mark.parametrize("cls,opts,ssm_name", [(layers.LRU, OPTS, "nu_log"), (layers.S4D, {"d_state": 4}, "Lambda_re")])
def test_linen_bridge_keeps_all_parameters_in_params(cls, opts, ssm_name):
    to_linen = bridge.ToLinen(cls, args=(8,), kwargs=opts)
    x = normal(0, (2, 9, 8))
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


# -- bad values in eager calls; documented behaviour under jit ----------------------------------------------
def test_out_of_range_ids_and_lengths_raise_in_eager_calls_naming_the_values():
    model = _model()
    x = np.asarray(_tokens(B=2, L=6))
    big, neg = x.copy(), x.copy()
    big[1, 3] = 11
    neg[0, 2] = -1
    with pytest.raises(ValueError, match=r"token ids in x must be in \[0, vocab_size=11\); got 11 at \(1, 3\)"):
        model(jnp.asarray(big))
    with pytest.raises(ValueError, match=r"got -1 at \(0, 2\)"):
        model(jnp.asarray(neg))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, L=6\]; got 7 at \(1,\)"):
        model(jnp.asarray(x), jnp.array([6, 7]))
    with pytest.raises(ValueError, match=r"got 0 at \(0,\)"):
        model(jnp.asarray(x), jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"x_t must be in \[0, vocab_size=11\); got 12 at \(1,\)"):
        model.step(model.init_state(2), jnp.array([1, 12]))
    with pytest.raises(ValueError, match="tuple of 2 block states"):
        model.step(model.init_state(2)[:1], jnp.array([1, 2]))


def test_under_jit_bad_ids_give_nan_logits_and_lengths_are_clipped():
    model = _model()
    x = np.asarray(_tokens(B=2, L=6))
    big = x.copy()
    big[1, 3] = 11
    logits = np.asarray(_call(model, jnp.asarray(big)))
    assert np.all(np.isfinite(logits[0])) and np.all(np.isnan(logits[1]))
    clipped = _call(model, jnp.asarray(x), jnp.array([9, 0]))
    assert_close(clipped, _call(model, jnp.asarray(x), jnp.array([6, 1])), rtol=1e-6, name="clipped lengths")


@pytest.mark.parametrize("pooling", ["mean", "last", "none"])
def test_padded_batch_without_lengths_infers_them_from_trailing_padding(pooling):
    """id 0 is padding only, so trailing zeros are padding: no lengths == the true lengths (interior zeros are
    positions of the sequence, embedded as zero, and do not end it)."""
    lengths = np.array([19, 7, 12])
    x = np.array(_tokens(B=3))
    x[2, 4] = 0  # an interior padding id inside the valid prefix
    for b, n in enumerate(lengths):
        x[b, n:] = 0
    model = _model(pooling=pooling)
    inferred = _call(model, jnp.asarray(x))
    given = _call(model, jnp.asarray(x), jnp.asarray(lengths))
    if pooling == "none":  # padded positions carry no meaning
        for b, n in enumerate(lengths):
            assert_close(inferred[b, :n], given[b, :n], rtol=1e-6, name=f"none b={b}")
    else:
        assert_close(inferred, given, rtol=1e-6, name=f"{pooling} inferred lengths")
        whole = _call(model, jnp.asarray(x), jnp.full((3,), 19))
        assert rel_rms_error(whole[1:], given[1:]) > 1e-3, "the test cannot tell padding from content"


# -- ssm_param_labels on a Linen tree from nnx.bridge.ToLinen -----------------------------------------------
def test_ssm_param_labels_label_a_to_linen_tree_and_drive_multi_transform():
    class Head(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2)(bridge.ToLinen(layers.S4D, args=(8,), kwargs={"d_state": 4})(x))

    net = Head()
    x = normal(0, (2, 9, 8))
    params = jax.jit(net.init)(jax.random.key(1), x)["params"]
    labels = layers.ssm_param_labels(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
    ssm_names = {"log_dt", "Lambda_re", "Lambda_im", "B_re", "B_im"}
    for path, label in flat.items():
        assert label == ("ssm" if any(f"'{n}'" in path for n in ssm_names) else "default"), path
    assert sum(v == "ssm" for v in flat.values()) == len(ssm_names) and "default" in flat.values()

    tx = optax.multi_transform({"ssm": optax.sgd(0.0), "default": optax.adam(1e-2)}, labels)
    state = tx.init(params)
    grads = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, x) ** 2))(params)
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    unboxed_old, unboxed_new = linen.meta.unbox(params), linen.meta.unbox(new)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(unboxed_old), jax.tree.leaves(unboxed_new)):
        is_ssm = any(f"'{n}'" in jax.tree_util.keystr(path) for n in ssm_names)
        assert bool(np.any(np.asarray(a) != np.asarray(b))) == (not is_ssm), jax.tree_util.keystr(path)


def test_ssm_param_labels_refuse_trees_they_cannot_label():
    to_linen = bridge.ToLinen(layers.S4D, args=(8,), kwargs={"d_state": 4})
    params = to_linen.init(jax.random.key(0), jnp.ones((1, 3, 8)))["params"]
    with pytest.raises(ValueError, match="only plain arrays"):
        layers.ssm_param_labels(linen.meta.unbox(params))
    for bad in ([1, 2], jnp.ones(3), None, {}):
        with pytest.raises(ValueError, match="expected an nnx.Module"):
            layers.ssm_param_labels(bad)
    with pytest.raises(ValueError, match="must hold arrays or NNXMeta"):
        layers.ssm_param_labels({"a": params["log_dt"], "b": "text"})
