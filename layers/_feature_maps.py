"""Feature maps φ and the query/key norm of the fast-weight mixers (pure functions, shared by every such mixer).

``apply_feature_map(x (..., K), name, nu) -> (..., feature_size(name, K, nu))``:

    "identity"   φ(x) = x
    "elu+1"      φ(x) = elu(x) + 1            (Katharopoulos et al. 2020, §3.2: positive features)
    "relu"       φ(x) = max(x, 0)
    "silu"       φ(x) = x σ(x)                (the default q/k activation of the flash-linear-attention layers)
    "dpfp"       deterministic parameter-free projection (Schlag, Irie & Schmidhuber 2021, §5.3):
                 r(x) = ReLU([x, −x]) ∈ R^{2K},  DPFP_ν(x) = [r_i(x) r_{(i+j) mod 2K}(x)]_{j = 1..ν, i = 1..2K}
                 ∈ R^{2νK} (j-major), so a head's state is (2νK) × V.

``l2_normalize(x)``: ``x / sqrt(Σ x² + ε)`` over the last axis (DeltaNet's q/k norm, Schlag et al. 2021 §4.2).
Shape legend: K key dim; ``...`` any leading axes.
"""

import jax
import jax.numpy as jnp

from algornn.layers._options import check_choice, check_int

FEATURE_MAPS = ("identity", "elu+1", "relu", "silu", "dpfp")
QK_NORMS = (None, "l2")


def check_feature_map(feature_map, dpfp_nu) -> None:
    """``feature_map`` one of :data:`FEATURE_MAPS`, ``dpfp_nu`` an integer >= 1 (ValueError naming the option)."""
    check_choice("feature_map", feature_map, FEATURE_MAPS)
    check_int("dpfp_nu", dpfp_nu)


def check_qk_norm(qk_norm) -> None:
    check_choice("qk_norm", qk_norm, QK_NORMS)


def feature_size(feature_map: str, key_dim: int, nu: int = 1) -> int:
    """The size of ``φ(k)`` for keys of size ``key_dim``: ``2·ν·K`` for DPFP, ``K`` otherwise."""
    return 2 * nu * key_dim if feature_map == "dpfp" else key_dim


def dpfp(x, nu: int):
    """``x (..., K) -> (..., 2·ν·K)``: ``r = ReLU([x, −x])``, then ``r_i r_{(i+j) mod 2K}`` for j = 1..ν (j-major)."""
    r = jax.nn.relu(jnp.concatenate([x, -x], axis=-1))
    # jnp.roll(r, -j)[i] = r[(i + j) mod 2K]: the cyclic partner j places to the right (Schlag et al. 2021, eq. 31)
    return jnp.concatenate([r * jnp.roll(r, -j, axis=-1) for j in range(1, nu + 1)], axis=-1)


def apply_feature_map(x, feature_map: str, nu: int = 1):
    """``φ(x)`` over the last axis (module docstring); keeps ``x``'s dtype."""
    if feature_map == "identity":
        return x
    if feature_map == "elu+1":
        return jax.nn.elu(x) + 1.0
    if feature_map == "relu":
        return jax.nn.relu(x)
    if feature_map == "silu":
        return jax.nn.silu(x)
    if feature_map == "dpfp":
        return dpfp(x, nu)
    raise ValueError(f"feature_map={feature_map!r} is not one of {list(FEATURE_MAPS)}")


def l2_normalize(x, eps: float = 1e-6):
    """``x / sqrt(Σ_k x_k² + eps)`` over the last axis."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def apply_qk_norm(x, qk_norm):
    """``qk_norm`` None (unchanged) or ``"l2"`` (:func:`l2_normalize`)."""
    return x if qk_norm is None else l2_normalize(x)


def output_gate(o, norm, gate):
    """The gated output norm of GLA / RetNet / Gated DeltaNet: ``RMSNorm(o) ⊙ silu(gate)``.

    ``o (..., H, V)``, ``norm`` an ``nnx.RMSNorm(V)`` (or any callable over the last axis), ``gate (..., H·V)``
    (the projection ``x W_g``) -> ``(..., H, V)``.
    """
    return norm(o) * jax.nn.silu(gate).reshape(o.shape)
