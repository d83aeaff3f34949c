"""Selective scan: the chunked XLA form, its ``custom_vjp`` and the public op.

Shape legend: B batch · L length · E channels · N state size · G groups · Eg = E / G channels per group ·
C chunk · NC = ceil(L / C) chunks.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) ⊗ B_t,      y_t = h_t C_t (+ D ⊙ u_t, ⊙ silu(z_t))

Mamba's hardware-aware scan (Gu & Dao 2023, §3.3.2 and Alg. 2) never writes the ``(B, L, E, N)`` states to main
memory: the state of a channel block lives in fast memory while the time loop runs, and the backward recomputes
it. The XLA form here does the same at the level of XLA buffers:

* **Forward.** A ``lax.scan`` over time (inputs time-major, ``(L, B, ·)``), carrying ``h (B, G, Eg, N)`` and
  emitting only ``y_t (B, E)``. Under differentiation the time axis is split into NC chunks of C steps (an
  outer ``lax.scan`` over chunks, an inner one over the steps of a chunk) and only the NC states entering the
  chunks are kept, ``(NC, B, E, N)``: 1/C of the per-token states.
* **Backward** (``custom_vjp``). A reverse ``lax.scan`` over chunks carries the state cotangent
  ``∂ℓ/∂h (B, G, Eg, N)`` and the accumulated ``∂ℓ/∂A``; each chunk recomputes its C states from its entering
  state and runs the reverse-time adjoint recurrence through them (written out, one fused step per token):

      g_t = ∂ℓ/∂h_t = dy_t ⊗ C_t + exp(Δ_{t+1} A) ⊙ g_{t+1}
      ∂ℓ/∂Δ_t = Σ_n g_t ⊙ (A ⊙ exp(Δ_t A) ⊙ h_{t-1} + u_t B_t),   ∂ℓ/∂u_t = Δ_t Σ_n g_t B_t
      ∂ℓ/∂B_t = Σ_{e in group} g_t (Δ_t u_t),   ∂ℓ/∂C_t = Σ_{e in group} dy_t h_t,
      ∂ℓ/∂A  += Σ_{b,t} g_t Δ_t exp(Δ_t A) h_{t-1}

  Peak memory O(B·L·(E + G·N) + NC·B·E·N + C·B·E·N) instead of O(B·L·E·N).

``D`` and the gate ``z`` are elementwise on ``(B, L, E)`` and stay outside the ``custom_vjp`` (JAX autodiff);
``reverse`` flips time outside it. The Pallas forward (``pallas.py``) shares this backward.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.backend import check_backend, probe_key, resolve_backend
from algornn.scan_kernels._common.packing import check_segment_ids_shape, segment_masks
from algornn.scan_kernels._common.validate import check_bool, check_int
from algornn.scan_kernels._selective_scan.reference import check_inputs, readout, selective_scan_reference

# Default chunk length C: the forward keeps NC = L / C states per sequence, the backward C states per chunk.
CHUNK_SIZE = 64


def _time_major(x, nc, C):
    """``(B, NC·C, ...)`` -> ``(NC, C, B, ...)``."""
    x = x.reshape((x.shape[0], nc, C) + x.shape[2:])
    return jnp.moveaxis(x, 0, 2)


def _batch_major(x):
    """``(NC, C, B, ...)`` -> ``(B, NC·C, ...)``."""
    x = jnp.moveaxis(x, 2, 0)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _restart(h, x, h0):
    """Packed sequences: the state a step reads, ``h`` where ``keep`` (the last entry of ``x`` when there are
    ``n + 1`` of them) holds, else ``h0`` (a sequence starts here). A select, so nothing leaks between sequences."""
    return jnp.where(x[-1][:, None, None, None], h, h0)


def _chunk(h, A, xs, h0=None):
    """The recurrence over the steps of ``xs = (u, Δ (T, B, E), B, C (T, B, G, N)[, keep (T, B)])`` from
    ``h (B, G, Eg, N)`` with ``A (G, Eg, N)``: returns the last state and ``y (T, B, E)`` (Alg. 2, lines 5–6, one
    step at a time). With ``keep`` (packed sequences) a step where it is False starts from ``h0`` instead."""
    Bsz, G, Eg, N = h.shape

    def step(h, x):
        u_t, d_t, b_t, c_t = x[:4]
        if len(x) == 5:
            h = _restart(h, x, h0)
        d = d_t.reshape(Bsz, G, Eg, 1)
        h = jnp.exp(d * A[None]) * h + (d * u_t.reshape(Bsz, G, Eg, 1)) * b_t[:, :, None, :]
        y = jnp.einsum("bgen,bgn->bge", h, c_t).reshape(Bsz, G * Eg)
        return h, y

    return lax.scan(step, h, xs)


def _forward_states(h0, A, xs):
    """Chunked forward on time-major chunks ``xs (NC, C, B, ...)``: ``y (NC, C, B, E)``, the last state and
    the NC states entering the chunks ``(NC, B, G, Eg, N)``."""

    def outer(h, xs_c):
        h_out, y = _chunk(h, A, xs_c, h0)
        return h_out, (y, h)

    h_last, (y, h_in) = lax.scan(outer, h0, xs)
    return y, h_last, h_in


@partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _core(u, d, A, Bm, Cm, h0, keep, C, pallas):
    """``(y (B, Lp, E), h_last (B, G, Eg, N))`` on padded inputs ``u, d (B, Lp, E)``, ``A (G, Eg, N)``,
    ``Bm, Cm (B, Lp, G, N)``, ``h0 (B, G, Eg, N)``, ``keep (B, Lp)`` bool or None (packed sequences: where False
    the step starts from ``h0``); Lp a multiple of ``C``. ``pallas``: the forward by the Pallas kernel, else by
    XLA."""
    if pallas:
        from algornn.scan_kernels._selective_scan.pallas import selective_scan_pallas

        y, h_last, _ = selective_scan_pallas(u, d, A, Bm, Cm, h0, keep, C=C)
        return y, h_last
    seqs = (u, d, Bm, Cm) + (() if keep is None else (keep,))
    h_last, y = _chunk(h0, A, tuple(jnp.moveaxis(x, 1, 0) for x in seqs), h0)  # no chunk states needed
    return jnp.moveaxis(y, 0, 1), h_last


def _core_fwd(u, d, A, Bm, Cm, h0, keep, C, pallas):
    nc = u.shape[1] // C
    seqs = (u, d, Bm, Cm) + (() if keep is None else (keep,))
    xs = tuple(_time_major(x, nc, C) for x in seqs)
    if pallas:
        from algornn.scan_kernels._selective_scan.pallas import selective_scan_pallas

        y, h_last, h_in = selective_scan_pallas(u, d, A, Bm, Cm, h0, keep, C=C, states=True)
    else:
        y, h_last, h_in = _forward_states(h0, A, xs)
        y = _batch_major(y)
    return (y, h_last), (A, h_in, h0) + xs


def _chunk_states(h, A, xs, h0=None):
    """The states entering each step of a chunk, ``(T, B, G, Eg, N)`` (``h_{t-1}`` for step t, ``h0`` where a
    packed sequence starts), from ``h``; ``xs = (u, Δ, B[, keep])``."""
    Bsz, G, Eg, N = h.shape

    def step(h, x):
        u_t, d_t, b_t = x[:3]
        if len(x) == 4:
            h = _restart(h, x, h0)
        d = d_t.reshape(Bsz, G, Eg, 1)
        return jnp.exp(d * A[None]) * h + (d * u_t.reshape(Bsz, G, Eg, 1)) * b_t[:, :, None, :], h

    return lax.scan(step, h, xs)[1]


def _chunk_adjoint(g, dA, dh0, A, xs):
    """The reverse-time adjoint recurrence through one chunk (module docstring), from the cotangent ``g`` of the
    chunk's last state: returns the cotangent of its entering state, ``dA`` plus the chunk's share, ``dh0``
    plus the share of the packed sequences starting in the chunk (None unpacked), and ``du, dΔ (T, B, E)``,
    ``dB, dC (T, B, G, N)``. ``xs = (u, Δ, B, C, dy, h_prev[, keep])`` time-major."""
    Bsz, G, Eg, N = g.shape

    def step(carry, x):
        g, dA, dh0 = carry
        u_t, d_t, b_t, c_t, dy_t, h_prev = x[:6]
        d, u, dy = (v.reshape(Bsz, G, Eg) for v in (d_t, u_t, dy_t))
        a = jnp.exp(d[..., None] * A[None])
        ah = a * h_prev
        g = g + dy[..., None] * c_t[:, :, None, :]  # y_t = h_t C_t
        p = g * ah
        # The reductions as dot_generals: on the CPU they run several times faster than the equivalent sums.
        gb = jnp.einsum("bgen,bgn->bge", g, b_t)
        dd = jnp.einsum("bgen,gen->bge", p, A) + u * gb  # ∂/∂Δ_t of exp(Δ_t A) h_{t-1} + Δ_t u_t B_t
        db = jnp.einsum("bgen,bge->bgn", g, d * u)  # the channels of a group share B_t and C_t
        dc = jnp.einsum("bge,bgen->bgn", dy, ah + (d * u)[..., None] * b_t[:, :, None, :])  # dy_t h_t
        dA = dA + jnp.einsum("bgen,bge->gen", p, d)
        g = a * g  # the cotangent of the state step t read
        if len(x) == 7:  # packed: where a sequence starts, that state was h0, not h_{t-1}
            k = x[6][:, None, None, None]
            dh0 = dh0 + jnp.where(k, jnp.zeros_like(g), g)
            g = jnp.where(k, g, jnp.zeros_like(g))
        return (g, dA, dh0), ((d * gb).reshape(Bsz, G * Eg), dd.reshape(Bsz, G * Eg), db, dc)

    return lax.scan(step, (g, dA, dh0), xs, reverse=True)


def _core_bwd(C, pallas, res, cts):
    """Reverse scan over chunks: each chunk recomputes its states from its entering state, then runs the
    reverse-time adjoint recurrence through them (``_chunk_adjoint``). Memory: one chunk's states."""
    A, h_in, h0, xs = res[0], res[1], res[2], res[3:]
    packed = len(xs) == 5
    dy, dh = cts
    dy = _time_major(dy, h_in.shape[0], C)

    def outer(carry, xs_c):
        h, (u, d, b, c), k, dy_c = xs_c[0], xs_c[1:5], xs_c[5:-1], xs_c[-1]
        h_prev = _chunk_states(h, A, (u, d, b) + k, h0)
        return _chunk_adjoint(*carry, A, (u, d, b, c, dy_c, h_prev) + k)

    init = (dh, jnp.zeros_like(A), jnp.zeros_like(h0) if packed else None)
    (dh0, dA, dh0_starts), dxs = lax.scan(outer, init, (h_in,) + xs + (dy,), reverse=True)
    if packed:
        dh0 = dh0 + dh0_starts
    du, dd, dB, dC = (_batch_major(x) for x in dxs)
    return du, dd, dA, dB, dC, dh0, None


