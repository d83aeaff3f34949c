"""GatedDeltaNet, DeltaProduct and the fast-weight options at L = 300: the chunked ``__call__`` == the token-by-token
``step`` (with the short-conv buffer in the state), and bfloat16 compute.

The generic checks of every registered mixer (defaults; step == call at L = 300, gradients reach every parameter,
SequenceModel + jit, bad inputs and states) are in test_mixers.py; the equations against NumPy in
test_fast_weight_options.py; one training step of each new mixer in its MQAR preset
(tests/experiments/test_train_presets.py).
"""

import jax.numpy as jnp
import pytest

from tests._utils import assert_close, normal, rel_rms_error, tolerance
from tests.layers._common import D_MODEL, make_mixer, run_call, run_steps

pytestmark = pytest.mark.loose_promotion

SLOW = pytest.mark.slow


def _x(B, L, seed=0):
    return normal(seed, (B, L, D_MODEL))


LONG = [
    # short conv (state buffer), DPFP (state (2νK) × V) and β ∈ (0, 2) together, on the chunked XLA form
    ("deltanet", {"short_conv": 4, "feature_map": "dpfp", "dpfp_nu": 2, "negative_eigenvalues": True}),
    pytest.param("gated_deltanet", {"per_key_decay": True, "negative_eigenvalues": True}, marks=SLOW),
    pytest.param("delta_product", {"num_householder": 3, "gated": False, "negative_eigenvalues": True}, marks=SLOW),
    pytest.param("gla", {"short_conv": 4, "feature_map": "dpfp"}, marks=SLOW),
    pytest.param("linear_attention", {"short_conv": 4, "output_gate": True}, marks=SLOW),
    pytest.param("retnet", {"short_conv": 4, "qk_norm": "l2", "feature_map": "silu"}, marks=SLOW),
]


def _long_id(case):
    name, options = case.values if hasattr(case, "values") else case
    return f"{name}-{'-'.join(options)}"


@pytest.mark.parametrize("name,options", LONG, ids=[_long_id(c) for c in LONG])
def test_call_equals_step_at_length_300_with_options(name, options):
    m = make_mixer(name, seed=1, **options)
    x = _x(2, 300, seed=1)
    y = run_call(m, x)
    assert_close(run_steps(m, x), y, rtol=1e-4, name=f"{name} {options} step vs call")
    assert rel_rms_error(y, jnp.zeros_like(y)) > 0.1


@pytest.mark.parametrize("name", ["gated_deltanet", "delta_product"])
def test_bfloat16_compute_is_close_to_float32(name):
    """bfloat16 projections, conv, norms and gates with float32 parameters (op on its cheap-to-compile reference
    backend; the chunked backends' bfloat16 inputs are tested in tests/scan_kernels)."""
    f32 = make_mixer(name, seed=3, backend="reference")
    bf = make_mixer(name, seed=3, dtype=jnp.bfloat16, backend="reference")
    x = _x(2, 48, seed=2)
    y32, ybf = run_call(f32, x), run_call(bf, x)
    assert ybf.dtype == jnp.bfloat16
    assert_close(ybf.astype(jnp.float32), y32, rtol=tolerance("bfloat16"), name=f"{name} bf16 call")
    ybf_step = run_steps(bf, x.astype(jnp.bfloat16))
    assert ybf_step.dtype == jnp.bfloat16
    assert_close(ybf_step.astype(jnp.float32), y32, rtol=tolerance("bfloat16"), name=f"{name} bf16 step")


@pytest.mark.parametrize("name", ["gated_deltanet", "delta_product"])
def test_decay_init_draws_delta_from_dt_min_to_dt_max(name):
    """Δ₀ = softplus(b_Δ) lies in [dt_min, dt_max] (Mamba-2's 1e-3 … 1e-1 by default; a lower range is the lever for
    a longer memory at initialisation) and A = exp(A_log) in [1, 16]."""
    import numpy as np

    for rng, kw in (((1e-3, 1e-1), {}), ((1e-5, 1e-4), {"dt_min": 1e-5, "dt_max": 1e-4})):
        m = make_mixer(name, num_heads=16, key_dim=4, value_dim=4, **kw)
        delta0 = np.logaddexp(0.0, np.asarray(m.dt_bias[...], np.float64))
        A = np.exp(np.asarray(m.A_log[...], np.float64))
        assert np.all((delta0 >= rng[0] * 0.999) & (delta0 <= rng[1] * 1.001)), delta0
        assert delta0.max() / delta0.min() > 2  # drawn over the range, not one value
        assert np.all((A >= 1) & (A <= 16))
