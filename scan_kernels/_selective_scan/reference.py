"""Selective scan (Mamba's S6, Gu & Dao 2023, Alg. 2): input checks, the decoding step and the materialised
reference.

Shape legend: B batch · L length · E channels (D in the other ops; E here, as D names the skip weight) · N state
size · G groups of channels sharing B_t, C_t (Mamba-2, Dao & Gu 2024) · C chunk · NC chunks.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) ⊗ B_t          h: (B, E, N), per channel e: h_e ∈ R^N
    y_t = h_t C_t + D ⊙ u_t,        gated: y_t ← y_t ⊙ silu(z_t)

(Zero-order-hold discretisation of A, Euler step for B: Mamba's Eq. (4) with the simplification of its §3.5.)
Channel e reads the B_t, C_t of its group ``e // (E / G)``.

``selective_scan_reference`` is the form the layers used before the op existed: it materialises
``exp(Δ A)`` and ``Δ u B`` as ``(B, L, E·N)`` arrays and runs ``linear_scan`` over them (memory
O(B·L·E·N), gradients from ``linear_scan``'s ``custom_vjp`` and JAX autodiff).
"""

import jax
import jax.numpy as jnp

from algornn.scan_kernels import linear_scan
from algornn.scan_kernels._common.packing import check_segment_ids_shape, last_real_index, segment_masks
from algornn.scan_kernels._common.utils import compute_dtype
from algornn.scan_kernels._common.validate import check_bool, check_inexact, check_ndim, check_shape, describe


def check_inputs(u, delta, A, B, C, D, z, h0, *, step: bool = False):
    """Validate; return ``u, delta, A, B, C, D, z, h0`` in the compute dtype with ``B, C`` as
    ``(B, L, G, N)`` (``(B, G, N)`` with ``step``; G = 1 for the ``(B, L, N)`` form).

    ``step=True``: one time step, ``u, delta, z (B, E)``, ``B, C (B, N)`` or ``(B, G, N)`` and ``h0`` (the
    state ``h``) required."""
    lay, hname = ("(B, E)", "h") if step else ("(B, L, E)", "h0")
    check_inexact("u", u, allow_complex=False)
    check_ndim("u", u, 2 if step else 3, lay)
    check_inexact("delta", delta, allow_complex=False)
    check_shape("delta", delta, u.shape, f"{lay} like u")
    check_inexact("A", A, allow_complex=False)
    check_ndim("A", A, 2, "(E, N)")
    E, N = A.shape
    if E != u.shape[-1]:
        raise ValueError(f"A must have shape (E, N) with E = {u.shape[-1]} channels of u, got {describe(A)}")
    lead = u.shape[:-1]  # (B,) or (B, L)
    bc = []
    for name, x in (("B", B), ("C", C)):
        check_inexact(name, x, allow_complex=False)
        forms = f"{lay[:-2]}N) or {lay[:-2]}G, N)"
        if x.ndim not in (len(lead) + 1, len(lead) + 2) or tuple(x.shape[: len(lead)]) != lead or x.shape[-1] != N:
            raise ValueError(f"{name} must have shape {forms} with {lead + (N,)} from u and A, got {describe(x)}")
        if x.ndim == len(lead) + 2 and (x.shape[-2] < 1 or E % x.shape[-2]):
            raise ValueError(
                f"{name} has G = {x.shape[-2]} groups, which must divide the E = {E} channels; got {describe(x)}"
            )
        bc.append(x if x.ndim == len(lead) + 2 else x[..., None, :])
    if bc[0].shape != bc[1].shape:
        raise ValueError(f"C must have B's shape {tuple(B.shape)}, got {describe(C)}")
    if D is not None:
        check_inexact("D", D, allow_complex=False)
        check_shape("D", D, (E,), "(E,): one skip weight per channel")
    if z is not None:
        check_inexact("z", z, allow_complex=False)
        check_shape("z", z, u.shape, f"{lay} like u")
    if h0 is not None:
        check_inexact(hname, h0, allow_complex=False)
        check_shape(hname, h0, (u.shape[0], E, N), "(B, E, N): batch of u, E and N of A")
    dtype = compute_dtype(*(x.dtype for x in (u, delta, A, B, C, D, z, h0) if x is not None))
    cast = lambda x: None if x is None else x.astype(dtype)  # noqa: E731
    return tuple(cast(x) for x in (u, delta, A, bc[0], bc[1], D, z, h0))


