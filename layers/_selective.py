"""``SelectiveSSM``: a Mamba-style selective (input-dependent) diagonal SSM on ``scan_kernels.selective_scan``.

Gu & Dao 2023 (Mamba, Alg. 2 / §3.5). With E = expand·D inner channels and N states per channel:

    [u, z] = x W_in                          u, z: (B, L, E)
    u      = silu(causal_depthwise_conv(u))  kernel d_conv
    [δ, B_t, C_t] = u W_x                    δ: (B, L, R), B_t, C_t: (B, L, N)
    Δ_t    = softplus(δ W_Δ + b_Δ) · dt_scale                         (B, L, E)
    h_t    = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t                    h: (B, E, N), A = -exp(A_log) (E, N)
    y_t    = h_t C_t + D ⊙ u_t;  out = (y ⊙ silu(z)) W_out              (B, L, D)

Irregular sampling: ``dt (B, L)`` (``dt_t (B,)`` in ``step``) multiplies the learned step, Δ_t = dt_t ·
softplus(δ W_Δ + b_Δ) · dt_scale, so the decay exp(Δ_t A) covers the elapsed time; the reverse branch uses the gap
dt[:, t+1] it crosses from t+1 to t. The short convolution still counts samples, not time.

``negative_eigenvalues=True`` (Grazzi et al. 2025, §4) maps each decay to ``ā_t = 2 exp(Δ_t A) − 1 ∈ (−1, 1)``, so the
state can flip sign (what parity tracking needs). ``selective_scan`` forms ``exp(Δ_t A)`` itself and cannot take a
signed decay — nor can the sign be folded into B_t / C_t: its running product σ_t ∈ {±1} differs per (e, n) while
B_t, C_t are shared over e — so this option materialises ``ā (B, L, E·N)`` and runs ``linear_scan`` on it
(memory O(B·L·E·N), as a plain scan; the default path never forms it). With ``dt`` the decay is still
``2 exp(dt_t Δ_t A) − 1``: no longer the composition of shorter gaps.

Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): the convolution and the
scans take ``segment_ids`` (no tap or state crosses a sequence boundary; the reverse recurrence starts at each
sequence's end); padding positions output 0.

``bidirectional=True`` adds the reverse recurrence ``h_t = exp(Δ_t A) h_{t+1} + Δ_t u_t B_t`` with its own
output map ``C`` (second slice of the projection) and sums the two readouts.
Constructor: ``SelectiveSSM(d_model, *, d_state=16, expand=1, d_conv=4, dt_rank=None, dt_min=0.001, dt_max=0.1,
a_scale=1.0, bidirectional=False, negative_eigenvalues=False, backend=None, dtype=jnp.float32,
param_dtype=jnp.float32, rngs)``
(one docstring line per option in the class).
Shape legend: B batch · L length · D d_model · E inner width · N state size · R rank of the Δ projection.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_causal,
    check_choice,
    check_dt,
    check_dt_range,
    check_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_segment_ids,
    check_sequence,
    check_state,
    check_token,
    mask_padding,
    next_step,
    record_options,
    zeros_of,
)
from algornn.layers._params import dt_bias_param, f32, param, ssm_param
from algornn.layers._short_conv import causal_conv, init_conv_weight
from algornn.scan_kernels import BACKENDS, linear_scan, selective_scan


def signed_decay(delta, A):
    """``2 exp(Δ A) − 1 ∈ (−1, 1]`` (Grazzi et al. 2025, §4), ``delta (..., E)``, ``A (E, N)`` -> ``(..., E, N)``;
    written ``expm1(log 2 + Δ A)`` for full relative accuracy where it crosses zero."""
    return jnp.expm1(math.log(2.0) + delta[..., None] * A)


@dataclasses.dataclass(frozen=True)
class SelectiveSSMOptions:
    """The validated options of a :class:`SelectiveSSM` layer (``layer.options``)."""

    d_state: int = 16
    expand: int = 1
    d_conv: int = 4
    dt_rank: int | None = None  # None: ceil(D / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    a_scale: float = 1.0
    bidirectional: bool = False
    negative_eigenvalues: bool = False
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_int("expand", self.expand)
        check_int("d_conv", self.d_conv)
        if self.dt_rank is not None:
            check_int("dt_rank", self.dt_rank)
        check_dt_range(self.dt_min, self.dt_max)
        check_float("a_scale", self.a_scale)
        check_bool("bidirectional", self.bidirectional)
        check_bool("negative_eigenvalues", self.negative_eigenvalues)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class SelectiveSSM(nnx.Module):
    """Mamba-style selective SSM: input-dependent Δ_t, B_t, C_t on E = expand·D channels, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        d_state: state size N per inner channel.
        expand: inner width E = expand · D.
        d_conv: width of the depthwise causal convolution.
        dt_rank: rank R of the Δ projection (None: ceil(D / 16)).
        dt_min, dt_max: range of the log-uniform initial Δ (through the softplus bias).
        a_scale: initial A_n = −a_scale·(n + 1), n = 0 … N−1 (S4D-Real; Mamba's init is 1). Below 1 the slowest
            decays keep a token longer at the same write gain Δ; measured in
            docs/layers.md §The memory probe: what each mixer learns with its defaults.
        bidirectional: add the reverse recurrence with its own C_t (no ``step`` then).
        negative_eigenvalues: decays ``2 exp(Δ A) − 1 ∈ (−1, 1)`` (Grazzi et al.), on ``linear_scan`` over a
            materialised ``(B, L, E·N)`` decay.
        backend: ``selective_scan`` backend (``linear_scan``'s with negative_eigenvalues): None (auto),
            "reference", "xla", "pallas".
        dtype: compute dtype of the projections, convolution, inputs and outputs; Δ, exp(ΔA) and the scan run in
            float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)`` scale every Δ_t by ``dt_scale``
    (a positive scalar; may be traced under ``jit``). The short convolution still counts samples, not time.
    Irregularly sampled input: ``__call__(x, dt=dt)`` with ``dt (B, L)`` the positive time before each sample in
    grid steps (Δ_t = dt_t · the learned step), ``step(state, x_t, dt_t=dt_t)`` with ``dt_t (B,)``.
    Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding); padding outputs 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        expand: int = 1,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        a_scale: float = 1.0,
        bidirectional: bool = False,
        negative_eigenvalues: bool = False,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(SelectiveSSMOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("SelectiveSSM", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        E, N = opt.expand * d_model, opt.d_state
        R = opt.dt_rank if opt.dt_rank is not None else math.ceil(d_model / 16)
        self.inner, self.rank = E, R
        n_out = 2 if opt.bidirectional else 1
        lin = dict(use_bias=False, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        self.in_proj = nnx.Linear(d_model, 2 * E, **lin)
        self.conv_w = param(init_conv_weight(rngs.params(), opt.d_conv, E), pdt)
        self.conv_b = param(jnp.zeros((E,), jnp.float32), pdt)
        self.x_proj = nnx.Linear(E, R + (1 + n_out) * N, **lin)
        self.dt_proj = nnx.Linear(R, E, **lin)
        # Δ bias: softplus^{-1} of a log-uniform Δ in [dt_min, dt_max]; A: S4D-Real -a_scale·(n+1) (Mamba: a_scale 1).
        self.dt_bias = dt_bias_param(rngs.params(), E, opt.dt_min, opt.dt_max, pdt)
        a0 = opt.a_scale * jnp.arange(1, N + 1, dtype=jnp.float32)
        self.A_log = ssm_param(jnp.broadcast_to(jnp.log(a0)[None], (E, N)), pdt)
        self.D = param(jnp.ones((E,), jnp.float32), pdt)
        self.out_proj = nnx.Linear(E, d_model, **lin)

    def _gates(self, u, dt_scale, elapsed=None):
        """From the conv output ``u (..., E)`` (dtype): ``A = −exp(A_log) (E, N)``, ``Δ``, ``B_t``, ``C_t`` (float32),
        one ``Δ`` per direction (the reverse one crosses the next gap with ``elapsed (B, L)``; else shared). The decay
        ``exp(Δ A)`` is formed by the scan (never as a ``(B, L, E, N)`` array) or by ``step`` for one token."""
        N, R = self.options.d_state, self.rank
        dbc = self.x_proj(u)
        dt_in = self.dt_proj(dbc[..., :R]).astype(jnp.float32)
        dt_in = dt_in + f32(self.dt_bias).reshape((1,) * (dt_in.ndim - 1) + (-1,))  # explicit rank: strict mode
        delta = jax.nn.softplus(dt_in) * jnp.asarray(dt_scale, jnp.float32)
        deltas = [delta] * (1 + self.options.bidirectional)
        if elapsed is not None:  # Δ_t = dt_t · the learned step (time since the previous sample)
            deltas[0] = elapsed[..., None] * delta
            if self.options.bidirectional:  # the reverse recurrence goes from t+1 back to t: gap dt[:, t+1]
                deltas[1] = next_step(elapsed)[..., None] * delta
        dbc = dbc.astype(jnp.float32)
        Bt = dbc[..., R : R + N]
        Cs = [dbc[..., R + (i + 1) * N : R + (i + 2) * N] for i in range(1 + self.options.bidirectional)]
        return -jnp.exp(f32(self.A_log)), deltas, Bt, Cs

    def _signed_scan(self, u, delta, A, Bt, C, reverse, segment_ids=None):
        """``h_t = (2 exp(Δ_t A) − 1) ⊙ h_{t−1} + (Δ_t u_t) B_t`` on ``linear_scan``; ``y_t = h_t C_t`` (B, L, E)."""
        B, L, E = u.shape
        N = A.shape[-1]
        a = signed_decay(delta, A).reshape(B, L, E * N)
        b = ((delta * u)[..., None] * Bt[:, :, None, :]).reshape(B, L, E * N)
        h = linear_scan(a, b, reverse=reverse, segment_ids=segment_ids, backend=self.options.backend)
        h = h.reshape(B, L, E, N)
        return jnp.einsum("blen,bln->ble", h, C)

    def _conv(self, u, segment_ids=None):
        w, b = self.conv_w[...].astype(self.dtype), self.conv_b[...].astype(self.dtype)
        return jax.nn.silu(causal_conv(u, w, b, segment_ids=segment_ids))

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample;
        ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("SelectiveSSM", x, self.d_model)
        check_dt_scale("SelectiveSSM", dt_scale)
        if dt is not None:
            dt = check_dt("SelectiveSSM", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("SelectiveSSM", segment_ids, x.shape[:2])
        u, z = jnp.split(self.in_proj(x.astype(self.dtype)), 2, axis=-1)
        u = self._conv(u, segment_ids)  # (B, L, E)
        A, deltas, Bt, Cs = self._gates(u, dt_scale, dt)
        u = u.astype(jnp.float32)
        y = f32(self.D)[None, None] * u
        seg = dict(segment_ids=segment_ids)
        for i, C in enumerate(Cs):  # never holds the (B, L, E, N) states; the reverse Δ crosses the next gap
            if self.options.negative_eigenvalues:
                y = y + self._signed_scan(u, deltas[i], A, Bt, C, reverse=i == 1, **seg)
            else:
                y = y + selective_scan(u, deltas[i], A, Bt, C, reverse=i == 1, backend=self.options.backend, **seg)[0]
        return mask_padding(self.out_proj(y.astype(self.dtype) * jax.nn.silu(z)), segment_ids).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``(conv buffer (B, d_conv-1, E), h (B, E, N))`` float32."""
        E, N, W = self.inner, self.options.d_state, self.options.d_conv
        return (
            jax.ShapeDtypeStruct((batch_size, W - 1, E), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, E, N), jnp.float32),
        )

    def init_state(self, batch_size: int):
        """``(conv buffer (B, d_conv-1, E), h (B, E, N))``, float32 zeros."""
        check_batch_size("SelectiveSSM", batch_size)
        check_causal("SelectiveSSM", self.options.bidirectional)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("SelectiveSSM", x_t, self.d_model)
        check_dt_scale("SelectiveSSM", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("SelectiveSSM.step", dt_t, x_t.shape[:1], name="dt_t")
        check_causal("SelectiveSSM", self.options.bidirectional)
        check_state("SelectiveSSM", state, self.state_spec(x_t.shape[0]))
        buf, h = state
        u, z = jnp.split(self.in_proj(x_t.astype(self.dtype)), 2, axis=-1)  # (B, E)
        window = jnp.concatenate([buf.astype(self.dtype), u[:, None]], axis=1)  # (B, W, E)
        w, b = self.conv_w[...].astype(self.dtype), self.conv_b[...].astype(self.dtype)
        u_c = jax.nn.silu(jnp.sum(window * w[None], axis=1) + b[None])
        A, (delta,), Bt, (C,) = self._gates(u_c, dt_scale, dt_t)
        u_c = u_c.astype(jnp.float32)
        decay = signed_decay(delta, A) if self.options.negative_eigenvalues else jnp.exp(delta[..., None] * A)
        h = decay * h + (delta * u_c)[..., None] * Bt[:, None, :]  # (B, E, N)
        y = jnp.einsum("ben,bn->be", h, C) + f32(self.D)[None] * u_c
        y = self.out_proj(y.astype(self.dtype) * jax.nn.silu(z)).astype(self.dtype)
        return (window[:, 1:].astype(jnp.float32), h), y
