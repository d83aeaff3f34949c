"""Gated delta-rule mixers on ``scan_kernels.delta_rule`` / ``delta_product``, on the fast-weight base.

Per head (state ``S ∈ R^{K×V}``, ``o_t = S_tᵀ q_t``), from ``x (B, L, D)``:

    GatedDeltaNet   S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
                    (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks": the gated delta rule)
    DeltaProduct    S_{t,0} = α_t S_{t-1},
                    S_{t,j} = (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ  for j = 1..n,
                    S_t = S_{t,n}   (Siems et al. 2025, "DeltaProduct": n generalised Householder steps per token)

with the decay of Mamba-2 (Dao & Gu 2024): ``log α_t = −Δ_t · exp(A_log)``, ``Δ_t = softplus(x_t W_Δ + b_Δ)``,
one per head (or one per key dimension with ``per_key_decay``); ``β = σ(x w_β)`` (``2σ`` with
``negative_eigenvalues``, Grazzi et al. 2025); q, k after a short convolution (width 4, SiLU) and L2-normalised;
``o ← RMSNorm(o) ⊙ silu(x W_g)``; ``y = concat_h(o) W_o``. The shared options are described in
``layers/_fast_weight.py``.
Shape legend: B batch · L length · D d_model · H heads · K key dim · V value dim; n Householder steps per token.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._fast_weight import DeltaNetOptions, _FastWeightMixer, beta_of, delta_rule_op
from algornn.layers._options import check_bool, check_dt_range, check_int, check_sequence_axis
from algornn.layers._params import dt_bias_param, f32, ssm_param
from algornn.scan_kernels import delta_product, delta_product_step, delta_rule_step

# Mamba-2's initialisation: Δ log-uniform in [1e-3, 1e-1] (through the bias b_Δ = softplus⁻¹(Δ)), A ~ U(1, 16)
DT_MIN, DT_MAX, A_MIN, A_MAX = 1e-3, 1e-1, 1.0, 16.0


@dataclasses.dataclass(frozen=True)
class GatedDeltaNetOptions(DeltaNetOptions):
    """The validated options of a :class:`GatedDeltaNet` layer (``layer.options``)."""

    short_conv: int | None = 4
    output_gate: bool = True
    per_key_decay: bool = False
    dt_min: float = DT_MIN
    dt_max: float = DT_MAX

    def __post_init__(self):
        super().__post_init__()
        check_bool("per_key_decay", self.per_key_decay)
        check_dt_range(self.dt_min, self.dt_max)


@dataclasses.dataclass(frozen=True)
class DeltaProductOptions(DeltaNetOptions):
    """The validated options of a :class:`DeltaProduct` layer (``layer.options``)."""

    short_conv: int | None = 4
    output_gate: bool = True
    num_householder: int = 2
    gated: bool = True
    dt_min: float = DT_MIN
    dt_max: float = DT_MAX

    def __post_init__(self):
        super().__post_init__()
        check_int("num_householder", self.num_householder)
        check_bool("gated", self.gated)
        check_dt_range(self.dt_min, self.dt_max)
        check_sequence_axis(
            self.sequence_axis,
            scan=False,
            why="DeltaProduct has no sequence-parallel form yet (use GatedDeltaNet or DeltaNet)",
        )


def _init_decay(layer, d_model: int, size: int, rngs) -> None:
    """The Mamba-2 decay parameters of ``size`` gates: ``dt_proj (D -> size)``, ``dt_bias`` (Δ log-uniform in
    ``[options.dt_min, options.dt_max]``), ``A_log (size,)``."""
    opt = layer.options
    layer.dt_proj = layer._linear(d_model, size, rngs)
    layer.dt_bias = dt_bias_param(rngs.params(), size, opt.dt_min, opt.dt_max, layer.param_dtype)
    A = jax.random.uniform(rngs.params(), (size,), jnp.float32, A_MIN, A_MAX)
    layer.A_log = ssm_param(jnp.log(A), layer.param_dtype)


def _log_decay(layer, x, shape):
    """``log α = −softplus(x W_Δ + b_Δ) · exp(A_log)`` in float32, reshaped to ``shape`` (``(..., H)`` or
    ``(..., H, K)``)."""
    z = layer.dt_proj(x).astype(jnp.float32)  # (..., size)
    lift = tuple(range(z.ndim - 1))  # explicit broadcasting of the per-gate (size,) parameters over (...)
    delta = jax.nn.softplus(z + jnp.expand_dims(f32(layer.dt_bias), lift))
    return (-delta * jnp.expand_dims(jnp.exp(f32(layer.A_log)), lift)).reshape(shape)


class GatedDeltaNet(_FastWeightMixer):
    """Gated DeltaNet: delta rule with a data-dependent Mamba-2 decay, short conv, L2 q/k, gated RMSNorm output.

    ``S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = S_tᵀ q_t``, ``log α_t = −Δ_t exp(A_log)``,
    ``Δ_t = softplus(x_t W_Δ + b_Δ)``, ``β_t = σ(x_t w_β)``; ``o ← RMSNorm(o) ⊙ silu(x W_g)``.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        short_conv: width W of the causal depthwise conv (+ SiLU) on the q, k, v projections (default 4), or None.
        feature_map: φ on q and k: "identity" (default), "elu+1", "relu", "silu" or "dpfp".
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: "l2" (default; the delta rule needs ‖k‖ = 1 to stay stable) or None.
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection (default True, as in the paper).
        negative_eigenvalues: β = 2σ(x w_β) ∈ (0, 2) instead of σ(x w_β): eigenvalues of the transition in
            (−1, 1) (Grazzi et al. 2025).
        per_key_decay: one decay per key dimension, log α (B, L, H, K), instead of one per head (B, L, H).
        dt_min, dt_max: range of the log-uniform initial Δ (through the softplus bias b_Δ; Mamba-2's 1e-3, 1e-1).
            The decay per step starts at exp(−Δ·A), A ~ U(1, 16): lower both to start with a longer memory.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        sequence_axis: None, or the mesh axis the time axis is sharded over: ``delta_rule`` runs through
            ``scan_kernels.sequence_parallel`` on the mesh of ``jax.set_mesh`` (unsharded without one).
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time (Δ here is a
    learned gate, not the step size of a continuous-time system), so any other value raises ``ValueError``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        short_conv: int | None = 4,
        feature_map: str = "identity",
        dpfp_nu: int = 1,
        qk_norm: str | None = "l2",
        output_gate: bool = True,
        negative_eigenvalues: bool = False,
        per_key_decay: bool = False,
        dt_min: float = DT_MIN,
        dt_max: float = DT_MAX,
        backend: str | None = None,
        sequence_axis: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(GatedDeltaNetOptions, locals())
        self.beta_proj = self._linear(d_model, self.heads, rngs, use_bias=True)
        _init_decay(self, d_model, self.heads * (self.feature_dim if per_key_decay else 1), rngs)

    def _inputs(self, x, q, k, v):
        beta = beta_of(self.beta_proj(x), self.options.negative_eigenvalues)
        shape = k.shape if self.options.per_key_decay else k.shape[:-1]
        return q, k, v, {"beta": beta, "log_decay": _log_decay(self, x, shape)}

    def _op(self, q, k, v, beta, log_decay, **seg):
        opt = self.options
        op = delta_rule_op(opt.sequence_axis, seg)
        return op(q, k, v, beta, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend, **seg)

    def _step(self, state, q, k, v, beta, log_decay):
        return delta_rule_step(state, q, k, v, beta, log_decay=log_decay)


class DeltaProduct(_FastWeightMixer):
    """DeltaProduct: n delta-rule (generalised Householder) steps per token, each with its own k, v, β.

    ``S_{t,0} = α_t S_{t-1}``, ``S_{t,j} = (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ``
    (j = 1..n), ``o_t = S_{t,n}ᵀ q_t``; α_t as in :class:`GatedDeltaNet` (per head; 1 with ``gated=False``).

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form, counted in sub-steps (C / n tokens per chunk).
        short_conv: width W of the causal depthwise conv (+ SiLU) on the q, k, v projections (default 4), or None.
        feature_map: φ on q and k: "identity" (default), "elu+1", "relu", "silu" or "dpfp".
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: "l2" (default; the delta rule needs ‖k‖ = 1 to stay stable) or None.
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection (default True).
        negative_eigenvalues: β = 2σ(·) ∈ (0, 2) instead of σ(·) (Grazzi et al. 2025; Siems et al. 2025 §3).
        num_householder: n, the keys, values and β per token (n = 1: Gated DeltaNet).
        gated: multiply the state by the Mamba-2 decay α_t before each token's steps (False: α_t = 1).
        dt_min, dt_max: range of the log-uniform initial Δ of the decay (as :class:`GatedDeltaNet`); unused with
            ``gated=False``.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        sequence_axis: must be None (DeltaProduct has no sequence-parallel form yet).
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, so any
    other value raises ``ValueError``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        short_conv: int | None = 4,
        feature_map: str = "identity",
        dpfp_nu: int = 1,
        qk_norm: str | None = "l2",
        output_gate: bool = True,
        negative_eigenvalues: bool = False,
        num_householder: int = 2,
        gated: bool = True,
        dt_min: float = DT_MIN,
        dt_max: float = DT_MAX,
        backend: str | None = None,
        sequence_axis: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(DeltaProductOptions, locals(), n_kv=num_householder)
        self.beta_proj = self._linear(d_model, num_householder * self.heads, rngs, use_bias=True)
        if gated:
            _init_decay(self, d_model, self.heads, rngs)

    def _inputs(self, x, q, k, v):
        opt = self.options
        beta = beta_of(self.beta_proj(x), opt.negative_eigenvalues).reshape(k.shape[:-1])  # (..., n, H)
        g = _log_decay(self, x, q.shape[:-1]) if opt.gated else None  # (..., H)
        return q, k, v, {"beta": beta, "log_decay": g}

    def _op(self, q, k, v, beta, log_decay, **seg):
        opt = self.options
        kw = dict(log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend)
        return delta_product(q, k, v, beta, **kw, **seg)

    def _step(self, state, q, k, v, beta, log_decay):
        return delta_product_step(state, q, k, v, beta, log_decay=log_decay)
