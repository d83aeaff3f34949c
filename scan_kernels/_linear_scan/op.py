"""Diagonal first-order linear recurrence (docs/ops.md §linear_scan): public op, ``custom_vjp`` and reference.

    h_t = a_t ⊙ h_{t-1} + b_t          (reverse=True:  h_t = a_t ⊙ h_{t+1} + b_t),   h_{-1} = h0 (default 0)

Shapes: ``b (B, L, D)`` (more leading batch dims are allowed: ``(..., L, D)``), ``a`` broadcastable to ``b``
(``(D,)``, ``(L, D)``, ``(B, L, D)``, ...), ``h0 (B, D)``; the result has ``b``'s shape.
Dtypes: float32, complex64 (float64/complex128 under x64); bfloat16/float16 inputs accumulate in float32 and
**the result is float32** (the accumulation dtype, not the input dtype). Mixed real ``a`` / complex ``b``
compute in complex.

Backends (one keyword, dispatched in :func:`_dispatch`): ``"reference"`` plain ``lax.scan``;
``"xla"`` fastest pure-XLA form for the device (``_linear_scan.xla``); ``"pallas"`` the Pallas kernel
(``_linear_scan.pallas``, interpret mode off-GPU); ``None`` auto.

Gradients: a ``jax.custom_vjp`` whose backward is itself a reverse linear scan through the same dispatcher
(Blelloch 1990 §1.4; Martin & Cundy 2018, arXiv 1709.04057 §2.2):
    g_t = dh_t + a_{t+1} g_{t+1},   db_t = g_t,   da_t = g_t h_{t-1},   dh0 = a_0 g_0
(JAX's cotangent convention: transposes, no conjugation for complex). ``vjp="autodiff"`` instead
differentiates the reference loop with JAX autodiff, to bisect gradient bugs.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

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
)

VJP_MODES = ("custom", "autodiff")


def _prepare(a, b, h0):
    """Validate; return ``a, b`` as ``(B, L, D)`` and ``h0`` as ``(B, D)`` in the compute dtype + batch shape."""
    check_inexact("b", b)
    check_ndim("b", b, 2, "(B, L, D) or (..., L, D)", at_least=True)
    check_inexact("a", a)
    check_broadcastable("a", a, b.shape, "b")
    if h0 is not None:
        check_inexact("h0", h0)
        check_shape("h0", h0, b.shape[:-2] + b.shape[-1:], "(B, D): batch dims of b and its channels")
    dtype = _utils.compute_dtype(a.dtype, b.dtype, None if h0 is None else h0.dtype)
    batch_shape, (L, D) = b.shape[:-2], b.shape[-2:]
    B = 1
    for s in batch_shape:
        B *= s
    a = jnp.broadcast_to(a.astype(dtype), b.shape).reshape(B, L, D)  # broadcast: autodiff sums da back
    b = b.astype(dtype).reshape(B, L, D)
    if h0 is None:  # zeros_like(b[:, 0]) keeps b's (batch) sharding
        h0 = jnp.zeros_like(b[:, 0]) if L else jnp.zeros((B, D), dtype)
    else:
        h0 = h0.astype(dtype).reshape(B, D)
    return a, b, h0, batch_shape


def _reference_scan(a, b, h0, reverse: bool):
    """The plain loop on ``(B, L, D)``: one ``lax.scan`` step per time step, carry ``(B, D)``."""

    def step(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    xs = (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0))  # (L, B, D)
    _, h = lax.scan(step, h0, xs, reverse=reverse)
    return jnp.moveaxis(h, 0, 1)


def _pallas_probe(a, b, h0, reverse: bool):
    """Compile the Pallas scan for these ``(B, L, D)`` shapes and dtypes: the forward, and the backward's shifted
    scan in the other direction (raises if either does not compile)."""
    from algornn.scan_kernels._linear_scan.pallas import linear_scan_pallas

    args = abstract(a, b, h0)
    for rev, shifted in ((reverse, False), (not reverse, True)):
        jax.jit(partial(linear_scan_pallas, reverse=rev, shifted=shifted)).lower(*args).compile()


def _dispatch(a, b, h0, reverse: bool, backend: str, shifted: bool = False):
    """Forward scan on ``(B, L, D)`` arrays in the compute dtype, by the concrete ``backend``.

    ``shifted=True``: step t uses the decay of the step visited before it (``a_{t+1}`` when ``reverse``,
    ``a_{t-1}`` otherwise; 0 at the first step), the recurrence of the backward pass.
    """
    if backend == "reference":
        from algornn.scan_kernels._linear_scan.xla import shift_decays

        return _reference_scan(shift_decays(a, reverse=reverse) if shifted else a, b, h0, reverse)
    if backend == "xla":
        from algornn.scan_kernels._linear_scan.xla import linear_scan_xla

        return linear_scan_xla(a, b, h0, reverse=reverse, shifted=shifted)
    if backend == "pallas":
        from algornn.scan_kernels._linear_scan.pallas import linear_scan_pallas

        return _utils.batch_shard_map(partial(linear_scan_pallas, reverse=reverse, shifted=shifted), a, b, h0)
    raise AssertionError(backend)  # check_backend already refused anything else


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _scan(a, b, h0, reverse, backend):
    return _dispatch(a, b, h0, reverse, backend)


def _scan_fwd(a, b, h0, reverse, backend):
    h = _dispatch(a, b, h0, reverse, backend)
    return h, (a, h, h0)


def _scan_bwd(reverse, backend, res, dh):
    """g_t = dh_t + a_{t+1} g_{t+1}: the same scan run the other way with shifted decays (same dispatcher),
    then da_t = g_t h_{t-1}, db = g, dh0 = a_0 g_0 (mirrored when ``reverse``)."""
    a, h, h0 = res
    g = _dispatch(a, dh, jnp.zeros_like(h0), not reverse, backend, shifted=True)
    if not reverse:
        h_nb = jnp.concatenate([h0[:, None], h[:, :-1]], axis=1)  # (B, L, D): h_{t-1}
        dh0 = a[:, 0] * g[:, 0]
    else:
        h_nb = jnp.concatenate([h[:, 1:], h0[:, None]], axis=1)  # h_{t+1}
        dh0 = a[:, -1] * g[:, -1]
    return g * h_nb, g, dh0


_scan.defvjp(_scan_fwd, _scan_bwd)


def _pack(a, b, h0, segment_ids, reverse: bool, h0_given: bool):
    """Packed sequences as a plain scan (docs/ops.md §Packed sequences): ``a' = 0`` where a sequence starts or on
    padding, ``b' = b + a ⊙ h0`` at a start (its first step from the initial state), ``b' = 0`` on padding.
    Returns ``a', b', h0' = 0`` and the padding mask ``(B, L)``; the scan of those is every sequence's own."""
    start, pad = segment_masks(segment_ids, reverse=reverse)
    keep = ~(start | pad)
    a_p = jnp.where(keep[..., None], a, jnp.zeros((), a.dtype))
    b_p = jnp.where(start[..., None], b + a * h0[:, None], b) if h0_given else b
    b_p = jnp.where(pad[..., None], jnp.zeros((), b.dtype), b_p)
    return a_p, b_p, jnp.zeros_like(h0), pad


def _unpack(h, pad):
    """Padding positions of the result are exactly 0."""
    return jnp.where(pad[..., None], jnp.zeros((), h.dtype), h)


def _segments(segment_ids, batch_shape, b):
    """Validate ``segment_ids`` against the batch dims and length of ``b``; return them as ``(B, L)`` (or None)."""
    if segment_ids is None:
        return None
    seg = check_segment_ids_shape(segment_ids, batch_shape + b.shape[1:2], "the batch dims and length of b")
    return seg.reshape(b.shape[:2])


def linear_scan(a, b, h0=None, *, reverse=False, segment_ids=None, backend=None, vjp="custom"):
    """``h_t = a_t ⊙ h_{t-1} + b_t`` over time (axis -2 of ``b``); see the module docstring.

    Args:
      a: decays, broadcastable to ``b``: ``(D,)``, ``(L, D)``, ``(B, L, D)``, ... (real or complex).
      b: inputs ``(B, L, D)`` (or ``(..., L, D)``).
      h0: initial state ``(B, D)`` (``b.shape[:-2] + (D,)``); default zeros.
      reverse: run from the end, ``h_t = a_t ⊙ h_{t+1} + b_t`` (``h0`` then sits after the last step).
      segment_ids: packed sequences, int ``(B, L)`` (``b.shape[:-1]``), 0 = padding: each sequence runs from
        ``h0`` as if alone and padding positions of ``h`` are 0 (docs/ops.md §Packed sequences). None: one
        sequence per row, unchanged.
      backend: ``None`` (auto) | ``"reference"`` | ``"xla"`` | ``"pallas"``.
      vjp: ``"custom"`` (reverse-scan backward) | ``"autodiff"`` (JAX autodiff of the reference loop).

    Returns:
      ``h`` with ``b``'s shape in the compute dtype (float32 for float32/bfloat16 inputs, complex64 if any
      input is complex); the final state is ``h[:, -1]`` (``h[:, 0]`` when ``reverse``); with ``segment_ids``
      a sequence's final state is ``h`` at its last (first when ``reverse``) position.
    """
    reverse = check_bool("reverse", reverse)
    check_backend(backend)
    check_choice("vjp", vjp, VJP_MODES)
    h0_given = h0 is not None
    a, b, h0, batch_shape = _prepare(a, b, h0)
    seg = _segments(segment_ids, batch_shape, b)
    L, D = b.shape[1:]
    if b.size == 0:  # nothing to scan (L, B or D is 0)
        return b.reshape(batch_shape + (L, D))
    if seg is not None:
        a, b, h0, pad = _pack(a, b, h0, seg, reverse, h0_given)
    if vjp == "autodiff":
        h = _reference_scan(a, b, h0, reverse)
    else:  # auto: Pallas on a GPU where it compiles for these shapes, else XLA
        probe, key = partial(_pallas_probe, a, b, h0, reverse), probe_key(a=a, b=b, h0=h0, reverse=reverse)
        backend = resolve_backend(backend, op="linear_scan", probe=probe, key=key)
        h = _scan(a, b, h0, reverse, backend)
    if seg is not None:
        h = _unpack(h, pad)
    return h.reshape(batch_shape + (L, D))


def linear_scan_reference(a, b, h0=None, *, reverse=False, segment_ids=None):
    """The plainly correct loop: same contract as :func:`linear_scan`, one ``lax.scan`` step per time step,
    differentiated by JAX autodiff."""
    reverse = check_bool("reverse", reverse)
    h0_given = h0 is not None
    a, b, h0, batch_shape = _prepare(a, b, h0)
    seg = _segments(segment_ids, batch_shape, b)
    L, D = b.shape[1:]
    if b.size == 0:
        return b.reshape(batch_shape + (L, D))
    if seg is None:
        return _reference_scan(a, b, h0, reverse).reshape(batch_shape + (L, D))
    a, b, h0, pad = _pack(a, b, h0, seg, reverse, h0_given)
    return _unpack(_reference_scan(a, b, h0, reverse), pad).reshape(batch_shape + (L, D))
