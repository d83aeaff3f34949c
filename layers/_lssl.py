"""``LSSL``: linear state-space layer with a dense, trainable state matrix (Gu et al. 2021, "Combining Recurrent,
Convolutional, and Continuous-time Models with Linear State-Space Layers", §3-4).

One SISO system per channel d that shares ``A (N, N)`` and ``B (N,)`` (initialised from a HiPPO measure,
``ssm.hippo.transition``) and has its own step Δ_d and output map C_d (LSSL ``learn=1``):

    x'(t) = A x(t) + B u(t),   y = C x + D u
    Ā_d, B̄_d = bilinear | zoh (A, B, Δ_d),   Δ = exp(log_dt) · dt_scale          (``ssm.discretize``)
    mode="conv": y = K * u + D u,  K_{d,l} = C_d Ā_d^l B̄_d     (``ssm.kernels.dense_kernel`` + FFT)
    mode="scan": x_t = Ā_d x_{t-1} + B̄_d u_t per channel on ``scan_kernels.dense_linear_scan``
    step:        the same recurrence, one token at a time, O(D·N²) (Ā, B̄ cached in the state by ``init_state``;
                 ``step(..., dt_scale=s)`` re-discretises for s and caches that system in the returned state)

Irregular sampling: ``dt (B, L)`` in ``__call__`` (``dt_t (B,)`` in ``step``) gives Δ_{b,t,d} = dt[b, t] · Δ_d and
one dense system per step, sequence and channel (O(B·L·D·N³) to discretise: keep N and D moderate); mode="conv"
then runs the scan form, and the reverse branch crosses the gap dt[:, t+1] from t+1 to t. ``step(..., dt_t=...)``
discretises for that step and leaves the cached system in the state as it was.

Packed sequences (``segment_ids (B, L)`` in ``__call__``, 0 = padding; docs/layers.md §Packed sequences): the
convolution would reach across sequence boundaries, so mode="conv" runs its scan form (``dense_linear_scan`` with
``segment_ids``; each sequence from a zero state, the bidirectional branch stops at the sequence's end); padding
positions output 0.

``bidirectional=True``: a second output map ``C2`` on strictly future inputs (two-sided kernel / reverse scan).
Parameters: ``A (N, N)``, ``B (N,)``, ``log_dt (D,)`` (tag ``ssm``), ``C (D, N)``, ``D (D,)``.
Constructor: ``LSSL(d_model, *, d_state=64, measure="legs", discretization="bilinear", mode="conv",
bidirectional=False, dt_min=0.001, dt_max=0.1, backend=None, dtype=jnp.float32, param_dtype=jnp.float32, rngs)``
(one docstring line per option in the class).
Shape legend: B batch · L length · D channels (d_model) · N state size (d_state).
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
)
from algornn.layers._params import f32, normal, param, ssm_param
from algornn.scan_kernels import BACKENDS, dense_linear_scan
from algornn.scan_kernels._common.packing import same_as_next

LSSL_MEASURES = ("legs", "legt", "lagt", "fout", "lmu")


@dataclasses.dataclass(frozen=True)
class LSSLOptions:
    """The validated options of an :class:`LSSL` layer (``layer.options``)."""

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
    """Linear state-space layer with a dense trainable state matrix A, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        d_state: state size N (even for measure="fout").
        measure: HiPPO measure A and B start from, one of "legs", "legt", "lagt", "fout", "lmu".
        discretization: "bilinear" or "zoh".
        mode: "conv" (FFT convolution with the dense kernel) or "scan" (``dense_linear_scan`` recurrence).
        bidirectional: add an anti-causal branch with its own C (no ``step`` then).
        dt_min, dt_max: range of the log-uniform initial step sizes Δ (one per channel).
        backend: ``dense_linear_scan`` backend for mode="scan": None (auto), "reference", "xla", "pallas".
        dtype: compute dtype of inputs and outputs; the SSM math runs in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` scales every Δ by ``dt_scale`` (a positive scalar; may be traced under ``jit``).
    ``init_state(batch_size, *, dt_scale=1.0)`` caches Ā, B̄ for that scale in the state;
    ``step(state, x_t, *, dt_scale=None)`` uses the cache, or re-discretises for a given ``dt_scale`` (O(D·N³) per
    call) and returns that system in the new state. Irregularly sampled input: ``__call__(x, dt=dt)`` with
    ``dt (B, L)`` the positive time before each sample in grid steps (Δ_t = dt_t · Δ · dt_scale; mode="conv" then
    runs its scan form), ``step(state, x_t, dt_t=dt_t)`` with ``dt_t (B,)`` (the cache is not used then).
    Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding) runs every sequence as
    if alone (mode="conv" then runs its scan form); padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        measure: str = "legs",
        discretization: str = "bilinear",
        mode: str = "conv",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(LSSLOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("LSSL", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        A, B = ssm.hippo.transition(opt.measure, opt.d_state)
        self.A = ssm_param(jnp.asarray(A, jnp.float32), pdt)
        self.B = ssm_param(jnp.asarray(B, jnp.float32), pdt)
        self.log_dt = ssm_param(ssm.init.log_dt(rngs.params(), (d_model,), opt.dt_min, opt.dt_max), pdt)
        c_std = 1.0 / math.sqrt(opt.d_state)
        self.C = param(normal(rngs.params(), (d_model, opt.d_state), c_std), pdt)
        if opt.bidirectional:
            self.C2 = param(normal(rngs.params(), (d_model, opt.d_state), c_std), pdt)
        self.D = param(normal(rngs.params(), (d_model,), 1.0), pdt)

    def dt(self, dt_scale=1.0, elapsed=None):
        """Step sizes ``Δ (D,)`` float32; with per-step ``elapsed (...)`` times, ``Δ (..., D)``."""
        delta = jnp.exp(f32(self.log_dt)) * jnp.asarray(dt_scale, jnp.float32)
        return delta if elapsed is None else elapsed[..., None] * delta

    def discretized(self, dt_scale=1.0, elapsed=None):
        """``(Ā (D, N, N), B̄ (D, N))`` float32; ``(..., D, N, N), (..., D, N)`` for per-step ``elapsed (...)``."""
        return ssm.discretize.dense(self.options.discretization, f32(self.A), f32(self.B), self.dt(dt_scale, elapsed))

    def _Cs(self):
        return [f32(self.C)] + ([f32(self.C2)] if self.options.bidirectional else [])

    def kernel(self, L: int, dt_scale=1.0):
        """Convolution kernels ``K (D, L)`` (a list: causal, then anti-causal when bidirectional)."""
        return [
            ssm.kernels.dense_kernel(f32(self.A), f32(self.B), C, self.dt(dt_scale), L, self.options.discretization)
            for C in self._Cs()
        ]

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample;
        ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("LSSL", x, self.d_model)
        check_dt_scale("LSSL", dt_scale)
        if dt is not None:
            dt = check_dt("LSSL", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("LSSL", segment_ids, x.shape[:2])
        x = x.astype(self.dtype).astype(jnp.float32)
        if self.options.mode == "conv" and dt is None and segment_ids is None:
            Ks = self.kernel(x.shape[1], dt_scale)
            if self.options.bidirectional:
                return ssm.kernels.bidirectional_conv(x, Ks[0], Ks[1], f32(self.D)).astype(self.dtype)
            return ssm.kernels.causal_conv(x, Ks[0], f32(self.D)).astype(self.dtype)
        Abar, Bbar = self.discretized(dt_scale, dt)  # (D, N, N), (D, N) | (B, L, D, N, N), (B, L, D, N)
        b = x[..., None] * Bbar  # (B, L, D, N)
        scan = jax.vmap(
            lambda A, b_d, rev: dense_linear_scan(
                A, b_d, reverse=rev, segment_ids=segment_ids, backend=self.options.backend
            ),
            in_axes=(0 if dt is None else 2, 2, None),
            out_axes=2,
        )
        Cs = self._Cs()
        y = jnp.einsum("bldn,dn->bld", scan(Abar, b, False), Cs[0])
        if self.options.bidirectional:  # strictly future inputs: x_t = Ā(dt_{t+1}) x_{t+1} + B̄(dt_{t+1}) u_{t+1}
            b_next = jnp.concatenate([b[:, 1:], jnp.zeros_like(b[:, :1])], axis=1)
            if segment_ids is not None:  # the future of a sequence ends with it
                b_next = jnp.where(same_as_next(segment_ids)[..., None, None], b_next, jnp.zeros((), b.dtype))
            y = y + jnp.einsum("bldn,dn->bld", scan(Abar if dt is None else next_step(Abar), b_next, True), Cs[1])
        return mask_padding(y + x * f32(self.D)[None, None], segment_ids).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``(x (B, D, N), Ā (D, N, N), B̄ (D, N))`` float32."""
        D, N = self.d_model, self.options.d_state
        f = jnp.float32
        return (
            jax.ShapeDtypeStruct((batch_size, D, N), f),
            jax.ShapeDtypeStruct((D, N, N), f),
            jax.ShapeDtypeStruct((D, N), f),
        )

    def init_state(self, batch_size: int, *, dt_scale=1.0):
        """``(x (B, D, N) zeros, Ā (D, N, N), B̄ (D, N))``: the state plus a decode cache of the discretized
        system (dense Ā costs O(D·N³) to form, so ``step`` reuses it: call ``init_state`` again after the
        parameters change). ``dt_scale`` sets the step-size scale of the cached system."""
        check_batch_size("LSSL", batch_size)
        check_dt_scale("LSSL", dt_scale)
        check_causal("LSSL", self.options.bidirectional)
        Abar, Bbar = self.discretized(dt_scale)
        return jnp.zeros((batch_size, self.d_model, self.options.d_state), jnp.float32), Abar, Bbar

    def step(self, state, x_t, *, dt_scale=None, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``, O(D·N²) with the cached system (``dt_scale=None``);
        a given ``dt_scale`` re-discretises (O(D·N³)) and the returned state caches that system. ``dt_t (B,)``
        (elapsed time before this sample) discretises this step per sequence (O(B·D·N³)); the cache is kept."""
        check_token("LSSL", x_t, self.d_model)
        if dt_scale is not None:
            check_dt_scale("LSSL", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("LSSL.step", dt_t, x_t.shape[:1], name="dt_t")
        check_causal("LSSL", self.options.bidirectional)
        check_state("LSSL", state, self.state_spec(x_t.shape[0]))
        x, Abar, Bbar = state
        if dt_scale is not None:
            Abar, Bbar = self.discretized(dt_scale)
        x_t = x_t.astype(self.dtype).astype(jnp.float32)
        if dt_t is not None:
            A_t, B_t = self.discretized(1.0 if dt_scale is None else dt_scale, dt_t)  # (B, D, N, N), (B, D, N)
            x = jnp.einsum("bdnm,bdm->bdn", A_t, x) + B_t * x_t[..., None]
        else:
            x = jnp.einsum("dnm,bdm->bdn", Abar, x) + Bbar[None] * x_t[..., None]
        y = jnp.einsum("dn,bdn->bd", f32(self.C), x) + x_t * f32(self.D)[None]
        return (x, Abar, Bbar), y.astype(self.dtype)
