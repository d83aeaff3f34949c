"""``S4``: the structured state space layer with a diagonal-plus-low-rank (DPLR) state matrix
(Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State Spaces", §3, Alg. 1).

Per channel d (N states; the conjugate half N/2 is stored, ``ssm.kernels`` conventions):

    A = diag(Λ_f) − P_f P_fᴴ,   Λ_f = [Λ, Λ̄],  P_f = [P, P̄]           HiPPO NPLR init (``ssm.hippo.nplr``)
    bilinear: Ā = (I − Δ/2 A)^{-1}(I + Δ/2 A),  B̄ = (I − Δ/2 A)^{-1} Δ B,   Δ = exp(log_dt) · dt_scale
    __call__ (convolution): K_l = C_fᵀ Ā^l B̄_f by Cauchy + Woodbury at the roots of unity
                            (``ssm.kernels.dplr_kernel``, truncation-corrected), y = K * u + D u (FFT)
    step (recurrence):      x_t = Ā x_{t-1} + B̄ u_t,  y_t = 2 Re(C x_t) + D u_t  on the conjugate half, with
                            Ā applied without forming it: (I − Δ/2 A) x_t = (I + Δ/2 A) x_{t-1} + Δ B u_t solved
                            by Woodbury in O(N·rank) per channel (the "linear" step of state-spaces/s4). No
                            eigendecomposition of Ā (S4's float32 "diagonal" step is off by ~4e-2,
                            docs/layers.md §S4).
                            ``discretized()`` gives the dense real form (``ssm.kernels.dplr_real_form``) for checks.

Irregular sampling: ``dt (B, L)`` in ``__call__`` (``dt_t (B,)`` in ``step``) gives Δ_{b,t} = dt[b, t] · Δ.
The DPLR convolution kernel exists only for a fixed Δ, so with ``dt`` ``__call__`` runs the recurrent form: a
``lax.scan`` of the same Woodbury bilinear step as ``step`` (O(L) sequential steps of O(B·D·N·rank)); the
bidirectional branch runs it in reverse over the strictly future inputs, crossing the gap dt[:, t+1] from
t+1 to t.

Packed sequences (``segment_ids (B, L)`` in ``__call__``, 0 = padding; docs/layers.md §Packed sequences): the
convolution kernel would reach across sequence boundaries, so ``__call__`` runs the same recurrent form (a
``lax.scan`` of the Woodbury step, slower than the FFT) with the state set back to zero where a sequence starts
(the bidirectional branch: where it ends); padding positions output 0.

``bidirectional=True``: a second output map ``C2`` on strictly future inputs (S4's two-sided kernel).
Parameters (per channel): ``log_dt (D,)``, ``Lambda_re, Lambda_im, B_re, B_im (D, N/2)``, ``P_re, P_im
(D, rank, N/2)`` (tag ``ssm``), ``C_re, C_im (D, N/2)``, ``D (D,)``; Re Λ is clipped to <= -1e-4.
Constructor: ``S4(d_model, *, d_state=64, measure="legs", rank=None, bidirectional=False, dt_min=0.001, dt_max=0.1,
dtype=jnp.float32, param_dtype=jnp.float32, rngs)`` (one docstring line per option in the class).
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
    check_state,
    check_token,
    mask_padding,
    next_step,
    record_options,
    zeros_of,
)
from algornn.layers._params import complex_of, f32, normal, param, ssm_param
from algornn.scan_kernels._common.packing import same_as_next, segment_masks

S4_MEASURES = ("legs", "legt", "fout", "lagt")
MAX_RE = -1e-4


@dataclasses.dataclass(frozen=True)
class S4Options:
    """The validated options of an :class:`S4` layer (``layer.options``)."""

    d_state: int = 64
    measure: str = "legs"
    rank: int | None = None  # None: 2 for legt (its normal correction needs 2), else 1
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self):
        check_int("d_state", self.d_state, minimum=2, multiple_of=2)
        check_choice("measure", self.measure, S4_MEASURES)
        if self.rank is not None:
            check_int("rank", self.rank, minimum=2 if self.measure == "legt" else 1)
        check_bool("bidirectional", self.bidirectional)
        check_dt_range(self.dt_min, self.dt_max)


class S4(nnx.Module):
    """DPLR state-space layer (S4): FFT convolution for sequences, bilinear Woodbury recurrence for ``step``.

    Args:
        d_model: channels D.
        d_state: state size N per channel (even; the conjugate half N/2 is stored).
        measure: HiPPO measure of the NPLR initialisation, one of "legs", "legt", "fout", "lagt".
        rank: rank of the low-rank term P (None: 2 for "legt", else 1).
        bidirectional: add an anti-causal branch with its own C (no ``step`` then).
        dt_min, dt_max: range of the log-uniform initial step sizes Δ.
        dtype: compute dtype of inputs and outputs; the SSM math runs in float32/complex64.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)`` scale every Δ by ``dt_scale``
    (a positive scalar; may be traced under ``jit``). Irregularly sampled input: ``__call__(x, dt=dt)`` with
    ``dt (B, L)`` the positive time before each sample in grid steps (Δ_t = dt_t · Δ · dt_scale; the call then
    runs the recurrence, a sequential scan, instead of the convolution), ``step(state, x_t, dt_t=dt_t)`` with
    ``dt_t (B,)``. Packed sequences: ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding) runs
    the recurrence too, every sequence from a zero state; padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        measure: str = "legs",
        rank: int | None = None,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(S4Options, locals())
        self.dtype, self.param_dtype = check_dtypes("S4", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        pdt = self.param_dtype
        rank = opt.rank if opt.rank is not None else (2 if opt.measure == "legt" else 1)
        Lam, P, B, _ = ssm.hippo.nplr(opt.measure, opt.d_state, rank)  # complex128 numpy
        h = opt.d_state // 2
        bc = lambda z, shape: jnp.broadcast_to(jnp.asarray(z, jnp.complex64), shape)  # noqa: E731
        Lam, P, B = bc(Lam, (d_model, h)), bc(P, (d_model, rank, h)), bc(B, (d_model, h))
        self.log_dt = ssm_param(ssm.init.log_dt(rngs.params(), (d_model,), opt.dt_min, opt.dt_max), pdt)
        self.Lambda_re = ssm_param(jnp.minimum(jnp.real(Lam), MAX_RE), pdt)
        self.Lambda_im = ssm_param(jnp.imag(Lam), pdt)
        self.P_re, self.P_im = ssm_param(jnp.real(P), pdt), ssm_param(jnp.imag(P), pdt)
        self.B_re, self.B_im = ssm_param(jnp.real(B), pdt), ssm_param(jnp.imag(B), pdt)
        C = ssm.init.complex_normal(rngs.params(), (d_model, h))
        self.C_re, self.C_im = param(jnp.real(C), pdt), param(jnp.imag(C), pdt)
        if opt.bidirectional:
            C2 = ssm.init.complex_normal(rngs.params(), (d_model, h))
            self.C2_re, self.C2_im = param(jnp.real(C2), pdt), param(jnp.imag(C2), pdt)
        self.D = param(normal(rngs.params(), (d_model,), 1.0), pdt)

    def dplr(self):
        """``(Lambda (D, N/2), P (D, rank, N/2), B (D, N/2))`` complex64 (Re Λ clipped)."""
        Lam = jax.lax.complex(jnp.minimum(f32(self.Lambda_re), MAX_RE), f32(self.Lambda_im))
        return Lam, complex_of(self.P_re, self.P_im), complex_of(self.B_re, self.B_im)

    def dt(self, dt_scale=1.0):
        """Step sizes ``Δ (D,)`` float32."""
        return jnp.exp(f32(self.log_dt)) * jnp.asarray(dt_scale, jnp.float32)

    def _Cs(self):
        Cs = [complex_of(self.C_re, self.C_im)]
        if self.options.bidirectional:
            Cs.append(complex_of(self.C2_re, self.C2_im))
        return Cs

    def kernel(self, L: int, dt_scale=1.0):
        """Convolution kernels ``K (D, L)`` (a list: causal, then anti-causal when bidirectional)."""
        Lam, P, B = self.dplr()
        return [ssm.kernels.dplr_kernel(Lam, P, B, C, self.dt(dt_scale), L) for C in self._Cs()]

    def discretized(self, dt_scale=1.0):
        """Real form ``(Ā (D, N, N), B̄ (D, N), C (D, N))`` of the bilinear-discretized system."""
        Lam, P, B = self.dplr()
        A, Br, Cr = ssm.kernels.dplr_real_form(Lam, P, B, self._Cs()[0])
        Abar, Bbar = ssm.discretize.bilinear(A, Br, self.dt(dt_scale))
        return Abar, Bbar, Cr

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``, by FFT convolution with the DPLR kernel; with ``dt (B, L)``
        (elapsed time before each sample) or ``segment_ids (B, L)`` (packed sequences, 0 = padding) by the
        bilinear recurrence."""
        check_sequence("S4", x, self.d_model)
        check_dt_scale("S4", dt_scale)
        if dt is not None:
            dt = check_dt("S4", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("S4", segment_ids, x.shape[:2])
        x = x.astype(self.dtype).astype(jnp.float32)
        if dt is not None or segment_ids is not None:
            elapsed = jnp.ones(x.shape[:2], jnp.float32) if dt is None else dt
            y = self._recurrence(x, self.dt(dt_scale)[None, None] * elapsed[..., None], segment_ids)
            return mask_padding(y, segment_ids).astype(self.dtype)
        Ks = self.kernel(x.shape[1], dt_scale)
        if self.options.bidirectional:
            y = ssm.kernels.bidirectional_conv(x, Ks[0], Ks[1], f32(self.D))
        else:
            y = ssm.kernels.causal_conv(x, Ks[0], f32(self.D))
        return y.astype(self.dtype)

    def _recurrence(self, x, delta, segment_ids=None):
        """``x (B, L, D)`` float32, per-step ``Δ (B, L, D)``: the Woodbury bilinear recurrence over time;
        ``segment_ids (B, L)``: the state restarts from zero where a sequence starts (in the scan's direction)."""
        Lam, P, B = self.dplr()
        Cs = self._Cs()
        s0 = jnp.zeros((x.shape[0], self.d_model, self.options.d_state // 2), jnp.complex64)

        def run(us, deltas, reverse):
            inputs = (jnp.moveaxis(us, 1, 0), jnp.moveaxis(deltas, 1, 0))
            if segment_ids is not None:
                inputs += (segment_masks(segment_ids, reverse=reverse)[0].T,)  # (L, B): a sequence starts

            def body(s, inp):
                if segment_ids is not None:
                    s = jnp.where(inp[2][:, None, None], s0, s)
                s = _dplr_bilinear_step(Lam, P, B, inp[1], s, inp[0])
                return s, s

            _, hs = jax.lax.scan(body, s0, inputs, reverse=reverse)
            return jnp.moveaxis(hs, 0, 1)  # (B, L, D, N/2)

        y = 2.0 * jnp.real(jnp.einsum("dn,bldn->bld", Cs[0], run(x, delta, False)))
        if self.options.bidirectional:  # strictly future inputs: h_t = Ā(Δ_{t+1}) h_{t+1} + B̄(Δ_{t+1}) u_{t+1}
            x_next = jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)
            if segment_ids is not None:  # the future of a sequence ends with it
                x_next = jnp.where(same_as_next(segment_ids)[..., None], x_next, jnp.zeros((), x.dtype))
            y = y + 2.0 * jnp.real(jnp.einsum("dn,bldn->bld", Cs[1], run(x_next, next_step(delta), True)))
        return y + x * f32(self.D)[None, None]

    def state_spec(self, batch_size: int):
        """``x (B, D, N/2)`` complex64 (the conjugate half of the state)."""
        return jax.ShapeDtypeStruct((batch_size, self.d_model, self.options.d_state // 2), jnp.complex64)

    def init_state(self, batch_size: int):
        """``x (B, D, N/2)`` complex64 zeros (the conjugate half of the state)."""
        check_batch_size("S4", batch_size)
        check_causal("S4", self.options.bidirectional)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; O(D·N·rank) per token; ``dt_t (B,)``: elapsed time
        before this sample."""
        check_token("S4", x_t, self.d_model)
        check_dt_scale("S4", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("S4.step", dt_t, x_t.shape[:1], name="dt_t")
        check_causal("S4", self.options.bidirectional)
        check_state("S4", state, self.state_spec(x_t.shape[0]))
        x_t = x_t.astype(self.dtype).astype(jnp.float32)
        Lam, P, B = self.dplr()
        delta = self.dt(dt_scale) if dt_t is None else dt_t[:, None] * self.dt(dt_scale)[None]  # (D,) | (B, D)
        s = _dplr_bilinear_step(Lam, P, B, delta, state, x_t)
        y = 2.0 * jnp.real(jnp.einsum("dn,bdn->bd", self._Cs()[0], s)) + x_t * f32(self.D)[None]
        return s, y.astype(self.dtype)


# Private adapter (``ssm`` has no DPLR recurrence step yet; it belongs in ``ssm/`` next to ``dplr_kernel``).
def _dplr_bilinear_step(Lam, P, B, dt, x, u):
    """One bilinear step of the conjugate-closed DPLR system on its conjugate half, in O(N·rank).

    ``Lam, B (D, H)``, ``P (D, r, H)`` complex, ``dt (D,)`` or per sequence ``(Bt, D)``, state ``x (Bt, D, H)``,
    input ``u (Bt, D)``. With A = diag(Λ_f) − P_f P_fᴴ and a conjugate-symmetric state, P_fᴴ x_f = 2 Re(Pᴴ x) is
    real. Solves (I − Δ/2 A) x' = (I + Δ/2 A) x + Δ B u by Woodbury: M = diag(d) + (Δ/2) P_f P_fᴴ,
    d = 1 − Δ/2 Λ, M⁻¹v = v/d − (P/d) G⁻¹ P_fᴴ(v/d),  G = (2/Δ) I + P_fᴴ diag(d)⁻¹ P_f  (real r×r).
    """
    dt = jnp.broadcast_to(dt, (x.shape[0], Lam.shape[0]))  # (Bt, D)
    half = (0.5 * dt).astype(jnp.complex64)[..., None]  # (Bt, D, 1)
    proj = lambda v: 2.0 * jnp.real(jnp.einsum("drn,bdn->bdr", jnp.conj(P), v))  # noqa: E731  P_fᴴ v_f
    Ax = Lam[None] * x - jnp.einsum("drn,bdr->bdn", P, proj(x).astype(jnp.complex64))
    v = x + half * Ax + dt.astype(jnp.complex64)[..., None] * B[None] * u.astype(jnp.complex64)[..., None]
    d = 1.0 - half * Lam[None]  # (Bt, D, H)
    r = P.shape[1]
    Pd = P[None] / d[:, :, None]  # (Bt, D, r, H)
    G = (2.0 / dt)[..., None, None] * jnp.eye(r, dtype=jnp.float32) + 2.0 * jnp.real(
        jnp.einsum("din,bdjn->bdij", jnp.conj(P), Pd)
    )  # (Bt, D, r, r)
    w = v / d
    z = jnp.einsum("bdij,bdj->bdi", jnp.linalg.inv(G), proj(w))  # (Bt, D, r)
    return w - jnp.einsum("bdrn,bdr->bdn", Pd, z.astype(jnp.complex64))