_core.defvjp(_core_fwd, _core_bwd)


@partial(jax.jit, static_argnames=("reverse", "C", "backend"))
def _selective_scan(u, delta, A, Bm, Cm, D, z, h0, segment_ids, *, reverse, C, backend):
    """On validated inputs in the compute dtype (``B, C (B, L, G, N)``); returns ``(y (B, L, E), h_last)``."""
    Bsz, L, E = u.shape
    N, G = A.shape[1], Bm.shape[2]
    Eg = E // G
    x = (u, delta, Bm, Cm)
    keep = pad_mask = None
    if segment_ids is not None:  # docs/ops.md §Packed sequences
        start, pad_mask = segment_masks(segment_ids, reverse=reverse)
        # padding: Δ = u = B = C = 0 is the identity step (exp(0·A) = 1), so the state carries through it
        padded = lambda v: pad_mask.reshape(pad_mask.shape + (1,) * (v.ndim - 2))  # noqa: E731
        x = tuple(jnp.where(padded(v), jnp.zeros((), v.dtype), v) for v in x)
        keep = ~start
    if reverse:  # h_t = exp(Δ_t A) h_{t+1} + ...: the forward recurrence on the time-reversed sequence
        x = tuple(jnp.flip(v, 1) for v in x)
        keep = None if keep is None else jnp.flip(keep, 1)
    pad = -(-L // C) * C - L  # padded steps have Δ = u = B = C = 0: exp(0·A) = 1 carries the state through
    x = tuple(jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2)) if pad else v for v in x)
    if keep is not None and pad:
        keep = jnp.pad(keep, ((0, 0), (0, pad)), constant_values=True)
    h0 = jnp.zeros((Bsz, G, Eg, N), u.dtype) if h0 is None else h0.reshape(Bsz, G, Eg, N)
    y, h_last = _core(*x[:2], A.reshape(G, Eg, N), *x[2:], h0, keep, C, backend == "pallas")
    y = y[:, :L]
    if reverse:
        y = jnp.flip(y, 1)
    y = readout(y, u, D, z)
    if pad_mask is not None:
        y = jnp.where(pad_mask[..., None], jnp.zeros((), y.dtype), y)
    return y, h_last.reshape(Bsz, E, N)


