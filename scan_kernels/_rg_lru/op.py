"""RG-LRU (Griffin/Hawk, De et al. 2024 §2.4) on the scan core: the gates in plain JAX, the recurrence by
``linear_scan``, so every backend of the core serves it and gradients come from ``linear_scan``'s ``custom_vjp``
(autodiff through the gate math).

Shape legend: B batch · L length · D channels.

    a_t = exp(c · σ(r_t) · log_a),      h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (σ(i_t) ⊙ x_t)

This module is where the RG-LRU folder calls another op: the package's public ``linear_scan``
(docs/architecture.md §scan_kernels layout).
"""

from algornn.scan_kernels import linear_scan
from algornn.scan_kernels._common.backend import check_backend
from algornn.scan_kernels._common.packing import check_segment_ids_shape
from algornn.scan_kernels._common.validate import check_bool
from algornn.scan_kernels._rg_lru.reference import check_inputs, rg_lru_gates


def rg_lru(x, r, i, log_a, *, c=8.0, h0=None, reverse=False, segment_ids=None, backend=None):
    """Real-Gated Linear Recurrent Unit: ``h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (σ(i_t) ⊙ x_t)``,
    ``a_t = exp(c σ(r_t) log_a)``.

    Args:
      x: input ``(B, L, D)``; float32, bfloat16 or float16 (bfloat16/float16 accumulate in float32).
      r: recurrence-gate pre-activation ``(B, L, D)``.
      i: input-gate pre-activation ``(B, L, D)``.
      log_a: ``(D,)``, ``log σ(Λ)`` ≤ 0 (e.g. ``jax.nn.log_sigmoid`` of the parameter Λ).
      c: the temperature (8 in the paper), a positive number.
      h0: the state before the first step ``(B, D)`` (after the last one when ``reverse``); default zeros.
      reverse: run from the end, ``h_t = a_t ⊙ h_{t+1} + ...``.
      segment_ids: packed sequences, int ``(B, L)``, 0 = padding: each sequence runs from ``h0`` as if alone and
        padding positions of ``h`` are 0 (``linear_scan``'s, docs/ops.md §Packed sequences). None: unchanged.
      backend: ``None`` (auto) | ``"reference"`` | ``"xla"`` | ``"pallas"``, passed to ``linear_scan``.

    Returns:
      ``h (B, L, D)`` in the compute dtype (float32 for float32/bfloat16/float16 inputs, as ``linear_scan``);
      the final state is ``h[:, -1]`` (``h[:, 0]`` when ``reverse``).
    """
    reverse = check_bool("reverse", reverse)
    check_backend(backend)
    x, r, i, log_a, h0, c = check_inputs(x, r, i, log_a, h0, c)
    if segment_ids is not None:
        check_segment_ids_shape(segment_ids, x.shape[:2], "the batch and length of x")
    a, s = rg_lru_gates(r, i, log_a, c)  # (B, L, D) each
    return linear_scan(a, s * x, h0, reverse=reverse, segment_ids=segment_ids, backend=backend)
