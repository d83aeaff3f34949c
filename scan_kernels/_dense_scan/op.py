"""Linear recurrence with dense transitions (docs/ops.md §dense_linear_scan): public op, ``custom_vjp`` and reference.

    h_t = A_t h_{t-1} + b_t            (reverse=True:  h_t = A_t h_{t+1} + b_t),   h_{-1} = h0 (default 0)

with ``(A h)_i = Σ_j A_ij h_j``. Shapes: ``b (B, L, N)`` (or ``(..., L, N)``); ``A`` either ``(N, N)``
(time-invariant: HiPPO-LegS/LegT/LMU/LSSL recurrent forms) or broadcastable to ``b.shape[:-1] + (N, N)``
such as ``(L, N, N)`` or ``(B, L, N, N)`` (delta-rule chunk transitions); ``h0 (B, N)``. Result: ``b``'s
shape in the compute dtype (float32 for float32/bfloat16 inputs, complex64 if any input is complex).
Matrix products use ``precision=HIGHEST`` (no TF32 on GPU).

Backends: ``"reference"`` plain ``lax.scan``; ``"xla"``: an in-place sequential loop on CPU, and on GPU
``lax.associative_scan`` with ``(A1, b1) ∘ (A2, b2) = (A2 A1, A2 b1 + b2)`` when the broadcast transitions
fit a memory budget (else the sequential scan); ``"pallas"``: a Pallas kernel with the time loop inside.

Gradients (``custom_vjp``, backward = reverse dense scan with transposed transitions, same dispatcher):
    g_t = dh_t + A_{t+1}ᵀ g_{t+1},  db_t = g_t,  dA_t = g_t h_{t-1}ᵀ (summed over B, L if A is (N, N)),
    dh0 = A_0ᵀ g_0.

Shape legend: B batch · L length · N state size.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common import backend as _backend
from algornn.scan_kernels._common import utils as _utils
from algornn.scan_kernels._common.backend import abstract, check_backend, probe_key, resolve_backend
from algornn.scan_kernels._common.packing import check_segment_ids_shape, segment_masks
from algornn.scan_kernels._common.validate import (
    check_bool,
    check_broadcastable,
    check_choice,
    check_inexact,
    check_ndim,
    check_shape,
    describe,
)

_HI = lax.Precision.HIGHEST
# On GPU the parallel form materialises (B, L, N, N) products; above this many bytes use the loop instead.
_ASSOC_BYTES_BUDGET = 1 << 30


def _matvec(A, h):
    """``A (..., N, N) @ h (..., N)`` batched over leading dims; ``A`` may be a shared ``(N, N)``."""
    return jnp.einsum("...ij,...j->...i", A, h, precision=_HI)


def _prepare(A, b, h0):
    """Validate; return ``A`` as ``(N, N)`` or ``(B, L, N, N)``, ``b (B, L, N)``, ``h0 (B, N)``, batch shape."""
    check_inexact("b", b)
    check_ndim("b", b, 2, "(B, L, N) or (..., L, N)", at_least=True)
    check_inexact("A", A)
    N = b.shape[-1]
    if A.ndim < 2 or A.shape[-2:] != (N, N):
        raise ValueError(f"A must be (N, N) or (B, L, N, N) with N={N} (b's last dim), got {describe(A)}")
    if A.ndim > 2:
        check_broadcastable("A", A, b.shape[:-1] + (N, N), "b.shape[:-1] + (N, N)")
    if h0 is not None:
        check_inexact("h0", h0)
        check_shape("h0", h0, b.shape[:-2] + (N,), "(B, N): batch dims of b and its state size")
    dtype = _utils.compute_dtype(A.dtype, b.dtype, None if h0 is None else h0.dtype)
    batch_shape, L = b.shape[:-2], b.shape[-2]
    B = 1
    for s in batch_shape:
        B *= s
    if A.ndim == 2:
        A = A.astype(dtype)
    else:
        A = jnp.broadcast_to(A.astype(dtype), b.shape[:-1] + (N, N)).reshape(B, L, N, N)
    b = b.astype(dtype).reshape(B, L, N)
    if h0 is None:  # zeros_like(b[:, 0]) keeps b's (batch) sharding
        h0 = jnp.zeros_like(b[:, 0]) if L else jnp.zeros((B, N), dtype)
    else:
        h0 = h0.astype(dtype).reshape(B, N)
    return A, b, h0, batch_shape


def _gate(keep_t, Ah):
    """``A_t h_{t-1}`` where ``keep_t (B,)`` holds, else 0 (a select: a non-finite state does not leak)."""
    return Ah if keep_t is None else jnp.where(keep_t[:, None], Ah, jnp.zeros((), Ah.dtype))


def _sequential(A, b, h0, reverse: bool, keep=None):
    """One ``lax.scan`` step per time step (the reference). ``keep (B, L)`` bool (packed sequences): where False,
    the step does not read the previous state, ``h_t = b_t``."""
    xs = (jnp.moveaxis(b, 1, 0), None if keep is None else jnp.moveaxis(keep, 1, 0))
    if A.ndim == 2:

        def step(h, x):
            b_t, k_t = x
            h = _gate(k_t, _matvec(A, h)) + b_t
            return h, h

        _, h = lax.scan(step, h0, xs, reverse=reverse)
    else:

        def step(h, x):
            A_t, (b_t, k_t) = x
            h = _gate(k_t, _matvec(A_t, h)) + b_t
            return h, h

        _, h = lax.scan(step, h0, (jnp.moveaxis(A, 1, 0), xs), reverse=reverse)
    return jnp.moveaxis(h, 0, 1)


def _sequential_inplace(A, b, h0, reverse: bool, keep=None):
    """The CPU form: a ``fori_loop`` that reads row t of ``b (B, L, N)`` (and ``A (B, L, N, N)``) in place and
    writes ``h`` over ``b``'s buffer, avoiding the ``(L, B, ...)`` transposes of a ``lax.scan`` (as in
    ``_linear_scan.xla.sequential_scan``)."""
    L = b.shape[1]

    def body(i, carry):
        h, out = carry
        t = L - 1 - i if reverse else i
        A_t = A if A.ndim == 2 else lax.dynamic_index_in_dim(A, t, axis=1, keepdims=False)
        k_t = None if keep is None else lax.dynamic_index_in_dim(keep, t, axis=1, keepdims=False)
        h = _gate(k_t, _matvec(A_t, h)) + lax.dynamic_index_in_dim(out, t, axis=1, keepdims=False)
        return h, lax.dynamic_update_index_in_dim(out, h, t, axis=1)

    return lax.fori_loop(0, L, body, (h0, b))[1]


def _associative(A, b, h0, reverse: bool, keep=None):
    """Log-depth parallel form over axis 1 with ``h0`` folded into the first step's input (``keep``: a zero
    transition where the step does not read the previous state)."""
    B, L, N = b.shape
    A = jnp.broadcast_to(A, (B, L, N, N))
    if keep is not None:
        A = jnp.where(keep[..., None, None], A, jnp.zeros((), A.dtype))
    t = L - 1 if reverse else 0
    b = b.at[:, t].add(_matvec(A[:, t], h0))

    def combine(left, right):  # left earlier in scan order
        A1, b1 = left
        A2, b2 = right
        return jnp.einsum("...ij,...jk->...ik", A2, A1, precision=_HI), _matvec(A2, b1) + b2

    _, h = lax.associative_scan(combine, (A, b), axis=1, reverse=reverse)
    return h


def _pallas_probe(A, b, h0, keep, reverse: bool):
    """Compile the Pallas dense scan for these shapes and dtypes, in both directions (the backward runs the
    other one); raises if it does not compile."""
    from algornn.scan_kernels._dense_scan.pallas import dense_scan_pallas

    args = abstract(A, b, h0, keep)
    for rev in (reverse, not reverse):
        jax.jit(partial(dense_scan_pallas, reverse=rev)).lower(*args).compile()


def _dispatch(A, b, h0, reverse: bool, backend: str, keep=None):
    """The scan by the concrete ``backend``; ``keep (B, L)`` bool or None (packed sequences: where False the step
    does not read the previous state)."""
    if backend == "reference":
        return _sequential(A, b, h0, reverse, keep)
    if backend == "xla":
        B, L, N = b.shape
        if not _backend.on_gpu():
            return _sequential_inplace(A, b, h0, reverse, keep)
        if B * L * N * N * b.dtype.itemsize <= _ASSOC_BYTES_BUDGET:
            return _associative(A, b, h0, reverse, keep)
        return _sequential(A, b, h0, reverse, keep)
    if backend == "pallas":
        from algornn.scan_kernels._dense_scan.pallas import dense_scan_pallas

        fn = partial(dense_scan_pallas, reverse=reverse)
        if keep is None:
            return _utils.batch_shard_map(fn, (A, A.ndim == 4), b, h0)
        return _utils.batch_shard_map(fn, (A, A.ndim == 4), b, h0, keep)
    raise AssertionError(backend)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _scan(A, b, h0, keep, reverse, backend):
    return _dispatch(A, b, h0, reverse, backend, keep)


def _scan_fwd(A, b, h0, keep, reverse, backend):
    h = _dispatch(A, b, h0, reverse, backend, keep)
    return h, (A, h, h0, keep)


def _scan_bwd(reverse, backend, res, dh):
    """g_t = dh_t + keep_{t+1} A_{t+1}ᵀ g_{t+1} by the same dispatcher in the other direction; then
    dA_t = keep_t g_t h_{t-1}ᵀ, db = g, dh0 = keep_0 A_0ᵀ g_0 (mirrored when ``reverse``)."""
    A, h, h0, keep = res
    At = jnp.swapaxes(A, -1, -2)
    if A.ndim == 2:
        At_shift = At  # time-invariant: g_{L-1} = dh_{L-1} because the reverse scan starts from 0
    else:
        zero = jnp.zeros_like(At[:, :1])
        At_shift = jnp.concatenate([At[:, 1:], zero], 1) if not reverse else jnp.concatenate([zero, At[:, :-1]], 1)
    keep_shift = None
    if keep is not None:
        no = jnp.zeros_like(keep[:, :1])
        keep_shift = jnp.concatenate([keep[:, 1:], no], 1) if not reverse else jnp.concatenate([no, keep[:, :-1]], 1)
    g = _dispatch(At_shift, dh, jnp.zeros_like(h0), not reverse, backend, keep_shift)  # (B, L, N)
    db = g
    if keep is not None:  # only the steps that read h_{t-1} pass a cotangent to it and to A_t
        g = jnp.where(keep[..., None], g, jnp.zeros((), g.dtype))
    if not reverse:
        h_prev = jnp.concatenate([h0[:, None], h[:, :-1]], axis=1)
        dh0 = _matvec(At if A.ndim == 2 else At[:, 0], g[:, 0])
    else:
        h_prev = jnp.concatenate([h[:, 1:], h0[:, None]], axis=1)
        dh0 = _matvec(At if A.ndim == 2 else At[:, -1], g[:, -1])
    if A.ndim == 2:
        # per batch row, then a sum: contracting a (possibly sharded) batch axis inside einsum is ambiguous
        dA = jnp.sum(jnp.einsum("bli,blj->bij", g, h_prev, precision=_HI), axis=0)
    else:
        dA = g[..., :, None] * h_prev[..., None, :]  # (B, L, N, N)
    return dA, db, dh0, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def _pack(A, b, h0, segment_ids, reverse: bool, h0_given: bool):
    """Packed sequences (docs/ops.md §Packed sequences): ``keep = False`` where a sequence starts or on padding
    (the step does not read the previous state), ``b' = b + A h0`` at a start, ``b' = 0`` on padding (so the
    padded outputs are 0). Returns ``b'``, ``h0' = 0``, ``keep`` and the padding mask, all ``(B, L, ·)``."""
    start, pad = segment_masks(segment_ids, reverse=reverse)
    if h0_given:  # the first step of each sequence: A_t h0 + b_t
        Ah0 = _matvec(A, h0)[:, None] if A.ndim == 2 else _matvec(A, h0[:, None])  # (B, 1, N) | (B, L, N)
        b = jnp.where(start[..., None], b + Ah0, b)
    b = jnp.where(pad[..., None], jnp.zeros((), b.dtype), b)
    return b, jnp.zeros_like(h0), ~(start | pad), pad


def dense_linear_scan(A, b, h0=None, *, reverse=False, segment_ids=None, backend=None, vjp="custom"):
    """``h_t = A_t h_{t-1} + b_t`` over time (axis -2 of ``b``); see the module docstring.

    Args:
      A: transitions ``(N, N)`` (time-invariant) or broadcastable to ``(B, L, N, N)``.
      b: inputs ``(B, L, N)`` (or ``(..., L, N)``).
      h0: initial state ``(B, N)``; default zeros.
      reverse: run from the end, ``h_t = A_t h_{t+1} + b_t``.
      segment_ids: packed sequences, int ``(B, L)`` (``b.shape[:-1]``), 0 = padding: each sequence runs from
        ``h0`` as if alone and padding positions of ``h`` are 0 (docs/ops.md §Packed sequences); a time-invariant
        ``A (N, N)`` stays one matrix. None: one sequence per row, unchanged.
      backend: ``None`` (auto) | ``"reference"`` | ``"xla"`` | ``"pallas"``.
      vjp: ``"custom"`` (reverse-scan backward) | ``"autodiff"`` (JAX autodiff of the reference loop).

    Returns:
      ``h`` with ``b``'s shape, in the compute dtype.
    """
    reverse = check_bool("reverse", reverse)
    check_backend(backend)
    check_choice("vjp", vjp, ("custom", "autodiff"))
    h0_given = h0 is not None
    A, b, h0, batch_shape = _prepare(A, b, h0)
    seg = _segments(segment_ids, batch_shape, b)
    L, N = b.shape[1:]
    if b.size == 0:  # nothing to scan (L, B or N is 0)
        return b.reshape(batch_shape + (L, N))
    keep = pad = None
    if seg is not None:
        b, h0, keep, pad = _pack(A, b, h0, seg, reverse, h0_given)
    if vjp == "autodiff":
        h = _sequential(A, b, h0, reverse, keep)
    else:  # auto: Pallas on a GPU where it compiles for these shapes, else XLA
        probe = partial(_pallas_probe, A, b, h0, keep, reverse)
        key = probe_key(A=A, b=b, h0=h0, keep=keep, reverse=reverse)
        backend = resolve_backend(backend, op="dense_linear_scan", probe=probe, key=key)
        h = _scan(A, b, h0, keep, reverse, backend)
    if pad is not None:
        h = jnp.where(pad[..., None], jnp.zeros((), h.dtype), h)
    return h.reshape(batch_shape + (L, N))


def _segments(segment_ids, batch_shape, b):
    """Validate ``segment_ids`` against the batch dims and length of ``b``; return them as ``(B, L)`` (or None)."""
    if segment_ids is None:
        return None
    seg = check_segment_ids_shape(segment_ids, batch_shape + b.shape[1:2], "the batch dims and length of b")
    return seg.reshape(b.shape[:2])


def dense_linear_scan_reference(A, b, h0=None, *, reverse=False, segment_ids=None):
    """The plain loop with the contract of :func:`dense_linear_scan`, differentiated by JAX autodiff."""
    reverse = check_bool("reverse", reverse)
    h0_given = h0 is not None
    A, b, h0, batch_shape = _prepare(A, b, h0)
    seg = _segments(segment_ids, batch_shape, b)
    L, N = b.shape[1:]
    if b.size == 0:
        return b.reshape(batch_shape + (L, N))
    if seg is None:
        return _sequential(A, b, h0, reverse).reshape(batch_shape + (L, N))
    b, h0, keep, pad = _pack(A, b, h0, seg, reverse, h0_given)
    h = jnp.where(pad[..., None], jnp.zeros((), b.dtype), _sequential(A, b, h0, reverse, keep))
    return h.reshape(batch_shape + (L, N))
