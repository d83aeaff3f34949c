"""Selective scan: the Pallas forward kernel (Gu & Dao 2023, §3.3.2: the state stays in fast memory).

Shape legend: B batch · L length (Lp padded to NC·C) · E channels · N state size (Np = next power of two) ·
G groups · Eg = E / G channels per group (Egp padded to a multiple of the block) · C chunk · NC chunks ·
be channels per program.

Grid ``(B, G, Egp / be)``: one program per (batch row, block of ``be`` channels of one group). The program holds
its state transposed, ``hᵀ (Np, be)``, and runs the time loop inside the kernel, reading one row of ``u`` and
``Δ`` (``(1, be)``, in their ``(B, L, E)`` layout) and one column of ``Bᵀ``, ``Cᵀ`` (``(Np, 1)``, from
``(B, G, Np, L)``) per step and writing one row of ``y``:

    hᵀ ← exp(Aᵀ ⊙ Δ_t) ⊙ hᵀ + B_t (Δ_t ⊙ u_t),        y_t = Σ_n hᵀ ⊙ C_t

so the ``(B, L, E, N)`` states never leave the program. With ``states=True`` it also writes the state entering
each chunk of C steps, ``(NC, B, E, N)``: what the XLA backward (``op.py``, reverse-time adjoint per chunk)
recomputes from. **There is no Pallas backward kernel**: gradients of the Pallas path are the XLA ones.
Padded channels have ``A = Δ = u = 0`` and padded states ``B = C = 0``: they stay zero and are sliced off.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from algornn.scan_kernels._common.pallas_config import pallas_call_kwargs

BLOCK_E = 32  # channels per program (a power of two); state (Np, be) per program


def _kernel(u_ref, d_ref, a_ref, b_ref, c_ref, h0_ref, *refs, C: int, nc: int, states: bool, packed: bool):
    """One (batch row, channel block). Refs: u, Δ (Lp, be); Aᵀ (Np, be); Bᵀ, Cᵀ (Np, Lp); h0ᵀ (Np, be)
    [; keep (1, Lp)] -> y (Lp, be), h_lastᵀ (Np, be)[, entering states (NC·Np, be)]. ``packed``: where keep is 0
    a sequence starts, and the step reads h0ᵀ instead of the running state."""
    keep_ref = refs[0] if packed else None
    out_refs = refs[packed:]
    y_ref, hl_ref = out_refs[:2]
    a = a_ref[...]
    Np = a.shape[0]

    def chunk(k, h):
        if states:
            out_refs[2][pl.ds(k * Np, Np), :] = h

        def step(i, h):
            t = k * C + i
            d = d_ref[pl.ds(t, 1), :]  # (1, be)
            if packed:  # a select: nothing of the previous sequence leaks into this one
                h = jnp.where(jnp.broadcast_to(keep_ref[:, pl.ds(t, 1)], h.shape) > 0, h, h0_ref[...])
            h = jnp.exp(a * d) * h + b_ref[:, pl.ds(t, 1)] * (d * u_ref[pl.ds(t, 1), :])
            y_ref[pl.ds(t, 1), :] = jnp.sum(h * c_ref[:, pl.ds(t, 1)], axis=0, keepdims=True)
            return h

        return lax.fori_loop(0, C, step, h)

    hl_ref[...] = lax.fori_loop(0, nc, chunk, h0_ref[...])


def selective_scan_pallas(
    u, d, A, Bm, Cm, h0, keep=None, *, C: int, states: bool = False, block_e: int = BLOCK_E, interpret=None
):
    """Pallas forward on padded inputs: ``u, d (B, Lp, E)``, ``A (G, Eg, N)``, ``Bm, Cm (B, Lp, G, N)``,
    ``h0 (B, G, Eg, N)``, Lp a multiple of ``C``; one float dtype. ``keep (B, Lp)`` bool or None (packed
    sequences): where False the step starts from ``h0``.

    Returns ``y (B, Lp, E)``, ``h_last (B, G, Eg, N)`` and, with ``states``, the states entering the chunks
    ``(NC, B, G, Eg, N)`` (else None). ``interpret=None``: interpret mode off-GPU."""
    Bsz, Lp, E = u.shape
    G, Eg, N = A.shape
    nc = Lp // C
    be = min(block_e, pl.next_power_of_2(Eg))
    Egp, Np = pl.cdiv(Eg, be) * be, pl.next_power_of_2(N)
    nb = Egp // be
    dt = u.dtype

    def channels(x):  # (B, Lp, E) -> (B, Lp, G·Egp)
        x = x.reshape(Bsz, Lp, G, Eg)
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, Egp - Eg))).reshape(Bsz, Lp, G * Egp)

    def states_t(x):  # (B, Lp, G, N) -> (B, G, Np, Lp)
        return jnp.pad(jnp.moveaxis(x, 1, 3), ((0, 0), (0, 0), (0, Np - N), (0, 0)))

    def by_state(x):  # (..., G, Eg, N) -> (..., G, Np, Egp)
        pads = ((0, 0),) * (x.ndim - 2) + ((0, Egp - Eg), (0, Np - N))
        return jnp.swapaxes(jnp.pad(x, pads), -1, -2)

    seq = pl.BlockSpec((None, Lp, be), lambda b, g, j: (b, 0, g * nb + j))
    col = pl.BlockSpec((None, None, Np, Lp), lambda b, g, j: (b, g, 0, 0))
    tile = pl.BlockSpec((None, None, Np, be), lambda b, g, j: (b, g, 0, j))
    out_shape = [jax.ShapeDtypeStruct((Bsz, Lp, G * Egp), dt), jax.ShapeDtypeStruct((Bsz, G, Np, Egp), dt)]
    out_specs = [seq, tile]
    if states:
        out_shape.append(jax.ShapeDtypeStruct((Bsz, G, nc * Np, Egp), dt))
        out_specs.append(pl.BlockSpec((None, None, nc * Np, be), lambda b, g, j: (b, g, 0, j)))
    packed = keep is not None
    extra, extra_specs = (), []
    if packed:
        extra = (keep.astype(dt)[:, None, :],)  # (B, 1, Lp)
        extra_specs = [pl.BlockSpec((None, 1, Lp), lambda b, g, j: (b, 0, 0))]
    out = pl.pallas_call(
        partial(_kernel, C=C, nc=nc, states=states, packed=packed),
        out_shape=tuple(out_shape),
        grid=(Bsz, G, nb),
        in_specs=[seq, seq, pl.BlockSpec((None, Np, be), lambda b, g, j: (g, 0, j)), col, col, tile] + extra_specs,
        out_specs=tuple(out_specs),
        name="selective_scan",
        **pallas_call_kwargs(interpret=interpret),
    )(channels(u), channels(d), by_state(A), states_t(Bm), states_t(Cm), by_state(h0), *extra)
    y = out[0].reshape(Bsz, Lp, G, Egp)[..., :Eg].reshape(Bsz, Lp, E)
    h_last = jnp.swapaxes(out[1], -1, -2)[:, :, :Eg, :N]
    if not states:
        return y, h_last, None
    h_in = jnp.swapaxes(out[2].reshape(Bsz, G, nc, Np, Egp), -1, -2)[..., :Eg, :N]  # (B, G, NC, Eg, N)
    return y, h_last, jnp.moveaxis(h_in, 2, 0)
