"""Arithmetic building blocks shared by the scans' XLA forms and Pallas kernels.

* :func:`two_sum` — Knuth's TwoSum (TAOCP vol. 2 §4.2.2, Theorem B): ``s = fl(x + y)`` and the exact
  rounding error ``e`` with ``x + y = s + e``, branch-free (six flops, no comparison), so it runs inside
  Pallas kernels and vectorised XLA loops alike. The scans carry ``e`` as a compensation term (Kahan 1965),
  which keeps long sums accurate in float32.
* :func:`cmul` — the product of two numbers held as tuples of real planes: ``(re,)`` for a real number,
  ``(re, im)`` for a complex one. Pallas calls reject complex arrays, so the kernels carry complex state as
  real/imaginary planes and multiply with this.

Both work elementwise on arrays of any shape (broadcasting as ``*`` and ``+`` do).
"""


def two_sum(x, y):
    """``(s, e)`` with ``s = fl(x + y)`` and ``e`` its exact rounding error: ``x + y == s + e`` exactly
    (round-to-nearest, no overflow)."""
    s = x + y
    bp = s - x
    e = (x - (s - bp)) + (y - bp)
    return s, e


def cmul(x, y):
    """``x · y`` for numbers given as tuples of planes: ``(re,) · (re,)`` (real) or ``(re, im) · (re, im)``
    (complex, ``(xr yr − xi yi, xr yi + xi yr)``); returns a tuple of the same length."""
    if len(x) != len(y) or len(x) not in (1, 2):
        raise ValueError(
            f"cmul needs two real (1-plane) or two complex (2-plane) numbers, got {len(x)} and {len(y)} planes"
        )
    if len(x) == 1:
        return (x[0] * y[0],)
    (xr, xi), (yr, yi) = x, y
    return (xr * yr - xi * yi, xr * yi + xi * yr)
