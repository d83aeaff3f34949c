"""The public surface of ``algornn.layers``: constructor signatures and docstrings, option errors, the mixer listing
(``python -m algornn.layers``), the exported *Options records, discrete-time ``dt_scale`` and bidirectional refusals.
"""

import dataclasses
import inspect
import os
import pydoc
import subprocess
import sys

import jax.numpy as jnp
import pytest
from flax import nnx

from algornn import layers
from tests._utils import normal
from tests.layers._common import D_MODEL, make_mixer

pytestmark = pytest.mark.loose_promotion

OPTIONS_OF = {
    layers.S4: layers.S4Options,
    layers.S4D: layers.S4DOptions,
    layers.S5: layers.S5Options,
    layers.LRU: layers.LRUOptions,
    layers.LMU: layers.LMUOptions,
    layers.HiPPORNN: layers.HiPPORNNOptions,
    layers.LSSL: layers.LSSLOptions,
    layers.LinearAttention: layers.LinearAttentionOptions,
    layers.DeltaNet: layers.DeltaNetOptions,
    layers.RetNet: layers.RetNetOptions,
    layers.GatedDeltaNet: layers.GatedDeltaNetOptions,
    layers.DeltaProduct: layers.DeltaProductOptions,
    layers.GatedLinearAttention: layers.GatedLinearAttentionOptions,
    layers.SelectiveSSM: layers.SelectiveSSMOptions,
    layers.MLSTM: layers.MLSTMOptions,
    layers.Mamba2: layers.Mamba2Options,
    layers.Hawk: layers.HawkOptions,
}


def test_every_registered_mixer_has_an_exported_options_record():
    assert set(OPTIONS_OF) == set(layers.MIXERS.values())


@pytest.mark.parametrize("cls", list(OPTIONS_OF), ids=lambda c: c.__name__)
def test_options_are_keywords_with_the_record_defaults_and_one_docstring_line_each(cls):
    params = inspect.signature(cls.__init__).parameters
    assert list(params)[:2] == ["self", "d_model"]
    keyword = {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), "no **options"
    assert {"dtype", "param_dtype", "rngs"} <= set(keyword)
    assert keyword["rngs"].default is inspect.Parameter.empty
    assert keyword["dtype"].default is jnp.float32 and keyword["param_dtype"].default is jnp.float32
    record = {f.name: f.default for f in dataclasses.fields(OPTIONS_OF[cls])}
    options = {n: p.default for n, p in keyword.items() if n not in ("dtype", "param_dtype", "rngs")}
    assert options == record, "signature defaults and the validated record disagree"
    doc = inspect.getdoc(cls)
    for name in list(options) + ["dtype", "param_dtype", "rngs"]:
        lines = [
            ln
            for ln in doc.splitlines()
            if ln.strip().startswith(f"{name}:") or f", {name}:" in ln or ln.strip().startswith(f"{name},")
        ]
        assert lines, f"{cls.__name__} docstring has no line for option {name!r}"
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert all(name in text for name in options), "help() does not list every option"


def test_built_layer_keeps_its_validated_options_record():
    m = layers.S4D(D_MODEL, d_state=6, init="lin", rngs=nnx.Rngs(0))
    assert m.options == layers.S4DOptions(d_state=6, init="lin")
    assert m.dtype == jnp.float32 and m.param_dtype == jnp.float32


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"dtype": "int32"}, r"dtype='int32' is not one of"),
        ({"param_dtype": "complex64"}, r"param_dtype='complex64' is not one of"),
        ({"dtype": "nonsense"}, r"dtype='nonsense'"),
    ],
)
def test_bad_dtypes_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        layers.S4D(D_MODEL, rngs=nnx.Rngs(0), **bad)
    with pytest.raises(ValueError, match=match):
        layers.SequenceModel(
            d_model=D_MODEL, n_layers=1, num_classes=2, mixer="s4d", vocab_size=5, rngs=nnx.Rngs(0), **bad
        )


