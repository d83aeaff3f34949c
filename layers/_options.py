"""Option handling for layers: every mixer's options are a frozen dataclass, validated when it is built.

``build_options(Options, owner, options)`` turns the ``**options`` of ``Mixer(d_model, *, rngs, **options)`` into
the mixer's frozen dataclass; an unknown name or a bad value raises ``ValueError`` that lists what is allowed.
The ``check_*`` helpers are used in each dataclass's ``__post_init__`` and on the inputs of ``__call__``/``step``.

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


def build_options(cls, owner: str, options: dict):
    """Instantiate the frozen options dataclass ``cls`` from ``options``; unknown names raise ``ValueError``."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) {unknown}; allowed options are {sorted(names)}")
    return cls(**options)


def check_choice(name: str, value, allowed) -> None:
    if not isinstance(value, (str, bool, int, type(None))) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def check_int(name: str, value, *, minimum: int = 1, multiple_of: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or value % multiple_of:
        extra = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{extra}")


def check_float(name: str, value, *, low: float = 0.0, high: float = float("inf"), low_open: bool = True) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value!r} must be a number in {bracket}{low}, {high}]")


def check_dt_range(dt_min, dt_max) -> None:
    check_float("dt_min", dt_min)
    check_float("dt_max", dt_max)
    if not dt_min <= dt_max:
        raise ValueError(f"dt_min={dt_min!r} must be <= dt_max={dt_max!r}")


def check_sequence(owner: str, x, d_model: int):
    """``x`` must be a float array ``(B, L, D)`` with ``D == d_model`` and ``L >= 1``."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or len(shape) != 3 or shape[-1] != d_model or shape[1] < 1:
        raise ValueError(f"{owner}: x must have shape (B, L, D={d_model}); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}: x must be a floating array (B, L, D); got dtype {dtype}")


def check_token(owner: str, x_t, d_model: int):
    """``x_t`` must be a float array ``(B, D)`` with ``D == d_model``."""
    shape = getattr(x_t, "shape", None)
    dtype = getattr(x_t, "dtype", None)
    if shape is None or len(shape) != 2 or shape[-1] != d_model:
        raise ValueError(f"{owner}.step: x_t must have shape (B, D={d_model}); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}.step: x_t must be a floating array (B, D); got dtype {dtype}")


def check_dt_scale(owner: str, dt_scale) -> None:
    """``dt_scale`` multiplies every step size Δ at call time (sampling-rate change); a positive Python number."""
    if isinstance(dt_scale, bool) or not isinstance(dt_scale, (int, float, np.floating)) or not dt_scale > 0:
        raise ValueError(f"{owner}: dt_scale={dt_scale!r} must be a positive number")


def check_batch_size(owner: str, batch_size) -> None:
    check_int(f"{owner}.init_state: batch_size", batch_size)


def check_causal(owner: str, bidirectional: bool) -> None:
    """Recurrent (``init_state`` / ``step``) use needs a causal layer."""
    if bidirectional:
        raise ValueError(f"{owner}: step is causal; bidirectional=True has no recurrent form")
