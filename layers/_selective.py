"""``SelectiveSSM``: a Mamba-style selective (input-dependent) diagonal SSM on ``scan_kernels.linear_scan``.

Gu & Dao 2023 (Mamba, Alg. 2 / §3.5). With E = expand·D inner channels and N states per channel:

    [u, z] = x W_in                          u, z: (B, L, E)
    u      = silu(causal_depthwise_conv(u))  kernel d_conv
    [δ, B_t, C_t] = u W_x                    δ: (B, L, R), B_t, C_t: (B, L, N)
    Δ_t    = softplus(δ W_Δ + b_Δ) · dt_scale                         (B, L, E)
    h_t    = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t                    h: (B, E, N), A = -exp(A_log) (E, N)
    y_t    = h_t C_t + D ⊙ u_t;  out = (y ⊙ silu(z)) W_out              (B, L, D)

``bidirectional=True`` adds the reverse recurrence ``h_t = exp(Δ_t A) h_{t+1} + Δ_t u_t B_t`` with its own
output map ``C`` (second slice of the projection) and sums the two readouts.
Shape legend: B batch · L length · D d_model · E inner width · N state size · R rank of the Δ projection.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (build_options, check_batch_size, check_bool, check_choice, check_dt_range,
                             check_dt_scale, check_int, check_sequence, check_token, check_causal)
from algornn.layers._params import ssm_param
from algornn.scan_kernels import BACKENDS, linear_scan


@dataclasses.dataclass(frozen=True)
class SelectiveSSMOptions:
    d_state: int = 16
    expand: int = 1
    d_conv: int = 4
    dt_rank: int | None = None         # None: ceil(D / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    bidirectional: bool = False
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_int("expand", self.expand)
        check_int("d_conv", self.d_conv)
        if self.dt_rank is not None:
            check_int("dt_rank", self.dt_rank)
        check_dt_range(self.dt_min, self.dt_max)
        check_bool("bidirectional", self.bidirectional)
        check_choice("backend", self.backend, (None,) + BACKENDS)


def _causal_conv(u, w, b):
    """Depthwise causal convolution: ``u (B, L, E)``, ``w (W, E)``, ``b (E,)``: ``y_t = Σ_j w_j u_{t-W+1+j} + b``."""
    width, length = w.shape[0], u.shape[1]
    padded = jnp.pad(u, ((0, 0), (width - 1, 0), (0, 0)))
    y = sum(padded[:, j:j + length] * w[j][None, None] for j in range(width))
    return y + b[None, None]


class SelectiveSSM(nnx.Module):
    """Mamba-style selective SSM. Options: see :class:`SelectiveSSMOptions`."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, **options):
        check_int("d_model", d_model)
        opt = build_options(SelectiveSSMOptions, "SelectiveSSM", options)
        self.options, self.d_model = opt, d_model
        E, N = opt.expand * d_model, opt.d_state
        R = opt.dt_rank if opt.dt_rank is not None else math.ceil(d_model / 16)
        self.inner, self.rank = E, R
        n_out = 2 if opt.bidirectional else 1
        self.in_proj = nnx.Linear(d_model, 2 * E, use_bias=False, rngs=rngs)
        self.conv_w = nnx.Param(jax.random.uniform(rngs.params(), (opt.d_conv, E), jnp.float32, -1.0, 1.0)
                                / math.sqrt(opt.d_conv))
        self.conv_b = nnx.Param(jnp.zeros((E,), jnp.float32))
        self.x_proj = nnx.Linear(E, R + (1 + n_out) * N, use_bias=False, rngs=rngs)
        self.dt_proj = nnx.Linear(R, E, use_bias=False, rngs=rngs)
        # Δ bias: softplus^{-1} of a log-uniform Δ in [dt_min, dt_max]; A: S4D-Real -(n+1) (Mamba's init).
        log_dt = jax.random.uniform(rngs.params(), (E,), jnp.float32, math.log(opt.dt_min), math.log(opt.dt_max))
        dt = jnp.exp(log_dt)
        self.dt_bias = ssm_param(dt + jnp.log(-jnp.expm1(-dt)))
        self.A_log = ssm_param(jnp.broadcast_to(jnp.log(jnp.arange(1, N + 1, dtype=jnp.float32))[None], (E, N)))
        self.D = nnx.Param(jnp.ones((E,), jnp.float32))
        self.out_proj = nnx.Linear(E, d_model, use_bias=False, rngs=rngs)

    def _gates(self, u, dt_scale):
        """From the conv output ``u (..., E)``: ``a = exp(ΔA)``, ``Δ``, ``B_t``, ``C_t`` (list of readouts)."""
        N, R = self.options.d_state, self.rank
        dbc = self.x_proj(u)
        delta = jax.nn.softplus(self.dt_proj(dbc[..., :R]) + self.dt_bias[...]) * jnp.float32(dt_scale)
        A = -jnp.exp(self.A_log[...])                                                   # (E, N)
        a = jnp.exp(delta[..., None] * A)                                               # (..., E, N)
        Bt = dbc[..., R:R + N]
        Cs = [dbc[..., R + (i + 1) * N:R + (i + 2) * N] for i in range(1 + self.options.bidirectional)]
        return a, delta, Bt, Cs

    def __call__(self, x, *, dt_scale: float = 1.0):
        """``x (B, L, D) -> (B, L, D)``."""
        check_sequence("SelectiveSSM", x, self.d_model)
        check_dt_scale("SelectiveSSM", dt_scale)
        Bsz, L = x.shape[:2]
        E, N = self.inner, self.options.d_state
        u, z = jnp.split(self.in_proj(x.astype(jnp.float32)), 2, axis=-1)
        u = jax.nn.silu(_causal_conv(u, self.conv_w[...], self.conv_b[...]))           # (B, L, E)
        a, delta, Bt, Cs = self._gates(u, dt_scale)
        b = (delta * u)[..., None] * Bt[:, :, None, :]                                   # (B, L, E, N)
        a, b = a.reshape(Bsz, L, E * N), b.reshape(Bsz, L, E * N)
        y = self.D[...][None, None] * u
        for i, C in enumerate(Cs):
            h = linear_scan(a, b, reverse=i == 1, backend=self.options.backend).reshape(Bsz, L, E, N)
            y = y + jnp.einsum("blen,bln->ble", h, C)
        return self.out_proj(y * jax.nn.silu(z))

    def init_state(self, batch_size: int):
        """``(conv buffer (B, d_conv-1, E), h (B, E, N))``, zeros."""
        check_batch_size("SelectiveSSM", batch_size)
        check_causal("SelectiveSSM", self.options.bidirectional)
        E, N, W = self.inner, self.options.d_state, self.options.d_conv
        return (jnp.zeros((batch_size, W - 1, E), jnp.float32), jnp.zeros((batch_size, E, N), jnp.float32))

    def step(self, state, x_t, *, dt_scale: float = 1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``."""
        check_token("SelectiveSSM", x_t, self.d_model)
        check_dt_scale("SelectiveSSM", dt_scale)
        check_causal("SelectiveSSM", self.options.bidirectional)
        buf, h = state
        u, z = jnp.split(self.in_proj(x_t.astype(jnp.float32)), 2, axis=-1)             # (B, E)
        window = jnp.concatenate([buf, u[:, None]], axis=1)                              # (B, W, E)
        u_c = jax.nn.silu(jnp.sum(window * self.conv_w[...][None], axis=1) + self.conv_b[...][None])
        a, delta, Bt, (C,) = self._gates(u_c, dt_scale)
        h = a * h + (delta * u_c)[..., None] * Bt[:, None, :]                            # (B, E, N)
        y = jnp.einsum("ben,bn->be", h, C) + self.D[...][None] * u_c
        return (window[:, 1:], h), self.out_proj(y * jax.nn.silu(z))
