"""The one place that decides how AlgoRNN's Pallas kernels lower on a GPU (docs/backends.md §Pallas lowering).

Decision: **Triton** lowering, requested explicitly with ``pltr.CompilerParams``.

* JAX 0.10.2 defaults ``pallas_call`` to Mosaic GPU (``jax_pallas_use_mosaic_gpu=True``), 0.11+ to Triton.
  Passing Triton compiler params makes both versions lower the same way, instead of by accident of the
  installed JAX (docs/backends.md §Pallas lowering).
* Triton runs on every NVIDIA GPU; our kernels (time loop inside the kernel, row loads ``ref[pl.ds(t, 1), :]``)
  lower on it, while on Mosaic GPU the same ``pallas_call`` exceeds shared memory (0.10.2) or has no lowering
  rule at all (0.11+, where Mosaic GPU is reached through ``plgpu.kernel``).
* Upstream deprecates the Triton backend (a ``DeprecationWarning`` at lowering on 0.11+); a Mosaic GPU port
  (``plgpu.kernel``, Hopper and later) is the planned successor and would be switched here.

Kernels call ``pl.pallas_call(kernel, ..., **pallas_call_kwargs(num_warps=..., num_stages=...))``.
Off-GPU the kernels run in ``interpret=True`` mode (compiled through XLA), so CPU CI runs the kernel code.
Whether a kernel compiles for a given call, and what auto picks when it does not, is ``_common.backend``'s business.
"""

from jax.experimental.pallas import triton as pltr

from algornn.scan_kernels._common import backend as _backend

GPU_LOWERING = "triton"


def gpu_compiler_params(*, num_warps: int = 4, num_stages: int = 1):
    """Compiler params that select the GPU lowering (Triton, see the module docstring)."""
    if GPU_LOWERING != "triton":  # the single switch point for a future Mosaic GPU port
        raise NotImplementedError(f"GPU lowering {GPU_LOWERING!r}")
    return pltr.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def pallas_call_kwargs(*, num_warps: int = 4, num_stages: int = 1, interpret=None) -> dict:
    """``interpret`` and ``compiler_params`` keywords for ``pl.pallas_call``.

    ``interpret=None`` means interpret mode exactly when no GPU is present; pass ``False`` to lower for a GPU
    from a CPU host (``jax.export(..., platforms=["cuda"])``).
    """
    if interpret is None:
        interpret = _backend.pallas_interpret()
    return {
        "interpret": bool(interpret),
        "compiler_params": gpu_compiler_params(num_warps=num_warps, num_stages=num_stages),
    }
