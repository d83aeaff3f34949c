"""``Mamba2``: the Mamba-2 block (Dao & Gu 2024, SSD; §7 and Fig. 6) on ``scan_kernels.linear_attention``.

With E = expand·D inner channels, H = E / P heads of P = head_dim channels and N = d_state (one group: B_t and
C_t are shared by every head):

    [z, x, B_t, C_t, δ] = u W_in                  z, x: (B, L, E);  B_t, C_t: (B, L, N);  δ: (B, L, H)
    [x, B_t, C_t] = silu(causal_depthwise_conv([x, B_t, C_t]))       kernel d_conv
    Δ_t = softplus(δ + b_Δ) · dt_scale (· dt_t)                                            (B, L, H)
    a_t = exp(−Δ_t exp(A_log))                    per-head scalar decay, A_log (H,)
    S_t = a_t S_{t−1} + B_t (Δ_t x_t)ᵀ            per head h: S ∈ R^{N×P}                  (§7.1, eq. 16)
    y_t = S_tᵀ C_t + D ⊙ x_t;   out = RMSNorm(y ⊙ silu(z)) W_out                     (B, L, D)

State-space duality (§4–6): this is linear attention with queries C_t, keys B_t, values Δ_t x_t and scalar
per-head log-decay ``−Δ_t exp(A_log)``, so the whole sequence runs through the chunked ``linear_attention``.

``negative_eigenvalues=True`` (Grazzi et al. 2025, §4) maps the decay to ``a_t = 2 exp(−Δ_t exp(A_log)) − 1 ∈
(−1, 1)``. ``linear_attention`` takes ``exp(g)`` with real g, so the sign is folded exactly into q and k: with
``a_t = s_t |a_t|`` and ``σ_t = Π_{r≤t} s_r``, ``Π_{r=s+1}^{t} a_r = σ_t σ_s Π|a_r|`` (σ² = 1), hence

    o_t = Σ_{s≤t} (Π_{r=s+1}^{t} a_r) (C_t·B_s) Δ_s x_s = Σ_{s≤t} (Π |a_r|) ((σ_t C_t)·(σ_s B_s)) Δ_s x_s,

i.e. queries σ_t C_t, keys σ_s B_s and log-decay log|a_t| (|a_t| floored at ``NEG_EIG_FLOOR`` = 1e-6).
``step`` applies the sign to the state directly (``S ← s_t S`` before the unsigned step).

Shape legend: B batch · L length · D d_model · E inner width · H heads · P head dim · N state size.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from algornn.layers._fast_weight import packed, zero_padding
from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_choice,
    check_dt,
    check_dt_range,
    check_dt_scale,
    check_dtypes,
    check_int,
    check_sequence,
    check_state,
    check_token,
    record_options,
    zeros_of,
)
from algornn.layers._params import dt_bias_param, f32, param, ssm_param
from algornn.layers._short_conv import ShortConv
from algornn.scan_kernels import BACKENDS, linear_attention, linear_attention_step
from algornn.scan_kernels._common.packing import check_segment_ids, segment_masks

# |a_t| below this is replaced by it in the sign-folded form: the carried state then differs by at most
# NEG_EIG_FLOOR·|S| (a few float32 roundings), and the gradient factor d log|a| / da = 1/a stays ≤ 1e6, which bounds
# how much the op's float32 rounding in ∂L/∂log|a| (that the exact derivative, ∝ |a|, would cancel) is amplified.
NEG_EIG_FLOOR = 1e-6
NORM_EPS = 1e-5  # Mamba-2's gated RMSNorm epsilon


@dataclasses.dataclass(frozen=True)
class Mamba2Options:
    """The validated options of a :class:`Mamba2` layer (``layer.options``)."""

    d_state: int = 64
    expand: int = 2
    head_dim: int = 64
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    chunk_size: int = 64
    negative_eigenvalues: bool = False
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_int("expand", self.expand)
        check_int("head_dim", self.head_dim)
        check_int("d_conv", self.d_conv)
        check_dt_range(self.dt_min, self.dt_max)
        check_int("chunk_size", self.chunk_size)
        check_bool("negative_eigenvalues", self.negative_eigenvalues)
        check_choice("backend", self.backend, (None,) + BACKENDS)


def mamba2_decay(delta, A_log, negative_eigenvalues):
    """``(log|a|, sign)`` of the decay ``a = exp(−Δ exp(A_log))`` (or ``2a − 1``), ``delta (..., H)`` float32.

    ``sign`` is None without negative eigenvalues. ``2 e^{−x} − 1 = expm1(log 2 − x)`` keeps full relative accuracy
    where the decay crosses zero."""
    x = delta * jnp.exp(A_log)
    if not negative_eigenvalues:
        return -x, None
    a = jnp.expm1(math.log(2.0) - x)  # 2 exp(−x) − 1 ∈ (−1, 1]  (Grazzi et al. 2025, §4)
    return jnp.log(jnp.maximum(jnp.abs(a), NEG_EIG_FLOOR)), jnp.where(a < 0, -1.0, 1.0)


def sign_products(sign, starts=None):
    """``σ_t = Π_{r ≤ t} s_r`` along axis 1 of ``sign (B, L, H)`` (±1, float32); with ``starts (B, L)`` (packed
    sequences) the product runs only over t's own sequence (from its start), so σ restarts at 1 before each.

    Within one sequence ``σ_t σ_s = Π_{s<r≤t} s_r`` either way; restarting keeps each sequence's factors exactly those
    it has alone. Products of ±1 are exact in floating point."""
    if starts is None:
        return jnp.cumprod(sign, axis=1)

    def combine(a, b):  # (product, a start inside) of two adjacent spans: a start in the right one resets
        (pa, ra), (pb, rb) = a, b
        return jnp.where(rb, pb, pa * pb), ra | rb

    flags = jnp.broadcast_to(starts[..., None], sign.shape)
    return lax.associative_scan(combine, (sign, flags), axis=1)[0]


class Mamba2(nnx.Module):
    """Mamba-2 (SSD): per-head scalar input-dependent decay, shared B_t/C_t, gated RMSNorm, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        d_state: state size N (the key size of the dual linear attention; shared by every head).
        expand: inner width E = expand · D.
        head_dim: channels P per head (H = E / P heads); E must be divisible by it.
        d_conv: width of the causal depthwise convolution on x, B_t and C_t.
        dt_min, dt_max: range of the log-uniform initial Δ (through the softplus bias).
        chunk_size: chunk length C of the chunked ``linear_attention``.
        negative_eigenvalues: decays ``2 exp(−Δ exp(A_log)) − 1 ∈ (−1, 1)`` instead of ``(0, 1)`` (Grazzi et al.).
        backend: ``linear_attention`` backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of the projections, convolution, norm, inputs and outputs; Δ, the decays and the
            state run in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0, dt=None)`` and ``step(state, x_t, *, dt_scale=1.0, dt_t=None)`` scale every Δ_t
    by ``dt_scale`` (a positive scalar) and, for irregular sampling, by the elapsed time ``dt (B, L)`` /
    ``dt_t (B,)`` (in grid steps). The short convolution still counts samples, not time.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        expand: int = 2,
        head_dim: int = 64,
        d_conv: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(Mamba2Options, locals())
        self.dtype, self.param_dtype = check_dtypes("Mamba2", dtype, param_dtype)
        E, N, P = opt.expand * d_model, opt.d_state, opt.head_dim
        if E % P:
            raise ValueError(
                f"Mamba2: the inner width expand·d_model = {opt.expand}·{d_model} = {E} is not divisible by "
                f"head_dim={P}; choose head_dim dividing {E}"
            )
        H = E // P
        self.options, self.d_model, self.inner, self.heads = opt, d_model, E, H
        pdt = self.param_dtype
        lin = dict(use_bias=False, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        self.in_proj = nnx.Linear(d_model, 2 * E + 2 * N + H, **lin)  # [z, x, B, C, δ]
        self.conv = ShortConv(E + 2 * N, opt.d_conv, activation="silu", dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        # Δ bias: softplus^{-1} of a log-uniform Δ in [dt_min, dt_max]; A = exp(A_log) ~ U[1, 16] per head (§7 init).
        self.dt_bias = dt_bias_param(rngs.params(), H, opt.dt_min, opt.dt_max, pdt)
        self.A_log = ssm_param(jnp.log(jax.random.uniform(rngs.params(), (H,), jnp.float32, 1.0, 16.0)), pdt)
        self.D = param(jnp.ones((H,), jnp.float32), pdt)
        self.norm = nnx.RMSNorm(E, epsilon=NORM_EPS, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        self.out_proj = nnx.Linear(E, d_model, **lin)

    # -- pieces ----------------------------------------------------------------------------------------------
    def _split(self, zxbcdt):
        E, N = self.inner, self.options.d_state
        return zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * N], zxbcdt[..., 2 * E + 2 * N :]

    def _heads(self, xbc, dt_in, dt_scale, elapsed):
        """``xbc (..., E + 2N)`` (after the conv), ``dt_in (..., H)`` -> ``x (..., H, P)`` dtype, ``B_t, C_t
        (..., N)`` dtype, ``Δ (..., H)`` float32, ``log|a|`` and sign (None) of the decay, float32."""
        E, N, H = self.inner, self.options.d_state, self.heads
        x = xbc[..., :E].reshape(xbc.shape[:-1] + (H, self.options.head_dim))
        Bt, Ct = xbc[..., E : E + N], xbc[..., E + N :]
        delta = jax.nn.softplus(dt_in.astype(jnp.float32) + f32(self.dt_bias)) * jnp.asarray(dt_scale, jnp.float32)
        if elapsed is not None:  # Δ_t = dt_t · the learned step (time since the previous sample)
            delta = elapsed[..., None] * delta
        log_a, sign = mamba2_decay(delta, f32(self.A_log), self.options.negative_eigenvalues)
        return x, Bt, Ct, delta, log_a, sign

    def _output(self, o, x, z):
        """``o, x (..., H, P)``, ``z (..., E)`` -> ``(..., D)`` in ``dtype``: D skip, gated RMSNorm, out proj."""
        y = o.astype(jnp.float32) + f32(self.D)[:, None] * x.astype(jnp.float32)
        y = y.reshape(y.shape[:-2] + (self.inner,)).astype(self.dtype)
        return self.out_proj(self.norm(y * jax.nn.silu(z))).astype(self.dtype)

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample.

        ``segment_ids (B, L)`` int: packed sequences (0 = padding, a new id starts a new sequence): every sequence
        runs from the empty state (the convolution, the state and the sign folding of negative eigenvalues
        restart), padding outputs 0."""
        check_sequence("Mamba2", x, self.d_model)
        check_dt_scale("Mamba2", dt_scale)
        if dt is not None:
            dt = check_dt("Mamba2", dt, x.shape[:2])
        if segment_ids is not None:
            check_segment_ids(segment_ids, x.shape[0], x.shape[1], what="x")
        z, xbc, dt_in = self._split(self.in_proj(x.astype(self.dtype)))
        xh, Bt, Ct, delta, log_a, sign = self._heads(self.conv(xbc, **packed(segment_ids)), dt_in, dt_scale, dt)
        H = self.heads
        q = jnp.broadcast_to(Ct[:, :, None], Ct.shape[:2] + (H, Ct.shape[-1]))  # (B, L, H, N): one group
        k = jnp.broadcast_to(Bt[:, :, None], q.shape)
        if sign is not None:  # σ_t = Π s_r over r ≤ t in t's sequence, per head, folded into q_t and k_t
            sigma = sign_products(sign, None if segment_ids is None else segment_masks(segment_ids)[0])
            sigma = sigma[..., None].astype(q.dtype)  # (B, L, H, 1), exactly ±1
            q, k = q * sigma, k * sigma
        v = (delta[..., None] * xh.astype(jnp.float32)).astype(self.dtype)  # (B, L, H, P)
        opt = self.options
        kw = dict(log_decay=log_a, chunk_size=opt.chunk_size, backend=opt.backend, **packed(segment_ids))
        o, _ = linear_attention(q, k, v, **kw)
        return zero_padding(self._output(o, xh, z), segment_ids)

    def state_spec(self, batch_size: int):
        """``(conv buffer (B, d_conv − 1, E + 2N), S (B, H, N, P))`` float32."""
        N, P = self.options.d_state, self.options.head_dim
        return (
            self.conv.state_spec(batch_size),
            jax.ShapeDtypeStruct((batch_size, self.heads, N, P), jnp.float32),
        )

    def init_state(self, batch_size: int):
        """``(conv buffer (B, d_conv − 1, E + 2N), S (B, H, N, P))``, float32 zeros."""
        check_batch_size("Mamba2", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("Mamba2", x_t, self.d_model)
        check_dt_scale("Mamba2", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("Mamba2.step", dt_t, x_t.shape[:1], name="dt_t")
        check_state("Mamba2", state, self.state_spec(x_t.shape[0]))
        buf, S = state
        z, xbc, dt_in = self._split(self.in_proj(x_t.astype(self.dtype)))
        buf, xbc = self.conv.step(buf, xbc)
        xh, Bt, Ct, delta, log_a, sign = self._heads(xbc, dt_in, dt_scale, dt_t)
        H = self.heads
        q = jnp.broadcast_to(Ct[:, None], (Ct.shape[0], H, Ct.shape[-1]))  # (B, H, N)
        k = jnp.broadcast_to(Bt[:, None], q.shape)
        if sign is not None:  # a_t = s_t |a_t|: S_t = |a_t| (s_t S_{t−1}) + k vᵀ
            S = S * sign[:, :, None, None]
        v = (delta[..., None] * xh.astype(jnp.float32)).astype(self.dtype)
        S, o = linear_attention_step(S, q, k, v, log_decay=log_a)
        return (buf, S.astype(jnp.float32)), self._output(o, xh, z)
