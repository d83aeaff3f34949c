"""Fast-weight mixers on ``scan_kernels.linear_attention`` / ``delta_rule``: multi-head, with output projection.

Per head h (state ``S ∈ R^{K'×V}``, output ``o_t = S_tᵀ q_t``), from ``x (B, L, D)``:

    LinearAttention        S_t = S_{t-1} + φ(k_t) v_tᵀ,  φ = elu + 1,  o_t /= φ(q_t)ᵀ z_t  (normalize=True)
                           (Katharopoulos et al. 2020, §3.2)
    DeltaNet               S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  β_t = σ(x_t w_β),  q, k L2-normalised
                           (Schlag, Irie & Schmidhuber 2021, §4.2)
    GatedLinearAttention   S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,  log α_t = logsigmoid(x_t W_1 W_2) / 16 per key dim,
                           o ← RMSNorm(o) ⊙ silu(x W_g)   (Yang et al. 2024, §4.1)
    RetNet                 S_t = γ_h S_{t-1} + k_t v_tᵀ,  γ_h = 1 − 2^{−5−h},  o ← RMSNorm(o) ⊙ silu(x W_g)
                           (Sun et al. 2023, §2; multi-scale retention)

(``GatedDeltaNet`` and ``DeltaProduct`` on the same base: ``layers/_gated_delta.py``.) Then
``y = concat_h(o) W_o``. The options every fast-weight mixer shares (``_FastWeightMixer``), in the order applied:

    short_conv    q, k, v ← silu(causal depthwise conv of width W over x W_q, x W_k, x W_v)  (one ``ShortConv``
                  over their concatenation; its last W − 1 inputs join the recurrent state)
    feature_map   q, k ← φ(q), φ(k): identity | elu+1 | relu | silu | dpfp (``layers/_feature_maps.py``; DPFP
                  makes the key size K' = 2·ν·K, else K' = K)
    qk_norm       q, k ← q / ‖q‖₂, k / ‖k‖₂ ("l2") or unchanged (None)
    output_gate   o ← RMSNorm(o) ⊙ silu(x W_g)

Options are constructor keywords (class docstrings); the mixers are discrete-time, so ``dt_scale`` is accepted
only as 1 (a clear ``ValueError`` otherwise).
Shape legend: B batch · L length · D d_model · H heads · K key dim · V value dim · W conv width;
``q, k (B, L, H, K')``, ``v (B, L, H, V)``; state ``S (B, H, K', V)`` (``(S, z (B, H, K'))`` with the
normaliser), and with ``short_conv=W`` the dict ``{"fast_weight": that, "conv": (B, W − 1, H·(2K + V))}``.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._feature_maps import (
    apply_feature_map,
    apply_qk_norm,
    check_feature_map,
    check_qk_norm,
    feature_size,
    output_gate,
)
from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_choice,
    check_discrete_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_sequence,
    check_sequence_axis,
    check_state,
    check_token,
    record_options,
    zeros_of,
)
from algornn.layers._short_conv import ShortConv
from algornn.scan_kernels import (
    BACKENDS,
    delta_rule,
    delta_rule_step,
    linear_attention,
    linear_attention_step,
    sequence_parallel,
)
from algornn.scan_kernels._common.packing import check_segment_ids

FAST_WEIGHT_DISCRETE = (
    "fast-weight mixers are discrete-time (the state is updated once per token by an "
    "outer-product write, with no continuous-time system behind it)"
)


@dataclasses.dataclass(frozen=True)
class FastWeightOptions:
    """The options every fast-weight mixer shares (the base of each mixer's ``layer.options`` record)."""

    num_heads: int = 4
    key_dim: int | None = None  # None: D // num_heads
    value_dim: int | None = None  # None: D // num_heads
    chunk_size: int = 64
    backend: str | None = None
    short_conv: int | None = None  # None: no convolution; W: causal depthwise conv of width W on q, k, v
    feature_map: str = "identity"
    dpfp_nu: int = 1
    qk_norm: str | None = None
    output_gate: bool = False

    def __post_init__(self):
        check_int("num_heads", self.num_heads)
        for name in ("key_dim", "value_dim"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_int("chunk_size", self.chunk_size)
        check_choice("backend", self.backend, (None,) + BACKENDS)
        if self.short_conv is not None:
            check_int("short_conv", self.short_conv)
        check_feature_map(self.feature_map, self.dpfp_nu)
        check_qk_norm(self.qk_norm)
        check_bool("output_gate", self.output_gate)


@dataclasses.dataclass(frozen=True)
class LinearAttentionOptions(FastWeightOptions):
    """The validated options of a :class:`LinearAttention` layer (``layer.options``)."""

    feature_map: str = "elu+1"
    normalize: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_bool("normalize", self.normalize)


@dataclasses.dataclass(frozen=True)
class DeltaNetOptions(FastWeightOptions):
    """The validated options of a :class:`DeltaNet` layer (``layer.options``)."""

    qk_norm: str | None = "l2"
    negative_eigenvalues: bool = False
    sequence_axis: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_bool("negative_eigenvalues", self.negative_eigenvalues)
        check_sequence_axis(self.sequence_axis)


@dataclasses.dataclass(frozen=True)
class GatedLinearAttentionOptions(FastWeightOptions):
    """The validated options of a :class:`GatedLinearAttention` layer (``layer.options``)."""

    output_gate: bool = True
    gate_rank: int = 16
    gate_normalizer: float = 16.0

    def __post_init__(self):
        super().__post_init__()
        check_int("gate_rank", self.gate_rank)
        check_float("gate_normalizer", self.gate_normalizer)


@dataclasses.dataclass(frozen=True)
class RetNetOptions(FastWeightOptions):
    """The validated options of a :class:`RetNet` layer (``layer.options``)."""

    output_gate: bool = True


def packed(segment_ids) -> dict:
    """``{"segment_ids": segment_ids}`` for packed input, else ``{}`` (unpacked calls stay exactly as they were)."""
    return {} if segment_ids is None else {"segment_ids": segment_ids}


def zero_padding(y, segment_ids):
    """``y (B, L, D)`` with exactly 0 at the padding positions (``segment_ids == 0``) of packed input."""
    return y if segment_ids is None else jnp.where((segment_ids == 0)[..., None], jnp.zeros((), y.dtype), y)


def beta_of(logits, negative_eigenvalues: bool):
    """Writing strength ``β = σ(logits)`` in (0, 1), or ``2σ(logits)`` in (0, 2) with ``negative_eigenvalues``:
    the transition ``I − β k kᵀ`` (‖k‖ = 1) then has the eigenvalue ``1 − β ∈ (−1, 1)`` (Grazzi et al. 2025, §4)."""
    beta = jax.nn.sigmoid(logits.astype(jnp.float32))
    return 2.0 * beta if negative_eigenvalues else beta


def delta_rule_op(sequence_axis, seg=None):
    """``delta_rule``, or ``sequence_parallel(delta_rule, sequence_axis)`` (time sharded over that mesh axis);
    ``seg``: the packing keywords of the call (``segment_ids``), which the sharded form does not take."""
    if sequence_axis is None:
        return delta_rule
    if seg:
        raise ValueError(
            f"sequence_axis={sequence_axis!r} and segment_ids cannot be combined: the sequence-parallel delta rule "
            "takes unpacked rows"
        )
    return sequence_parallel(delta_rule, sequence_axis)


class _FastWeightMixer(nnx.Module):
    """Shared projections, short conv, feature map, q/k norm and output gate; subclasses define the gates
    (``_inputs``) and the op (``_op`` / ``_step``)."""

    def _setup(self, options_cls, values: dict, *, n_kv: int | None = None):
        """Build the shared parts from the subclass constructor's ``locals()``.

        ``n_kv``: None for one key and value per token (``k (..., H, K')``), or n for n of them
        (``k (..., n, H, K')``, DeltaProduct)."""
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
        self.feature_dim = feature_size(opt.feature_map, K, opt.dpfp_nu)  # K': the key size of the state
        self.n_kv = n_kv
        n = n_kv or 1
        lin = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d_model, H * K, **lin)
        self.k_proj = nnx.Linear(d_model, n * H * K, **lin)
        self.v_proj = nnx.Linear(d_model, n * H * V, **lin)
        self.o_proj = nnx.Linear(H * V, d_model, **lin)
        if opt.short_conv is not None:
            channels = H * K + n * H * (K + V)
            self.qkv_conv = ShortConv(
                channels, opt.short_conv, activation="silu", dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs
            )
        if opt.output_gate:
            self.g_proj = nnx.Linear(d_model, H * V, **lin)
            self.o_norm = nnx.RMSNorm(V, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

    def _linear(self, d_in, d_out, rngs, use_bias=False):
        return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

    def _qkv(self, x, conv_buf=None, segment_ids=None):
        """``x (..., D) -> q (..., H, K'), k (..., [n,] H, K'), v (..., [n,] H, V)`` and the new conv buffer.

        Projections, then the short convolution (``conv_buf`` None: over the time axis of ``x (B, L, D)``, per packed
        sequence with ``segment_ids``; else one step of ``x (B, D)``), then the feature map and the q/k norm.
        """
        opt = self.options
        lead = x.shape[:-1]
        H, K, V = self.heads, self.key_dim, self.value_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if opt.short_conv is not None:
            u = jnp.concatenate([q, k, v], axis=-1)
            if conv_buf is None:
                u = self.qkv_conv(u, **packed(segment_ids))
            else:
                conv_buf, u = self.qkv_conv.step(conv_buf, u)
            q, k, v = jnp.split(u, [q.shape[-1], q.shape[-1] + k.shape[-1]], axis=-1)
        sub = () if self.n_kv is None else (self.n_kv,)
        q = q.reshape(lead + (H, K))
        k = k.reshape(lead + sub + (H, K))
        v = v.reshape(lead + sub + (H, V))
        q, k = (apply_qk_norm(apply_feature_map(t, opt.feature_map, opt.dpfp_nu), opt.qk_norm) for t in (q, k))
        return q, k, v, conv_buf

    def _output(self, o, x):
        """``o (..., H, V)`` -> ``(..., D)`` in ``dtype``."""
        o = o.astype(self.dtype)
        if self.options.output_gate:
            o = output_gate(o, self.o_norm, self.g_proj(x))
        return self.o_proj(o.reshape(o.shape[:-2] + (self.heads * self.value_dim,))).astype(self.dtype)

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale=1.0, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``dt_scale`` must be 1 (discrete-time).

        ``segment_ids (B, L)`` int: packed sequences (0 = padding, a new id starts a new sequence): every sequence
        runs from the empty state (the short convolution and the fast-weight memory restart), padding outputs 0."""
        name = type(self).__name__
        check_sequence(name, x, self.d_model)
        check_discrete_dt_scale(name, dt_scale, FAST_WEIGHT_DISCRETE)
        if segment_ids is not None:
            check_segment_ids(segment_ids, x.shape[0], x.shape[1], what="x")
        x = x.astype(self.dtype)
        q, k, v, _ = self._qkv(x, segment_ids=segment_ids)
        q, k, v, extra = self._inputs(x, q, k, v)
        o, _ = self._op(q, k, v, **extra, **packed(segment_ids))
        return zero_padding(self._output(o, x), segment_ids)

    def _fast_weight_spec(self, batch_size: int):
        S = jax.ShapeDtypeStruct((batch_size, self.heads, self.feature_dim, self.value_dim), jnp.float32)
        if getattr(self.options, "normalize", False):
            return (S, jax.ShapeDtypeStruct((batch_size, self.heads, self.feature_dim), jnp.float32))
        return S

    def state_spec(self, batch_size: int):
        """``S (B, H, K', V)`` float32, or ``(S, z (B, H, K'))`` with the normaliser; with ``short_conv=W`` the
        dict ``{"fast_weight": that, "conv": (B, W − 1, H·K + n·H·(K + V)) float32}``."""
        spec = self._fast_weight_spec(batch_size)
        if self.options.short_conv is None:
            return spec
        return {"fast_weight": spec, "conv": self.qkv_conv.state_spec(batch_size)}

    def init_state(self, batch_size: int):
        """Zeros of :meth:`state_spec` (the empty memory and an all-zero conv history)."""
        check_batch_size(type(self).__name__, batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``. ``dt_scale`` must be 1 (discrete-time)."""
        name = type(self).__name__
        check_token(name, x_t, self.d_model)
        check_discrete_dt_scale(name, dt_scale, FAST_WEIGHT_DISCRETE)
        check_state(name, state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype)
        conv = self.options.short_conv is not None
        fast_weight, buf = (state["fast_weight"], state["conv"]) if conv else (state, None)
        q, k, v, buf = self._qkv(x_t, buf)
        q, k, v, extra = self._inputs(x_t, q, k, v)
        fast_weight, o = self._step(fast_weight, q, k, v, **extra)
        fast_weight = jax.tree.map(lambda s: s.astype(jnp.float32), fast_weight)
        new_state = {"fast_weight": fast_weight, "conv": buf} if conv else fast_weight
        return new_state, self._output(o, x_t)


class LinearAttention(_FastWeightMixer):
    """Linear attention with the elu+1 feature map and optional normaliser ``φ(q_t)ᵀ Σ_{s≤t} φ(k_s)``.

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        key_dim: key/query size K per head (None: D // num_heads).
        value_dim: value size V per head (None: D // num_heads).
        chunk_size: chunk length C of the chunked parallel form.
        short_conv: None, or the width W of a causal depthwise conv (+ SiLU) on the q, k, v projections.
        feature_map: φ on q and k: "elu+1" (default), "identity", "relu", "silu" or "dpfp".
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: None or "l2" (normalise φ(q), φ(k) to unit length).
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection.
        normalize: divide by the normaliser φ(q_t)ᵀ z_t (Katharopoulos et al.); the state is then ``(S, z)``
            (for a positive feature map such as "elu+1"; a normaliser below 1e-6 in size is clamped to ±1e-6).
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
        short_conv: int | None = None,
        feature_map: str = "elu+1",
        dpfp_nu: int = 1,
        qk_norm: str | None = None,
        output_gate: bool = False,
        normalize: bool = True,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(LinearAttentionOptions, locals())

    def _inputs(self, x, q, k, v):
        return q, k, v, {}

    def _op(self, q, k, v, **seg):
        opt = self.options
        kw = dict(normalize=opt.normalize, chunk_size=opt.chunk_size, backend=opt.backend)
        return linear_attention(q, k, v, **kw, **seg)

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
        short_conv: None, or the width W of a causal depthwise conv (+ SiLU) on the q, k, v projections.
        feature_map: φ on q and k: "identity" (default), "elu+1", "relu", "silu" or "dpfp".
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: "l2" (default; the delta rule needs ‖k‖ = 1 to stay stable) or None.
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection.
        negative_eigenvalues: β = 2σ(x w_β) ∈ (0, 2) instead of σ(x w_β): eigenvalues 1 − β of the transition
            in (−1, 1) (Grazzi et al. 2025).
        backend: op backend: None (auto), "reference", "xla", "pallas".
        sequence_axis: None, or the mesh axis the time axis is sharded over: ``delta_rule`` runs through
            ``scan_kernels.sequence_parallel`` on the mesh of ``jax.set_mesh`` (unsharded without one).
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
        short_conv: int | None = None,
        feature_map: str = "identity",
        dpfp_nu: int = 1,
        qk_norm: str | None = "l2",
        output_gate: bool = False,
        negative_eigenvalues: bool = False,
        backend: str | None = None,
        sequence_axis: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(DeltaNetOptions, locals())
        self.beta_proj = self._linear(d_model, self.heads, rngs, use_bias=True)

    def _inputs(self, x, q, k, v):
        return q, k, v, {"beta": beta_of(self.beta_proj(x), self.options.negative_eigenvalues)}

    def _op(self, q, k, v, beta, **seg):
        opt = self.options
        return delta_rule_op(opt.sequence_axis, seg)(
            q, k, v, beta, chunk_size=opt.chunk_size, backend=opt.backend, **seg
        )

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
        short_conv: None, or the width W of a causal depthwise conv (+ SiLU) on the q, k, v projections.
        feature_map: φ on q and k: "identity" (default), "elu+1", "relu", "silu" or "dpfp" (the gate then has
            one decay per feature, 2·ν·K).
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: None (default) or "l2".
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection (default True, as in the paper).
        gate_rank: rank of the low-rank gate projection x W_1 W_2.
        gate_normalizer: log α_t = logsigmoid(x W_1 W_2) / gate_normalizer (16 in the paper).
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
        short_conv: int | None = None,
        feature_map: str = "identity",
        dpfp_nu: int = 1,
        qk_norm: str | None = None,
        output_gate: bool = True,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(GatedLinearAttentionOptions, locals())
        self.gate_down = self._linear(d_model, gate_rank, rngs)
        self.gate_up = self._linear(gate_rank, self.heads * self.feature_dim, rngs, use_bias=True)

    def _inputs(self, x, q, k, v):
        gate = self.gate_up(self.gate_down(x)).astype(jnp.float32)
        g = jax.nn.log_sigmoid(gate) / jnp.float32(self.options.gate_normalizer)
        scale = jnp.asarray(self.feature_dim**-0.5, q.dtype)
        return q * scale, k, v, {"log_decay": g.reshape(k.shape)}

    def _op(self, q, k, v, log_decay, **seg):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend, **seg)

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
        short_conv: None, or the width W of a causal depthwise conv (+ SiLU) on the q, k, v projections.
        feature_map: φ on q and k: "identity" (default), "elu+1", "relu", "silu" or "dpfp".
        dpfp_nu: ν of the "dpfp" feature map (key size 2·ν·K); unused otherwise.
        qk_norm: None (default) or "l2".
        output_gate: o ← RMSNorm(o) ⊙ silu(x W_g) before the output projection (default True, as in the paper).
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
        short_conv: int | None = None,
        feature_map: str = "identity",
        dpfp_nu: int = 1,
        qk_norm: str | None = None,
        output_gate: bool = True,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(RetNetOptions, locals())

    def _inputs(self, x, q, k, v):
        log_gamma = jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(self.heads, dtype=jnp.float32)))  # (H,)
        g = jnp.broadcast_to(log_gamma, x.shape[:-1] + (self.heads,))  # (..., H)
        scale = jnp.asarray(self.feature_dim**-0.5, q.dtype)
        return q * scale, k, v, {"log_decay": g}

    def _op(self, q, k, v, log_decay, **seg):
        opt = self.options
        return linear_attention(q, k, v, log_decay=log_decay, chunk_size=opt.chunk_size, backend=opt.backend, **seg)

    def _step(self, state, q, k, v, log_decay):
        return linear_attention_step(state, q, k, v, log_decay=log_decay)
