"""``S4D``: diagonal state-space layer (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and Initialization
of Diagonal State Space Models"), one SISO SSM per channel with the conjugate half of its N states stored.

Per channel d (N/2 complex states, conjugate pairs implied; ``ssm.kernels`` conventions):

    x'(t) = Λ x(t) + B u(t),   y = 2 Re(C x) + D u                       (S4D §2-3)
    Ā, B̄ = zoh | bilinear (ΔΛ, ΔB),   Δ = exp(log_dt) · dt_scale
    mode="conv":  y = K * u + D u,  K_l = 2 Re Σ_n C_n Ā_n^l B̄_n   (``ssm.kernels.diag_kernel`` + FFT)
    mode="scan":  h_t = Ā ⊙ h_{t-1} + B̄ u_t on ``scan_kernels.linear_scan``,  y_t = 2 Re(C h_t) + D u_t
    step:         the same recurrence, one token at a time

``bidirectional=True`` adds an anti-causal branch with its own ``C2`` acting on strictly future inputs
(S4's two-sided kernel): ``y_t += Σ_{s>t} K2_{s-t-1} u_s``. Parameters: ``log_dt (D,)``, ``Lambda_re,
Lambda_im, B_re, B_im (D, N/2)`` (tag ``ssm``), ``C_re, C_im (D, N/2)``, ``D (D,)``; Re Λ is clipped to <= -1e-4.
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state; N/2 stored).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (build_options, check_batch_size, check_bool, check_choice, check_dt_range,
                             check_dt_scale, check_int, check_sequence, check_token, check_causal)
from algornn.layers._params import complex_of, normal, ssm_param
from algornn.scan_kernels import BACKENDS, linear_scan

S4D_INITS = {"lin": ssm.init.s4d_lin, "inv": ssm.init.s4d_inv, "legs": ssm.init.s4d_legs, "real": ssm.init.s4d_real}
MAX_RE = -1e-4   # Re Λ <= MAX_RE keeps every mode stable (annotated-s4 / S5 clip)


@dataclasses.dataclass(frozen=True)
class S4DOptions:
    d_state: int = 64
    init: str = "inv"
    discretization: str = "zoh"
    mode: str = "conv"
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state, minimum=2, multiple_of=2)
        check_choice("init", self.init, tuple(S4D_INITS))
        check_choice("discretization", self.discretization, ("zoh", "bilinear"))
        check_choice("mode", self.mode, ("conv", "scan"))
        check_bool("bidirectional", self.bidirectional)
        check_dt_range(self.dt_min, self.dt_max)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class S4D(nnx.Module):
    """Diagonal SSM layer. Options: see :class:`S4DOptions`."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, **options):
        check_int("d_model", d_model)
        opt = build_options(S4DOptions, "S4D", options)
        self.options, self.d_model = opt, d_model
        shape = (d_model, opt.d_state // 2)
        Lam = S4D_INITS[opt.init](None, shape)
        B = (ssm.init.s4d_legs_B(None, shape) if opt.init == "legs" else jnp.ones(shape, jnp.complex64))
        self.log_dt = ssm_param(ssm.init.log_dt(rngs.params(), (d_model,), opt.dt_min, opt.dt_max))
        self.Lambda_re = ssm_param(jnp.real(Lam))
        self.Lambda_im = ssm_param(jnp.imag(Lam))
        self.B_re = ssm_param(jnp.real(B))
        self.B_im = ssm_param(jnp.imag(B))
        C = ssm.init.complex_normal(rngs.params(), shape)
        self.C_re, self.C_im = nnx.Param(jnp.real(C)), nnx.Param(jnp.imag(C))
        if opt.bidirectional:
            C2 = ssm.init.complex_normal(rngs.params(), shape)
            self.C2_re, self.C2_im = nnx.Param(jnp.real(C2)), nnx.Param(jnp.imag(C2))
        self.D = nnx.Param(normal(rngs.params(), (d_model,), 1.0))

    # -- parameters in their natural form ----------------------------------------------------------------
    def _continuous(self):
        """``Lambda, B (D, N/2)`` complex64 (Re Λ clipped)."""
        Lam = jax.lax.complex(jnp.minimum(self.Lambda_re[...], MAX_RE), self.Lambda_im[...])
        return Lam, complex_of(self.B_re, self.B_im)

    def dt(self, dt_scale: float = 1.0):
        """Step sizes ``Δ (D,)``."""
        return jnp.exp(self.log_dt[...]) * jnp.float32(dt_scale)

    def discretized(self, dt_scale: float = 1.0):
        """``(Ā, B̄) (D, N/2)`` complex64."""
        Lam, B = self._continuous()
        return ssm.discretize.diagonal(self.options.discretization, Lam, B, self.dt(dt_scale))

    def _Cs(self):
        Cs = [complex_of(self.C_re, self.C_im)]
        if self.options.bidirectional:
            Cs.append(complex_of(self.C2_re, self.C2_im))
        return Cs

    def kernel(self, L: int, dt_scale: float = 1.0):
        """Convolution kernels ``K (D, L)`` (a list: causal, then anti-causal when bidirectional)."""
        Lam, B = self._continuous()
        return [ssm.kernels.diag_kernel(Lam, B, C, self.dt(dt_scale), L, self.options.discretization)
                for C in self._Cs()]

    # -- sequence mode -------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale: float = 1.0):
        """``x (B, L, D) -> (B, L, D)``."""
        check_sequence("S4D", x, self.d_model)
        check_dt_scale("S4D", dt_scale)
        x = x.astype(jnp.float32)
        if self.options.mode == "conv":
            Ks = self.kernel(x.shape[1], dt_scale)
            if self.options.bidirectional:
                return ssm.kernels.bidirectional_conv(x, Ks[0], Ks[1], self.D[...])
            return ssm.kernels.causal_conv(x, Ks[0], self.D[...])
        return self._scan(x, dt_scale)

    def _scan(self, x, dt_scale):
        Bsz, L, D = x.shape
        n2 = self.options.d_state // 2
        Abar, Bbar = self.discretized(dt_scale)                                         # (D, N/2)
        b = x.astype(jnp.complex64)[..., None] * Bbar[None, None]                       # (B, L, D, N/2)
        a = Abar.reshape(D * n2)
        Cs = self._Cs()
        h = linear_scan(a, b.reshape(Bsz, L, D * n2), backend=self.options.backend).reshape(Bsz, L, D, n2)
        y = 2.0 * jnp.real(jnp.einsum("bldn,dn->bld", h, Cs[0]))
        if self.options.bidirectional:                                                  # strictly future inputs
            b_next = jnp.concatenate([b[:, 1:], jnp.zeros_like(b[:, :1])], axis=1)
            hb = linear_scan(a, b_next.reshape(Bsz, L, D * n2), reverse=True, backend=self.options.backend)
            y = y + 2.0 * jnp.real(jnp.einsum("bldn,dn->bld", hb.reshape(Bsz, L, D, n2), Cs[1]))
        return y + x * self.D[...][None, None]

    # -- recurrent mode ------------------------------------------------------------------------------------
    def init_state(self, batch_size: int):
        """``h (B, D, N/2)`` complex64 zeros."""
        check_batch_size("S4D", batch_size)
        check_causal("S4D", self.options.bidirectional)
        return jnp.zeros((batch_size, self.d_model, self.options.d_state // 2), jnp.complex64)

    def step(self, state, x_t, *, dt_scale: float = 1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``."""
        check_token("S4D", x_t, self.d_model)
        check_dt_scale("S4D", dt_scale)
        check_causal("S4D", self.options.bidirectional)
        x_t = x_t.astype(jnp.float32)
        Abar, Bbar = self.discretized(dt_scale)
        h = Abar[None] * state + x_t.astype(jnp.complex64)[..., None] * Bbar[None]
        y = 2.0 * jnp.real(jnp.einsum("bdn,dn->bd", h, self._Cs()[0])) + x_t * self.D[...][None]
        return h, y