def _pallas_probe(u, A, Bm, C, packed):
    """Compile the Pallas forward for these shapes and dtypes; raises if it cannot run here."""
    from algornn.scan_kernels._selective_scan.pallas import selective_scan_pallas

    Bsz, L, E = u.shape
    N, G = A.shape[1], Bm.shape[2]
    Lp = -(-L // C) * C
    S = jax.ShapeDtypeStruct
    seq, grp = S((Bsz, Lp, E), u.dtype), S((Bsz, Lp, G, N), u.dtype)
    keep = S((Bsz, Lp), jnp.bool_) if packed else None
    f = jax.jit(partial(selective_scan_pallas, C=C, states=True))
    f.lower(seq, seq, S((G, E // G, N), u.dtype), grp, grp, S((Bsz, G, E // G, N), u.dtype), keep).compile()


def selective_scan(
    u, delta, A, B, C, *, D=None, z=None, h0=None, reverse=False, segment_ids=None, chunk_size=None, backend=None
):
    """Mamba's selective scan (S6; Gu & Dao 2023, Alg. 2) without the ``(B, L, E, N)`` states in memory.

        h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) ⊗ B_t,      y_t = h_t C_t + D ⊙ u_t,      y_t ← y_t ⊙ silu(z_t)

    Args:
      u: input ``(B, L, E)``; float32 or bfloat16 (float64 in x64 mode).
      delta: step sizes Δ ``(B, L, E)``, already positive (e.g. through a softplus).
      A: ``(E, N)``, real and negative (not checked; Mamba stores ``A = −exp(A_log)``).
      B, C: input and output maps ``(B, L, N)``, or ``(B, L, G, N)`` with G groups of E / G channels sharing
        them (Mamba-2's groups); G must divide E. One form for both.
      D: skip weight ``(E,)`` or None; z: gate ``(B, L, E)`` or None (``y ← y ⊙ silu(z)``).
      h0: the state before the first step ``(B, E, N)`` (after the last one when ``reverse``); default zeros.
      reverse: run from the end, ``h_t = exp(Δ_t A) ⊙ h_{t+1} + (Δ_t u_t) ⊗ B_t``.
      segment_ids: packed sequences, int ``(B, L)``, 0 = padding: each sequence runs from ``h0`` as if alone,
        padding steps leave the state as it is and output 0 (docs/ops.md §Packed sequences). None: unchanged.
      chunk_size: C, the steps between the states kept for the backward (default ``CHUNK_SIZE`` = 64, at most
        L). Memory of the differentiated call ~ B·E·N·(L/C + C) floats instead of B·L·E·N.
      backend: None (auto) | "reference" (``selective_scan_reference``, materialised) | "xla" | "pallas"
        (forward kernel, interpret mode off-GPU; the backward is the XLA one).

    Returns:
      ``(y (B, L, E), h_last (B, E, N))`` in the compute dtype (float32 for float32/bfloat16 inputs);
      ``h_last`` is the state after the last step (after step 0 when ``reverse``); with ``segment_ids`` that
      of the row's last sequence (padding after it leaves the state as it is).
    """
    reverse = check_bool("reverse", reverse)
    check_backend(backend)
    chunk = CHUNK_SIZE if chunk_size is None else check_int("chunk_size", chunk_size)
    u, delta, A, Bm, Cm, D, z, h0 = check_inputs(u, delta, A, B, C, D, z, h0)
    Bsz, L, E = u.shape
    if segment_ids is not None:
        segment_ids = check_segment_ids_shape(segment_ids, (Bsz, L), "the batch and length of u")
    chunk = max(1, min(chunk, L))
    packed = segment_ids is not None
    probe = partial(_pallas_probe, u, A, Bm, chunk, packed)
    key = probe_key(u=u, A=A, B=Bm, chunk_size=chunk, packed=packed)
    backend = resolve_backend(backend, op="selective_scan", probe=probe, key=key)
    if backend == "reference":
        return selective_scan_reference(u, delta, A, Bm, Cm, D=D, z=z, h0=h0, reverse=reverse, segment_ids=segment_ids)
    if L == 0:
        h_last = jnp.zeros((Bsz, E, A.shape[1]), u.dtype) if h0 is None else h0
        return jnp.zeros(u.shape, u.dtype), h_last
    return _selective_scan(u, delta, A, Bm, Cm, D, z, h0, segment_ids, reverse=reverse, C=chunk, backend=backend)
