"""``HiPPORNN``: a gated RNN with a HiPPO memory cell (Gu, Dao, Ermon, Rudra & Ré 2020, "HiPPO: Recurrent Memory
with Optimal Polynomial Projections", §3 and the HiPPO-RNN of its experiments).

    h_t = GRU(h_{t-1}, [x_t, c_{t-1}])                      gated hidden state (B, D)
    f_t = W_f h_t                                            memory input (B, M)
    c_t = Ā_t c_{t-1} + B̄_t f_t                             HiPPO projection of f, order N per memory channel
    y_t = h_t

Memory (``ssm.hippo.transition(measure, N)``, bilinear, ``ssm.discretize.bilinear``):
``measure="legs"`` is scale-invariant, c'(t) = (1/t)(A c + B f): at step k (0-based) Δ_k = 1/(k+1), so the
memory covers the whole history (HiPPO §3, discretised by GBT); ``"legt"`` / ``"lagt"`` are time-invariant with
Δ = ``dt`` · dt_scale. The recurrence is nonlinear, so ``__call__`` is a ``lax.scan`` over the same cell as
``step`` (transition matrices for all steps computed up front); ``step`` carries the step counter.
Shape legend: B batch · L length · D channels (d_model, also the hidden size) · N d_state · M memory_d.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from algornn import ssm
from algornn.layers._options import (build_options, check_batch_size, check_choice, check_dt_scale, check_float,
                             check_int, check_sequence, check_token)


@dataclasses.dataclass(frozen=True)
class HiPPORNNOptions:
    d_state: int = 32
    measure: str = "legs"
    memory_d: int = 1
    dt: float = 0.01                   # step size of the time-invariant measures (legt, lagt)
    bidirectional: bool = False

    def __post_init__(self):
        check_int("d_state", self.d_state)
        check_choice("measure", self.measure, ("legs", "legt", "lagt"))
        check_int("memory_d", self.memory_d)
        check_float("dt", self.dt)
        check_choice("bidirectional", self.bidirectional, (False,))   # a nonlinear causal cell


class HiPPORNN(nnx.Module):
    """GRU driven by a HiPPO memory. Options: see :class:`HiPPORNNOptions`."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, **options):
        check_int("d_model", d_model)
        opt = build_options(HiPPORNNOptions, "HiPPORNN", options)
        self.options, self.d_model = opt, d_model
        M, N = opt.memory_d, opt.d_state
        self.gates_in = nnx.Linear(d_model + M * N, 3 * d_model, rngs=rngs)            # z, r, n from [x, c]
        self.gates_h = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)      # z, r, n from h
        self.W_f = nnx.Linear(d_model, M, use_bias=False, rngs=rngs)

    def transitions(self, t, dt_scale: float = 1.0):
        """``(Ā (..., N, N), B̄ (..., N))`` for 0-based steps ``t`` (int array, any shape)."""
        A, B = ssm.hippo.transition(self.options.measure, self.options.d_state)
        # the barrier keeps XLA from constant-folding L dense solves of these numpy constants at compile time
        A, B = jax.lax.optimization_barrier((jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)))
        if self.options.measure == "legs":
            dt = 1.0 / (jnp.asarray(t, jnp.float32) + 1.0)
        else:
            dt = jnp.full(jnp.shape(t), self.options.dt * dt_scale, jnp.float32)
        return ssm.discretize.bilinear(A, B, dt)

    def _cell(self, state, inp):
        """``state = (c (B, M, N), h (B, D))``, ``inp = (x_t (B, D), Ā_t (N, N), B̄_t (N,))``."""
        c, h = state
        x_t, Abar, Bbar = inp
        gi = self.gates_in(jnp.concatenate([x_t, c.reshape(c.shape[0], -1)], axis=-1))
        gh = self.gates_h(h)
        zi, ri, ni = jnp.split(gi, 3, axis=-1)
        zh, rh, nh = jnp.split(gh, 3, axis=-1)
        z, r = jax.nn.sigmoid(zi + zh), jax.nn.sigmoid(ri + rh)
        h = (1.0 - z) * jnp.tanh(ni + r * nh) + z * h
        f = self.W_f(h)                                                                  # (B, M)
        c = jnp.einsum("nk,bmk->bmn", Abar, c) + f[..., None] * Bbar[None, None]
        return (c, h), h

    def __call__(self, x, *, dt_scale: float = 1.0):
        """``x (B, L, D) -> (B, L, D)``: a ``lax.scan`` of the cell."""
        check_sequence("HiPPORNN", x, self.d_model)
        check_dt_scale("HiPPORNN", dt_scale)
        x = x.astype(jnp.float32)
        Abar, Bbar = self.transitions(jnp.arange(x.shape[1]), dt_scale)                 # (L, N, N), (L, N)
        state = self.init_state(x.shape[0])[:2]
        _, ys = jax.lax.scan(self._cell, state, (jnp.moveaxis(x, 1, 0), Abar, Bbar))
        return jnp.moveaxis(ys, 0, 1)

    def init_state(self, batch_size: int):
        """``(c (B, memory_d, N), h (B, D), t ())``: memory, hidden state and the 0-based step counter."""
        check_batch_size("HiPPORNN", batch_size)
        return (jnp.zeros((batch_size, self.options.memory_d, self.options.d_state), jnp.float32),
                jnp.zeros((batch_size, self.d_model), jnp.float32), jnp.zeros((), jnp.int32))

    def step(self, state, x_t, *, dt_scale: float = 1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``."""
        check_token("HiPPORNN", x_t, self.d_model)
        check_dt_scale("HiPPORNN", dt_scale)
        c, h, t = state
        Abar, Bbar = self.transitions(t, dt_scale)
        (c, h), y = self._cell((c, h), (x_t.astype(jnp.float32), Abar, Bbar))
        return (c, h, t + 1), y