def per_channel(x, E):
    """``(..., G, N)`` group values -> ``(..., E, N)``: channel e reads group ``e // (E / G)``."""
    return jnp.repeat(x, E // x.shape[-2], axis=-2)


def readout(y, u, D, z):
    """``y + D ⊙ u``, then the gate ``⊙ silu(z)`` (each optional), on ``(..., E)`` arrays."""
    if D is not None:
        y = y + D.reshape((1,) * (u.ndim - 1) + D.shape) * u
    if z is not None:
        y = y * jax.nn.silu(z)
    return y


def selective_scan_step(h, u_t, delta_t, A, B_t, C_t, *, D=None, z_t=None):
    """One decoding step: ``h ← exp(Δ_t A) ⊙ h + (Δ_t u_t) ⊗ B_t``, ``y_t = h C_t + D u_t`` (⊙ silu(z_t)).

    Args:
      h: the previous state ``(B, E, N)``.
      u_t, delta_t: ``(B, E)``; ``delta_t`` > 0 (already through the softplus).
      A: ``(E, N)``, real and negative.
      B_t, C_t: ``(B, N)`` or ``(B, G, N)`` with G dividing E.
      D: ``(E,)`` skip weight or None; z_t: ``(B, E)`` gate or None.

    Returns:
      ``(h, y_t)``: the new state ``(B, E, N)`` and ``y_t (B, E)``, in the compute dtype (float32 for
      float32/bfloat16 inputs).
    """
    if h is None:
        raise ValueError("h must be the previous state, an array of shape (B, E, N); got None")
    u_t, delta_t, A, B_t, C_t, D, z_t, h = check_inputs(u_t, delta_t, A, B_t, C_t, D, z_t, h, step=True)
    E = A.shape[0]
    h = jnp.exp(delta_t[..., None] * A[None]) * h + (delta_t * u_t)[..., None] * per_channel(B_t, E)
    y = jnp.einsum("ben,ben->be", h, per_channel(C_t, E))
    return h, readout(y, u_t, D, z_t)


def selective_scan_reference(u, delta, A, B, C, *, D=None, z=None, h0=None, reverse=False, segment_ids=None):
    """The materialised form with the contract of ``selective_scan``: ``exp(Δ A)`` and ``(Δ u) ⊗ B`` as
    ``(B, L, E·N)`` arrays, the recurrence by ``linear_scan`` (its default backend), ``y`` by an einsum with the
    per-token states. Memory O(B·L·E·N); the oracle the chunked forms are tested against.

    Returns ``(y (B, L, E), h_last (B, E, N))`` in the compute dtype; ``h_last`` is the state after the last
    step (after step 0 when ``reverse``). With ``segment_ids (B, L)`` (``linear_scan``'s packed sequences) the
    padded outputs are 0 and ``h_last`` is the state at the row's last non-padding position (``h0``, or zeros,
    for a row of padding only)."""
    reverse = check_bool("reverse", reverse)
    u, delta, A, B, C, D, z, h0 = check_inputs(u, delta, A, B, C, D, z, h0)
    Bsz, L, E = u.shape
    N = A.shape[1]
    if segment_ids is not None:
        segment_ids = check_segment_ids_shape(segment_ids, (Bsz, L), "the batch and length of u")
    a = jnp.exp(delta[..., None] * A[None, None])  # (B, L, E, N)
    b = (delta * u)[..., None] * per_channel(B, E)
    h0 = None if h0 is None else h0.reshape(Bsz, E * N)
    h = linear_scan(a.reshape(Bsz, L, E * N), b.reshape(Bsz, L, E * N), h0, reverse=reverse, segment_ids=segment_ids)
    h = h.reshape(Bsz, L, E, N)
    y = readout(jnp.einsum("blen,blen->ble", h, per_channel(C, E)), u, D, z)
    if L == 0:
        h_last = jnp.zeros((Bsz, E, N), u.dtype) if h0 is None else h0.reshape(Bsz, E, N)
    elif segment_ids is None:
        h_last = h[:, 0] if reverse else h[:, -1]
    else:
        _, pad = segment_masks(segment_ids)
        y = jnp.where(pad[..., None], jnp.zeros((), y.dtype), y)
        idx, any_real = last_real_index(segment_ids, reverse=reverse)
        h_last = jnp.take_along_axis(h, idx[:, None, None, None], axis=1)[:, 0]
        empty = jnp.zeros((Bsz, E, N), h.dtype) if h0 is None else h0.reshape(Bsz, E, N)
        h_last = jnp.where(any_real[:, None, None], h_last, empty)
    return y, h_last
