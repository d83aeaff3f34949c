"""The shared fast-weight options (short_conv, feature_map / dpfp_nu, qk_norm, output_gate, negative_eigenvalues)
and the gated delta-rule mixers, against an independent float64 NumPy forward pass written from the equations.

Inputs are drawn with NumPy; the lengths are short here (the L = 300 step == call checks are in
tests/layers/test_gated_delta.py and the generic tests/layers/test_mixers.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import layers
from algornn.layers._feature_maps import apply_feature_map, dpfp, feature_size
from tests._utils import assert_close, normal
from tests.layers._common import D_MODEL, make_mixer, run_call, run_steps

pytestmark = pytest.mark.loose_promotion


def _x(B, L, seed=0, d=D_MODEL):
    return normal(seed, (B, L, d))


# ----------------------------------------------------------------------------------------------------------------
# feature maps


def _dpfp_numpy(x, nu):
    """Schlag, Irie & Schmidhuber 2021 §5.3, written out index by index: r = ReLU([x, −x]) (size 2K) and
    entry (j, i) = r_i r_{(i+j) mod 2K} for j = 1..ν, i = 0..2K−1, j-major."""
    r = np.maximum(np.concatenate([x, -x], axis=-1), 0.0)
    n = r.shape[-1]
    out = np.zeros(x.shape[:-1] + (nu * n,))
    for j in range(1, nu + 1):
        for i in range(n):
            out[..., (j - 1) * n + i] = r[..., i] * r[..., (i + j) % n]
    return out


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_dpfp_matches_its_formula(nu):
    x = np.random.default_rng(nu).standard_normal((3, 2, 5))
    got = np.asarray(dpfp(jnp.asarray(x, jnp.float32), nu))
    assert got.shape == (3, 2, 2 * nu * 5) == x.shape[:-1] + (feature_size("dpfp", 5, nu),)
    np.testing.assert_allclose(got, _dpfp_numpy(x, nu), rtol=1e-6, atol=1e-6)


def test_elementwise_feature_maps_match_their_formulas():
    x = np.random.default_rng(0).standard_normal((4, 6))
    want = {
        "identity": x,
        "elu+1": np.where(x > 0, x + 1.0, np.exp(x)),
        "relu": np.maximum(x, 0.0),
        "silu": x / (1.0 + np.exp(-x)),
    }
    for name, w in want.items():
        got = np.asarray(apply_feature_map(jnp.asarray(x, jnp.float32), name))
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6, err_msg=name)
        assert feature_size(name, 6, 3) == 6


# ----------------------------------------------------------------------------------------------------------------
# an independent float64 forward pass of every fast-weight mixer


def _a(v):
    return np.asarray(v[...], np.float64)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softplus(z):
    return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0)


def _numpy_forward(m, x):
    """``y (B, L, D)`` of mixer ``m`` from its parameters, token by token in float64 (docstring equations)."""
    opt, name = m.options, type(m).__name__
    x = np.asarray(x, np.float64)
    B, L, _ = x.shape
    H, K, V, Kf = m.heads, m.key_dim, m.value_dim, m.feature_dim
    n = m.n_kv or 1
    q, k, v = x @ _a(m.q_proj.kernel), x @ _a(m.k_proj.kernel), x @ _a(m.v_proj.kernel)
    if opt.short_conv is not None:  # y_t = Σ_j w_j u_{t−W+1+j} + b, zero history; then SiLU
        u = np.concatenate([q, k, v], axis=-1)
        w, b, W = _a(m.qkv_conv.conv_w), _a(m.qkv_conv.conv_b), opt.short_conv
        y = np.zeros_like(u) + b
        for t in range(L):
            for j in range(W):
                s = t - W + 1 + j
                if s >= 0:
                    y[:, t] += w[j] * u[:, s]
        u = y * _sigmoid(y)
        q, k, v = np.split(u, [H * K, H * K + n * H * K], axis=-1)
    q, k, v = q.reshape(B, L, H, K), k.reshape(B, L, n, H, K), v.reshape(B, L, n, H, V)

    def phi(z):
        f = opt.feature_map
        if f == "dpfp":
            z = _dpfp_numpy(z, opt.dpfp_nu)
        elif f == "elu+1":
            z = np.where(z > 0, z + 1.0, np.exp(z))
        elif f == "relu":
            z = np.maximum(z, 0.0)
        elif f == "silu":
            z = z * _sigmoid(z)
        if opt.qk_norm == "l2":
            z = z / np.sqrt(np.sum(z * z, axis=-1, keepdims=True) + 1e-6)
        return z

    q, k = phi(q), phi(k)
    if name in ("GatedLinearAttention", "RetNet"):
        q = q * Kf**-0.5
    beta = log_decay = None
    if hasattr(m, "beta_proj"):
        beta = _sigmoid(x @ _a(m.beta_proj.kernel) + _a(m.beta_proj.bias)).reshape(B, L, n, H)
        beta = 2.0 * beta if opt.negative_eigenvalues else beta
    if hasattr(m, "A_log"):  # log α = −softplus(x W_Δ + b_Δ) exp(A_log)
        g = -_softplus(x @ _a(m.dt_proj.kernel) + _a(m.dt_bias)) * np.exp(_a(m.A_log))
        log_decay = g.reshape(B, L, H, Kf) if getattr(opt, "per_key_decay", False) else g.reshape(B, L, H, 1)
    if name == "GatedLinearAttention":
        gate = x @ _a(m.gate_down.kernel) @ _a(m.gate_up.kernel) + _a(m.gate_up.bias)
        log_decay = -np.log1p(np.exp(-gate)).reshape(B, L, H, Kf) / opt.gate_normalizer
    if name == "RetNet":
        log_decay = np.broadcast_to(np.log(1.0 - 2.0 ** (-5.0 - np.arange(H)))[:, None], (B, L, H, 1))

    S = np.zeros((B, H, Kf, V))
    z = np.zeros((B, H, Kf))
    o = np.zeros((B, L, H, V))
    for t in range(L):
        if log_decay is not None:
            S = S * np.exp(log_decay[:, t])[..., None]
        for j in range(n):
            kt, vt = k[:, t, j], v[:, t, j]
            if beta is None:  # linear attention: S += k vᵀ
                S = S + kt[..., :, None] * vt[..., None, :]
                z = z + kt
            else:  # delta rule: S = (I − β k kᵀ) S + β k vᵀ
                bt = beta[:, t, j][..., None, None]
                S = S - bt * kt[..., :, None] * np.einsum("bhk,bhkv->bhv", kt, S)[..., None, :]
                S = S + bt * kt[..., :, None] * vt[..., None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], S)
        if getattr(opt, "normalize", False):
            o[:, t] /= np.einsum("bhk,bhk->bh", q[:, t], z)[..., None]
    if opt.output_gate:  # RMSNorm(o) ⊙ silu(x W_g)
        o = o / np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + 1e-6) * _a(m.o_norm.scale)
        gz = (x @ _a(m.g_proj.kernel)).reshape(B, L, H, V)
        o = o * gz * _sigmoid(gz)
    return o.reshape(B, L, H * V) @ _a(m.o_proj.kernel)


SLOW = pytest.mark.slow
CASES = [
    pytest.param("linear_attention", {}, marks=SLOW),  # today's defaults: elu+1, normaliser
    (
        "linear_attention",
        {"short_conv": 3, "feature_map": "dpfp", "dpfp_nu": 2, "output_gate": True, "normalize": False},
    ),
    pytest.param("linear_attention", {"feature_map": "relu", "qk_norm": "l2", "normalize": False}, marks=SLOW),
    pytest.param("deltanet", {}, marks=SLOW),  # today's defaults: identity + l2
    ("deltanet", {"short_conv": 4, "feature_map": "silu", "negative_eigenvalues": True, "output_gate": True}),
    pytest.param("deltanet", {"feature_map": "dpfp", "dpfp_nu": 1}, marks=SLOW),
    pytest.param("gla", {}, marks=SLOW),
    pytest.param("gla", {"short_conv": 2, "feature_map": "dpfp", "dpfp_nu": 2, "output_gate": False}, marks=SLOW),
    pytest.param("retnet", {}, marks=SLOW),
    pytest.param("retnet", {"feature_map": "elu+1", "qk_norm": "l2", "short_conv": 4}, marks=SLOW),
    pytest.param("gated_deltanet", {}, marks=SLOW),
    ("gated_deltanet", {"per_key_decay": True, "negative_eigenvalues": True}),
    pytest.param("delta_product", {}, marks=SLOW),
    ("delta_product", {"num_householder": 3, "gated": False, "negative_eigenvalues": True, "output_gate": False}),
]


def _case_id(case):
    name, options = case.values if hasattr(case, "values") else case
    return f"{name}-{'-'.join(options) or 'default'}"


@pytest.mark.parametrize("name,options", CASES, ids=[_case_id(c) for c in CASES])
def test_mixer_matches_numpy_forward_and_its_step(name, options):
    """``__call__`` and ``step`` == the float64 NumPy loop of the equations, for each option combination.

    On the op's ``"reference"`` backend (cheap to compile): the chunked backends are checked against it in
    tests/scan_kernels and, through the layers, at L = 300 in test_mixers.py / test_gated_delta.py.
    """
    m = make_mixer(name, seed=2, backend="reference", **options)
    x = _x(2, 23, seed=5)
    want = _numpy_forward(m, x)
    assert_close(run_call(m, x), want, rtol=1e-4, name=f"{name} {options} call vs numpy")
    assert_close(run_steps(m, x), want, rtol=1e-4, name=f"{name} {options} step vs numpy")


# ----------------------------------------------------------------------------------------------------------------
# defaults: today's behaviour and parameter names (old checkpoints load)

TODAY = {
    "linear_attention": ({"q_proj", "k_proj", "v_proj", "o_proj"}, dict(feature_map="elu+1", qk_norm=None)),
    "deltanet": ({"q_proj", "k_proj", "v_proj", "o_proj", "beta_proj"}, dict(feature_map="identity", qk_norm="l2")),
    "gla": (
        {"q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "o_norm", "gate_down", "gate_up"},
        dict(feature_map="identity", qk_norm=None),
    ),
    "retnet": ({"q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "o_norm"}, dict(feature_map="identity")),
}


@pytest.mark.parametrize("name", list(TODAY))
def test_defaults_keep_the_parameter_names_and_state_of_before(name):
    m = make_mixer(name)
    modules, expected = TODAY[name]
    params = nnx.to_flat_state(nnx.state(m, nnx.Param))
    assert {str(path[0]) for path, _ in params} == modules
    assert m.options.short_conv is None
    for key, value in expected.items():
        assert getattr(m.options, key) == value
    state = m.init_state(2)
    H, K = m.heads, m.key_dim
    S = state[0] if name == "linear_attention" else state  # (S, z) with the normaliser, else S
    assert isinstance(S, jax.Array) and S.shape == (2, H, K, m.value_dim)


def test_short_conv_joins_the_state_as_a_dict_with_the_last_inputs():
    m = make_mixer("deltanet", short_conv=3)
    spec = m.state_spec(2)
    H, K, V = m.heads, m.key_dim, m.value_dim
    assert set(spec) == {"fast_weight", "conv"}
    assert spec["conv"].shape == (2, 2, H * (2 * K + V)) and spec["fast_weight"].shape == (2, H, K, V)
    # after two tokens the conv buffer holds exactly those tokens' projections (before the conv)
    x = _x(2, 2, seed=1)
    state = m.init_state(2)
    for t in range(2):
        state, _ = m.step(state, x[:, t])
    u = np.concatenate([np.asarray(x) @ _a(p.kernel) for p in (m.q_proj, m.k_proj, m.v_proj)], axis=-1)
    np.testing.assert_allclose(np.asarray(state["conv"]), u, rtol=1e-5, atol=1e-6)


def test_dpfp_enlarges_the_state_key_size():
    m = make_mixer("deltanet", feature_map="dpfp", dpfp_nu=3)
    assert m.feature_dim == 2 * 3 * m.key_dim
    assert m.init_state(1).shape == (1, m.heads, 2 * 3 * m.key_dim, m.value_dim)


# ----------------------------------------------------------------------------------------------------------------
# negative eigenvalues


@pytest.mark.parametrize(
    "name", ["deltanet"] + [pytest.param(n, marks=SLOW) for n in ("gated_deltanet", "delta_product")]
)
def test_negative_eigenvalues_give_beta_above_one(name, monkeypatch):
    """With a large β bias the op receives β ≈ 2 (not ≈ 1), and the output changes accordingly."""
    seen = {}
    module = __import__(type(make_mixer(name)).__module__, fromlist=["x"])
    op_name = "delta_product" if name == "delta_product" else "delta_rule"
    real = getattr(module, op_name)

    def spy(q, k, v, beta, **kw):
        seen["beta"] = np.asarray(beta)
        return real(q, k, v, beta, **kw)

    monkeypatch.setattr(module, op_name, spy)
    x = _x(1, 9, seed=3)
    outs, betas = {}, {}
    for neg in (False, True):
        m = make_mixer(name, seed=4, negative_eigenvalues=neg, backend="reference")
        m.beta_proj.bias[...] = jnp.full(m.beta_proj.bias.shape, 8.0)
        outs[neg] = np.asarray(m(x))
        assert_close(outs[neg], _numpy_forward(m, x), rtol=1e-4, name=f"{name} neg={neg}")
        betas[neg] = seen["beta"]
    # same parameters: the op receives exactly 2σ(·) instead of σ(·), here ≈ 2 > 1 (eigenvalue 1 − β ≈ −1)
    np.testing.assert_allclose(betas[True], 2.0 * betas[False], rtol=1e-6)
    assert betas[True].min() > 1.9 and betas[True].max() < 2.0 and betas[False].max() < 1.0
    assert np.abs(outs[True] - outs[False]).max() > 1e-2 * np.abs(outs[False]).max()


# ----------------------------------------------------------------------------------------------------------------
# bad options


@pytest.mark.parametrize(
    "name,bad,match",
    [
        ("deltanet", {"feature_map": "foo"}, r"feature_map='foo' is not one of"),
        ("linear_attention", {"feature_map": "dpfp", "dpfp_nu": 0}, r"dpfp_nu=0 must be an integer >= 1"),
        ("gla", {"short_conv": 0}, r"short_conv=0 must be an integer >= 1"),
        ("retnet", {"short_conv": 2.0}, r"short_conv=2.0 must be an integer"),
        ("deltanet", {"qk_norm": "x"}, r"qk_norm='x' is not one of \[None, 'l2'\]"),
        ("retnet", {"output_gate": 1}, r"output_gate=1 must be True or False"),
        ("deltanet", {"negative_eigenvalues": "yes"}, r"negative_eigenvalues='yes' must be True or False"),
        ("gated_deltanet", {"per_key_decay": None}, r"per_key_decay=None must be True or False"),
        ("delta_product", {"num_householder": 0}, r"num_householder=0 must be an integer >= 1"),
        ("delta_product", {"gated": "no"}, r"gated='no' must be True or False"),
        ("gated_deltanet", {"dt_min": 0.5, "dt_max": 0.1}, r"dt_min=0.5 must be <= dt_max=0.1"),
        ("delta_product", {"dt_min": -1.0}, r"dt_min"),
    ],
)
def test_bad_options_raise_value_errors_naming_the_option(name, bad, match):
    with pytest.raises(ValueError, match=match):
        make_mixer(name, **bad)


@pytest.mark.parametrize("cls", [layers.LinearAttention, layers.GatedLinearAttention, layers.RetNet])
def test_negative_eigenvalues_is_only_an_option_of_the_delta_rule_mixers(cls):
    with pytest.raises(TypeError, match="negative_eigenvalues"):
        cls(D_MODEL, negative_eigenvalues=True, rngs=nnx.Rngs(0))
