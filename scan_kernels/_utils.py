"""Shared input validation for the ops of ``scan_kernels`` (and anyone else who wants the same messages).

Every check raises a ``ValueError`` that names the argument, shows its shape and dtype, and says what was
expected, so bad input never reaches XLA as a deep trace or, worse, broadcasts into a silent wrong answer.

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

import numpy as np
import jax.numpy as jnp


def describe(x) -> str:
    """``shape (2, 3) dtype float32`` for an array-like (used in error messages)."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"a {type(x).__name__} (not an array)"
    return f"shape {tuple(shape)} dtype {np.dtype(dtype).name if dtype is not None else '?'}"


def check_array(x, name: str):
    """``x`` must be an array (jax/numpy) or a tracer; Python scalars and lists are refused."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be a jax or numpy array, got {describe(x)}")
    return x


def check_inexact(x, name: str, *, allow_complex: bool = True):
    """``x`` must be a floating (or, if allowed, complex) array; integer and bool dtypes are refused."""
    check_array(x, name)
    dt = jnp.dtype(x.dtype)
    ok = jnp.issubdtype(dt, jnp.floating) or (allow_complex and jnp.issubdtype(dt, jnp.complexfloating))
    if not ok:
        kinds = "floating or complex" if allow_complex else "floating"
        raise ValueError(f"{name} must have a {kinds} dtype, got {describe(x)}")
    return x


def check_ndim(x, name: str, ndim, what: str):
    """``x.ndim`` must be ``ndim`` (an int) or at least ``ndim[0]`` (a 1-tuple); ``what`` is the expected layout."""
    if isinstance(ndim, tuple):
        if x.ndim < ndim[0]:
            raise ValueError(f"{name} must be {what} (at least {ndim[0]} dims), got {describe(x)}")
    elif x.ndim != ndim:
        raise ValueError(f"{name} must be {what} ({ndim} dims), got {describe(x)}")
    return x


def check_shape(x, name: str, expected: tuple, what: str = ""):
    """``x.shape`` must equal ``expected`` exactly."""
    if tuple(x.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {describe(x)}")
    return x


def check_broadcastable(x, name: str, target: tuple, target_name: str):
    """``x`` must broadcast to ``target`` by numpy rules without growing ``target`` (e.g. ``a`` onto ``b``)."""
    shape = tuple(x.shape)
    ok = len(shape) <= len(target) and all(s == 1 or s == t for s, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(
            f"{name} must be broadcastable to {target_name}'s shape {tuple(target)} (e.g. (D,), (L, D) or "
            f"{tuple(target)}), got {describe(x)}"
        )
    return x


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


def check_bool(x, name: str):
    if not isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name} must be a Python bool, got {x!r}")
    return bool(x)


def check_choice(x, name: str, choices: tuple):
    if not isinstance(x, str) or x not in choices:
        raise ValueError(f"{name}={x!r} is not one of " + ", ".join(repr(c) for c in choices))
    return x


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
