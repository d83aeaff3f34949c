"""``S5``: simplified state space layer (Smith, Warrington & Linderman 2023, "Simplified State Space Layers for
Sequence Modeling"), one MIMO diagonal SSM over all D channels, on ``scan_kernels.linear_scan``.

    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,   y_t = c · Re(C̃ x_t) + D ⊙ u_t      (S5 §2-3; c = 2 with conj_sym)
    zoh:      Λ̄ = exp(ΛΔ),  B̄ = (Λ̄ − 1)/Λ · B̃;   bilinear: Λ̄ = (1 − ΔΛ/2)^{-1}(1 + ΔΛ/2),  B̄ = (1 − ΔΛ/2)^{-1} Δ B̃
    Δ = exp(log_step) · dt_scale, one timescale per state (S5 §4.3)

Irregular sampling (S5 §6.3): ``dt (B, L)`` in ``__call__`` (``dt_t (B,)`` in ``step``) gives Δ_{b,t,p} =
dt[b, t] · Δ_p and a per-step Λ̄_t, B̄_t (the ZOH solution over each gap); B̄_t u_t is computed as
coef_t ⊙ (B̃ u_t) so B̄ is never formed per step. The reverse branch crosses the gap dt[:, t+1] from t+1 to t
(Λ̄ and the input weight of u_t both use it; the last sample keeps its own gap).
Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): both scans run with
``segment_ids`` (each sequence from a zero state, the reverse one from its own end); padding positions output 0.

Init (``ssm.init.s5_hippo_n``, S5 §4.1): Λ from ``blocks`` copies of HiPPO-N (the normal part of LegS),
B̃ = V⁻¹B and C̃ = CV in the eigenbasis. With ``conj_sym`` only P = N/2 states are stored.
``bidirectional=True`` adds a reverse scan over the same Λ̄, B̄u (current token included, S5 ``apply_ssm``)
read out by its own ``C2``. Parameters: ``Lambda_re, Lambda_im (P,)``, ``log_step (P,)``, ``B_re, B_im (P, D)``
(tag ``ssm``), ``C_re, C_im (D, P)``, ``D (D,)``; Re Λ is clipped to <= -1e-4.
Constructor: ``S5(d_model, *, d_state=64, blocks=1, conj_sym=True, discretization="zoh", bidirectional=False,
dt_min=0.001, dt_max=0.1, backend=None, dtype=jnp.float32, param_dtype=jnp.float32, rngs)`` (one docstring line per
option in the class).
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state) · P stored states.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_causal,
    check_choice,
    check_dt,
    check_dt_range,
    check_dt_scale,
    check_dtypes,
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
from algornn.layers._params import complex_of, f32, normal, param, ssm_param
from algornn.scan_kernels import BACKENDS, linear_scan

MAX_RE = -1e-4


@dataclasses.dataclass(frozen=True)
class S5Options:
    """The validated options of an :class:`S5` layer (``layer.options``)."""

    d_state: int = 64
    blocks: int = 1
    conj_sym: bool = True
    discretization: str = "zoh"
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    backend: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state, minimum=2, multiple_of=2)
        check_int("blocks", self.blocks)
        if self.d_state % self.blocks or (self.d_state // self.blocks) % 2:
            raise ValueError(f"blocks={self.blocks!r} must divide d_state={self.d_state} into even block sizes")
        check_bool("conj_sym", self.conj_sym)
        check_choice("discretization", self.discretization, ("zoh", "bilinear"))
        check_bool("bidirectional", self.bidirectional)
        check_dt_range(self.dt_min, self.dt_max)
        check_choice("backend", self.backend, (None,) + BACKENDS)


class S5(nnx.Module):
    """MIMO diagonal state-space layer (S5): one diagonal SSM over all D channels, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        d_state: state size N (even); P = N/2 states are stored with ``conj_sym``.
        blocks: number of HiPPO-N blocks the initial Λ is made of (must divide N into even sizes).
        conj_sym: store only one state of each conjugate pair (output 2 Re(C̃ x)).
        discretization: "zoh" or "bilinear".
        bidirectional: add a reverse scan read out by its own C (no ``step`` then).
        dt_min, dt_max: range of the log-uniform initial step sizes Δ (one per state).
        backend: ``linear_scan`` backend: None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of inputs and outputs; the SSM math runs in float32/complex64.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)`` scale every Δ by ``dt_scale``
    (a positive scalar; may be traced under ``jit``). Irregularly sampled input: ``__call__(x, dt=dt)`` with
    ``dt (B, L)`` the positive time before each sample in grid steps (Δ_t = dt_t · Δ · dt_scale; all ones is the
    regular grid), ``step(state, x_t, dt_t=dt_t)`` with ``dt_t (B,)``. Packed sequences:
    ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding); padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        blocks: int = 1,
        conj_sym: bool = True,
        discretization: str = "zoh",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(S5Options, locals())
        self.dtype, self.param_dtype = check_dtypes("S5", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        Lam, B, C = ssm.init.s5_hippo_n(rngs.params(), (d_model, opt.d_state), blocks=opt.blocks, conj_sym=opt.conj_sym)
        P = Lam.shape[0]
        self.n_stored = P
        self.Lambda_re = ssm_param(jnp.minimum(jnp.real(Lam), MAX_RE), pdt)
        self.Lambda_im = ssm_param(jnp.imag(Lam), pdt)
        self.log_step = ssm_param(ssm.init.log_dt(rngs.params(), (P,), opt.dt_min, opt.dt_max), pdt)
        self.B_re, self.B_im = ssm_param(jnp.real(B), pdt), ssm_param(jnp.imag(B), pdt)
        self.C_re, self.C_im = param(jnp.real(C), pdt), param(jnp.imag(C), pdt)
        if opt.bidirectional:
            _, _, C2 = ssm.init.s5_hippo_n(
                rngs.params(), (d_model, opt.d_state), blocks=opt.blocks, conj_sym=opt.conj_sym
            )
            self.C2_re, self.C2_im = param(jnp.real(C2), pdt), param(jnp.imag(C2), pdt)
        self.D = param(normal(rngs.params(), (d_model,), 1.0), pdt)

    def dt(self, dt_scale=1.0, elapsed=None):
        """Step sizes ``Δ (P,)`` float32 (one per stored state); with per-step ``elapsed (...)``, ``(..., P)``."""
        delta = jnp.exp(f32(self.log_step)) * jnp.asarray(dt_scale, jnp.float32)
        return delta if elapsed is None else elapsed[..., None] * delta

    def _coefficients(self, dt_scale=1.0, elapsed=None):
        """``(Λ̄, coef) (P,)`` (or ``(..., P)`` per step) complex64 with ``B̄ = coef[:, None] · B̃``."""
        Lam = jax.lax.complex(jnp.minimum(f32(self.Lambda_re), MAX_RE), f32(self.Lambda_im))
        # one Δ per state: P single-state systems (batch dim P, N = 1)
        Abar, coef = ssm.discretize.diagonal(
            self.options.discretization, Lam[:, None], jnp.ones_like(Lam)[:, None], self.dt(dt_scale, elapsed)
        )
        return Abar[..., 0], coef[..., 0]

    def discretized(self, dt_scale=1.0):
        """``(Λ̄ (P,), B̄ (P, D))`` complex64."""
        Abar, coef = self._coefficients(dt_scale)
        return Abar, coef[:, None] * complex_of(self.B_re, self.B_im)

    def _readout(self, h, C):
        """``c · Re(C̃ h)``: ``h (..., P) -> (..., D)``."""
        y = jnp.real(jnp.einsum("...p,dp->...d", h, C))
        return 2.0 * y if self.options.conj_sym else y

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample;
        ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("S5", x, self.d_model)
        check_dt_scale("S5", dt_scale)
        if dt is not None:
            dt = check_dt("S5", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("S5", segment_ids, x.shape[:2])
        x = x.astype(self.dtype).astype(jnp.float32)
        Abar, coef = self._coefficients(dt_scale, dt)  # (P,) or (B, L, P)
        Bu = jnp.einsum("bld,pd->blp", x.astype(jnp.complex64), complex_of(self.B_re, self.B_im))  # (B, L, P)
        seg = dict(segment_ids=segment_ids, backend=self.options.backend)
        y = self._readout(linear_scan(Abar, coef * Bu, **seg), complex_of(self.C_re, self.C_im))
        if self.options.bidirectional:
            if dt is not None:  # from t+1 back to t: the gap dt[:, t+1]
                Abar, coef = next_step(Abar), next_step(coef)
            hb = linear_scan(Abar, coef * Bu, reverse=True, **seg)
            y = y + self._readout(hb, complex_of(self.C2_re, self.C2_im))
        return mask_padding(y + x * f32(self.D)[None, None], segment_ids).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``x (B, P)`` complex64."""
        return jax.ShapeDtypeStruct((batch_size, self.n_stored), jnp.complex64)

    def init_state(self, batch_size: int):
        """``x (B, P)`` complex64 zeros."""
        check_batch_size("S5", batch_size)
        check_causal("S5", self.options.bidirectional)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("S5", x_t, self.d_model)
        check_dt_scale("S5", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("S5.step", dt_t, x_t.shape[:1], name="dt_t")
        check_causal("S5", self.options.bidirectional)
        check_state("S5", state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype).astype(jnp.float32)
        Abar, coef = self._coefficients(dt_scale, dt_t)  # (P,) or (B, P)
        Bu = jnp.einsum("bd,pd->bp", x_t.astype(jnp.complex64), complex_of(self.B_re, self.B_im))
        h = Abar * state + coef * Bu
        y = self._readout(h, complex_of(self.C_re, self.C_im)) + x_t * f32(self.D)[None]
        return h, y.astype(self.dtype)
