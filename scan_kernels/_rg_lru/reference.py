"""RG-LRU (Real-Gated Linear Recurrent Unit; Griffin/Hawk, De et al. 2024 §2.4): input checks, gates, the single
decoding step and the token-by-token reference.

Shape legend: B batch · L length · D channels.

    a_t = exp(c · σ(r_t) · log_a)                      (a = σ(Λ) is stored as log_a = log σ(Λ) ≤ 0)
    h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (σ(i_t) ⊙ x_t)

``x, r, i (B, L, D)`` are the input and the recurrence- and input-gate pre-activations, ``log_a (D,)``, ``c``
the fixed temperature (8 in the paper). The input scale is computed as ``√(−expm1(2 log a_t))``: as a_t → 1
(log_a → 0, the long-memory channels) ``1 − a_t²`` in float32 loses every digit to cancellation, while
``expm1`` keeps full relative accuracy. The square root's derivative is evaluated at ``max(u, SQRT_FLOOR)``,
so it stays finite where ``a_t`` rounds to exactly 1 (the derivative of √u is unbounded at u = 0) and is exact
for every ``u ≥ SQRT_FLOOR`` — in float32 that is every ``a_t`` that is not 1.
"""

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.packing import check_segment_ids_shape, segment_masks
from algornn.scan_kernels._common.utils import compute_dtype
from algornn.scan_kernels._common.validate import check_bool, check_float, check_inexact, check_ndim, check_shape

# The square root's derivative at u < SQRT_FLOOR is taken at SQRT_FLOOR (at most 0.5 / √SQRT_FLOOR = 5e5).
SQRT_FLOOR = 1e-12


@jax.custom_jvp
def _sqrt_bounded(u):
    """``√u`` whose derivative is ``1 / (2 √max(u, SQRT_FLOOR))`` (finite at u = 0)."""
    return jnp.sqrt(u)


@_sqrt_bounded.defjvp
def _sqrt_bounded_jvp(primals, tangents):
    (u,), (du,) = primals, tangents
    return jnp.sqrt(u), du * (0.5 * lax.rsqrt(jnp.maximum(u, SQRT_FLOOR)))


def rg_lru_gates(r, i, log_a, c):
    """``(a, s)``: the decay ``a = exp(c σ(r) log_a)`` and the input scale ``s = √(1 − a²) σ(i)``, both with
    ``r``'s shape (``r, i (..., D)``, ``log_a (D,)``, one dtype)."""
    log_a = log_a.reshape((1,) * (r.ndim - 1) + log_a.shape)  # (1, ..., D): no implicit rank promotion
    log_at = c * jax.nn.sigmoid(r) * log_a  # log a_t ≤ 0
    return jnp.exp(log_at), _sqrt_bounded(-jnp.expm1(2 * log_at)) * jax.nn.sigmoid(i)


def check_inputs(x, r, i, log_a, h0, c, *, step: bool = False):
    """Validate; return ``x, r, i, log_a, h0`` in the compute dtype (float32 for float32/bfloat16/float16 inputs)
    and ``c`` as a float. ``step=True``: one time step, ``x, r, i (B, D)`` and ``h0`` (the state ``h``) required."""
    layout, hname = ("(B, D)", "h") if step else ("(B, L, D)", "h0")
    check_inexact("x", x, allow_complex=False)
    check_ndim("x", x, 2 if step else 3, layout)
    check_inexact("r", r, allow_complex=False)
    check_shape("r", r, x.shape, f"{layout} like x")
    check_inexact("i", i, allow_complex=False)
    check_shape("i", i, x.shape, f"{layout} like x")
    check_inexact("log_a", log_a, allow_complex=False)
    check_shape("log_a", log_a, x.shape[-1:], "(D,): one value per channel of x")
    if h0 is not None:
        check_inexact(hname, h0, allow_complex=False)
        check_shape(hname, h0, (x.shape[0], x.shape[-1]), "(B, D): batch and channels of x")
    c = float(check_float("c", c))
    dtype = compute_dtype(x.dtype, r.dtype, i.dtype, log_a.dtype, None if h0 is None else h0.dtype)
    x, r, i, log_a = (v.astype(dtype) for v in (x, r, i, log_a))
    return x, r, i, log_a, (None if h0 is None else h0.astype(dtype)), c


def _step(h, x_t, r_t, i_t, log_a, c):
    a, s = rg_lru_gates(r_t, i_t, log_a, c)
    return a * h + s * x_t


def rg_lru_step(h, x_t, r_t, i_t, log_a, *, c=8.0):
    """One decoding step: ``h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (σ(i_t) ⊙ x_t)``.

    Args:
      h: the previous state ``(B, D)``.
      x_t, r_t, i_t: input and gate pre-activations of this step, ``(B, D)`` each.
      log_a: ``(D,)``, log of the base decay (≤ 0).
      c: the temperature (8 in the paper).

    Returns:
      the new state ``(B, D)`` in the compute dtype (float32 for float32/bfloat16 inputs).
    """
    if h is None:
        raise ValueError("h must be the previous state, an array of shape (B, D); got None")
    x_t, r_t, i_t, log_a, h, c = check_inputs(x_t, r_t, i_t, log_a, h, c, step=True)
    return _step(h, x_t, r_t, i_t, log_a, c)


def rg_lru_reference(x, r, i, log_a, *, c=8.0, h0=None, reverse=False, segment_ids=None):
    """The plainly correct loop with the contract of ``rg_lru``: one ``lax.scan`` step per token, the gates
    computed inside the step, differentiated by JAX autodiff. Returns ``h (B, L, D)`` in the compute dtype.
    With ``segment_ids (B, L)`` the state is set back to ``h0`` where a sequence starts and padding steps leave it
    as it is and output 0."""
    reverse = check_bool("reverse", reverse)
    x, r, i, log_a, h0, c = check_inputs(x, r, i, log_a, h0, c)
    B, L, D = x.shape
    h0 = jnp.zeros((B, D), x.dtype) if h0 is None else h0
    xs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, r, i))  # (L, B, D)

    if segment_ids is None:

        def step(h, xri):
            h = _step(h, *xri, log_a, c)
            return h, h

        _, h = lax.scan(step, h0, xs, reverse=reverse)
        return jnp.moveaxis(h, 0, 1)

    segment_ids = check_segment_ids_shape(segment_ids, (B, L), "the batch and length of x")
    start, pad = segment_masks(segment_ids, reverse=reverse)

    def packed_step(h, inp):
        xri, (s_t, p_t) = inp
        h_prev = jnp.where(s_t[:, None], h0, h)
        h_new = _step(h_prev, *xri, log_a, c)
        return jnp.where(p_t[:, None], h, h_new), jnp.where(p_t[:, None], jnp.zeros_like(h_new), h_new)

    _, h = lax.scan(packed_step, h0, (xs, (start.T, pad.T)), reverse=reverse)
    return jnp.moveaxis(h, 0, 1)
