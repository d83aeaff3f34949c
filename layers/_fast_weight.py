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

then ``y = concat_h(o) W_o``. Shape legend: B batch · L length · D d_model · H heads · K key dim · V value dim;
``q, k (B, L, H, K)``, ``v (B, L, H, V)``, state ``(B, H, K, V)`` (``(S, z)`` with normalisation).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (build_options, check_batch_size, check_bool, check_choice, check_float, check_int,
                             check_sequence, check_token)
from algornn.scan_kernels import BACKENDS, delta_rule, delta_rule_step, linear_attention, linear_attention_step


@dataclasses.dataclass(frozen=True)
class FastWeightOptions:
    num_heads: int = 4
    key_dim: int | None = None       # None: D // num_heads
    value_dim: int | None = None     # None: D // num_heads
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
    normalize: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_bool("normalize", self.normalize)


@dataclasses.dataclass(frozen=True)
class GatedLinearAttentionOptions(FastWeightOptions):
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

    Options = FastWeightOptions
    gated_output = False

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, **options):
        name = type(self).__name__
        check_int("d_model", d_model)
        opt = build_options(self.Options, name, options)
        H = opt.num_heads
        if (opt.key_dim is None or opt.value_dim is None) and d_model % H:
            raise ValueError(f"{name}: d_model={d_model} is not divisible by num_heads={H}; give key_dim and "
                             f"value_dim explicitly")
        K = opt.key_dim or d_model // H
        V = opt.value_dim or d_model // H
        self.options, self.d_model, self.heads, self.key_dim, self.value_dim = opt, d_model, H, K, V
        self.q_proj = nnx.Linear(d_model, H * K, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d_model, H * K, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d_model, H * V, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(H * V, d_model, use_bias=False, rngs=rngs)
        if self.gated_output:
            self.g_proj = nnx.Linear(d_model, H * V, use_bias=False, rngs=rngs)
            self.o_norm = nnx.RMSNorm(V, rngs=rngs)
        self._init_extra(d_model, rngs)

    def _init_extra(self, d_model, rngs):
        pass

    def _qkv(self, x):
        """``x (..., D) -> q, k (..., H, K), v (..., H, V)``."""
        lead = x.shape[:-1]
        H, K, V = self.heads, self.key_dim, self.value_dim
        q = self.q_proj(x).reshape(lead + (H, K))
        k = self.k_proj(x).reshape(lead + (H, K))
        v = self.v_proj(x).reshape(lead + (H, V))
        return q, k, v

    def _inputs(self, x):
        """Op inputs for ``x (..., D)``: ``(q, k, v, extras)``; extras are keyword args (log_decay, beta)."""
        q, k, v = self._qkv(x)
        return q, k, v, {}

    def _output(self, o, x):
        """``o (..., H, V)`` -> ``(..., D)``."""
        if self.gated_output:
            o = self.o_norm(o) * jax.nn.silu(self.g_proj(x)).reshape(o.shape)
        return self.o_proj(o.reshape(o.shape[:-2] + (self.heads * self.value_dim,)))

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, x):
        """``x (B, L, D) -> (B, L, D)``."""
        check_sequence(type(self).__name__, x, self.d_model)
        x = x.astype(jnp.float32)
        q, k, v, extra = self._inputs(x)
        o, _ = self._op(q, k, v, **extra)
        return self._output(o, x)

    def init_state(self, batch_size: int):
        check_batch_size(type(self).__name__, batch_size)
        S = jnp.zeros((batch_size, self.heads, self.key_dim, self.value_dim), jnp.float32)
        if getattr(self.options, "normalize", False):
            return (S, jnp.zeros((batch_size, self.heads, self.key_dim), jnp.float32))
        return S

    def step(self, state, x_t):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``."""
        check_token(type(self).__name__, x_t, self.d_model)
        x_t = x_t.astype(jnp.float32)
        q, k, v, extra = self._inputs(x_t)
        state, o = self._step(state, q, k, v, **extra)
        return state, self._output(o, x_t)


class LinearAttention(_FastWeightMixer):
    """Linear attention with the elu+1 feature map and optional normaliser ``φ(q_t)ᵀ Σ_{s≤t} φ(k_s)``."""

    Options = LinearAttentionOptions

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        return jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0, v, {}

    def _op(self, q, k, v):
        opt = self.options
        return linear_attention(q, k, v, normalize=opt.normalize, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v):
        return linear_attention_step(state, q, k, v, normalize=self.options.normalize)


class DeltaNet(_FastWeightMixer):
    """Fast weight programmer with the delta rule: ``β_t = σ(x_t w_β)`` per head, L2-normalised q and k."""

    def _init_extra(self, d_model, rngs):
        self.beta_proj = nnx.Linear(d_model, self.heads, rngs=rngs)

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        beta = jax.nn.sigmoid(self.beta_proj(x))
        return _l2_normalize(q), _l2_normalize(k), v, {"beta": beta}

    def _op(self, q, k, v, beta):
        opt = self.options
        return delta_rule(q, k, v, beta, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, beta):
        return delta_rule_step(state, q, k, v, beta)


class GatedLinearAttention(_FastWeightMixer):
    """GLA: data-dependent per-key-dimension decay from a low-rank gate projection; output gate."""

    Options = GatedLinearAttentionOptions
    gated_output = True

    def _init_extra(self, d_model, rngs):
        r = self.options.gate_rank
        self.gate_down = nnx.Linear(d_model, r, use_bias=False, rngs=rngs)
        self.gate_up = nnx.Linear(r, self.heads * self.key_dim, rngs=rngs)

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        g = jax.nn.log_sigmoid(self.gate_up(self.gate_down(x))) / jnp.float32(self.options.gate_normalizer)
        return q * jnp.float32(self.key_dim ** -0.5), k, v, {"log_decay": g.reshape(k.shape)}

    def _op(self, q, k, v, log_decay):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, log_decay):
        return linear_attention_step(state, q, k, v, log_decay=log_decay)


class RetNet(_FastWeightMixer):
    """Multi-scale retention: fixed per-head decay ``γ_h = 1 − 2^{−5−h}``; output gate."""

    gated_output = True

    def _inputs(self, x):
        q, k, v = self._qkv(x)
        log_gamma = jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(self.heads, dtype=jnp.float32)))        # (H,)
        g = jnp.broadcast_to(log_gamma, x.shape[:-1] + (self.heads,))                            # (..., H)
        return q * jnp.float32(self.key_dim ** -0.5), k, v, {"log_decay": g}

    def _op(self, q, k, v, log_decay):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend)

    def _step(self, state, q, k, v, log_decay):
        return linear_attention_step(state, q, k, v, log_decay=log_decay)

