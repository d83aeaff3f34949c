"""Numerical comparison helpers for the test suite.

``assert_close`` measures the relative RMS error  ||actual - expected||_2 / max(||expected||_2, floor)
(over all elements, complex included), so one outlier in a long sequence does not dominate and an
all-zero reference does not divide by zero. Tolerances come from a per-dtype table keyed by the dtype
the *computation* ran in (the reference is float32/float64).
"""

import numpy as np

# Relative-RMS tolerance by the dtype of the computation under test.
TOLERANCES = {
    "float64": 1e-10,
    "complex128": 1e-10,
    "float32": 1e-5,
    "complex64": 1e-5,
    "bfloat16": 2e-2,
    "float16": 5e-3,
}


def tolerance(dtype) -> float:
    """Relative-RMS tolerance for a computation carried out in ``dtype``."""
    name = np.dtype(dtype).name
    if name not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {name}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[name]


def rel_rms_error(actual, expected, floor: float = 1e-6) -> float:
    a = np.asarray(actual).astype(np.complex128)
    e = np.asarray(expected).astype(np.complex128)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape} vs expected {e.shape}")
    diff = np.sqrt(np.mean(np.abs(a - e) ** 2)) if a.size else 0.0
    scale = np.sqrt(np.mean(np.abs(e) ** 2)) if e.size else 0.0
    return float(diff / max(scale, floor))


def assert_close(actual, expected, *, dtype=None, rtol=None, floor: float = 1e-6, name: str = ""):
    """Assert relative RMS error <= rtol (default: the table entry for ``dtype`` or ``actual``'s dtype).

    Also fails on any non-finite value in ``actual`` that is not in ``expected``.
    """
    if rtol is None:
        rtol = tolerance(dtype if dtype is not None else np.asarray(actual).dtype)
    a = np.asarray(actual)
    e = np.asarray(expected)
    if not np.array_equal(np.isfinite(a.astype(np.complex128)), np.isfinite(e.astype(np.complex128))):
        raise AssertionError(f"{name}: non-finite values differ between actual and expected")
    err = rel_rms_error(a, e, floor)
    if not err <= rtol:
        raise AssertionError(f"{name}: relative RMS error {err:.3e} > tolerance {rtol:.1e} (shape {a.shape})")
    return err


def normal(seed, shape, dtype="float32"):
    """Standard-normal test input drawn with NumPy (``jax.random`` compiles a program per new shape, ~2 s each)."""
    import jax.numpy as jnp

    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def randint(seed, shape, low, high):
    """Integers in ``[low, high)`` drawn with NumPy, as an int32 JAX array (see ``normal``)."""
    import jax.numpy as jnp

    return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.int32)


def param64(p):
    """A parameter (``nnx.Param`` or array) as a float64 NumPy array, for the NumPy reference forms."""
    return np.asarray(p[...], np.float64)


def silu64(v):
    """``v σ(v)`` in NumPy."""
    return v / (1.0 + np.exp(-v))


def sequences(seg):
    """``(row, start, end)`` of every sequence (maximal run of one non-zero id) of ``seg (B, L)``."""
    out = []
    for r, row in enumerate(np.asarray(seg)):
        t = 0
        while t < len(row):
            e = t
            while e + 1 < len(row) and row[e + 1] == row[t]:
                e += 1
            if row[t] != 0:
                out.append((r, t, e + 1))
            t = e + 1
    return out
