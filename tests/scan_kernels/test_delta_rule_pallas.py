"""Delta rule, Pallas backend (interpret mode on CPU): forward, final state and all gradients against the
token-by-token reference; the kernels also lower for CUDA (Triton) from a CPU host."""

import jax
import jax.numpy as jnp
import pytest

import algornn.scan_kernels as sk
from tests._utils import assert_close
from tests.scan_kernels.test_delta_rule import F32, check_against_reference, make_inputs
from tests.scan_kernels.test_pallas_scan import lower_for_cuda

# (B, L, H, K, V, beta, strength, C)
CASES = [
    (1, 1, 1, 16, 16, "high", 0.0, 16),
    (2, 63, 4, 8, 12, "mid", 20.0, 16),
    (1, 500, 1, 64, 64, "high", 1.0, 64),
    pytest.param(1, 1000, 4, 16, 8, "low", 0.0, 64, marks=pytest.mark.slow),  # L = 1000 runs in the XLA twin
]


@pytest.mark.parametrize("B,L,H,K,V,beta,strength,C", CASES)
def test_pallas_matches_reference(B, L, H, K, V, beta, strength, C):
    q, k, v, b, g, s0 = make_inputs(12, B, L, H, K, V, beta, strength)
    check_against_reference("pallas", q, k, v, b, g, s0, C)


def test_pallas_bfloat16_inputs():
    q, k, v, b, g, s0 = make_inputs(14, 1, 200, 2, 32, 32, "mid", 0.5, dtype=jnp.bfloat16)
    o_r, S_r = sk.delta_rule_reference(*(x.astype(F32) for x in (q, k, v)), b, log_decay=g, initial_state=s0)
    o, S = sk.delta_rule(q, k, v, b, log_decay=g, initial_state=s0, backend="pallas")
    assert o.dtype == jnp.bfloat16
    assert_close(o, o_r, dtype=jnp.bfloat16, name="o")
    assert_close(S, S_r, rtol=1e-5, name="state")


@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
def test_pallas_kernels_lower_for_cuda(gate, monkeypatch):
    """Lowering for CUDA (Triton) on a CPU host proves the kernel bodies use only lowerable ops."""
    import algornn.scan_kernels._delta_rule.pallas as drp
    from algornn.scan_kernels._common import pallas_config as _pallas_config

    orig = _pallas_config.pallas_call_kwargs
    no_interp = lambda **kw: orig(**{**kw, "interpret": False})  # noqa: E731
    monkeypatch.setattr(_pallas_config, "pallas_call_kwargs", no_interp)
    monkeypatch.setattr(drp, "pallas_call_kwargs", no_interp)
    B, L, H, K, V = 1, 100, 2, 64, 32
    S = jax.ShapeDtypeStruct
    g = {"none": None, "scalar": S((B, L, H), F32), "key": S((B, L, H, K), F32)}[gate]
    args = (
        S((B, L, H, K), F32),
        S((B, L, H, K), F32),
        S((B, L, H, V), F32),
        S((B, L, H), F32),
        g,
        S((B, H, K, V), F32),
    )
    f = jax.jit(lambda q, k, v, b, g, s0: drp._forward(q, k, v, b, g, s0, 64))
    assert "triton" in lower_for_cuda(f, *args)  # abstract H100 device on jax >= 0.11
