"""``LMU``: Legendre Memory Unit (Voelker, Kajić & Eliasmith 2019; keras-lmu ``LMUCell``).

A linear Legendre memory of window θ (time steps) driving a nonlinear hidden cell:

    u_t = e_x x_t [+ e_h h_{t-1} if hidden_to_memory] [+ e_m m_{t-1} if memory_to_memory]     (B, memory_d)
    m_t = Ā m_{t-1} + B̄ u_t     (each of the memory_d channels, order Legendre coefficients)
          Ā, B̄ = zoh | euler (A/θ, B/θ, Δ) with (A, B) = ``ssm.hippo.transition("lmu", order)``, Δ = dt_scale
    h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t + b)   hidden_cell="rnn"   (W_h h_{t-1} dropped for "dense")
    y_t = h_t                                                                                  (B, D)

When the memory does not depend on the hidden state or itself (``hidden_to_memory = memory_to_memory = False``,
the default) ``__call__`` computes all memories in parallel, as a causal FFT convolution of u with the memory's
impulse response ``H_l = Ā^l B̄`` (``ssm.kernels.dense_kernel`` with C = I, ``causal_conv``; keras-lmu
``LMUFeedforward``); then the hidden cell is a ``lax.scan`` ("rnn") or pointwise ("dense"). Otherwise the
whole cell is one ``lax.scan``. ``d_state`` is an alias of ``order``. θ is fixed (not trained).
Irregular sampling: ``dt (B, L)`` (``dt_t (B,)`` in ``step``) gives Δ_{b,t} = dt[b, t] · dt_scale and one
discretised memory system per step and sequence (a dense (order+1)² matrix exponential each for ZOH, so keep
``order`` moderate); the parallel memory then runs on ``scan_kernels.dense_linear_scan`` instead of the FFT.
Packed sequences (``segment_ids (B, L)``, 0 = padding; docs/layers.md §Packed sequences): the FFT convolution would
reach across sequence boundaries, so the parallel memory runs on ``dense_linear_scan`` with ``segment_ids``, and the
cell scans set their state back to zero where a sequence starts; padding positions output 0.
Constructor: ``LMU(d_model, *, order=None, d_state=None, theta=100.0, memory_d=1, hidden_cell="rnn",
hidden_to_memory=False, memory_to_memory=False, discretization="zoh", bidirectional=False, dtype=jnp.float32,
param_dtype=jnp.float32, rngs)`` (one docstring line per option in the class).
Shape legend: B batch · L length · D channels (d_model, also the hidden size) · N order · M memory_d.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (
    check_batch_size,
    check_bool,
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
from algornn.scan_kernels import dense_linear_scan
from algornn.scan_kernels._common.packing import segment_masks


@dataclasses.dataclass(frozen=True)
class LMUOptions:
    """The validated options of an :class:`LMU` layer (``layer.options``)."""

    order: int | None = None  # None: d_state, else 64
    d_state: int | None = None  # alias of order (the SSM-mixer contract)
    theta: float = 100.0
    memory_d: int = 1
    hidden_cell: str = "rnn"
    hidden_to_memory: bool = False
    memory_to_memory: bool = False
    discretization: str = "zoh"
    bidirectional: bool = False

    def __post_init__(self):
        for name in ("order", "d_state"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if None not in (self.order, self.d_state) and self.order != self.d_state:
            raise ValueError(f"order={self.order} and d_state={self.d_state} are aliases; give one of them")
        check_float("theta", self.theta)
        check_int("memory_d", self.memory_d)
        check_choice("hidden_cell", self.hidden_cell, ("rnn", "dense"))
        check_bool("hidden_to_memory", self.hidden_to_memory)
        check_bool("memory_to_memory", self.memory_to_memory)
        check_choice("discretization", self.discretization, ("zoh", "euler"))
        check_not_bidirectional("LMU", self.bidirectional)

    @property
    def n(self) -> int:
        return self.order or self.d_state or 64


class LMU(nnx.Module):
    """Legendre Memory Unit: a linear Legendre memory of window θ driving a tanh cell, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D (also the hidden size).
        order: Legendre order N of the memory (None: ``d_state``, else 64).
        d_state: alias of ``order`` (give one of them).
        theta: memory window θ in time steps (fixed, not trained).
        memory_d: number M of memory channels.
        hidden_cell: "rnn" (h_t = tanh(W_x x + W_h h_{t-1} + W_m m + b)) or "dense" (no W_h h_{t-1}).
        hidden_to_memory: feed h_{t-1} into the memory input (then the whole cell is one sequential scan).
        memory_to_memory: feed m_{t-1} into the memory input (then the whole cell is one sequential scan).
        discretization: "zoh" or "euler".
        bidirectional: must be False: the hidden cell is a nonlinear recurrence with no anti-causal form.
        dtype: compute dtype of the projections, inputs and outputs; the memory runs in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__(x, *, dt_scale=1.0)`` and ``step(state, x_t, *, dt_scale=1.0)`` use Δ = dt_scale (θ stays in
    units of the original step); ``dt_scale`` is a positive scalar and may be traced under ``jit``. Irregularly
    sampled input: ``__call__(x, dt=dt)`` with ``dt (B, L)`` the positive time before each sample in grid steps
    (Δ_t = dt_t · dt_scale), ``step(state, x_t, dt_t=dt_t)`` with ``dt_t (B,)``. Packed sequences:
    ``__call__(x, segment_ids=ids)`` with ``ids (B, L)`` int (0 = padding); padding positions output 0.
    """

    def __init__(
        self,
        d_model: int,
        *,
        order: int | None = None,
        d_state: int | None = None,
        theta: float = 100.0,
        memory_d: int = 1,
        hidden_cell: str = "rnn",
        hidden_to_memory: bool = False,
        memory_to_memory: bool = False,
        discretization: str = "zoh",
        bidirectional: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(LMUOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("LMU", dtype, param_dtype)
        self.options, self.d_model = opt, d_model
        M, N = opt.memory_d, opt.n
        lin = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.encoder_x = nnx.Linear(d_model, M, use_bias=False, **lin)
        if opt.hidden_to_memory:
            self.encoder_h = nnx.Linear(d_model, M, use_bias=False, **lin)
        if opt.memory_to_memory:
            self.encoder_m = nnx.Linear(M * N, M, use_bias=False, **lin)
        self.W_x = nnx.Linear(d_model, d_model, **lin)
        self.W_m = nnx.Linear(M * N, d_model, use_bias=False, **lin)
        if opt.hidden_cell == "rnn":
            self.W_h = nnx.Linear(d_model, d_model, use_bias=False, **lin)

    @property
    def _parallel(self) -> bool:
        return not (self.options.hidden_to_memory or self.options.memory_to_memory)

    def _system(self, dt_scale, elapsed=None):
        A, B = ssm.hippo.transition("lmu", self.options.n)
        # the barrier keeps XLA from constant-folding the matrix exponential / powers at compile time
        A, B = jax.lax.optimization_barrier((jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)))
        delta = jnp.asarray(dt_scale, jnp.float32) / jnp.float32(self.options.theta)
        return A, B, delta if elapsed is None else elapsed * delta

    def discretized(self, dt_scale=1.0, elapsed=None):
        """``(Ā (N, N), B̄ (N,))`` of the Legendre memory (θ in time steps); ``(..., N, N), (..., N)`` for
        per-step ``elapsed (...)`` times."""
        return ssm.discretize.dense(self.options.discretization, *self._system(dt_scale, elapsed))

    def impulse_response(self, L: int, dt_scale=1.0):
        """``H (N, L)`` with ``H[:, l] = Ā^l B̄``."""
        A, B, dt = self._system(dt_scale)
        return ssm.kernels.dense_kernel(
            A, B, jnp.eye(self.options.n, dtype=jnp.float32), dt, L, self.options.discretization
        )

    def _hidden(self, pre, h):
        """``pre = W_x x + W_m m + b`` (dtype); the hidden nonlinearity; returns float32 ``h``."""
        if self.options.hidden_cell == "rnn":
            pre = pre + self.W_h(h.astype(self.dtype))
        return jnp.tanh(pre).astype(jnp.float32)

    def _cell(self, Abar, Bbar, state, x_t):
        """The full cell (any wiring): ``x_t (B, D)`` in dtype, state ``(m (B, M, N), h (B, D))`` float32."""
        m, h = state
        u = self.encoder_x(x_t)
        if self.options.hidden_to_memory:
            u = u + self.encoder_h(h.astype(self.dtype))
        if self.options.memory_to_memory:
            u = u + self.encoder_m(m.reshape(m.shape[0], -1).astype(self.dtype))
        if Abar.ndim == 3:  # one system per sequence (irregular sampling): Ā (B, N, N), B̄ (B, N)
            m = jnp.einsum("bnk,bmk->bmn", Abar, m) + u.astype(jnp.float32)[..., None] * Bbar[:, None]
        else:
            m = jnp.einsum("nk,bmk->bmn", Abar, m) + u.astype(jnp.float32)[..., None] * Bbar[None, None]
        h = self._hidden(self.W_x(x_t) + self.W_m(m.reshape(m.shape[0], -1).astype(self.dtype)), h)
        return (m, h), h

    def __call__(self, x, *, dt_scale=1.0, dt=None, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``dt (B, L)``: elapsed time before each sample;
        ``segment_ids (B, L)``: packed sequences (0 = padding)."""
        check_sequence("LMU", x, self.d_model)
        check_dt_scale("LMU", dt_scale)
        if dt is not None:
            dt = check_dt("LMU", dt, x.shape[:2])
        if segment_ids is not None:
            segment_ids = check_segment_ids("LMU", segment_ids, x.shape[:2])
        return mask_padding(self._sequence(x.astype(self.dtype), dt_scale, dt, segment_ids), segment_ids)

    def _sequence(self, x, dt_scale, dt, segment_ids):
        Bsz, L, _ = x.shape
        # packed sequences: the scans over the cell restart from the zero state where a sequence starts
        starts = None if segment_ids is None else jnp.moveaxis(segment_masks(segment_ids)[0], 1, 0)  # (L, B)

        def restart(state, start_t, zero):
            if start_t is None:
                return state
            return jax.tree.map(lambda s, z: jnp.where(start_t.reshape((-1,) + (1,) * (s.ndim - 1)), z, s), state, zero)

        if not self._parallel:
            zero = self.init_state(Bsz)
            if dt is None:
                Abar, Bbar = self.discretized(dt_scale)
                _, ys = jax.lax.scan(
                    lambda s, inp: self._cell(Abar, Bbar, restart(s, inp[1], zero), inp[0]),
                    zero,
                    (jnp.moveaxis(x, 1, 0), starts),
                )
            else:
                Abar, Bbar = self.discretized(dt_scale, dt)  # (B, L, N, N), (B, L, N)
                _, ys = jax.lax.scan(
                    lambda s, inp: self._cell(inp[1], inp[2], restart(s, inp[3], zero), inp[0]),
                    zero,
                    (jnp.moveaxis(x, 1, 0), jnp.moveaxis(Abar, 1, 0), jnp.moveaxis(Bbar, 1, 0), starts),
                )
            return jnp.moveaxis(ys, 0, 1).astype(self.dtype)
        M, N = self.options.memory_d, self.options.n
        u = self.encoder_x(x).astype(jnp.float32)  # (B, L, M)
        if segment_ids is not None:  # the memory on dense_linear_scan, each sequence from zero
            Abar, Bbar = self.discretized(dt_scale, dt)  # (N, N), (N,) | (B, L, N, N), (B, L, N)
            b = jnp.moveaxis(u, 2, 1)[..., None] * (Bbar[None, None, None] if dt is None else Bbar[:, None])
            seg = jnp.broadcast_to(segment_ids[:, None], (Bsz, M, L))  # (B, M, L)
            m = dense_linear_scan(Abar if dt is None else Abar[:, None], b, segment_ids=seg)  # (B, M, L, N)
            m = jnp.moveaxis(m, 1, 2).reshape(Bsz, L, M * N)
        elif dt is None:
            H = self.impulse_response(L, dt_scale)  # (N, L)
            u_rep = jnp.broadcast_to(u[..., None], (Bsz, L, M, N)).reshape(Bsz, L, M * N)
            m = ssm.kernels.causal_conv(u_rep, jnp.tile(H, (M, 1)))  # (B, L, M·N)
        else:  # time-varying memory: m_t = Ā_t m_{t-1} + B̄_t u_t on dense_linear_scan, per memory channel
            Abar, Bbar = self.discretized(dt_scale, dt)  # (B, L, N, N), (B, L, N)
            b = jnp.moveaxis(u, 2, 1)[..., None] * Bbar[:, None]  # (B, M, L, N)
            m = dense_linear_scan(Abar[:, None], b)  # (B, M, L, N)
            m = jnp.moveaxis(m, 1, 2).reshape(Bsz, L, M * N)
        pre = self.W_x(x) + self.W_m(m.astype(self.dtype))
        if self.options.hidden_cell == "dense":
            return jnp.tanh(pre).astype(self.dtype)

        h0 = jnp.zeros((Bsz, self.d_model), jnp.float32)

        def body(h, inp):
            h = self._hidden(inp[0], restart(h, inp[1], h0))
            return h, h

        _, ys = jax.lax.scan(body, h0, (jnp.moveaxis(pre, 1, 0), starts))
        return jnp.moveaxis(ys, 0, 1).astype(self.dtype)

    def state_spec(self, batch_size: int):
        """``(m (B, memory_d, order), h (B, D))`` float32."""
        return (
            jax.ShapeDtypeStruct((batch_size, self.options.memory_d, self.options.n), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, self.d_model), jnp.float32),
        )

    def init_state(self, batch_size: int):
        """``(m (B, memory_d, order), h (B, D))`` float32 zeros."""
        check_batch_size("LMU", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before this sample."""
        check_token("LMU", x_t, self.d_model)
        check_dt_scale("LMU", dt_scale)
        if dt_t is not None:
            dt_t = check_dt("LMU.step", dt_t, x_t.shape[:1], name="dt_t")
        check_state("LMU", state, self.state_spec(x_t.shape[0]))
        Abar, Bbar = self.discretized(dt_scale, dt_t)
        state, h = self._cell(Abar, Bbar, state, x_t.astype(self.dtype))
        return state, h.astype(self.dtype)
