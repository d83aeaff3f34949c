"""``LSSL``: linear state-space layer with a dense, trainable state matrix (Gu et al. 2021, "Combining Recurrent,
Convolutional, and Continuous-time Models with Linear State-Space Layers", §3-4).

One SISO system per channel d that shares ``A (N, N)`` and ``B (N,)`` (initialised from a HiPPO measure,
``ssm.hippo.transition``) and has its own step Δ_d and output map C_d (LSSL ``learn=1``):

    x'(t) = A x(t) + B u(t),   y = C x + D u
    Ā_d, B̄_d = bilinear | zoh (A, B, Δ_d),   Δ = exp(log_dt) · dt_scale          (``ssm.discretize``)
    mode="conv": y = K * u + D u,  K_{d,l} = C_d Ā_d^l B̄_d     (``ssm.kernels.dense_kernel`` + FFT)
    mode="scan": x_t = Ā_d x_{t-1} + B̄_d u_t per channel on ``scan_kernels.dense_linear_scan``
    step:        the same recurrence, one token at a time, O(D·N²) (Ā, B̄ cached in the state by ``init_state``)

``bidirectional=True``: a second output map ``C2`` on strictly future inputs (two-sided kernel / reverse scan).
Parameters: ``A (N, N)``, ``B (N,)``, ``log_dt (D,)`` (tag ``ssm``), ``C (D, N)``, ``D (D,)``.
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (build_options, check_batch_size, check_bool, check_choice, check_dt_range,
                             check_dt_scale, check_int, check_sequence, check_token, check_causal)
from algornn.layers._params import normal, ssm_param
from algornn.scan_kernels import BACKENDS, dense_linear_scan

LSSL_MEASURES = ("legs", "legt", "lagt", "fout", "lmu")


@dataclasses.dataclass(frozen=True)
class LSSLOptions:
    d_state: int = 64
    measure: str = "legs"
    discretization: str = "bilinear"
    mode: str = "conv"
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_choice("measure", self.measure, LSSL_MEASURES)
        if self.measure == "fout" and self.d_state % 2:
            raise ValueError(f"d_state={self.d_state} must be even for measure='fout'")
        check_choice("discretization", self.discretization, ("bilinear", "zoh"))
        check_choice("mode", self.mode, ("conv", "scan"))
        check_bool("bidirectional", self.bidirectional)
        check_dt_range(self.dt_min, self.dt_max)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class LSSL(nnx.Module):
    """Dense-A state-space layer. Options: see :class:`LSSLOptions`."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, **options):
        check_int("d_model", d_model)
        opt = build_options(LSSLOptions, "LSSL", options)
        self.options, self.d_model = opt, d_model
        A, B = ssm.hippo.transition(opt.measure, opt.d_state)
        self.A = ssm_param(jnp.asarray(A, jnp.float32))
        self.B = ssm_param(jnp.asarray(B, jnp.float32))
        self.log_dt = ssm_param(ssm.init.log_dt(rngs.params(), (d_model,), opt.dt_min, opt.dt_max))
        c_std = 1.0 / math.sqrt(opt.d_state)
        self.C = nnx.Param(normal(rngs.params(), (d_model, opt.d_state), c_std))
        if opt.bidirectional:
            self.C2 = nnx.Param(normal(rngs.params(), (d_model, opt.d_state), c_std))
        self.D = nnx.Param(normal(rngs.params(), (d_model,), 1.0))

    def dt(self, dt_scale: float = 1.0):
        return jnp.exp(self.log_dt[...]) * jnp.float32(dt_scale)

    def discretized(self, dt_scale: float = 1.0):
        """``(Ā (D, N, N), B̄ (D, N))`` float32."""
        return ssm.discretize.dense(self.options.discretization, self.A[...], self.B[...], self.dt(dt_scale))

    def _Cs(self):
        return [self.C[...]] + ([self.C2[...]] if self.options.bidirectional else [])

    def kernel(self, L: int, dt_scale: float = 1.0):
        """Convolution kernels ``K (D, L)`` (a list: causal, then anti-causal when bidirectional)."""
        return [ssm.kernels.dense_kernel(self.A[...], self.B[...], C, self.dt(dt_scale), L,
                                         self.options.discretization) for C in self._Cs()]

    def __call__(self, x, *, dt_scale: float = 1.0):
        """``x (B, L, D) -> (B, L, D)``."""
        check_sequence("LSSL", x, self.d_model)
        check_dt_scale("LSSL", dt_scale)
        x = x.astype(jnp.float32)
        if self.options.mode == "conv":
            Ks = self.kernel(x.shape[1], dt_scale)
            if self.options.bidirectional:
                return ssm.kernels.bidirectional_conv(x, Ks[0], Ks[1], self.D[...])
            return ssm.kernels.causal_conv(x, Ks[0], self.D[...])
        Abar, Bbar = self.discretized(dt_scale)
        b = x[..., None] * Bbar[None, None]                                              # (B, L, D, N)
        scan = jax.vmap(lambda A, b_d, rev: dense_linear_scan(A, b_d, reverse=rev, backend=self.options.backend),
                        in_axes=(0, 2, None), out_axes=2)
        Cs = self._Cs()
        y = jnp.einsum("bldn,dn->bld", scan(Abar, b, False), Cs[0])
        if self.options.bidirectional:                                                   # strictly future inputs
            b_next = jnp.concatenate([b[:, 1:], jnp.zeros_like(b[:, :1])], axis=1)
            y = y + jnp.einsum("bldn,dn->bld", scan(Abar, b_next, True), Cs[1])
        return y + x * self.D[...][None, None]

    def init_state(self, batch_size: int, *, dt_scale: float = 1.0):
        """``(x (B, D, N) zeros, Ā (D, N, N), B̄ (D, N))``: the state plus a decode cache of the discretized
        system (dense Ā costs O(D·N³) to form, so ``step`` reuses it: call ``init_state`` again after the
        parameters change). ``dt_scale`` sets the step-size scale of the whole decode."""
        check_batch_size("LSSL", batch_size)
        check_dt_scale("LSSL", dt_scale)
        check_causal("LSSL", self.options.bidirectional)
        Abar, Bbar = self.discretized(dt_scale)
        return jnp.zeros((batch_size, self.d_model, self.options.d_state), jnp.float32), Abar, Bbar

    def step(self, state, x_t):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``, O(D·N²)."""
        check_token("LSSL", x_t, self.d_model)
        check_causal("LSSL", self.options.bidirectional)
        x, Abar, Bbar = state
        x_t = x_t.astype(jnp.float32)
        x = jnp.einsum("dnm,bdm->bdn", Abar, x) + Bbar[None] * x_t[..., None]
        return (x, Abar, Bbar), jnp.einsum("dn,bdn->bd", self.C[...], x) + x_t * self.D[...][None]
