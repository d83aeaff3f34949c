"""``LRU``: Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences"), a discrete-time complex diagonal recurrence on ``scan_kernels.linear_scan``.

    λ = exp(−exp(ν_log) + i·exp(θ_log))            (exponential parameterisation, §3.2: |λ| < 1)
    h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t),   γ = exp(γ_log)   (γ normalisation, §3.3; γ_log trainable)
    y_t = Re(C h_t) + D ⊙ u_t

Ring init (``ssm.init.lru_ring``): |λ|² ~ U[r_min², r_max²], arg λ ~ U[0, max_phase]; B ~ N(0, 1/(2D)) per
real/imag part, C ~ N(0, 1/N), D ~ N(0, 1). ``bidirectional=True`` adds a reverse scan over the same λ and Bu
(``h_t = λ h_{t+1} + γ B u_t``, current token included, as S5) read out by its own ``C2``.
The LRU is discrete-time (no Δ): ``dt_scale`` is accepted only as 1, any other value raises ``ValueError``
(λ^dt_scale would be a choice of ours, not the paper's).
Default ring: r_min=0.9, r_max=0.999, max_phase=π/10, the paper's long-range setting (Orvieto et al. 2023, §3.3
and App. D: eigenvalues near the unit circle with small phases). The wider ring r_min=0, max_phase=2π of the paper's
minimal code keeps few slow, nearly real modes: with it a 2-layer model (d_model 64) stays at chance on a one-bit
memory held for 54-63 steps after 100 Adam steps (lr 3e-3), where this default reaches 100 % and S4D 89 %.
Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): both scans run with
``segment_ids`` (each sequence from a zero state); padding positions output 0.
Constructor: ``LRU(d_model, *, d_state=64, r_min=0.9, r_max=0.999, max_phase=π/10, bidirectional=False, backend=None,
dtype=jnp.float32, param_dtype=jnp.float32, rngs)`` (one docstring line per option in the class).
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state, complex).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_causal,
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
from algornn.layers._params import complex_of, f32, normal, param, ssm_param
from algornn.scan_kernels import BACKENDS, linear_scan

LRU_DISCRETE = "the LRU is a discrete-time recurrence (Orvieto et al. 2023 parameterise λ directly, with no Δ)"


@dataclasses.dataclass(frozen=True)
class LRUOptions:
    """The validated options of an :class:`LRU` layer (``layer.options``)."""

    d_state: int = 64
    r_min: float = 0.9
    r_max: float = 0.999
    max_phase: float = math.pi / 10
    bidirectional: bool = False
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_float("r_min", self.r_min, low=0.0, high=1.0, low_open=False)
        check_float("r_max", self.r_max, low=0.0, high=1.0)
        if not self.r_min < self.r_max:
            raise ValueError(f"r_min={self.r_min!r} must be < r_max={self.r_max!r}")
        check_float("max_phase", self.max_phase)
        check_bool("bidirectional", self.bidirectional)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class LRU(nnx.Module):
    """Linear Recurrent Unit: a discrete-time complex diagonal recurrence, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        d_state: number N of complex states.
        r_min, r_max: ring init, |λ| drawn in [r_min, r_max] (0 <= r_min < r_max <= 1).
        max_phase: ring init, arg λ drawn in [0, max_phase].
        bidirectional: add a reverse scan read out by its own C (no ``step`` then).
        backend: ``linear_scan`` backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of inputs and outputs; the recurrence runs in complex64.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1: the LRU is discrete-time (no Δ), so any other value
    raises ``ValueError``. Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding);
    padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
        bidirectional: bool = False,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(LRUOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("LRU", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        N = opt.d_state
        nu_log, theta_log, gamma_log = ssm.init.lru_ring(
            rngs.params(), (N,), r_min=opt.r_min, r_max=opt.r_max, max_phase=opt.max_phase
        )
        self.nu_log = ssm_param(nu_log, pdt)
        self.theta_log = ssm_param(theta_log, pdt)
        self.gamma_log = ssm_param(gamma_log, pdt)
        b_std = 1.0 / math.sqrt(2 * d_model)
        self.B_re = ssm_param(normal(rngs.params(), (N, d_model), b_std), pdt)
        self.B_im = ssm_param(normal(rngs.params(), (N, d_model), b_std), pdt)
        c_std = 1.0 / math.sqrt(N)
        self.C_re = param(normal(rngs.params(), (d_model, N), c_std), pdt)
        self.C_im = param(normal(rngs.params(), (d_model, N), c_std), pdt)
        if opt.bidirectional:
            self.C2_re = param(normal(rngs.params(), (d_model, N), c_std), pdt)
            self.C2_im = param(normal(rngs.params(), (d_model, N), c_std), pdt)
        self.D = param(normal(rngs.params(), (d_model,), 1.0), pdt)

    def eigenvalues(self):
        """``λ (N,)`` complex64."""
        return jnp.exp(jax.lax.complex(-jnp.exp(f32(self.nu_log)), jnp.exp(f32(self.theta_log))))

    def _input(self, x):
        """``γ ⊙ (B u)``: ``x (..., D) -> (..., N)`` complex64."""
        B = complex_of(self.B_re, self.B_im) * jnp.exp(f32(self.gamma_log)).astype(jnp.complex64)[:, None]
        return jnp.einsum("...d,nd->...n", x.astype(jnp.complex64), B)

    def __call__(self, x, *, dt_scale=1.0, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``dt_scale`` must be 1 (discrete-time); ``segment_ids (B, L)``:
        packed sequences (0 = padding)."""
        check_sequence("LRU", x, self.d_model)
        check_discrete_dt_scale("LRU", dt_scale, LRU_DISCRETE)
        if segment_ids is not None:
            segment_ids = check_segment_ids("LRU", segment_ids, x.shape[:2])
        x = x.astype(self.dtype).astype(jnp.float32)
        lam, bu = self.eigenvalues(), self._input(x)  # (N,), (B, L, N)
        seg = dict(segment_ids=segment_ids, backend=self.options.backend)
        h = linear_scan(lam, bu, **seg)
        y = jnp.real(jnp.einsum("bln,dn->bld", h, complex_of(self.C_re, self.C_im)))
        if self.options.bidirectional:
            hb = linear_scan(lam, bu, reverse=True, **seg)
            y = y + jnp.real(jnp.einsum("bln,dn->bld", hb, complex_of(self.C2_re, self.C2_im)))
        return mask_padding(y + x * f32(self.D)[None, None], segment_ids).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``h (B, N)`` complex64."""
        return jax.ShapeDtypeStruct((batch_size, self.options.d_state), jnp.complex64)

    def init_state(self, batch_size: int):
        """``h (B, N)`` complex64 zeros."""
        check_batch_size("LRU", batch_size)
        check_causal("LRU", self.options.bidirectional)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``. ``dt_scale`` must be 1 (discrete-time)."""
        check_token("LRU", x_t, self.d_model)
        check_discrete_dt_scale("LRU", dt_scale, LRU_DISCRETE)
        check_causal("LRU", self.options.bidirectional)
        check_state("LRU", state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype).astype(jnp.float32)
        h = self.eigenvalues()[None] * state + self._input(x_t)
        y = jnp.real(jnp.einsum("bn,dn->bd", h, complex_of(self.C_re, self.C_im))) + x_t * f32(self.D)[None]
        return h, y.astype(self.dtype)
