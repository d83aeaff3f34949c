"""Input validation for all of AlgoRNN: one module, one argument order, ``check_*(name, value, ...)``.

``scan_kernels`` is the bottom of the dependency graph, so ``ssm``, ``layers`` and ``experiments`` import their
generic checks from here; checks that know a domain (``check_qkv``, ``check_state``, the ``ssm`` batch-shape
rules, a layer's ``(B, L, D)`` input) live next to that domain and call these.

Every check raises a ``ValueError`` that names the argument, shows what it got (its value, or for arrays its
shape and dtype) and says what was expected, so bad input never reaches XLA as a deep trace or, worse,
broadcasts into a silent wrong answer. Checks return the (normalised) value, so ``n = check_int("n", n)``
reads as one line.

Scalar options: :func:`check_choice`, :func:`check_bool`, :func:`check_int`, :func:`check_float`.
Arrays: :func:`describe` (for messages), :func:`as_array`, :func:`check_array`, :func:`check_inexact`,
:func:`check_ndim`, :func:`check_shape`, :func:`check_broadcastable`.

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------------ scalar options
def check_choice(name: str, value, allowed):
    """``value`` must be one of ``allowed`` (strings, bools, ints or None); returns it."""
    if not isinstance(value, (str, bool, int, type(None))) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` must be ``True`` or ``False`` (a Python or numpy bool, not 0/1 or a string); returns a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be True or False")
    return bool(value)


def check_int(name: str, value, *, minimum: int = 1, maximum: int | None = None, multiple_of: int = 1) -> int:
    """``value`` must be an integer (not a bool or float) in ``[minimum, maximum]`` and a multiple of
    ``multiple_of``; returns it as a Python int."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok:
        ok = value >= minimum and (maximum is None or value <= maximum) and value % multiple_of == 0
    if not ok:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        extra = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise ValueError(f"{name}={value!r} must be an integer {bound}{extra}")
    return int(value)


def check_float(name: str, value, *, low: float = 0.0, high: float = float("inf"), low_open: bool = True):
    """``value`` must be a real number in ``(low, high]`` (``[low, high]`` with ``low_open=False``); returns it."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value!r} must be a number in {bracket}{low}, {high}]")
    return value


# ------------------------------------------------------------------------------------------ arrays
def describe(value) -> str:
    """``shape (2, 3) dtype float32`` for an array-like, ``a list (not an array)`` otherwise (for messages)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None:
        return f"a {type(value).__name__} (not an array)"
    return f"shape {tuple(shape)} dtype {np.dtype(dtype).name if dtype is not None else '?'}"


def as_array(name: str, value):
    """``jnp.asarray(value)`` (numbers, nested lists and arrays are accepted); strings and ragged lists raise."""
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as e:  # strings, ragged lists, objects
        raise ValueError(f"{name} must be an array, got {type(value).__name__}") from e


def check_array(name: str, value):
    """``value`` must be an array (jax/numpy) or a tracer; Python scalars and lists are refused. Returns it."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise ValueError(f"{name} must be a jax or numpy array, got {describe(value)}")
    return value


def check_inexact(name: str, value, *, allow_complex: bool = True):
    """``value`` must be a floating array (bfloat16 included) or, if ``allow_complex``, a complex one. Returns it."""
    check_array(name, value)
    dt = jnp.dtype(value.dtype)
    ok = jnp.issubdtype(dt, jnp.floating) or (allow_complex and jnp.issubdtype(dt, jnp.complexfloating))
    if not ok:
        kinds = "floating or complex" if allow_complex else "real float"
        raise ValueError(f"{name} must have a {kinds} dtype, got {describe(value)}")
    return value


def check_ndim(name: str, value, ndim: int, what: str, *, at_least: bool = False):
    """``value.ndim`` must be ``ndim`` (``>= ndim`` with ``at_least``); ``what`` is the expected layout, e.g.
    ``"(B, L, D)"``. Returns ``value``."""
    check_array(name, value)
    if value.ndim < ndim if at_least else value.ndim != ndim:
        dims = f"at least {ndim} dims" if at_least else f"{ndim} dims"
        raise ValueError(f"{name} must have shape {what} ({dims}), got {describe(value)}")
    return value


def check_shape(name: str, value, expected: tuple, what: str = ""):
    """``value.shape`` must equal ``expected`` exactly; ``what`` says where the expected shape comes from."""
    check_array(name, value)
    if tuple(value.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {describe(value)}")
    return value


def check_broadcastable(name: str, value, target: tuple, target_name: str):
    """``value`` must broadcast to ``target`` by numpy rules without growing it (e.g. ``a`` onto ``b``)."""
    check_array(name, value)
    shape = tuple(value.shape)
    ok = len(shape) <= len(target) and all(s == 1 or s == t for s, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(
            f"{name} must be broadcastable to {target_name}'s shape {tuple(target)}, got {describe(value)}"
        )
    return value
