"""``MLSTM``: the mLSTM block of xLSTM (Beck et al. 2024, §2.3 and the mLSTM block of Fig. 10) on
``scan_kernels.mlstm``.

With E = proj_factor·D inner channels, H heads of size K = V = E / H, from ``x (B, L, D)``:

    [x_m, z] = x W_up                                    two up-projection branches, (B, L, E) each
    x_c      = silu(causal_depthwise_conv(x_m))          width short_conv (x_c = x_m with short_conv=None)
    q = x_c W_q,  k = x_c W_k,  v = x_m W_v              block-diagonal, blocks of qkv_block_size   (22)–(24)
    ĩ_t = [q_t, k_t, v_t] w_i + b_i,  f̃_t = [q_t, k_t, v_t] w_f + b_f   one pair per head          (25)–(26)
    log f_t = logsigmoid(f̃_t)  (sigmoid forget gate),  i_t = exp(ĩ_t)  (exponential input gate)
    q ← q / √K  (qk_norm="l2": q and k L2-normalised per head first)                              (23)
    per head, with the stabiliser m (App. A of the paper; inside ``scan_kernels.mlstm``):
      m_t = max(log f_t + m_{t−1}, ĩ_t)
      C_t = exp(log f_t + m_{t−1} − m_t) C_{t−1} + exp(ĩ_t − m_t) k_t v_tᵀ                        (19)
      n_t = exp(log f_t + m_{t−1} − m_t) n_{t−1} + exp(ĩ_t − m_t) k_t                              (20)
      h̃_t = C_tᵀ q_t / max(|n_tᵀ q_t|, exp(−m_t))                                                  (21)
    h = GroupNorm_H(h̃) ⊙ γ + s ⊙ x_c                    per-head norm, learnable skip s (per channel)
    y = (h ⊙ silu(z)) W_down                              output gate from the z branch, (B, L, D)

``output_norm=False`` drops the per-head norm (``h = h̃ + s ⊙ x_c``, no γ) and ``output_gate=False`` the z branch
(``y = h W_down``, an up-projection to E channels only), for probing what the readout does; both default to the
paper's block (docs/layers.md §The memory probe: what each mixer learns with its defaults).

The gates read q, k and v (the paper's block, Fig. 10), not the block input x. The output gate o_t of (21) and
(27) is the block's ``silu(z)`` branch. Initialisation as in the paper's code: forget-gate biases
``linspace(3, 6, H)`` and input-gate biases ``N(0, 0.1²)`` with zero gate weights, skip and norm scales 1.
The layer is discrete-time: ``dt_scale`` is accepted only as 1.
Shape legend: B batch · L length · D d_model · E inner width · H heads · K key dim · V value dim · W conv width;
state ``(buf (B, W−1, E), (C (B, H, K, V), n (B, H, K), m (B, H)))`` float32 (just ``(C, n, m)`` without
the convolution).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._fast_weight import packed, zero_padding
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
from algornn.layers._params import param
from algornn.layers._short_conv import ShortConv
from algornn.scan_kernels import BACKENDS, mlstm, mlstm_step
from algornn.scan_kernels._common.packing import check_segment_ids

MLSTM_DISCRETE = (
    "the mLSTM is discrete-time (its matrix memory is written once per token through an exponential input gate "
    "and a sigmoid forget gate, with no continuous-time system behind it)"
)
QK_NORMS = (None, "l2")
NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MLSTMOptions:
    """The validated options of an :class:`MLSTM` layer (``layer.options``)."""

    num_heads: int = 4
    proj_factor: float = 2.0
    short_conv: int | None = 4
    qkv_block_size: int = 4
    qk_norm: str | None = None
    output_norm: bool = True
    output_gate: bool = True
    chunk_size: int = 64
    backend: str | None = None

    def __post_init__(self):
        check_int("num_heads", self.num_heads)
        check_float("proj_factor", self.proj_factor)
        if self.short_conv is not None:
            check_int("short_conv", self.short_conv)
        check_int("qkv_block_size", self.qkv_block_size)
        check_choice("qk_norm", self.qk_norm, QK_NORMS)
        check_bool("output_norm", self.output_norm)
        check_bool("output_gate", self.output_gate)
        check_int("chunk_size", self.chunk_size)
        check_choice("backend", self.backend, (None,) + BACKENDS)


def _inner_width(d_model: int, opt: MLSTMOptions) -> int:
    """E = proj_factor·D, which must be a whole number divisible by num_heads and by qkv_block_size."""
    exact = opt.proj_factor * d_model
    E = round(exact)
    if E < 1 or abs(E - exact) > 1e-6 * max(1.0, exact):
        raise ValueError(
            f"MLSTM: proj_factor={opt.proj_factor!r} times d_model={d_model} is {exact!r}; the inner width "
            f"E = proj_factor·d_model must be a whole number >= 1"
        )
    for name, value in (("num_heads", opt.num_heads), ("qkv_block_size", opt.qkv_block_size)):
        if E % value:
            raise ValueError(f"MLSTM: the inner width E = proj_factor·d_model = {E} is not divisible by {name}={value}")
    return E


def _l2_normalize(x, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _gate_bias_init(low, high):
    """Biases ``linspace(low, high, H)`` (the forget gate starts mostly open, σ(3) … σ(6) ≈ 0.95 … 0.998)."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.linspace(low, high, shape[0], dtype=dtype)

    return init


