"""``ssm``-specific argument handling (private): the validating ``jit``, batch-shape broadcasting and dtypes.

All public ``ssm`` functions validate up front and raise ``ValueError`` naming the argument, what it
got and what was expected, instead of failing deep inside XLA. The generic checks (``as_array``,
``check_inexact``, ``check_ndim``, ``check_int``, ...) come from ``algornn.scan_kernels._common.validate``.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from algornn.scan_kernels._common import utils as _utils


def _arraylike(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)) or hasattr(x, "__jax_array__"):
        return True
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x).dtype.kind in "biufc"
        except (TypeError, ValueError):
            return False
    return False


def jit(fun=None, *, static_argnames=()):
    """``jax.jit`` that first turns non-array arguments into a ValueError naming them (jit would raise
    a TypeError from deep inside). Shape/dtype validation then runs once per trace, inside."""
    if fun is None:
        return functools.partial(jit, static_argnames=static_argnames)
    jitted = jax.jit(fun, static_argnames=static_argnames)
    sig = inspect.signature(fun)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"{fun.__name__}: {e}") from None
        for name, val in bound.arguments.items():
            if name in static_argnames:
                try:
                    hash(val)
                except TypeError:
                    raise ValueError(f"{name} must be a Python value (static), got {type(val).__name__}") from None
            elif val is not None and not _arraylike(val):
                raise ValueError(f"{name} must be an array, got {type(val).__name__}")
        return jitted(*args, **kwargs)

    return wrapper


def real_dtype(*arrays):
    """float64 when any input is 64-bit (possible only with x64 enabled), else float32 (bfloat16 -> f32)."""
    return _utils.real_dtype(_utils.compute_dtype(*(jnp.asarray(a).dtype for a in arrays)))


def complex_dtype(rdt):
    return jnp.complex128 if rdt == jnp.float64 else jnp.complex64


def batch_shape(named_shapes):
    """Broadcast the batch shapes ``[(name, shape), ...]``; ValueError naming them if they clash."""
    try:
        return tuple(np.broadcast_shapes(*[s for _, s in named_shapes]))
    except ValueError:
        desc = ", ".join(f"{n} {tuple(s)}" for n, s in named_shapes)
        raise ValueError(f"leading (batch) dimensions do not broadcast: {desc}") from None


def bcast(x, shape):
    """Explicit broadcast (rank promotion is 'raise' in the tests)."""
    return jnp.broadcast_to(x, shape) if x.shape != tuple(shape) else x
