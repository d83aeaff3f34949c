"""``Hawk``: the recurrent block of Griffin/Hawk (De et al. 2024, §2.4 and Fig. 2) on ``scan_kernels.rg_lru``.

With W = round(expand·D) recurrence channels and G gate blocks:

    g   = GeLU(x W_gate + b_gate)                               gate branch              (B, L, W)
    u   = causal_depthwise_conv(x W_in + b_in)                  kernel d_conv, no activation
    r_t = u_t W_a + b_a,   i_t = u_t W_x + b_x                  block-diagonal (G blocks of W/G), pre-activations
    a_t = σ(Λ)^{c σ(r_t)}                                       RG-LRU (§2.4, eqs. 1–4)
    h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (σ(i_t) ⊙ u_t)
    out = (g ⊙ h) W_out                                                                  (B, L, D)

Λ is initialised so that σ(Λ)^c is uniform in [0.9, 0.999] (§2.4). The mixer is discrete-time: ``dt_scale`` is
accepted only as 1. Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): the
convolution and the RG-LRU take ``segment_ids`` (no tap or state crosses a sequence boundary); padding positions
output 0.
Shape legend: B batch · L length · D d_model · W recurrence width · G gate blocks.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (
    check_batch_size,
    check_choice,
    check_discrete_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_segment_ids,
    check_sequence,
    check_state,
    check_token,
    mask_padding,
    record_options,
    zeros_of,
)
from algornn.layers._params import f32, param, ssm_param
from algornn.layers._short_conv import ShortConv
from algornn.scan_kernels import BACKENDS, rg_lru, rg_lru_step

HAWK_DISCRETE = "Hawk's RG-LRU is discrete-time (its decay a_t = σ(Λ)^(c·r_t) is learned per token, not from a step Δ)"


@dataclasses.dataclass(frozen=True)
class HawkOptions:
    """The validated options of a :class:`Hawk` layer (``layer.options``)."""

    expand: float = 4 / 3
    d_conv: int = 4
    gate_blocks: int = 1
    c: float = 8.0
    backend: str | None = None

    def __post_init__(self):
        check_float("expand", self.expand)
        check_int("d_conv", self.d_conv)
        check_int("gate_blocks", self.gate_blocks)
        check_float("c", self.c)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class Hawk(nnx.Module):
    """Hawk's recurrent block: GeLU gate branch times short conv + RG-LRU branch, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        expand: recurrence width W = round(expand · D) (Griffin uses 4/3).
        d_conv: width of the causal depthwise convolution before the RG-LRU.
        gate_blocks: G, the number of diagonal blocks of the gate projections W_a, W_x (1: dense); divides W.
        c: the RG-LRU temperature c in a_t = σ(Λ)^{c σ(r_t)} (8 in the paper).
        backend: ``rg_lru`` backend (of its ``linear_scan``): None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, convolution, inputs and outputs; the gates and the recurrence
            run in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default): the RG-LRU is discrete-time.
    Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding); padding outputs 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        expand: float = 4 / 3,
        d_conv: int = 4,
        gate_blocks: int = 1,
        c: float = 8.0,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(HawkOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("Hawk", dtype, param_dtype)
        W, G = max(1, round(opt.expand * d_model)), opt.gate_blocks
        if W % G:
            raise ValueError(
                f"Hawk: the recurrence width round(expand·d_model) = {W} is not divisible by gate_blocks={G}"
            )
        self.options, self.d_model, self.width = opt, d_model, W
        pdt = self.param_dtype
        lin = dict(use_bias=True, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        self.gate_proj = nnx.Linear(d_model, W, **lin)
        self.in_proj = nnx.Linear(d_model, W, **lin)
        self.conv = ShortConv(W, opt.d_conv, activation=None, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        bw = W // G
        std = 1.0 / math.sqrt(bw)  # LeCun normal per block
        self.a_w = param(std * jax.random.normal(rngs.params(), (G, bw, bw), jnp.float32), pdt)
        self.a_b = param(jnp.zeros((W,), jnp.float32), pdt)
        self.x_w = param(std * jax.random.normal(rngs.params(), (G, bw, bw), jnp.float32), pdt)
        self.x_b = param(jnp.zeros((W,), jnp.float32), pdt)
        # Λ: σ(Λ)^c ~ U[0.9, 0.999]  ->  σ(Λ) = u^{1/c},  Λ = logit(σ(Λ))
        a = jax.random.uniform(rngs.params(), (W,), jnp.float32, 0.9, 0.999) ** (1.0 / opt.c)
        self.Lambda = ssm_param(jnp.log(a) - jnp.log1p(-a), pdt)
        self.out_proj = nnx.Linear(W, d_model, **lin)

    def _gates(self, u):
        """Block-diagonal gate pre-activations ``r, i (..., W)`` float32 from the conv output ``u (..., W)``."""
        G = self.options.gate_blocks
        ub = u.astype(jnp.float32).reshape(u.shape[:-1] + (G, self.width // G))
        r = jnp.einsum("...gi,gij->...gj", ub, f32(self.a_w)).reshape(u.shape) + f32(self.a_b)
        i = jnp.einsum("...gi,gij->...gj", ub, f32(self.x_w)).reshape(u.shape) + f32(self.x_b)
        return r, i

    def _output(self, gate, h):
        return self.out_proj(gate * h.astype(self.dtype)).astype(self.dtype)

    def __call__(self, x, *, dt_scale=1.0, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``dt_scale`` must be 1 (discrete-time); ``segment_ids (B, L)``:
        packed sequences (0 = padding)."""
        check_sequence("Hawk", x, self.d_model)
        check_discrete_dt_scale("Hawk", dt_scale, HAWK_DISCRETE)
        if segment_ids is not None:
            segment_ids = check_segment_ids("Hawk", segment_ids, x.shape[:2])
        x = x.astype(self.dtype)
        gate = jax.nn.gelu(self.gate_proj(x), approximate=False)
        u = self.conv(self.in_proj(x), segment_ids=segment_ids)  # (B, L, W)
        r, i = self._gates(u)
        log_a = jax.nn.log_sigmoid(f32(self.Lambda))
        h = rg_lru(
            u.astype(jnp.float32), r, i, log_a, c=self.options.c, segment_ids=segment_ids, backend=self.options.backend
        )
        return mask_padding(self._output(gate, h), segment_ids)

    def state_spec(self, batch_size: int):
        """``(conv buffer (B, d_conv − 1, W), h (B, W))`` float32."""
        return (self.conv.state_spec(batch_size), jax.ShapeDtypeStruct((batch_size, self.width), jnp.float32))

    def init_state(self, batch_size: int):
        """``(conv buffer (B, d_conv − 1, W), h (B, W))``, float32 zeros."""
        check_batch_size("Hawk", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``. ``dt_scale`` must be 1 (discrete-time)."""
        check_token("Hawk", x_t, self.d_model)
        check_discrete_dt_scale("Hawk", dt_scale, HAWK_DISCRETE)
        check_state("Hawk", state, self.state_spec(x_t.shape[0]))
        buf, h = state
        x_t = x_t.astype(self.dtype)
        gate = jax.nn.gelu(self.gate_proj(x_t), approximate=False)
        buf, u = self.conv.step(buf, self.in_proj(x_t))
        r, i = self._gates(u)
        log_a = jax.nn.log_sigmoid(f32(self.Lambda))
        h = rg_lru_step(h, u.astype(jnp.float32), r, i, log_a, c=self.options.c)
        return (buf, h.astype(jnp.float32)), self._output(gate, h)