class MLSTM(nnx.Module):
    """xLSTM's mLSTM block: matrix memory with exponential input and sigmoid forget gates, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        num_heads: number of heads H (K = V = E / H per head).
        proj_factor: up-projection factor: E = proj_factor·D inner channels (a whole number).
        short_conv: width W of the causal depthwise convolution (with SiLU) feeding q, k and the skip; None: none.
        qkv_block_size: block size of the block-diagonal q, k, v projections (E: dense E×E projections).
        qk_norm: None or "l2" (q and k L2-normalised per head before the 1/√K scale of q).
        output_norm: the per-head norm of h̃ with its scale γ (the paper's block; False: h = h̃ + s ⊙ x_c).
        output_gate: the output gate silu(z) from a second up-projection branch (the paper's block; False: no z).
        chunk_size: chunk length C of the chunked parallel form of ``scan_kernels.mlstm``.
        backend: op backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, convolution, norm, inputs and outputs; the gates and the mLSTM
            memory are float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the mixer is discrete-time, with no step
    size Δ, so any other value raises ``ValueError``. The equations are in the module docstring of
    ``algornn.layers._mlstm``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        proj_factor: float = 2.0,
        short_conv: int | None = 4,
        qkv_block_size: int = 4,
        qk_norm: str | None = None,
        output_norm: bool = True,
        output_gate: bool = True,
        chunk_size: int = 64,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(MLSTMOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("MLSTM", dtype, param_dtype)
        E = _inner_width(d_model, opt)
        H, b = opt.num_heads, opt.qkv_block_size
        self.options, self.d_model, self.inner, self.heads, self.head_dim = opt, d_model, E, H, E // H
        dt, pdt = self.dtype, self.param_dtype
        branches = 2 if output_gate else 1  # [x_m, z], or x_m alone without the output gate
        self.up_proj = nnx.Linear(d_model, branches * E, use_bias=False, dtype=dt, param_dtype=pdt, rngs=rngs)
        conv = dict(activation="silu", dtype=dt, param_dtype=pdt, rngs=rngs)
        self.conv = None if short_conv is None else ShortConv(E, short_conv, **conv)  # silu(conv(x_m))
        # block-diagonal q, k, v projections: E / b blocks of b×b, fan-in b
        init = nnx.initializers.normal(stddev=1.0 / math.sqrt(b))
        self.q_proj = param(init(rngs.params(), (E // b, b, b), jnp.float32), pdt)
        self.k_proj = param(init(rngs.params(), (E // b, b, b), jnp.float32), pdt)
        self.v_proj = param(init(rngs.params(), (E // b, b, b), jnp.float32), pdt)
        gate = dict(use_bias=True, kernel_init=nnx.initializers.zeros_init(), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.i_proj = nnx.Linear(3 * E, H, bias_init=nnx.initializers.normal(stddev=0.1), **gate)
        self.f_proj = nnx.Linear(3 * E, H, bias_init=_gate_bias_init(3.0, 6.0), **gate)
        if output_norm:
            self.norm_scale = param(jnp.ones((E,), jnp.float32), pdt)
        self.skip = param(jnp.ones((E,), jnp.float32), pdt)
        self.down_proj = nnx.Linear(E, d_model, use_bias=False, dtype=dt, param_dtype=pdt, rngs=rngs)

    # -- the block, shared by __call__ and step (leading axes ``...`` are (B, L) or (B,)) ------------------------
    def _block_diag(self, w, x):
        """``x (..., E) -> (..., E)``: block j of the output is block j of x times ``w[j] (b, b)``."""
        nb, b = w.shape[0], w.shape[1]
        xb = x.reshape(x.shape[:-1] + (nb, b))
        return jnp.einsum("...ni,nij->...nj", xb, w[...].astype(self.dtype)).reshape(x.shape)

    def _up(self, x):
        """``x (..., D) -> x_m, z (..., E)`` in ``dtype`` (z None without the output gate)."""
        up = self.up_proj(x.astype(self.dtype))
        return up[..., : self.inner], (up[..., self.inner :] if self.options.output_gate else None)

    def _inputs(self, x_c, x_m):
        """q, k ``(..., H, K)`` (q scaled by 1/√K), v ``(..., H, V)`` in ``dtype``; log f, ĩ ``(..., H)`` float32."""
        q = self._block_diag(self.q_proj, x_c)  # eqs. (22)–(24): q, k from the conv branch, v from x_m
        k = self._block_diag(self.k_proj, x_c)
        v = self._block_diag(self.v_proj, x_m)
        gate_in = jnp.concatenate([q, k, v], axis=-1)  # (..., 3E): the gates read q, k, v (Fig. 10)
        i = self.i_proj(gate_in).astype(jnp.float32)  # ĩ_t, eq. (25)
        log_f = jax.nn.log_sigmoid(self.f_proj(gate_in).astype(jnp.float32))  # sigmoid forget gate, eq. (26)
        heads = x_c.shape[:-1] + (self.heads, self.head_dim)
        q, k, v = q.reshape(heads), k.reshape(heads), v.reshape(heads)
        if self.options.qk_norm == "l2":
            q, k = _l2_normalize(q), _l2_normalize(k)
        q = q * jnp.asarray(self.head_dim**-0.5, q.dtype)  # the 1/√d of eq. (23), on q (same output)
        return q, k, v, log_f, i

    def _output(self, o, x_c, z):
        """``h̃ (..., H, V)`` -> per-head group norm, learnable skip, output gate, down-projection ``(..., D)``."""
        o = o.astype(jnp.float32)
        if self.options.output_norm:
            mean = jnp.mean(o, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
            o = (o - mean) * jax.lax.rsqrt(var + NORM_EPS)
        h = o.reshape(o.shape[:-2] + (self.inner,)).astype(self.dtype)
        if self.options.output_norm:
            h = h * self.norm_scale[...].astype(self.dtype)
        h = h + self.skip[...].astype(self.dtype) * x_c
        if self.options.output_gate:
            h = h * jax.nn.silu(z)
        return self.down_proj(h).astype(self.dtype)

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale=1.0, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``dt_scale`` must be 1 (discrete-time).

        ``segment_ids (B, L)`` int: packed sequences (0 = padding, a new id starts a new sequence): every sequence
        runs from the empty state (the convolution, the memory and its stabiliser restart), padding outputs 0."""
        check_sequence("MLSTM", x, self.d_model)
        check_discrete_dt_scale("MLSTM", dt_scale, MLSTM_DISCRETE)
        if segment_ids is not None:
            check_segment_ids(segment_ids, x.shape[0], x.shape[1], what="x")
        x_m, z = self._up(x)
        x_c = x_m if self.conv is None else self.conv(x_m, **packed(segment_ids))
        q, k, v, log_f, i = self._inputs(x_c, x_m)
        opt = self.options
        o, _ = mlstm(q, k, v, log_f, i, chunk_size=opt.chunk_size, backend=opt.backend, **packed(segment_ids))
        return zero_padding(self._output(o, x_c, z), segment_ids)

    def state_spec(self, batch_size: int):
        """``(buf (B, W−1, E), (C (B, H, K, V), n (B, H, K), m (B, H)))`` float32; ``(C, n, m)`` without conv."""
        B, H, K = batch_size, self.heads, self.head_dim
        f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        memory = (f32(B, H, K, K), f32(B, H, K), f32(B, H))
        return memory if self.conv is None else (self.conv.state_spec(B), memory)

    def init_state(self, batch_size: int):
        """The empty state: float32 zeros (``m = 0``; with ``C = n = 0`` the output does not depend on it)."""
        check_batch_size("MLSTM", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``. ``dt_scale`` must be 1 (discrete-time)."""
        check_token("MLSTM", x_t, self.d_model)
        check_discrete_dt_scale("MLSTM", dt_scale, MLSTM_DISCRETE)
        check_state("MLSTM", state, self.state_spec(x_t.shape[0]))
        x_m, z = self._up(x_t)
        if self.conv is None:
            memory, x_c = state, x_m
        else:
            buf, memory = state
            buf, x_c = self.conv.step(buf, x_m)
        q, k, v, log_f, i = self._inputs(x_c, x_m)
        memory, o = mlstm_step(memory, q, k, v, log_f, i)
        y = self._output(o, x_c, z)
        return (memory if self.conv is None else (buf, memory)), y
