"""Dtype rules and batch-sharding support shared by the ops of ``scan_kernels``.

(Input validation lives in ``validate``, arithmetic building blocks in ``numerics``.)

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

import jax.numpy as jnp

from algornn.scan_kernels._common.validate import describe


def compute_dtype(*dtypes):
    """The dtype a recurrence over inputs of ``dtypes`` accumulates in.

    float32 (bfloat16/float16 are promoted: low precision inputs accumulate in float32), complex64 if any
    input is complex, and the 64-bit versions if any input is 64-bit (x64 mode).
    """
    dts = [jnp.dtype(d) for d in dtypes if d is not None]
    is_complex = any(jnp.issubdtype(d, jnp.complexfloating) for d in dts)
    wide = any(d in (jnp.dtype("float64"), jnp.dtype("complex128")) for d in dts)
    if is_complex:
        return jnp.dtype("complex128") if wide else jnp.dtype("complex64")
    return jnp.dtype("float64") if wide else jnp.dtype("float32")


def real_dtype(dtype):
    """float32 for complex64, float64 for complex128, the dtype itself for real dtypes."""
    dtype = jnp.dtype(dtype)
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def is_complex(dtype) -> bool:
    return jnp.issubdtype(jnp.dtype(dtype), jnp.complexfloating)


def _batch_sharding(x):
    """``(mesh, spec_of_axis_0)`` if ``x`` is an explicitly sharded array (sharding in types), else ``None``."""
    import jax

    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if mesh is None or getattr(mesh, "empty", True) or spec is None or all(s is None for s in spec):
        return None
    if any(s is not None for s in tuple(spec)[1:]):
        raise ValueError(
            f"the Pallas backend supports sharding along the leading (batch) axis only, got an array with "
            f"{describe(x)} sharded as {spec}; reshard it or use backend='xla'"
        )
    return mesh, spec[0]


def batch_shard_map(fn, *args):
    """``fn(*args)``, run per device under ``shard_map`` when the arrays' batch axis is explicitly sharded.

    Pallas calls cannot be partitioned by XLA (docs/backends.md §Sharded inputs), so a kernel on batch-sharded
    inputs runs on each device's batch block. ``args`` are arrays whose axis 0 is the batch, or ``None``-batch
    arrays (shared, e.g. a time-invariant ``(N, N)`` transition) passed as ``(array, False)``; outputs are
    batch-sharded.
    """
    import jax
    from jax.sharding import PartitionSpec as P

    arrays = [a[0] if isinstance(a, tuple) else a for a in args]
    batched = [not isinstance(a, tuple) or a[1] for a in args]
    found = [_batch_sharding(a) for a, bt in zip(arrays, batched) if bt]
    found = [f for f in found if f is not None]
    if not found:
        return fn(*arrays)
    mesh, axis = found[0]
    in_specs = tuple(P(axis) if bt else P() for bt in batched)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(axis), check_vma=False)(*arrays)
