"""``S4D``: diagonal state-space layer (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and Initialization
of Diagonal State Space Models"), one SISO SSM per channel with the conjugate half of its N states stored.

Per channel d (N/2 complex states, conjugate pairs implied; ``ssm.kernels`` conventions):

    x'(t) = Λ x(t) + B u(t),   y = 2 Re(C x) + D u                       (S4D §2-3)
    Ā, B̄ = zoh | bilinear (ΔΛ, ΔB),   Δ = exp(log_dt) · dt_scale
    mode="conv":  y = K * u + D u,  K_l = 2 Re Σ_n C_n Ā_n^l B̄_n   (``ssm.kernels.diag_kernel`` + FFT)
    mode="scan":  h_t = Ā ⊙ h_{t-1} + B̄ u_t on ``scan_kernels.linear_scan``,  y_t = 2 Re(C h_t) + D u_t
    step:         the same recurrence, one token at a time

Irregular sampling (``dt (B, L)`` in ``__call__``, ``dt_t (B,)`` in ``step``): Δ_{b,t} = dt[b, t] · Δ, so
Ā_t, B̄_t vary per step and sequence (the ZOH solution over each gap, S5 §6.3); the convolution has no
time-varying form, so mode="conv" runs the scan then.

Packed sequences (``segment_ids (B, L)`` in ``__call__``, 0 = padding; docs/layers.md §Packed sequences): the
convolution kernel would reach across sequence boundaries, so mode="conv" runs its scan form (``linear_scan`` with
``segment_ids``; each sequence starts from a zero state, the bidirectional branch stops at the sequence's end) and
padding positions output 0.

``bidirectional=True`` adds an anti-causal branch with its own ``C2`` acting on strictly future inputs
(S4's two-sided kernel): ``y_t += Σ_{s>t} K2_{s-t-1} u_s``. Parameters: ``log_dt (D,)``, ``Lambda_re,
Lambda_im, B_re, B_im (D, N/2)`` (tag ``ssm``), ``C_re, C_im (D, N/2)``, ``D (D,)``; Re Λ is clipped to <= -1e-4.
Constructor: ``S4D(d_model, *, d_state=64, init="inv", discretization="zoh", mode="conv", bidirectional=False,
dt_min=0.001, dt_max=0.1, backend=None, sequence_axis=None, dtype=jnp.float32, param_dtype=jnp.float32, rngs)``
(one docstring line per option in the class).
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state; N/2 stored).
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
    check_sequence_axis,
    check_state,
    check_token,
    mask_padding,
    next_step,
    record_options,
    zeros_of,
)
from algornn.layers._params import complex_of, f32, normal, param, ssm_param
from algornn.scan_kernels import BACKENDS, linear_scan, sequence_parallel
from algornn.scan_kernels._common.packing import same_as_next

S4D_INITS = {"lin": ssm.init.s4d_lin, "inv": ssm.init.s4d_inv, "legs": ssm.init.s4d_legs, "real": ssm.init.s4d_real}
MAX_RE = -1e-4  # Re Λ <= MAX_RE keeps every mode stable (annotated-s4 / S5 clip)


@dataclasses.dataclass(frozen=True)
class S4DOptions:
    """The validated options of an :class:`S4D` layer (``layer.options``)."""

    d_state: int = 64
    init: str = "inv"
    discretization: str = "zoh"
    mode: str = "conv"
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    backend: str | None = None
    sequence_axis: str | None = None

    def __post_init__(self):
        check_int("d_state", self.d_state, minimum=2, multiple_of=2)
        check_choice("init", self.init, tuple(S4D_INITS))
        check_choice("discretization", self.discretization, ("zoh", "bilinear"))
        check_choice("mode", self.mode, ("conv", "scan"))
        check_bool("bidirectional", self.bidirectional)
        check_dt_range(self.dt_min, self.dt_max)
        check_choice("backend", self.backend, (None,) + BACKENDS)
        check_sequence_axis(
            self.sequence_axis,
            scan=self.mode == "scan",
            why="S4D shards time only in mode='scan' (the FFT of mode='conv' needs the whole sequence on one device)",
        )


class S4D(nnx.Module):
    """Diagonal state-space layer (S4D): ``x (B, L, D) -> (B, L, D)``, one SISO SSM per channel.

    Args:
        d_model: channels D.
        d_state: state size N per channel (even; N/2 conjugate-pair states are stored).
        init: Λ initialisation, one of "lin", "inv", "legs", "real" (S4D §4).
        discretization: "zoh" or "bilinear".
        mode: "conv" (FFT convolution with the Vandermonde kernel) or "scan" (``linear_scan`` recurrence).
        bidirectional: add an anti-causal branch with its own C (no ``step`` then).
        dt_min, dt_max: range of the log-uniform initial step sizes Δ.
        backend: ``linear_scan`` backend for mode="scan": None (auto), "reference", "xla", "pallas".
        sequence_axis: None, or the mesh axis the time axis is sharded over (mode="scan" only): the scans run
            through ``scan_kernels.sequence_parallel`` on the mesh of ``jax.set_mesh`` (unsharded without one).
        dtype: compute dtype of inputs and outputs; the SSM math runs in float32/complex64.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)`` scale every Δ by ``dt_scale``
    (a positive scalar; may be traced under ``jit``). Irregularly sampled input: ``__call__(x, dt=dt)`` with
    ``dt (B, L)`` the positive time before each sample in grid steps (Δ_t = dt_t · Δ · dt_scale; all ones is the
    regular grid; mode="conv" then runs its scan form), ``step(state, x_t, dt_t=dt_t)`` with ``dt_t (B,)``.
    A bidirectional layer's reverse branch crosses the gap ``dt[:, t+1]`` from sample t+1 back to t.
    Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding) runs every sequence
    as if alone (mode="conv" then runs its scan form); padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        init: str = "inv",
        discretization: str = "zoh",
        mode: str = "conv",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str | None = None,
        sequence_axis: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(S4DOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("S4D", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        shape = (d_model, opt.d_state // 2)
        Lam = S4D_INITS[opt.init](None, shape)
        B = ssm.init.s4d_legs_B(None, shape) if opt.init == "legs" else jnp.ones(shape, jnp.complex64)
        self.log_dt = ssm_param(ssm.init.log_dt(rngs.params(), (d_model,), opt.dt_min, opt.dt_max), pdt)
        self.Lambda_re = ssm_param(jnp.real(Lam), pdt)
        self.Lambda_im = ssm_param(jnp.imag(Lam), pdt)
        self.B_re = ssm_param(jnp.real(B), pdt)
        self.B_im = ssm_param(jnp.imag(B), pdt)
        C = ssm.init.complex_normal(rngs.params(), shape)
        self.C_re, self.C_im = param(jnp.real(C), pdt), param(jnp.imag(C), pdt)
        if opt.bidirectional:
            C2 = ssm.init.complex_normal(rngs.params(), shape)
            self.C2_re, self.C2_im = param(jnp.real(C2), pdt), param(jnp.imag(C2), pdt)
        self.D = param(normal(rngs.params(), (d_model,), 1.0), pdt)

    # -- parameters in their natural form ----------------------------------------------------------------
    def _continuous(self):
        """``Lambda, B (D, N/2)`` complex64 (Re Λ clipped)."""
        Lam = jax.lax.complex(jnp.minimum(f32(self.Lambda_re), MAX_RE), f32(self.Lambda_im))
        return Lam, complex_of(self.B_re, self.B_im)

    def dt(self, dt_scale=1.0, elapsed=None):
        """Step sizes ``Δ (D,)`` float32; with per-step ``elapsed (...)`` times, ``Δ (..., D)``."""
        delta = jnp.exp(f32(self.log_dt)) * jnp.asarray(dt_scale, jnp.float32)
        return delta if elapsed is None else elapsed[..., None] * delta

    def discretized(self, dt_scale=1.0, elapsed=None):
        """``(Ā, B̄) (D, N/2)`` complex64; ``(..., D, N/2)`` for per-step ``elapsed (...)`` times."""
        Lam, B = self._continuous()
        return ssm.discretize.diagonal(self.options.discretization, Lam, B, self.dt(dt_scale, elapsed))

    def _Cs(self):
        Cs = [complex_of(self.C_re, self.C_im)]
        if self.options.bidirectional:
            Cs.append(complex_of(self.C2_re, self.C2_im))
        return Cs

    def kernel(self, L: int, dt_scale=1.0):
        """Convolution kernels ``K (D, L)`` (a list: causal, then anti-causal when bidirectional)."""
        Lam, B = self._continuous()
        return [
            ssm.kernels.diag_kernel(Lam, B, C, self.dt(dt_scale), L, self.options.discretization) for C in self._Cs()
        ]

    # -- sequence mode -------------------------------------------------------------------------------------
    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample;
        ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("S4D", x, self.d_model)
        check_dt_scale("S4D", dt_scale)
        if dt is not None:
            dt = check_dt("S4D", dt, x.shape[:2])
        x = x.astype(self.dtype).astype(jnp.float32)
        if segment_ids is not None:
            segment_ids = check_segment_ids("S4D", segment_ids, x.shape[:2])
            return mask_padding(self._scan(x, dt_scale, dt, segment_ids), segment_ids).astype(self.dtype)
        if self.options.mode == "conv" and dt is None:
            Ks = self.kernel(x.shape[1], dt_scale)
            if self.options.bidirectional:
                y = ssm.kernels.bidirectional_conv(x, Ks[0], Ks[1], f32(self.D))
            else:
                y = ssm.kernels.causal_conv(x, Ks[0], f32(self.D))
        else:
            y = self._scan(x, dt_scale, dt)
        return y.astype(self.dtype)

    def _scan(self, x, dt_scale, dt=None, segment_ids=None):
        Bsz, L, D = x.shape
        n2 = self.options.d_state // 2
        Abar, Bbar = self.discretized(dt_scale, dt)  # (D, N/2), or (B, L, D, N/2) with dt
        b = x.astype(jnp.complex64)[..., None] * (Bbar if Bbar.ndim == 4 else Bbar[None, None])  # (B, L, D, N/2)
        a = Abar.reshape(Abar.shape[:-2] + (D * n2,))  # (D·N/2,) or (B, L, D·N/2)
        Cs = self._Cs()
        axis = self.options.sequence_axis
        if axis is not None and segment_ids is not None:
            raise ValueError(
                f"S4D: sequence_axis={axis!r} and segment_ids cannot be combined (the sequence-parallel scan takes "
                "unpacked rows)"
            )
        scan = linear_scan if axis is None else sequence_parallel(linear_scan, axis)
        seg = (
            dict(backend=self.options.backend)
            if segment_ids is None
            else dict(segment_ids=segment_ids, backend=self.options.backend)
        )
        h = scan(a, b.reshape(Bsz, L, D * n2), **seg).reshape(Bsz, L, D, n2)
        y = 2.0 * jnp.real(jnp.einsum("bldn,dn->bld", h, Cs[0]))
        if self.options.bidirectional:  # strictly future inputs: h_t = Ā(dt_{t+1}) h_{t+1} + B̄(dt_{t+1}) u_{t+1}
            b_next = jnp.concatenate([b[:, 1:], jnp.zeros_like(b[:, :1])], axis=1)
            if segment_ids is not None:  # the future of a sequence ends with it
                b_next = jnp.where(same_as_next(segment_ids)[..., None, None], b_next, jnp.zeros((), b.dtype))
            a_rev = a if dt is None else next_step(a)
            hb = scan(a_rev, b_next.reshape(Bsz, L, D * n2), reverse=True, **seg)
            y = y + 2.0 * jnp.real(jnp.einsum("bldn,dn->bld", hb.reshape(Bsz, L, D, n2), Cs[1]))
        return y + x * f32(self.D)[None, None]

    # -- recurrent mode ------------------------------------------------------------------------------------
    def state_spec(self, batch_size: int):
        """``h (B, D, N/2)`` complex64."""
        return jax.ShapeDtypeStruct((batch_size, self.d_model, self.options.d_state // 2), jnp.complex64)

    def init_state(self, batch_size: int):
        """``h (B, D, N/2)`` complex64 zeros."""
        check_batch_size("S4D", batch_size)
        check_causal("S4D", self.options.bidirectional)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("S4D", x_t, self.d_model)
        check_dt_scale("S4D", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("S4D.step", dt_t, x_t.shape[:1], name="dt_t")
        check_causal("S4D", self.options.bidirectional)
        check_state("S4D", state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype).astype(jnp.float32)
        Abar, Bbar = self.discretized(dt_scale, dt_t)  # (D, N/2) or (B, D, N/2)
        h = Abar * state + x_t.astype(jnp.complex64)[..., None] * Bbar
        y = 2.0 * jnp.real(jnp.einsum("bdn,dn->bd", h, self._Cs()[0])) + x_t * f32(self.D)[None]
        return h, y.astype(self.dtype)
