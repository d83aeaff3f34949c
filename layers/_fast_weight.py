"""Fast-weight mixers on ``scan_kernels.linear_attention`` / ``delta_rule``: multi-head, with output projection.

Per head h (state ``S ∈ R^{K×V}``, output ``o_t = S_tᵀ q_t``), from ``x (B, L, D)``:

    LinearAttention        S_t = S_{t-1} + φ(k_t) v_tᵀ,  φ = elu + 1,  o_t /= φ(q_t)ᵀ z_t  (normalize=True)
                           (Katharopoulos et al. 2020, §3.2)
    DeltaNet               S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  β_t = σ(x_t w_β),  q, k L2-normalised
                           (Schlag, Irie & Schmidhuber 2021, §4.2)
    GatedLinearAttention   S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,  log α_t = logsigmoid(x_t W_1 W_2) / 16 per key dim,
                           o ← RMSNorm(o) ⊙ silu(x W_g)   (Yang et al. 2024, §4.1)
    RetNet                 S_t = γ_h S_{t-1} + k_t v_tᵀ,  γ_h = 1 − 2^{−5−h},  o ← RMSNorm(o) ⊙ silu(x W_g)
                           (Sun et al. 2023, §2; multi-scale retention)

then ``y = concat_h(o) W_o``. Options are constructor keywords (class docstrings); the mixers are discrete-time,
so ``dt_scale`` is accepted only as 1 (a clear ``ValueError`` otherwise).
Shape legend: B batch · L length · D d_model · H heads · K key dim · V value dim;
``q, k (B, L, H, K)``, ``v (B, L, H, V)``, state ``(B, H, K, V)`` (``(S, z)`` with normalisation).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_choice,
    check_discrete_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_sequence,
    check_state,
    check_token,
    record_options,
    zeros_of,
)
from algornn.scan_kernels import BACKENDS, delta_rule, delta_rule_step, linear_attention, linear_attention_step

FAST_WEIGHT_DISCRETE = (
    "fast-weight mixers are discrete-time (the state is updated once per token by an "
    "outer-product write, with no continuous-time system behind it)"
)


@dataclasses.dataclass(frozen=True)
class FastWeightOptions:
    """The validated options of a :class:`DeltaNet` or :class:`RetNet` layer (``layer.options``)."""

    num_heads: int = 4
    key_dim: int | None = None  # None: D // num_heads
    value_dim: int | None = None  # None: D // num_heads
    chunk_size: int = 64
    backend: str | None = None

    def __post_init__(self):
        check_int("num_heads", self.num_heads)
        for name in ("key_dim", "value_dim"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_int("chunk_size", self.chunk_size)
        check_choice("backend", self.backend, (None,) + BACKENDS)


@dataclasses.dataclass(frozen=True)
class LinearAttentionOptions(FastWeightOptions):
    """The validated options of a :class:`LinearAttention` layer (``layer.options``)."""

    normalize: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_bool("normalize", self.normalize)


@dataclasses.dataclass(frozen=True)
class GatedLinearAttentionOptions(FastWeightOptions):
    """The validated options of a :class:`GatedLinearAttention` layer (``layer.options``)."""

    gate_rank: int = 16
    gate_normalizer: float = 16.0

    def __post_init__(self):
        super().__post_init__()
        check_int("gate_rank", self.gate_rank)
        check_float("gate_normalizer", self.gate_normalizer)


def _l2_normalize(x, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class _FastWeightMixer(nnx.Module):
    """Shared projections; subclasses define the feature map / gates (``_inputs``) and the op."""

    gated_output = False

    def _setup(self, options_cls, values: dict):
        """Build the shared projections from the subclass constructor's ``locals()``."""
        name = type(self).__name__
        d_model, rngs = values["d_model"], values["rngs"]
        check_int("d_model", d_model)
        opt = record_options(options_cls, values)
        self.dtype, self.param_dtype = check_dtypes(name, values["dtype"], values["param_dtype"])
        H = opt.num_heads
        if (opt.key_dim is None or opt.value_dim is None) and d_model % H:
            raise ValueError(
                f"{name}: d_model={d_model} is not divisible by num_heads={H}; give key_dim and value_dim explicitly"
            )
        K = opt.key_dim or d_model // H
        V = opt.value_dim or d_model // H
        self.options, self.d_model, self.heads, self.key_dim, self.value_dim = opt, d_model, H, K, V
        lin = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d_model, H * K, **lin)
        self.k_proj = nnx.Linear(d_model, H * K, **lin)
        self.v_proj = nnx.Linear(d_model, H * V, **lin)
        self.o_proj = nnx.Linear(H * V, d_model, **lin)
        if self.gated_output:
            self.g_proj = nnx.Linear(d_model, H * V, **lin)
            self.o_norm = nnx.RMSNorm(V, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

    def _linear(self, d_in, d_out, rngs, use_bias=False):
        return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

    def _qkv(self, x):
        """``x (..., D) -> q, k (..., H, K), v (..., H, V)``."""
        lead = x.shape[:-1]
        H, K, V = self.heads, self.key_dim, self.value_dim
        q = self.q_proj(x).reshape(lead + (H, K))
        k = self.k_proj(x).reshape(lead + (H, K))
        v = self.v_proj(x).reshape(lead + (H, V))
        return q, k, v

    def _output(self, o, x):
        """``o (..., H, V)`` -> ``(..., D)`` in ``dtype``."""
        o = o.astype(self.dtype)
        if self.gated_output:
            o = self.o_norm(o) * jax.nn.silu(self.g_proj(x)).reshape(o.shape)
        return self.o_proj(o.reshape(o.shape[:-2] + (self.heads * self.value_dim,))).astype(self.dtype)

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale=1.0):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``dt_scale`` must be 1 (discrete-time)."""
        name = type(self).__name__
        check_sequence(name, x, self.d_model)
        check_discrete_dt_scale(name, dt_scale, FAST_WEIGHT_DISCRETE)
        x = x.astype(self.dtype)
        q, k, v, extra = self._inputs(x)
        o, _ = self._op(q, k, v, **extra)
        return self._output(o, x)

    def state_spec(self, batch_size: int):
        """``S (B, H, K, V)`` float32, or ``(S, z (B, H, K))`` with the normaliser."""
        S = jax.ShapeDtypeStruct((batch_size, self.heads, self.key_dim, self.value_dim), jnp.float32)
        if getattr(self.options, "normalize", False):
            return (S, jax.ShapeDtypeStruct((batch_size, self.heads, self.key_dim), jnp.float32))
        return S

    def init_state(self, batch_size: int):
        """``S (B, H, K, V)`` float32 zeros, or ``(S, z (B, H, K))`` with the normaliser."""
        check_batch_size(type(self).__name__, batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``. ``dt_scale`` must be 1 (discrete-time)."""
        name = type(self).__name__
        check_token(name, x_t, self.d_model)
        check_discrete_dt_scale(name, dt_scale, FAST_WEIGHT_DISCRETE)
        check_state(name, state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype)
        q, k, v, extra = self._inputs(x_t)
        new_state, o = self._step(state, q, k, v, **extra)
        new_state = jax.tree.map(lambda s: s.astype(jnp.float32), new_state)
        return new_state, self._output(o, x_t)


