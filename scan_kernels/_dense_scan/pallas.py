"""Pallas kernel for the dense linear scan ``h_t = A_t h_{t-1} + b_t`` on ``b (B, L, N)``.

One program per batch row; the time loop runs inside the kernel with the state ``(1, N)`` in registers and
the mat-vec as a broadcast product plus row reduction (``Σ_j A_ij h_j``; no ``dot``, which Triton only
offers for 2-D tiles of 16+). Time-invariant ``A (N, N)`` is loaded once per program; time-varying
``A (B, L, N, N)`` travels flattened to ``(B, L, N·N)`` so each step is one row load. ``N`` is padded to a
power of two (zero rows/columns do not change the result). Complex inputs travel as real/imaginary planes.
This kernel serves modest N (HiPPO/LMU state sizes up to a few hundred, delta-rule chunk transitions); the
state and one ``N×N`` transition must fit a program's registers/shared memory on a GPU.

Shape legend: B batch · L length · N state size.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from algornn.scan_kernels._common import pallas_config as _pallas_config
from algornn.scan_kernels._common import utils as _utils
from algornn.scan_kernels._common.numerics import cmul


def _dense_kernel(*refs, planes: int, reverse: bool, time_varying: bool, packed: bool):
    """Refs: A planes (``(N, N)`` or ``(L, N·N)``), b planes ``(L, N)``, h0 planes ``(1, N)``, [keep ``(L, 1)``],
    h planes ``(L, N)``. ``packed``: where keep is 0 the step does not read the previous state (``h_t = b_t``)."""
    A_refs, b_refs = refs[:planes], refs[planes : 2 * planes]
    h0_refs = refs[2 * planes : 3 * planes]
    keep_ref = refs[3 * planes] if packed else None
    o_refs = refs[3 * planes + packed :]
    L, N = b_refs[0].shape
    A_fixed = None if time_varying else tuple(r[...] for r in A_refs)

    def body(i, h):
        t = L - 1 - i if reverse else i
        if time_varying:
            A_t = tuple(r[pl.ds(t, 1), :].reshape(N, N) for r in A_refs)
        else:
            A_t = A_fixed
        prod = cmul(A_t, tuple(jnp.broadcast_to(x, (N, N)) for x in h))  # A_ij h_j
        Ah = tuple(jnp.sum(p, axis=1).reshape(1, N) for p in prod)
        if packed:  # a select, not a product: a non-finite state of the previous sequence does not leak
            k = jnp.broadcast_to(keep_ref[pl.ds(t, 1), :], (1, N)) > 0
            Ah = tuple(jnp.where(k, x, jnp.zeros_like(x)) for x in Ah)
        h = tuple(x + r[pl.ds(t, 1), :] for x, r in zip(Ah, b_refs))
        for r, v in zip(o_refs, h):
            r[pl.ds(t, 1), :] = v
        return h

    lax.fori_loop(0, L, body, tuple(r[...] for r in h0_refs))


def _planes(x):
    return (jnp.real(x), jnp.imag(x)) if _utils.is_complex(x.dtype) else (x,)


def dense_scan_pallas(A, b, h0, keep=None, *, reverse: bool = False, num_warps: int = 4, interpret=None):
    """Pallas dense scan: ``A (N, N)`` or ``(B, L, N, N)``, ``b (B, L, N)``, ``h0 (B, N)`` -> ``h (B, L, N)``;
    ``keep (B, L)`` bool or None: where False the step does not read the previous state (packed sequences)."""
    B, L, N = b.shape
    Np = pl.next_power_of_2(N)
    pad = Np - N
    time_varying = A.ndim == 4
    if pad:
        A = jnp.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, pad), (0, pad)])
        b = jnp.pad(b, ((0, 0), (0, 0), (0, pad)))
        h0 = jnp.pad(h0, ((0, 0), (0, pad)))
    if time_varying:
        A = A.reshape(B, L, Np * Np)
        A_spec = pl.BlockSpec((None, L, Np * Np), lambda i: (i, 0, 0))
    else:
        A_spec = pl.BlockSpec((Np, Np), lambda i: (0, 0))
    seq_spec = pl.BlockSpec((None, L, Np), lambda i: (i, 0, 0))
    row_spec = pl.BlockSpec((None, 1, Np), lambda i: (i, 0, 0))
    Ap, bp, hp = _planes(A), _planes(b), tuple(x[:, None] for x in _planes(h0))
    planes = len(bp)
    packed = keep is not None
    extra, extra_specs = (), []
    if packed:
        extra = (keep.astype(bp[0].dtype)[..., None],)  # (B, L, 1)
        extra_specs = [pl.BlockSpec((None, L, 1), lambda i: (i, 0, 0))]
    kernel = partial(_dense_kernel, planes=planes, reverse=reverse, time_varying=time_varying, packed=packed)
    h = pl.pallas_call(
        kernel,
        out_shape=tuple(jax.ShapeDtypeStruct((B, L, Np), bp[0].dtype) for _ in range(planes)),
        grid=(B,),
        in_specs=[A_spec] * planes + [seq_spec] * planes + [row_spec] * planes + extra_specs,
        out_specs=(seq_spec,) * planes,
        name="dense_linear_scan",
        **_pallas_config.pallas_call_kwargs(num_warps=num_warps, interpret=interpret),
    )(*Ap, *bp, *hp, *extra)
    h = tuple(x[..., :N] for x in h)
    return lax.complex(*h) if planes == 2 else h[0]