def test_mixer_options_unknown_key_names_the_mixer_and_lists_the_signature_options():
    with pytest.raises(ValueError) as info:
        layers.SequenceModel(
            d_model=D_MODEL,
            n_layers=1,
            num_classes=2,
            mixer="deltanet",
            mixer_options={"d_state": 8},
            vocab_size=5,
            rngs=nnx.Rngs(0),
        )
    msg = str(info.value)
    assert "DeltaNet: unknown option(s) ['d_state']" in msg
    assert (
        "['backend', 'chunk_size', 'dpfp_nu', 'feature_map', 'key_dim', 'negative_eigenvalues', 'num_heads', "
        "'output_gate', 'qk_norm', 'sequence_axis', 'short_conv', 'value_dim']" in msg
    )
    with pytest.raises(ValueError, match="arguments of the block / model"):
        layers.SequenceBlock(D_MODEL, "s4d", mixer_options={"dtype": jnp.bfloat16}, rngs=nnx.Rngs(0))


def test_python_m_layers_lists_every_mixer_one_line_each(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "algornn.layers"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, cls in {**layers.MIXERS, **layers.BASELINES}.items():
        rows = [ln for ln in lines if ln.split()[:2] == [name, cls.__name__]]
        assert len(rows) == 1, f"no single line for {name}"
        first_doc_line = inspect.getdoc(cls).splitlines()[0].replace("``", "")
        assert rows[0].rstrip().endswith(first_doc_line)


@pytest.mark.parametrize(
    "name", ["lru", "linear_attention", "deltanet", "gla", "retnet", "gated_deltanet", "delta_product", "hawk", "mlstm"]
)
def test_discrete_time_mixers_refuse_dt_scale_other_than_one(name):
    mixer = make_mixer(name)
    x = normal(0, (2, 5, D_MODEL))
    y = mixer(x)
    assert jnp.array_equal(mixer(x, dt_scale=1), y)  # 1 is the identity, accepted
    cls = type(mixer).__name__
    with pytest.raises(ValueError, match=rf"{cls}: dt_scale=2.0 is not supported: .*discrete-time.*must be 1"):
        mixer(x, dt_scale=2.0)
    with pytest.raises(ValueError, match="discrete-time"):
        mixer.step(mixer.init_state(2), x[:, 0], dt_scale=0.5)
    with pytest.raises(ValueError, match="a traced value"):
        nnx.jit(lambda m, x, s: m(x, dt_scale=s))(mixer, x, 1.0)


@pytest.mark.parametrize("cls", [layers.LMU, layers.HiPPORNN])
def test_nonlinear_cells_explain_why_they_are_not_bidirectional(cls):
    with pytest.raises(
        ValueError,
        match=rf"{cls.__name__}: bidirectional=True is not supported: .*nonlinear "
        r"recurrence.*use a linear mixer",
    ):
        cls(D_MODEL, bidirectional=True, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "2", jnp.ones((2,))])
def test_bad_concrete_dt_scale_raises(bad):
    mixer = make_mixer("s4d")
    x = jnp.ones((1, 4, D_MODEL))
    with pytest.raises(ValueError, match="dt_scale"):
        mixer(x, dt_scale=bad)


class _Custom(nnx.Module):
    """A user's mixer class without dtype/param_dtype arguments."""

    def __init__(self, d_model, *, width: int = 3, rngs):
        self.width = width
        self.lin = nnx.Linear(d_model, d_model, rngs=rngs)

    def __call__(self, x):
        return self.lin(x)

    def init_state(self, batch_size):
        return None

    def step(self, state, x_t):
        return state, self.lin(x_t)


def test_a_custom_mixer_class_gets_its_options_checked_and_dtype_only_if_it_takes_it():
    block = layers.SequenceBlock(D_MODEL, _Custom, mixer_options={"width": 2}, rngs=nnx.Rngs(0))
    assert block.mixer.width == 2 and block(jnp.ones((1, 3, D_MODEL))).shape == (1, 3, D_MODEL)
    with pytest.raises(ValueError, match=r"_Custom: unknown option\(s\) \['wdth'\]; allowed options are \['width'\]"):
        layers.SequenceBlock(D_MODEL, _Custom, mixer_options={"wdth": 2}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="does not take dtype"):
        layers.SequenceBlock(D_MODEL, _Custom, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