class LinearAttention(_FastWeightMixer):
    """Linear attention with the elu+1 feature map and optional normaliser ``φ(q_t)ᵀ Σ_{s≤t} φ(k_s)``.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.
        normalize: divide by the normaliser φ(q_t)ᵀ z_t (Katharopoulos et al.); the state is then ``(S, z)``.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, with no step
    size Δ, so any other value raises ``ValueError``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        normalize: bool = True,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(LinearAttentionOptions, locals())

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        return jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0, v, {}

    def _op(self, q, k, v):
        opt = self.options
        return linear_attention(q, k, v, normalize=opt.normalize, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v):
        return linear_attention_step(state, q, k, v, normalize=self.options.normalize)


class DeltaNet(_FastWeightMixer):
    """Fast weight programmer with the delta rule: ``β_t = σ(x_t w_β)`` per head, L2-normalised q and k.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, with no step
    size Δ, so any other value raises ``ValueError``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(FastWeightOptions, locals())
        self.beta_proj = self._linear(d_model, self.heads, rngs, use_bias=True)

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        beta = jax.nn.sigmoid(self.beta_proj(x).astype(jnp.float32))
        return _l2_normalize(q), _l2_normalize(k), v, {"beta": beta}

    def _op(self, q, k, v, beta):
        opt = self.options
        return delta_rule(q, k, v, beta, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, beta):
        return delta_rule_step(state, q, k, v, beta)


class GatedLinearAttention(_FastWeightMixer):
    """GLA: data-dependent per-key-dimension decay from a low-rank gate projection; output gate.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.
        gate_rank: rank of the low-rank gate projection x W_1 W_2.
        gate_normalizer: log α_t = logsigmoid(x W_1 W_2) / gate_normalizer (16 in the paper).

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, with no step
    size Δ, so any other value raises ``ValueError``.
    """

    gated_output = True

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(GatedLinearAttentionOptions, locals())
        self.gate_down = self._linear(d_model, gate_rank, rngs)
        self.gate_up = self._linear(gate_rank, self.heads * self.key_dim, rngs, use_bias=True)

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        gate = self.gate_up(self.gate_down(x)).astype(jnp.float32)
        g = jax.nn.log_sigmoid(gate) / jnp.float32(self.options.gate_normalizer)
        scale = jnp.asarray(self.key_dim**-0.5, q.dtype)
        return q * scale, k, v, {"log_decay": g.reshape(k.shape)}

    def _op(self, q, k, v, log_decay):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, log_decay):
        return linear_attention_step(state, q, k, v, log_decay=log_decay)


class RetNet(_FastWeightMixer):
    """Multi-scale retention: fixed per-head decay ``γ_h = 1 − 2^{−5−h}``; output gate.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, inputs and outputs; the op accumulates its state in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, with no step
    size Δ, so any other value raises ``ValueError``.
    """

    gated_output = True

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        key_dim: int | None = None,
        value_dim: int | None = None,
        chunk_size: int = 64,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(FastWeightOptions, locals())

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        log_gamma = jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(self.heads, dtype=jnp.float32)))  # (H,)
        g = jnp.broadcast_to(log_gamma, x.shape[:-1] + (self.heads,))  # (..., H)
        scale = jnp.asarray(self.key_dim**-0.5, q.dtype)
        return q * scale, k, v, {"log_decay": g}

    def _op(self, q, k, v, log_decay):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, log_decay):
        return linear_attention_step(state, q, k, v, log_decay=log_decay)
