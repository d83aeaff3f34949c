"""``HiPPORNN``: a gated RNN with a HiPPO memory cell (Gu, Dao, Ermon, Rudra & Ré 2020, "HiPPO: Recurrent Memory
with Optimal Polynomial Projections", §3 and the HiPPO-RNN of its experiments).

    h_t = GRU(h_{t-1}, [x_t, c_{t-1}])                      gated hidden state (B, D)
    f_t = W_f h_t                                            memory input (B, M)
    c_t = Ā_t c_{t-1} + B̄_t f_t                             HiPPO projection of f, order N per memory channel
    y_t = h_t

Memory (``ssm.hippo.transition(measure, N)``, bilinear, ``ssm.discretize.bilinear``):
``measure="legs"`` is scale-invariant, c'(t) = (1/t)(A c + B f): at step k (0-based) Δ_k = 1/(k+1), so the
memory covers the whole history (HiPPO §3, discretised by GBT); it is timescale-invariant, so ``dt_scale`` (the
sampling-rate change Δ → s·Δ, which also puts step k at time (k+1)·s) leaves Δ/t = 1/(k+1) and the output
unchanged.
``"legt"`` / ``"lagt"`` are time-invariant with Δ = ``dt`` · dt_scale. The recurrence is nonlinear, so
``__call__`` is a ``lax.scan`` over the same cell as ``step`` (transition matrices for all steps computed up
front); ``step`` carries the elapsed time t (in grid steps, per sequence).
Irregular sampling: per-step elapsed times ``dt (B, L)`` (``dt_t (B,)`` in ``step``, the argument of
``__call__``; the constructor option ``dt`` is the legt/lagt step size). LegS then uses Δ_k / t_k =
dt_k / (dt_0 + ... + dt_k), its exact time since the start (all ones: 1/(k+1)); legt/lagt use Δ_k = dt_k · ``dt``
· dt_scale.
Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): the cell's state ``(c, h)``
is set back to zero where a sequence starts, and LegS counts its steps (its time, with ``dt``) from each sequence's
start, so every sequence runs as if alone; padding positions output 0.
Constructor: ``HiPPORNN(d_model, *, d_state=32, measure="legs", memory_d=1, dt=0.01, bidirectional=False,
dtype=jnp.float32, param_dtype=jnp.float32, rngs)`` (one docstring line per option in the class).
Shape legend: B batch · L length · D channels (d_model, also the hidden size) · N d_state · M memory_d.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (
    check_batch_size,
    check_choice,
    check_dt,
    check_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_not_bidirectional,
    check_segment_ids,
    check_sequence,
    check_state,
    check_token,
    mask_padding,
    record_options,
    zeros_of,
)
from algornn.scan_kernels._common.packing import position_in_segment, segment_masks


@dataclasses.dataclass(frozen=True)
class HiPPORNNOptions:
    """The validated options of a :class:`HiPPORNN` layer (``layer.options``)."""

    d_state: int = 32
    measure: str = "legs"
    memory_d: int = 1
    dt: float = 0.01  # step size of the time-invariant measures (legt, lagt)
    bidirectional: bool = False

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_choice("measure", self.measure, ("legs", "legt", "lagt"))
        check_int("memory_d", self.memory_d)
        check_float("dt", self.dt)
        check_not_bidirectional("HiPPORNN", self.bidirectional)


class HiPPORNN(nnx.Module):
    """GRU driven by a HiPPO memory of its own outputs, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D (also the hidden size).
        d_state: HiPPO order N of the memory.
        measure: "legs" (scale-invariant, whole history), "legt" or "lagt" (time-invariant, step ``dt``).
        memory_d: number M of memory channels.
        dt: step size Δ of the time-invariant measures "legt" and "lagt" (unused by "legs").
        bidirectional: must be False: the GRU cell is a nonlinear recurrence with no anti-causal form.
        dtype: compute dtype of the gates, inputs and outputs; the memory runs in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)``: legt/lagt use Δ = dt · dt_scale
    (``dt_scale`` may be traced under ``jit``). LegS is timescale-invariant (HiPPO Prop. 3): sampling every s time
    units puts step k at t = (k+1)s with Δ = s, so Δ/t = 1/(k+1) whatever s, and ``dt_scale`` (validated, accepted)
    leaves the output unchanged — exactly, not by omission.
    Irregularly sampled input: ``__call__(x, dt=elapsed)`` with ``elapsed (B, L)`` the positive time before each
    sample in grid steps (not the ``dt`` option: that is the legt/lagt step size), ``step(..., dt_t=...)`` with
    ``(B,)``; LegS uses Δ_k/t_k = dt_k / Σ_{j<=k} dt_j. Packed sequences: ``__call__(x, segment_ids=ids)`` with
    ``ids (B, L)`` int (0 = padding); padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 32,
        measure: str = "legs",
        memory_d: int = 1,
        dt: float = 0.01,
        bidirectional: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(HiPPORNNOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("HiPPORNN", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        M, N = opt.memory_d, opt.d_state
        lin = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.gates_in = nnx.Linear(d_model + M * N, 3 * d_model, **lin)  # z, r, n from [x, c]
        self.gates_h = nnx.Linear(d_model, 3 * d_model, use_bias=False, **lin)  # z, r, n from h
        self.W_f = nnx.Linear(d_model, M, use_bias=False, **lin)

    def transitions(self, t, dt_scale=1.0, elapsed=None):
        """``(Ā (..., N, N), B̄ (..., N))`` for 0-based steps ``t`` (int array, any shape); with per-step
        ``elapsed`` times (the shape of ``t``), step k covers the gap ``elapsed[k]`` ending at time ``t[k]`` (then
        ``t`` is the float time since the start, ``elapsed`` included)."""
        A, B = ssm.hippo.transition(self.options.measure, self.options.d_state)
        # the barrier keeps XLA from constant-folding L dense solves of these numpy constants at compile time
        A, B = jax.lax.optimization_barrier((jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)))
        if self.options.measure == "legs":
            # Δ / t with Δ = dt_scale, t = (k + 1)·dt_scale: the scale cancels (module docstring)
            if elapsed is None:
                dt = 1.0 / (jnp.asarray(t, jnp.float32) + 1.0)
            else:
                dt = elapsed / jnp.asarray(t, jnp.float32)
        else:
            dt = jnp.full(jnp.shape(t), self.options.dt, jnp.float32) * jnp.asarray(dt_scale, jnp.float32)
            if elapsed is not None:
                dt = elapsed * dt
        return ssm.discretize.bilinear(A, B, dt)

    def _cell(self, state, inp):
        """``state = (c (B, M, N), h (B, D))`` float32, ``inp = (x_t (B, D) dtype, Ā_t (N, N), B̄_t (N,))``."""
        c, h = state
        x_t, Abar, Bbar = inp
        gi = self.gates_in(jnp.concatenate([x_t, c.reshape(c.shape[0], -1).astype(self.dtype)], axis=-1))
        gh = self.gates_h(h.astype(self.dtype))
        zi, ri, ni = jnp.split(gi.astype(jnp.float32), 3, axis=-1)
        zh, rh, nh = jnp.split(gh.astype(jnp.float32), 3, axis=-1)
        z, r = jax.nn.sigmoid(zi + zh), jax.nn.sigmoid(ri + rh)
        h = (1.0 - z) * jnp.tanh(ni + r * nh) + z * h
        f = self.W_f(h.astype(self.dtype)).astype(jnp.float32)  # (B, M)
        if Abar.ndim == 3:  # one transition per sequence (irregular sampling): Ā (B, N, N), B̄ (B, N)
            c = jnp.einsum("bnk,bmk->bmn", Abar, c) + f[..., None] * Bbar[:, None]
        else:
            c = jnp.einsum("nk,bmk->bmn", Abar, c) + f[..., None] * Bbar[None, None]
        return (c, h), h

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``: a ``lax.scan`` of the cell; ``dt (B, L)``: elapsed time
        before each sample (irregular sampling); ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("HiPPORNN", x, self.d_model)
        check_dt_scale("HiPPORNN", dt_scale)
        x = x.astype(self.dtype)
        if dt is not None:
            dt = check_dt("HiPPORNN", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("HiPPORNN", segment_ids, x.shape[:2])
            return mask_padding(self._packed(x, dt_scale, dt, segment_ids), segment_ids)
        if dt is None:
            Abar, Bbar = self.transitions(jnp.arange(x.shape[1]), dt_scale)  # (L, N, N), (L, N)
        else:
            Abar, Bbar = self.transitions(jnp.cumsum(dt, axis=1), dt_scale, dt)  # (B, L, N, N), (B, L, N)
            Abar, Bbar = jnp.moveaxis(Abar, 1, 0), jnp.moveaxis(Bbar, 1, 0)
        state = self.init_state(x.shape[0])[:2]
        _, ys = jax.lax.scan(self._cell, state, (jnp.moveaxis(x, 1, 0), Abar, Bbar))
        return jnp.moveaxis(ys, 0, 1).astype(self.dtype)

    def _packed(self, x, dt_scale, dt, segment_ids):
        """Packed sequences: LegS's step (or time) counted from each sequence's start, the state reset there."""
        start, _ = segment_masks(segment_ids)
        if dt is None:
            if self.options.measure == "legs":  # step k of its own sequence
                Abar, Bbar = self.transitions(position_in_segment(segment_ids), dt_scale)  # (B, L, N, N), (B, L, N)
            else:  # time-invariant: one transition for every step
                Abar, Bbar = self.transitions(jnp.zeros(x.shape[:2], jnp.int32), dt_scale)
        else:  # time since the sequence's start: the running sum of dt minus its value before that start
            total = jnp.cumsum(dt, axis=1)
            before = jax.lax.cummax(jnp.where(start, total - dt, 0.0), axis=1)  # non-decreasing: dt > 0
            Abar, Bbar = self.transitions(total - before, dt_scale, dt)
        zero = self.init_state(x.shape[0])[:2]

        def body(state, inp):
            x_t, A_t, B_t, start_t = inp
            state = tuple(jnp.where(start_t.reshape((-1,) + (1,) * (s.ndim - 1)), z, s) for s, z in zip(state, zero))
            return self._cell(state, (x_t, A_t, B_t))

        inputs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, Abar, Bbar, start))
        _, ys = jax.lax.scan(body, zero, inputs)
        return jnp.moveaxis(ys, 0, 1).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``(c (B, memory_d, N), h (B, D), t (B,))`` float32: memory, hidden state, elapsed time (grid steps)."""
        return (
            jax.ShapeDtypeStruct((batch_size, self.options.memory_d, self.options.d_state), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, self.d_model), jnp.float32),
            jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        )

    def init_state(self, batch_size: int):
        """``(c (B, memory_d, N), h (B, D), t (B,))``: memory, hidden state and the time since the start (0; one
        per token on the regular grid, so the k-th step, 0-based, is at t = k + 1)."""
        check_batch_size("HiPPORNN", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("HiPPORNN", x_t, self.d_model)
        check_dt_scale("HiPPORNN", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("HiPPORNN.step", dt_t, x_t.shape[:1], name="dt_t")
        check_state("HiPPORNN", state, self.state_spec(x_t.shape[0]))
        c, h, t = state
        # the regular grid is dt_t = 1 (t then holds integers, exact in float32: LegS Δ/t = 1/(k+1))
        dt_t = jnp.ones_like(t) if dt_t is None else dt_t
        t = t + dt_t
        Abar, Bbar = self.transitions(t, dt_scale, dt_t)  # (B, N, N), (B, N)
        (c, h), y = self._cell((c, h), (x_t.astype(self.dtype), Abar, Bbar))
        return (c, h, t), y.astype(self.dtype)
