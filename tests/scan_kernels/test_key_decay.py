"""Per-key decayed scores by secondary chunking (``_common.key_decay``) against the exact (C, C, K) form in float64
numpy, forward and cotangents, with decays down to −20 per step (exponents that overflow if split). Mild decays take
the factored diagonal blocks, strong ones the exact blocks (``key_factorable`` is asserted per case, so both
branches are covered)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algornn.scan_kernels._common.key_decay import key_decayed_scores, key_factorable
from tests._utils import assert_close

F32 = jnp.float32


def exact_scores(x, k, gam, strict):
    """Float64: ``S_ri = Σ_d x_rd k_id exp(γ_rd − γ_id)`` on r ≥ i (r > i), and ``E_rid`` the masked decays."""
    C = x.shape[-2]
    m = np.tril(np.ones((C, C), bool), -1 if strict else 0)[..., None]
    diff = gam[..., :, None, :] - gam[..., None, :, :]
    E = np.where(m, np.exp(np.where(m, diff, 0.0)), 0.0)
    return np.einsum("...rd,...id,...rid->...ri", x, k, E), E


# (C, K, strength, strict, sub, factored): one sub-chunk, several, C not a multiple of the sub-chunk, strongest decay
CASES = [
    (64, 8, 1.0, False, 16, True),
    (64, 8, 1.0, True, 16, True),
    (63, 5, 20.0, True, 16, False),
    (7, 4, 3.0, False, 16, True),
    (40, 6, 20.0, False, 8, False),
]


@pytest.mark.parametrize("C,K,strength,strict,sub,factored", CASES)
def test_scores_and_cotangents_match_exact_form(C, K, strength, strict, sub, factored):
    rs = np.random.RandomState(C)
    x, k = rs.randn(2, 3, C, K), rs.randn(2, 3, C, K)
    # cumulative gates, rounded to float32 first so both sides see the same γ
    gam = np.cumsum(-strength * rs.rand(2, 3, C, K), -2).astype(np.float32).astype(np.float64)
    dS = rs.randn(2, 3, C, C)
    assert bool(key_factorable(jnp.asarray(gam, F32), sub)) == factored
    S_np, E = exact_scores(x, k, gam, strict)
    dSm = dS * np.tril(np.ones((C, C)), -1 if strict else 0)  # entries outside the mask must be ignored
    dx_np = np.einsum("...ri,...id,...rid->...rd", dSm, k, E)
    dk_np = np.einsum("...ri,...rd,...rid->...id", dSm, x, E)

    @jax.jit
    def run(x, k, gam, dS):
        S, vjp = jax.vjp(lambda x, k, gam: key_decayed_scores(x, k, gam, strict, sub), x, k, gam)
        return S, vjp(dS)

    S, (dx, dk, dgam) = run(*(jnp.asarray(a, F32) for a in (x, k, gam, dS)))
    # |γ| reaches 20·C/2: float32 γ differences carry ~1e-4 absolute error there, hence the looser tolerance
    rtol = 1e-5 if strength < 5 else 1e-4
    assert_close(S, S_np, rtol=rtol, name="S")
    assert_close(dx, dx_np, rtol=rtol, name="dx")
    assert_close(dk, dk_np, rtol=rtol, name="dk")
    assert_close(dgam, x * dx_np - k * dk_np, rtol=rtol, name="dgam")
